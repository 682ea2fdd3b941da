"""Read NVIDIA's stylegan2-ada-pytorch / stylegan3 network pickles without running their code.

NVIDIA's `network-snapshot-*.pkl` files are plain pickles of a dict
``{"G": ..., "D": ..., "G_ema": ..., "augment_pipe": ..., "training_set_kwargs": {...}}``.
Each network is a *persistent object* (their `torch_utils/persistence.py`): it pickles as a
call ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where
``meta = {"type": "class", "version": 6, "module_src": <the Python source of networks.py>,
"class_name": "Generator", "state": <the module's __dict__>}``. NVIDIA's loader `exec`s
`module_src` — i.e. a pickle runs whatever source it carries. We never do.

Instead a restricted `pickle.Unpickler` resolves only the handful of globals that plain
network data needs (tensor/parameter rebuilders, storages via a weights-only `torch.load`,
OrderedDict, EasyDict, numpy scalars/dtypes/arrays of plain numbers) and maps
`_reconstruct_persistent_obj` to a function that just keeps `meta` as data. Any other
import in the stream (``os.system``, ``builtins.eval``, ...) stops loading before it is
resolved, so nothing in the file ever runs.

From the kept metadata we read `_init_kwargs` (→ ``G_kwargs``) and walk the
``_parameters`` / ``_buffers`` / ``_modules`` tree into a flat state dict. Our Generator uses
NVIDIA's parameter names, so the weights map one to one; only constructor kwargs that
merely pick a kernel variant (``fused_modconv_default`` of stylegan3's StyleGAN2 config)
are dropped. Buffers NVIDIA marks non-persistent are left out, as state_dict() would.

Two code bases write StyleGAN2 pickles, and their constructor arguments differ:

* stylegan2-ada-pytorch: ``Generator(z_dim, c_dim, w_dim, img_resolution, img_channels,
  mapping_kwargs, synthesis_kwargs)``, defaults num_fp16_res=0, conv_clamp=None,
  w_avg_beta=0.995 (our networks' defaults); its train.py passes num_fp16_res=4 and
  conv_clamp=256 explicitly, so they are in the pickle.
* stylegan3 (`training/networks_stylegan2.py`, ``train.py --cfg stylegan2``): the synthesis
  settings are flat ``**synthesis_kwargs`` of the Generator (channel_base, channel_max,
  fused_modconv_default, …), and the defaults that matter are different and *not* in the
  pickle unless ``--fp32`` overrode them: SynthesisNetwork num_fp16_res=4, SynthesisBlock
  conv_clamp=256, MappingNetwork w_avg_beta=0.998, Discriminator num_fp16_res=4 and
  conv_clamp=256. conv_clamp changes images even in float32 (activations are clamped to
  ±256); ignoring these defaults put images up to 94 grey levels off (issue 10).

We fold flat kwargs into ``synthesis_kwargs``, fill in the code base's defaults (a Generator
without nested ``synthesis_kwargs`` is stylegan3's), and then check them against what the
modules themselves recorded — every layer keeps its ``conv_clamp``, every block its
``use_fp16``, the mapping network its ``w_avg_beta`` — so the settings the network actually
ran with win. StyleGAN3 (alias-free, ``--cfg stylegan3-t/-r``) generators are refused.

Conditional networks (c_dim > 0) need nothing special: the label embedding is
``mapping.embed`` in G and D's label mapping is ``mapping.*`` with the cmap projection in
``b4.out``, in both code bases and ours. The augment pipe's state (``p`` and its filters)
is kept as ``snap["augment_pipe"]`` with its constructor kwargs in
``config["augment_kwargs"]``, so a run resumed from the pickle can continue with its p.
"""

from __future__ import annotations

import collections
import inspect
import io
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError, _one_line, refused_objects

#: kwargs of NVIDIA's networks that only pick a kernel variant or a training trick, never change weights.
_DROPPED_KWARGS = frozenset({"fused_modconv_default"})

_POSITIONAL_ARGS = {
    "Generator": ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"),
    "Discriminator": ("c_dim", "img_resolution", "img_channels"),
}
#: Generator kwargs that are not synthesis settings (stylegan3 passes all others flat).
_G_OWN_KWARGS = frozenset(_POSITIONAL_ARGS["Generator"])
#: stylegan3's networks_stylegan2.py defaults that differ from stylegan2-ada-pytorch's (ours).
_SG3_SYNTHESIS_DEFAULTS = {"num_fp16_res": 4, "conv_clamp": 256}
_SG3_MAPPING_DEFAULTS = {"w_avg_beta": 0.998}
_SG3_D_DEFAULTS = {"num_fp16_res": 4, "conv_clamp": 256}
#: Generator kwargs of stylegan3's alias-free networks (networks_stylegan3.py), never of StyleGAN2's.
_SG3_ALIAS_FREE_KWARGS = frozenset({
    "magnitude_ema_beta", "conv_kernel", "use_radial_filters", "num_critical", "first_cutoff", "first_stopband",
    "last_stopband_rel", "margin_size", "output_scale", "lrelu_upsampling", "filter_size",
})
_MISSING = object()
_ONLY_STYLEGAN2 = (
    "a StyleGAN3 (alias-free, --cfg stylegan3-t/-r) network; only StyleGAN2 configs are supported "
    "(stylegan2-ada-pytorch pickles, or stylegan3's --cfg stylegan2)"
)


class _Refused(Exception):
    """Something in the pickle that plain network data never holds; becomes a MadError naming the file."""


class _RefusedImport(_Refused):
    """find_class was asked for a global outside the allow-list."""


@dataclass
class PersistentObject:
    """What `_reconstruct_persistent_obj(meta)` yields here: the metadata, as inert data."""

    class_name: str
    version: int
    state: dict[str, Any]
    module_src_chars: int = 0


class _TorchModuleStub:
    """A plain torch.nn module (e.g. ModuleList) found in the pickle: only its __dict__ is kept.

    Pickle creates it with cls.__new__ (no __init__), so defaults live on the class.
    """

    class_name = ""
    state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = dict(state) if isinstance(state, dict) else {}


class _EasyDict(dict):
    """Stand-in for dnnlib.EasyDict: a plain dict (attribute access is all EasyDict adds)."""

    def __setstate__(self, state: Any) -> None:  # EasyDict pickles an (empty) instance __dict__
        pass


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise _Refused("a persistent object with unexpected metadata")
    state = meta.get("state")
    src = meta.get("module_src")
    return PersistentObject(
        class_name=str(meta.get("class_name")),
        version=int(meta.get("version", 0)),
        state=dict(state) if isinstance(state, dict) else {},
        module_src_chars=len(src) if isinstance(src, str) else 0,
    )


def _load_storage_from_bytes(data: bytes) -> Any:
    """`torch.storage._load_from_bytes`, but through torch's weights-only loader."""
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("a storage that is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _Refused(f"a storage record where {refused_objects(exc)}") from None


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None) -> torch.Tensor:
    """Parameters come back as plain tensors: we only need their values."""
    if not isinstance(data, torch.Tensor):
        raise _Refused("a parameter without tensor data")
    return data.detach()


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """Tensor subclasses / tensors with attributes: rebuild the tensor, keep neither type nor state."""
    if not isinstance(func, _Allowed) or func.fn not in (_rebuild_tensor_v2, _rebuild_parameter):
        raise _Refused("a tensor rebuilt by an unexpected function")
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise _Refused(f"a tensor of type {getattr(new_type, '__name__', new_type)!r}")
    return func(*args)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 without hooks or metadata (neither matters for weights)."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused("a tensor whose storage is not a torch storage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)


class _DTypeStub:
    """numpy.dtype(...) rebuilt for plain numeric types only (no object/structured dtypes)."""

    def __init__(self, name: Any, align: Any = False, copy: Any = True):
        try:
            dtype = np.dtype(str(name))
        except TypeError:
            raise _Refused(f"a numpy dtype {name!r}") from None
        if dtype.kind not in "biufc" or dtype.fields is not None:
            raise _Refused(f"a numpy dtype {name!r} that is not a plain number type")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 3:
            if state[2] is not None or state[3] is not None:
                raise _Refused("a structured numpy dtype")
            if state[1] in ("<", ">"):
                self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, _DTypeStub) or not isinstance(data, (bytes, bytearray)):
        raise _Refused("a numpy scalar of an unsupported kind")
    return np.frombuffer(bytes(data), dtype=dtype.dtype, count=1)[0].item()


class _ArrayStub:
    """numpy.ndarray rebuilt from raw bytes, for plain number dtypes only."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise _Refused("a numpy array in an unknown layout")
        _version, shape, dtype, is_fortran, raw = state
        if not isinstance(dtype, _DTypeStub) or not isinstance(raw, (bytes, bytearray)):
            raise _Refused("a numpy array that is not plain numbers")
        arr = np.frombuffer(bytes(raw), dtype=dtype.dtype)
        self.array = arr.reshape(tuple(shape), order="F" if is_fortran else "C").copy()


def _numpy_reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _ArrayStub:
    if cls is not _ArrayStub:
        raise _Refused("numpy _reconstruct of something other than an ndarray")
    return _ArrayStub()


def _numpy_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, _DTypeStub):
        raise _Refused("a numpy array that is not plain numbers")
    return np.frombuffer(bytes(buf), dtype=dtype.dtype).reshape(tuple(shape), order=order).copy()


def _torch_dtype(name: str) -> torch.dtype:
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise _Refused(f"torch.{name}")
    return value


class _Allowed:
    """An allowed function as the unpickler hands it out.

    A pickle can apply BUILD to anything on its stack, which would set attributes on our
    own module-level functions; this slotted wrapper has no __dict__ and refuses state.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise _Refused("state for a function (BUILD on a global)")


_BUILTINS: dict[str, Any] = {
    name: getattr(__import__("builtins"), name)
    for name in ("set", "frozenset", "dict", "list", "tuple", "int", "float", "bool", "str", "bytes", "bytearray", "complex", "slice")
}

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _Allowed(_reconstruct_persistent_obj),
    ("torch._utils", "_rebuild_tensor_v2"): _Allowed(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Allowed(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(_rebuild_from_type_v2),
    ("torch.storage", "_load_from_bytes"): _Allowed(_load_storage_from_bytes),
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _DTypeStub,
    ("numpy", "ndarray"): _ArrayStub,
}
for _np_core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_np_core, "scalar")] = _Allowed(_numpy_scalar)
    _ALLOWED[(_np_core, "_reconstruct")] = _Allowed(_numpy_reconstruct)
for _np_num in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_np_num, "_frombuffer")] = _Allowed(_numpy_frombuffer)


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals listed above; everything else is refused before it is imported."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("builtins", "__builtin__") and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "torch" and name in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
            return _torch_dtype(name)
        if module.startswith("torch.nn.modules.") and name[:1].isupper() and name.isidentifier():
            # Plain torch modules pickle as NEWOBJ(cls) + BUILD(__dict__): a stub class keeps the dict.
            return type(name, (_TorchModuleStub,), {"class_name": name})
        if module.startswith("dnnlib.tflib"):
            raise _RefusedImport("TFLIB")
        raise _RefusedImport(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("persistent id (this is a torch.save file, not a network pickle)")


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return _SafeUnpickler(fh).load()
    except _RefusedImport as exc:
        what = str(exc)
        if what == "TFLIB":
            raise MadError(
                f"{path}: TensorFlow-era StyleGAN pickle; convert it to a PyTorch pickle first "
                "(NVIDIA stylegan2-ada-pytorch legacy.py) — refusing to load"
            ) from None
        raise MadError(f"{path}: the pickle tries to import {what}; refusing to load (nothing in it was run)") from None
    except _Refused as exc:
        raise MadError(f"{path}: the pickle holds {exc}, which network weights never need; refusing to load (nothing in it was run)") from None
    except RecursionError:
        raise MadError(f"{path}: refusing to load: its data is nested too deeply (a malformed or hostile pickle?)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, RuntimeError) as exc:
        raise MadError(f"{path}: corrupted or truncated network pickle ({_one_line(str(exc), limit=160) or type(exc).__name__})") from None
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _plain(value: Any) -> Any:
    """EasyDicts, OrderedDicts, numpy values and tuples → plain JSON-like Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, _ArrayStub):
        return value.array.tolist() if value.array is not None else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(type(value).__name__)


def _state_dict(obj: PersistentObject | _TorchModuleStub, prefix: str = "") -> dict[str, torch.Tensor]:
    """Walk _parameters/_buffers/_modules the way nn.Module.state_dict() does."""
    state = obj.state
    out: dict[str, torch.Tensor] = {}
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{prefix}{name} is not a tensor")
            out[prefix + name] = tensor.contiguous()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentObject, _TorchModuleStub)):
            raise TypeError(f"{prefix}{name} is not a module")
        out.update(_state_dict(child, f"{prefix}{name}."))
    return out


def _init_kwargs(obj: PersistentObject) -> dict[str, Any]:
    """The constructor arguments NVIDIA's persistence records (positional ones named)."""
    kwargs = _plain(obj.state.get("_init_kwargs") or {})
    args = _plain(obj.state.get("_init_args") or [])
    names = _POSITIONAL_ARGS.get(obj.class_name)
    if args and names and len(args) <= len(names):
        kwargs = {**dict(zip(names, args)), **kwargs}
    elif args:
        kwargs["_init_args"] = args
    for key in _DROPPED_KWARGS:
        kwargs.pop(key, None)
        if isinstance(kwargs.get("synthesis_kwargs"), dict):
            kwargs["synthesis_kwargs"].pop(key, None)
    return kwargs


def _child(obj: Any, *names: str) -> Any:
    """obj._modules[names[0]]._modules[names[1]]..., or None where the path does not exist."""
    for name in names:
        if not isinstance(obj, (PersistentObject, _TorchModuleStub)):
            return None
        obj = (obj.state.get("_modules") or {}).get(name)
    return obj


def _attr(obj: Any, name: str) -> Any:
    """A plain attribute a module recorded (conv_clamp, use_fp16, w_avg_beta, ...), or _MISSING."""
    if not isinstance(obj, (PersistentObject, _TorchModuleStub)) or name not in obj.state:
        return _MISSING
    try:
        return _plain(obj.state[name])
    except TypeError:
        return _MISSING


def _fp16_blocks(block_resolutions: list[int], img_resolution: int, num_fp16_res: int) -> set[int]:
    """Which blocks run in float16 for a given num_fp16_res (NVIDIA's rule, as in networks.py)."""
    fp16_resolution = max(2 ** (int(np.log2(img_resolution)) + 1 - int(num_fp16_res)), 8)
    return {r for r in block_resolutions if r >= fp16_resolution}


def _settle_from_modules(kwargs: dict[str, Any], blocks: dict[int, Any], img_resolution: Any, clamp_layer: Any,
                         ours: dict[str, Any]) -> None:
    """Make `kwargs` (num_fp16_res, conv_clamp) agree with what the modules recorded.

    `ours` holds our networks' defaults for keys absent from kwargs. The modules are the
    ground truth: their forward reads exactly these attributes.
    """
    clamp = _attr(clamp_layer, "conv_clamp")
    if clamp is not _MISSING and clamp != kwargs.get("conv_clamp", ours["conv_clamp"]):
        kwargs["conv_clamp"] = clamp
    flags = {res: _attr(block, "use_fp16") for res, block in blocks.items()}
    if flags and all(isinstance(v, bool) for v in flags.values()) and isinstance(img_resolution, int):
        flagged = {res for res, on in flags.items() if on}
        n = kwargs.get("num_fp16_res", ours["num_fp16_res"])
        if not isinstance(n, int) or _fp16_blocks(list(flags), img_resolution, n) != flagged:
            kwargs["num_fp16_res"] = len(flagged)


def _our_default(cls: Any, name: str) -> Any:
    return inspect.signature(cls).parameters[name].default


def _refuse_alias_free(g_ema: PersistentObject, path: Path) -> None:
    """stylegan3's -t/-r generators (networks_stylegan3.py) are a different architecture."""
    try:
        kwargs = _plain(g_ema.state.get("_init_kwargs") or {})
    except TypeError:
        kwargs = {}
    synthesis = _child(g_ema, "synthesis")
    children = (synthesis.state.get("_modules") or {}) if isinstance(synthesis, PersistentObject) else {}
    if _SG3_ALIAS_FREE_KWARGS & set(kwargs) or "b4" not in children:
        raise MadError(f"{path}: {_ONLY_STYLEGAN2}")


def _generator_kwargs(obj: PersistentObject, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Generator kwargs in our (stylegan2-ada-pytorch) layout with every default that matters explicit."""
    from mad_cli.models.stylegan2.networks import MappingNetwork, SynthesisBlock, SynthesisNetwork

    synthesis = _child(obj, "synthesis")
    stylegan3 = "synthesis_kwargs" not in kwargs
    synth = dict(kwargs.get("synthesis_kwargs") or {})
    flat = {k: v for k, v in kwargs.items() if k not in _G_OWN_KWARGS}
    synth.update(flat)
    mapping = dict(kwargs.get("mapping_kwargs") or {})
    if stylegan3:
        for key, value in _SG3_SYNTHESIS_DEFAULTS.items():
            synth.setdefault(key, value)
        for key, value in _SG3_MAPPING_DEFAULTS.items():
            mapping.setdefault(key, value)
    ours = {"conv_clamp": _our_default(SynthesisBlock, "conv_clamp"), "num_fp16_res": _our_default(SynthesisNetwork, "num_fp16_res")}
    blocks = {int(name[1:]): child for name, child in (synthesis.state.get("_modules") or {}).items() if name[:1] == "b" and name[1:].isdigit()}
    _settle_from_modules(synth, blocks, kwargs.get("img_resolution"), _child(synthesis, "b4", "conv1"), ours)
    beta = _attr(_child(obj, "mapping"), "w_avg_beta")
    if beta is not _MISSING and beta != mapping.get("w_avg_beta", _our_default(MappingNetwork, "w_avg_beta")):
        mapping["w_avg_beta"] = beta
    out = {k: v for k, v in kwargs.items() if k in _G_OWN_KWARGS}
    out["mapping_kwargs"] = mapping
    out["synthesis_kwargs"] = synth
    return out


def _discriminator_kwargs(obj: PersistentObject, kwargs: dict[str, Any], stylegan3: bool) -> dict[str, Any]:
    """Discriminator kwargs with stylegan3's defaults made explicit where its code base wrote the pickle."""
    from mad_cli.models.stylegan2.networks import Discriminator

    kwargs = dict(kwargs)
    if stylegan3:
        for key, value in _SG3_D_DEFAULTS.items():
            kwargs.setdefault(key, value)
    ours = {"conv_clamp": _our_default(Discriminator, "conv_clamp"), "num_fp16_res": _our_default(Discriminator, "num_fp16_res")}
    blocks = {int(name[1:]): child for name, child in (obj.state.get("_modules") or {}).items()
              if name[:1] == "b" and name[1:].isdigit() and int(name[1:]) > 4}
    first = max(blocks) if blocks else None
    _settle_from_modules(kwargs, blocks, kwargs.get("img_resolution"), _child(obj, f"b{first}", "conv0") if first else None, ours)
    return kwargs


def _network(data: dict[str, Any], key: str, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    obj = data.get(key)
    if obj is None:
        return None
    if not isinstance(obj, PersistentObject):
        raise MadError(f"{path}: '{key}' is not an NVIDIA persistent network object; refusing to load")
    try:
        return _init_kwargs(obj), _state_dict(obj)
    except TypeError as exc:
        raise MadError(f"{path}: '{key}' has an unexpected layout ({exc})") from None


def load_nvidia_pkl(path: str | Path) -> dict[str, Any]:
    """An NVIDIA network pickle as a ``mad.stylegan2`` snapshot dict (G_ema, plus G, D and the augment pipe when present).

    Only StyleGAN2-architecture generators are accepted (stylegan2-ada-pytorch, or stylegan3's
    `--cfg stylegan2`); StyleGAN3 (alias-free) generators are refused with a clear message.
    The kwargs in ``config`` build our networks as the pickle's code base built them; they
    are checked against the weights before any network is built (`sampler.check_networks`).
    A pickle whose objects contain themselves is one error line, not a RecursionError.
    """
    try:
        return _load_nvidia_pkl(Path(path))
    except RecursionError:
        raise MadError(f"{path}: refusing to load: its objects contain themselves or nest too deeply (a malformed or hostile pickle?)") from None


def _load_nvidia_pkl(p: Path) -> dict[str, Any]:
    data = _unpickle(p)
    if not isinstance(data, dict) or "G_ema" not in data:
        raise MadError(f"{p}: not an NVIDIA network pickle (expected a dict with 'G_ema')")
    g_ema = data["G_ema"]
    if not isinstance(g_ema, PersistentObject) or g_ema.class_name != "Generator":
        raise MadError(f"{p}: 'G_ema' is not an NVIDIA Generator; refusing to load")

    _refuse_alias_free(g_ema, p)
    raw_kwargs, G_ema_state = _network(data, "G_ema", p)  # type: ignore[misc]
    stylegan3 = "synthesis_kwargs" not in raw_kwargs
    G_kwargs = _generator_kwargs(g_ema, raw_kwargs)
    snap: dict[str, Any] = {
        "format": "mad.stylegan2",
        "version": 1,
        "config": {"G_kwargs": G_kwargs, "source": "nvidia-pkl", "source_file": p.name,
                   "source_code_base": "stylegan3" if stylegan3 else "stylegan2-ada-pytorch"},
        "G_ema": G_ema_state,
        "progress": {},
    }
    net = _network(data, "G", p)
    if net is not None:
        snap["G"] = net[1]
    net = _network(data, "D", p)
    if net is not None:
        snap["config"]["D_kwargs"] = _discriminator_kwargs(data["D"], net[0], stylegan3)
        snap["D"] = net[1]
    pipe = data.get("augment_pipe")
    if isinstance(pipe, PersistentObject) and pipe.class_name == "AugmentPipe":
        try:
            snap["augment_pipe"] = _state_dict(pipe)
            snap["config"]["augment_kwargs"] = _init_kwargs(pipe)
        except TypeError as exc:
            raise MadError(f"{p}: 'augment_pipe' has an unexpected layout ({exc})") from None
    tsk = data.get("training_set_kwargs")
    if isinstance(tsk, dict):
        try:
            snap["config"]["training_set_kwargs"] = _plain(tsk)
        except TypeError:
            pass
    return snap
