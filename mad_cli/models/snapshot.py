"""Model snapshots: one file per trained model that loads without running any code.

A snapshot is `torch.save` of a plain dict holding only tensors and JSON-like values
(numbers, strings, None, lists, tuples, dicts). That restriction is what lets us load
every snapshot with `torch.load(weights_only=True)`: a snapshot handed around between
people (or downloaded) can never execute code on the machine that opens it.

Each backend in `mad_cli.models.BACKENDS` has its own format, told apart by
`snap["format"]` (``mad.stylegan2``, ``mad.gaussian``, ``mad.ddpm``, ...), with the newest
version it reads; the rest of the dict is the backend's business (config, weights,
optimiser state, progress), checked by the backend before anything is built from it.

NVIDIA's stylegan2-ada-pytorch / stylegan3 network pickles are read too, by a restricted
unpickler (`mad_cli.models.stylegan2.nvidia_pkl`) that returns the same dict shape as a
``mad.stylegan2`` snapshot holding only ``G_ema``.

The snapshot id (first 16 hex of the file's sha256) is what generated images carry as
their `generator` provenance tag, so identical weights always give the same id.

A snapshot comes from outside, so its structure is checked before anything is built from
it: containers nested deeper than MAX_DEPTH or holding themselves (a recursive pickle) are
refused at load, and `check_architecture` compares the network a config describes with
the tensors actually in the file before that network is allocated: a 1.6 KB file whose
config asks for a 154 GB generator is refused in milliseconds instead of exhausting memory.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from mad_cli.errors import MadError, _one_line, refused_objects
from mad_cli.imagedir import atomic_open, sha256_file
from mad_cli.models import (
    FORMAT_VERSIONS,  # the backends' table: one format and version per model
)

_SCALARS = (type(None), bool, int, float, str, bytes)


def _check_value(value: Any, where: str) -> None:
    """Refuse anything `torch.load(weights_only=True)` would not give back (objects, arrays, ...).

    Catching it at save time names the offending key; finding out at load time would make
    a finished training run unloadable.
    """
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"snapshot value {where}: tensor subclass {type(value).__name__} cannot be saved")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"snapshot key {where}[{key!r}]: keys must be str or int")
            _check_value(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"snapshot value {where}: {type(value).__module__}.{type(value).__name__} is not a tensor or "
        "JSON-like value (convert numpy arrays with torch.from_numpy, objects to dicts)"
    )


def _plain_dict(value: Any) -> Any:
    """Copy containers into plain dict/list/tuple (OrderedDict and friends pickle as their class)."""
    if isinstance(value, torch.nn.Parameter):
        return value.detach()
    if isinstance(value, dict):
        return {k: _plain_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dict(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_dict(v) for v in value)
    return value


def cpu_tree(value: Any) -> Any:
    """A copy of tensors (in dicts, lists, tuples) on the CPU: what a snapshot stores of
    optimiser states and networks trained on a GPU, so it loads on any machine."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_tree(v) for v in value)
    return value


def save_snapshot(path: str | os.PathLike[str], snap: dict[str, Any]) -> Path:
    """Write `snap` atomically (temp file + rename), so a killed run never leaves half a snapshot.

    Raises TypeError (a programming error, not a user error) if `snap` holds anything other
    than tensors and JSON-like values, or lacks a known `format`/`version`.
    """
    if not isinstance(snap, dict):
        raise TypeError(f"snapshot must be a dict, got {type(snap).__name__}")
    fmt = snap.get("format")
    if fmt not in FORMAT_VERSIONS:
        raise TypeError(f"snapshot format must be one of {sorted(FORMAT_VERSIONS)}, got {fmt!r}")
    if not isinstance(snap.get("version"), int):
        raise TypeError("snapshot needs an integer 'version'")
    _check_value(snap, "snap")
    target = Path(path)
    data = _plain_dict(snap)
    with atomic_open(target, "wb") as fh:
        torch.save(data, fh)
    return target


def snapshot_id(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the file's sha256: the `generator` tag of every image it makes."""
    p = Path(path)
    try:
        return sha256_file(p)[:16]
    except FileNotFoundError:
        raise MadError(f"{p}: snapshot not found") from None
    except IsADirectoryError:
        raise MadError(f"{p}: is a folder, not a snapshot file") from None
    except OSError as exc:
        raise MadError(f"{p}: cannot read snapshot ({exc.strerror or exc})") from None


def _looks_like_plain_pickle(p: Path) -> bool:
    """NVIDIA pickles are plain pickle streams (start with the PROTO opcode), not torch zip files."""
    with open(p, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def load_snapshot(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load one of our snapshots (or an NVIDIA network pickle) without executing code from it.

    Every failure a user can cause — missing, truncated, corrupted, foreign or too-new
    file — becomes a one-line MadError naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise MadError(f"{p}: snapshot not found")
    if p.is_dir():
        raise MadError(f"{p}: is a folder, not a snapshot file (for a training run use {p / 'latest.pt'})")
    try:
        is_zip = zipfile.is_zipfile(p)
        plain_pickle = not is_zip and _looks_like_plain_pickle(p)
    except OSError as exc:
        raise MadError(f"{p}: cannot read snapshot ({exc.strerror or exc})") from None

    # Route by content, not name: a renamed .pt still loads, any plain pickle meets the safe importer.
    if plain_pickle or (p.suffix.lower() == ".pkl" and not is_zip):
        from mad_cli.models.stylegan2.nvidia_pkl import load_nvidia_pkl

        snap = load_nvidia_pkl(p)
        if map_location is not None:
            snap = _move(snap, map_location)
        return snap

    if not is_zip:
        raise MadError(f"{p}: not a mad snapshot (not a torch zip file; truncated or a different format?)")
    _verify_checksums(p)
    try:
        snap = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise MadError(f"{p}: refusing to load: {refused_objects(exc)}") from None
    except RecursionError:
        raise MadError(f"{p}: refusing to load: its data is nested too deeply (a malformed or hostile file?)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError) as exc:
        raise MadError(f"{p}: corrupted or truncated snapshot ({short_reason(exc)})") from None
    check_structure(snap, p)
    return check_snapshot(snap, p)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """A library's error message as one line, cut at a word boundary (never mid-word) with an ellipsis."""
    return _one_line(str(exc), limit=limit) or type(exc).__name__


#: Containers nested deeper than this are not a snapshot: ours are at most ~6 deep
#: (snap → optim → G → state → 12 → exp_avg); NVIDIA's kwargs a few more.
MAX_DEPTH = 64


def check_structure(value: Any, p: Path | str) -> None:
    """Refuse containers that hold themselves or nest deeper than MAX_DEPTH, walking iteratively.

    Every later reader of a snapshot (kwargs copies, JSON dumps of its config, state-dict
    walks) recurses: a recursive pickle would surface as a RecursionError deep inside one.
    """
    stack: list[tuple[Any, int, frozenset[int]]] = [(value, 0, frozenset())]
    while stack:
        item, depth, path = stack.pop()
        if not isinstance(item, (dict, list, tuple)):
            continue
        if id(item) in path:
            raise MadError(f"{p}: refusing to load: its data contains itself (a malformed or hostile file?)")
        if depth >= MAX_DEPTH:
            raise MadError(f"{p}: refusing to load: its data is nested more than {MAX_DEPTH} levels deep (a malformed or hostile file?)")
        children = item.values() if isinstance(item, dict) else item
        inner = path | {id(item)}
        stack.extend((child, depth + 1, inner) for child in children if isinstance(child, (dict, list, tuple)))


# ---------------------------------------------------------------------------------------
# Architecture before allocation

_FACTORIES = frozenset({
    torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.normal, torch.eye, torch.arange, torch.linspace, torch.logspace,
})


#: Factories whose result is only a shape: answered by torch.empty on the meta device.
_SHAPED = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn})
_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "div", "true_divide", "neg", "__add__", "__radd__", "__sub__", "__rsub__",
    "__mul__", "__rmul__", "__truediv__", "__rtruediv__", "__neg__",
})


def _plain_size(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    """The size asked of empty/zeros/ones/rand/randn (or of full with a float fill), when it is
    spelled plainly; None sends the call to torch's own meta kernel."""
    if func not in _SHAPED or "out" in kwargs:
        return None
    if func is torch.full:
        fill = args[1] if len(args) > 1 else kwargs.get("fill_value")
        if not isinstance(fill, float) or not args:
            return None
        size: Any = args[0]
    else:
        size = kwargs.get("size", args[0] if len(args) == 1 else args)
    if isinstance(size, int):
        size = (size,)
    if isinstance(size, (list, tuple, torch.Size)) and all(isinstance(n, int) and not isinstance(n, bool) for n in size):
        return tuple(size)
    return None


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """numpy's broadcasting rule (torch.broadcast_shapes would load the meta kernels)."""
    ndim = max(len(s) for s in shapes)
    out = []
    for axis in range(ndim):
        sizes = {s[axis - ndim + len(s)] for s in shapes if axis - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class _OnMeta(TorchFunctionMode):
    """Tensor factories without an explicit device make meta tensors (shape only, no memory).

    Unlike `with torch.device("meta")` this leaves tensors made from data (torch.as_tensor of a
    small filter kernel) real, so constructors that inspect such values still run. What
    network constructors do to fresh weights (initialise in place, scale) is answered here
    from the shapes alone: torch's meta kernels would work too, but loading them costs
    seconds on the first use, more than the whole check otherwise takes.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            size = _plain_size(func, args, kwargs)
            if size is not None:
                return torch.empty(size, dtype=kwargs.get("dtype") or torch.get_default_dtype(), device="meta")
            kwargs["device"] = "meta"
            return func(*args, **kwargs)
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        meta = next((t for t in tensors if t.is_meta), None) if tensors else None
        if meta is not None:
            name = getattr(func, "__name__", "")
            if name.endswith("_") and not name.startswith("__"):
                return tensors[0]  # in place (uniform_, zero_, kaiming_uniform_, ...): the shape is unchanged
            if name in _ELEMENTWISE:
                return torch.empty(_broadcast([tuple(t.shape) for t in tensors]), dtype=meta.dtype, device="meta")
        return func(*args, **kwargs)


class _TooLarge(Exception):
    pass


def expected_shapes(build: Callable[[], torch.nn.Module], budget: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the network `build` makes, found without allocating it.

    Building stops as soon as more than `budget` tensors or 4·budget modules are registered:
    a config that asks for millions of layers is refused after a few hundred, not after an hour.
    """
    from torch.nn.modules import module as nn_module

    counts = {"tensors": 0, "modules": 0}

    def count(kind: str, limit: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counts[kind] += 1
            if counts[kind] > limit:
                raise _TooLarge

        return hook

    handles = [
        nn_module.register_module_parameter_registration_hook(count("tensors", budget)),
        nn_module.register_module_buffer_registration_hook(count("tensors", budget)),
        nn_module.register_module_module_registration_hook(count("modules", 4 * budget)),
    ]
    try:
        with _OnMeta():
            net = build()
        return {k: tuple(v.shape) for k, v in net.state_dict().items()}
    finally:
        for h in handles:
            h.remove()


def check_architecture(build: Callable[[], torch.nn.Module], state: Any, *, where: str, what: str, config: str) -> None:
    """Refuse a config whose network does not match the tensors present, before building it for real.

    `build` constructs the network from the config (called with factories on the meta
    device); `state` is the state dict from the file. After this check passes, building the
    network allocates exactly as much as the file already holds.
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MadError(f"{where}: holds no {what} weights (a dict of tensors)")
    try:
        want = expected_shapes(build, budget=2 * len(state) + 64)
    except _TooLarge:
        raise MadError(f"{where}: {config} describes a far larger {what} than the {len(state)} weight tensors in the file") from None
    except Exception as exc:  # noqa: BLE001 - any failure to build from the config is the config's fault
        raise MadError(f"{where}: cannot build the {what} from {config} ({short_reason(exc, 120)})") from None
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MadError(f"{where}: {what} weights do not fit the architecture in {config} ({detail})")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise MadError(f"{where}: {what} weight {k} has shape {list(state[k].shape)}, the architecture in {config} wants {list(shape)}")


def _verify_checksums(p: Path) -> None:
    """Check every record's CRC32: torch's reader does not, so flipped bytes would load as wrong weights."""
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise MadError(f"{p}: corrupted or truncated snapshot ({exc})") from None
    if bad is not None:
        raise MadError(f"{p}: corrupted snapshot (checksum mismatch in record {bad})")


def check_snapshot(snap: Any, p: Path | str) -> dict[str, Any]:
    """Check the header of a loaded snapshot dict: a known format at a version we understand."""
    if not isinstance(snap, dict) or "format" not in snap:
        raise MadError(f"{p}: not a mad snapshot (no 'format' field; expected a file written by `mad train`)")
    fmt = snap.get("format")
    if not isinstance(fmt, str) or fmt not in FORMAT_VERSIONS:
        raise MadError(f"{p}: unknown snapshot format {str(fmt)[:40]!r} (expected one of {', '.join(sorted(FORMAT_VERSIONS))})")
    version = snap.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MadError(f"{p}: snapshot has no valid 'version'")
    if version > FORMAT_VERSIONS[fmt]:
        raise MadError(f"{p}: {fmt} version {version} is newer than this mad understands (≤ {FORMAT_VERSIONS[fmt]}); upgrade mad")
    if version < 1:
        raise MadError(f"{p}: {fmt} version {version} is not valid")
    return snap


def _move(value: Any, map_location: Any) -> Any:
    """map_location for the NVIDIA importer, which always builds CPU tensors."""
    if isinstance(value, torch.Tensor):
        return value.to(map_location)
    if isinstance(value, dict):
        return {k: _move(v, map_location) for k, v in value.items()}
    if isinstance(value, list):
        return [_move(v, map_location) for v in value]
    return value

