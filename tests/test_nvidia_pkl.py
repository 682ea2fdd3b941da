"""NVIDIA network pickles: the persistent-object layout imports; code inside a pickle never runs.

The pickles are built here the way stylegan2-ada-pytorch writes them: each network
reduces to `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
meta = {type, version, module_src, class_name, state=<module __dict__>}, inside a plain
`pickle.dump` of {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}; tensors are
pickled the way plain pickle pickles them. The fake `module_src` would create a marker
file if anything exec'd it.
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mad_cli.errors import MadError
from mad_cli.models.snapshot import load_snapshot
from mad_cli.models.stylegan2.nvidia_pkl import load_nvidia_pkl

PROTOCOLS = [3, 4, 5]


@pytest.fixture
def nvidia_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.SimpleNamespace:
    """Fake `torch_utils.persistence` and `dnnlib.util` so pickle can name their globals."""
    marker = tmp_path / "MODULE_SRC_WAS_EXECUTED"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # what NVIDIA's loader would call
        raise AssertionError("the importer must never call the pickle's own reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict  # type: ignore[attr-defined]
    for name, mod in {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
                      "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict, marker=marker, module_src=src)


_PLAIN = (int, float, str, bool, type(None), np.floating, np.integer)


class _Persistent:
    """Pickles a torch module exactly like NVIDIA's persistent_class decorator does."""

    def __init__(self, env: types.SimpleNamespace, module: torch.nn.Module, class_name: str, init_kwargs: dict | None = None):
        self.env, self.module, self.class_name, self.init_kwargs = env, module, class_name, init_kwargs or {}

    def __reduce__(self) -> tuple:
        state: dict[str, Any] = {}
        for key, value in self.module.__dict__.items():
            if key == "_modules":
                value = collections.OrderedDict((k, _wrap(self.env, v)) for k, v in value.items())
            elif key in ("_parameters", "_buffers"):
                value = collections.OrderedDict(value)
            elif not (key.startswith("_") or isinstance(value, _PLAIN)):
                continue  # NVIDIA modules hold only numbers/strings besides the torch internals
            state[key] = value
        state["_init_args"] = ()
        state["_init_kwargs"] = _easy(self.env, self.init_kwargs)
        meta = dict(type="class", version=6, module_src=self.env.module_src, class_name=self.class_name, state=state)
        return (self.env.reconstruct, (meta,))


def _easy(env: types.SimpleNamespace, value: Any) -> Any:
    if isinstance(value, dict):
        return env.EasyDict({k: _easy(env, v) for k, v in value.items()})
    return value


def _wrap(env: types.SimpleNamespace, module: torch.nn.Module | None) -> Any:
    if module is None or type(module).__module__.startswith("torch.nn"):
        return module  # plain torch modules pickle the ordinary way
    return _Persistent(env, module, type(module).__name__)


def _dump(path: Path, data: dict, protocol: int) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=protocol)
    return path


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.weight_gain = np.float64(1 / np.sqrt(18))  # NVIDIA layers keep numpy scalars like this
        self.register_buffer("resample_filter", torch.ones(4, 4) / 16)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))


class _Synthesis(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b4 = _Block()
        self.b8 = _Block()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)])


class Generator(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mapping = torch.nn.Sequential(torch.nn.Linear(4, 4))
        self.synthesis = _Synthesis()
        self.register_buffer("w_avg", torch.randn(4))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_layout_maps_to_state_dict_and_kwargs(nvidia_modules, tmp_path: Path, protocol: int) -> None:
    torch.manual_seed(0)
    G = Generator().eval().requires_grad_(False)
    kwargs = {"z_dim": 4, "c_dim": 0, "w_dim": 4, "img_resolution": 8, "img_channels": 3,
              "mapping_kwargs": {"num_layers": 1}, "synthesis_kwargs": {"channel_base": 64, "fused_modconv_default": "inference_only"}}
    data = {"training_set_kwargs": {"path": "ffhq.zip", "resolution": 8}, "G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs), "augment_pipe": None}
    path = _dump(tmp_path / "network-snapshot-000000.pkl", data, protocol)
    snap = load_nvidia_pkl(path)
    expected = G.state_dict()
    assert set(snap["G_ema"]) == set(expected)
    assert "synthesis.b4.scratch" not in snap["G_ema"]
    for k, v in expected.items():
        assert torch.equal(snap["G_ema"][k], v), k
    assert type(snap["config"]["G_kwargs"]["mapping_kwargs"]) is dict
    assert snap["config"]["G_kwargs"]["synthesis_kwargs"] == {"channel_base": 64}  # kernel-choice kwarg dropped
    assert snap["config"]["training_set_kwargs"]["path"] == "ffhq.zip"
    assert snap["format"] == "mad.stylegan2"
    assert not nvidia_modules.marker.exists()
    # The snapshot loader routes .pkl files to the importer.
    assert torch.equal(load_snapshot(path)["G_ema"]["w_avg"], G.w_avg)


def test_stylegan3_generator_is_refused(nvidia_modules, tmp_path: Path) -> None:
    G = Generator()
    del G.synthesis.b4
    path = _dump(tmp_path / "sg3.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", {})}, 4)
    with pytest.raises(MadError, match="StyleGAN3"):
        load_nvidia_pkl(path)


class _Evil:
    def __init__(self, func: Any, *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


@pytest.mark.parametrize(
    "make, what",
    [
        (lambda m: {"G_ema": _Evil(os.system, f"touch {m}")}, "system"),
        (lambda m: {"G_ema": _Evil(eval, f"open({str(m)!r}, 'w')")}, "builtins.eval"),
        (lambda m: {"G_ema": _Evil(getattr, _Evil(__import__, "os"), "system")}, "builtins.getattr"),
        (lambda m: {"x": [1, {"deep": _Evil(__import__("subprocess").call, ["touch", str(m)])}]}, "subprocess"),
    ],
)
def test_malicious_pickle_runs_nothing(tmp_path: Path, make, what: str) -> None:
    marker = tmp_path / "PWNED"
    path = _dump(tmp_path / "evil.pkl", make(marker), 4)
    with pytest.raises(MadError, match=rf"evil\.pkl: the pickle tries to import .*{what}.*refusing to load"):
        load_snapshot(path)
    assert not marker.exists()


def test_state_applied_to_an_allowed_function_is_refused(tmp_path: Path) -> None:
    """BUILD on a global would set attributes on our own functions; the wrapper refuses it."""
    from mad_cli.models.stylegan2 import nvidia_pkl

    path = tmp_path / "build.pkl"
    path.write_bytes(b"\x80\x02ctorch._utils\n_rebuild_parameter\n}V__doc__\nVpwned\nsb.")
    with pytest.raises(MadError, match="build.pkl: the pickle holds state for a function"):
        load_nvidia_pkl(path)
    assert nvidia_pkl._rebuild_parameter.__doc__ != "pwned"


def test_malicious_payload_inside_a_persistent_object(nvidia_modules, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    G = Generator()
    G.payload_holder = torch.nn.Module()
    evil = _Persistent(nvidia_modules, G, "Generator", {"z_dim": _Evil(os.system, f"touch {marker}")})
    path = _dump(tmp_path / "evil.pkl", {"G_ema": evil}, 4)
    with pytest.raises(MadError, match="refusing to load"):
        load_nvidia_pkl(path)
    assert not marker.exists() and not nvidia_modules.marker.exists()


def test_broken_pickles(nvidia_modules, tmp_path: Path) -> None:
    good = _dump(tmp_path / "good.pkl", {"G_ema": _Persistent(nvidia_modules, Generator(), "Generator", {})}, 4)
    (tmp_path / "trunc.pkl").write_bytes(good.read_bytes()[:200])
    with pytest.raises(MadError, match="trunc.pkl: corrupted or truncated"):
        load_nvidia_pkl(tmp_path / "trunc.pkl")
    _dump(tmp_path / "nog.pkl", {"G": 1}, 4)
    with pytest.raises(MadError, match="expected a dict with 'G_ema'"):
        load_nvidia_pkl(tmp_path / "nog.pkl")
    # A TensorFlow-era pickle names dnnlib.tflib classes.
    tf = types.ModuleType("dnnlib.tflib.network")

    class Network:
        pass

    Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
    tf.Network = Network  # type: ignore[attr-defined]
    sys.modules["dnnlib.tflib.network"] = tf
    try:
        _dump(tmp_path / "tf.pkl", {"G_ema": Network()}, 4)
    finally:
        del sys.modules["dnnlib.tflib.network"]
    with pytest.raises(MadError, match="TensorFlow"):
        load_nvidia_pkl(tmp_path / "tf.pkl")


# ---------------------------------------------------------------------------------------
# With our real Generator: an NVIDIA-layout pickle of it samples the same images


TINY_G = dict(
    z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None),
)


def test_our_generator_round_trips_through_nvidia_layout(nvidia_modules, tmp_path: Path, run_cli) -> None:
    from mad_cli.imagedir import list_images, read_tags
    from mad_cli.models.stylegan2.networks import Discriminator, Generator as OurGenerator
    from mad_cli.sampling import load_generator

    torch.manual_seed(1)
    G = OurGenerator(**TINY_G).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
    D = Discriminator(c_dim=0, img_resolution=8, img_channels=3, channel_base=128, channel_max=16).eval().requires_grad_(False)
    data = {
        "training_set_kwargs": {"path": "digits", "resolution": 8},
        "G": _Persistent(nvidia_modules, G, "Generator", TINY_G),
        "D": _Persistent(nvidia_modules, D, "Discriminator", {"c_dim": 0, "img_resolution": 8, "img_channels": 3}),
        "G_ema": _Persistent(nvidia_modules, G, "Generator", TINY_G),
        "augment_pipe": None,
    }
    path = _dump(tmp_path / "tiny.pkl", data, 4)
    snap = load_snapshot(path)
    assert snap["config"]["G_kwargs"] == TINY_G
    assert set(snap["D"]) == set(D.state_dict())
    imported = load_generator(snap, "cpu", path)
    z = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(imported(z, None, truncation_psi=0.7), G(z, None, truncation_psi=0.7))
    result = run_cli("sample", path, tmp_path / "out", "--n", "4", "--psi", "0.7", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    assert len(list_images(tmp_path / "out")) == 4
    assert read_tags(tmp_path / "out" / "seed000000.png")["origin"] == "synthetic"
    assert not nvidia_modules.marker.exists()
