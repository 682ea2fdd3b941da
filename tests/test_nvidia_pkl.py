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

    def __init__(self, env: types.SimpleNamespace, module: torch.nn.Module, class_name: str, init_kwargs: dict | None = None,
                 drop: frozenset[str] = frozenset()):
        self.env, self.module, self.class_name, self.init_kwargs = env, module, class_name, init_kwargs or {}
        self.drop = drop  # attributes left out (to check what the importer does without them)

    def __reduce__(self) -> tuple:
        state: dict[str, Any] = {}
        for key, value in self.module.__dict__.items():
            if key == "_modules":
                value = collections.OrderedDict((k, _wrap(self.env, v, self.drop)) for k, v in value.items())
            elif key in ("_parameters", "_buffers"):
                value = collections.OrderedDict(value)
            elif key in self.drop:
                continue
            elif not (key.startswith("_") or isinstance(value, _PLAIN) or (isinstance(value, list) and all(isinstance(v, _PLAIN) for v in value))):
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


def _wrap(env: types.SimpleNamespace, module: torch.nn.Module | None, drop: frozenset[str] = frozenset()) -> Any:
    if module is None or type(module).__module__.startswith("torch.nn"):
        return module  # plain torch modules pickle the ordinary way
    return _Persistent(env, module, type(module).__name__, drop=drop)


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
    from mad_cli.models.stylegan2.sampler import load_generator

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


# ---------------------------------------------------------------------------------------
# Pickles written by stylegan3's code base (train.py --cfg stylegan2), conditional pickles

#: What stylegan3's train.py --cfg=stylegan2 hands to training.networks_stylegan2.Generator:
#: c.G_kwargs (class_name is consumed by dnnlib's construct_class_by_name, so it never
#: reaches the recorded _init_kwargs) followed by the training loop's common_kwargs. The
#: synthesis settings are flat; num_fp16_res, conv_clamp and w_avg_beta are left to the
#: defaults of stylegan3's networks_stylegan2.py (4, 256, 0.998) and so are not stored.
SG3_G = dict(
    z_dim=32, w_dim=32, mapping_kwargs=dict(num_layers=2), channel_base=512, channel_max=32,
    fused_modconv_default="inference_only", c_dim=0, img_resolution=16, img_channels=3,
)
#: c.D_kwargs of the same train.py (Discriminator defaults num_fp16_res=4, conv_clamp=256 not stored).
SG3_D = dict(
    block_kwargs=dict(freeze_layers=0), mapping_kwargs=dict(), epilogue_kwargs=dict(mbstd_group_size=4),
    channel_base=512, channel_max=32, c_dim=0, img_resolution=16, img_channels=3,
)
#: c.augment_kwargs of stylegan3's train.py (--aug ada, the bgc pipe), class_name consumed.
SG3_AUGMENT = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
#: The attributes through which modules record the settings they were built with.
RECORDED = frozenset({"conv_clamp", "use_fp16", "w_avg_beta", "num_fp16_res"})


def _stylegan3_networks(seed: int = 7):
    """Our networks built the way stylegan3's defaults build them, with weights where conv_clamp bites."""
    from mad_cli.models.stylegan2.augment import make_augment_pipe
    from mad_cli.models.stylegan2.networks import Discriminator, Generator as OurGenerator

    torch.manual_seed(seed)
    G = OurGenerator(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2, w_avg_beta=0.998),
        synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=4, conv_clamp=256),
    ).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        G.synthesis.b8.conv0.bias[:8] = 400.0  # activations past ±256: the clamp changes the image
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=512, channel_max=32, num_fp16_res=4, conv_clamp=256).eval()
    pipe = make_augment_pipe("bgc", 0.0)
    pipe.p.fill_(0.171875)
    return G, D, pipe


@pytest.mark.parametrize("recorded", [True, False], ids=["module-attributes", "defaults-only"])
def test_stylegan3_written_stylegan2_pickle_matches_an_independent_reference(nvidia_modules, tmp_path: Path, run_cli, recorded: bool) -> None:
    """A pickle laid out exactly as stylegan3's train.py writes it samples what stylegan3 would.

    The reference is our Generator built directly with stylegan3's defaults; the importer must
    get there from the flat kwargs alone (`defaults-only`, module attributes stripped) and from
    the settings the modules recorded. NVIDIA's gen_images.py writes
    (img·127.5 + 128).clamp(0, 255) as uint8: we compare those, within one grey level.
    """
    from mad_cli.imagedir import read_image
    from mad_cli.models.stylegan2.sampler import load_generator, stylegan2_latents

    G, D, pipe = _stylegan3_networks()
    drop = frozenset() if recorded else RECORDED
    data = {
        "G": _Persistent(nvidia_modules, G, "Generator", SG3_G, drop),
        "D": _Persistent(nvidia_modules, D, "Discriminator", SG3_D, drop),
        "G_ema": _Persistent(nvidia_modules, G, "Generator", SG3_G, drop),
        "augment_pipe": _Persistent(nvidia_modules, pipe, "AugmentPipe", SG3_AUGMENT, drop),
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "/data/digits.zip", "use_labels": False,
                                "max_size": 1437, "xflip": False, "resolution": 16, "random_seed": 0},
    }
    path = _dump(tmp_path / "network-snapshot-000040.pkl", data, 4)  # pickle.dump's default protocol
    snap = load_snapshot(path)
    cfg = snap["config"]
    assert cfg["source_code_base"] == "stylegan3"
    assert cfg["G_kwargs"] == {
        "z_dim": 32, "w_dim": 32, "c_dim": 0, "img_resolution": 16, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2, "w_avg_beta": 0.998},
        "synthesis_kwargs": {"channel_base": 512, "channel_max": 32, "num_fp16_res": 4, "conv_clamp": 256},
    }
    assert {k: cfg["D_kwargs"][k] for k in ("num_fp16_res", "conv_clamp", "channel_base")} == {"num_fp16_res": 4, "conv_clamp": 256, "channel_base": 512}
    assert cfg["augment_kwargs"] == SG3_AUGMENT and snap["augment_pipe"]["p"].item() == 0.171875

    imported = load_generator(snap, "cpu", path)
    seeds = list(range(6))
    z = stylegan2_latents(seeds, 32)

    def uint8(net: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return (net(z, None, truncation_psi=0.7, noise_mode="const") * 127.5 + 128).clamp(0, 255).to(torch.uint8).to(torch.int16)

    reference = uint8(G)
    assert (uint8(imported) - reference).abs().max() <= 1
    # What the loader built before stylegan3's defaults were applied is visibly different.
    from mad_cli.models.stylegan2.networks import Generator as OurGenerator

    naive = OurGenerator(z_dim=32, c_dim=0, w_dim=32, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                         synthesis_kwargs=dict(channel_base=512, channel_max=32)).eval()
    naive.load_state_dict(snap["G_ema"])
    assert (uint8(naive) - reference).abs().max() > 8

    result = run_cli("sample", path, tmp_path / "out", "--n", "6", "--psi", "0.7", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    for i, seed in enumerate(seeds):
        img = torch.from_numpy(np.asarray(read_image(tmp_path / "out" / f"seed{seed:06d}.png"))).to(torch.int16)
        assert (img.permute(2, 0, 1) - reference[i]).abs().max() <= 1
    assert not nvidia_modules.marker.exists()


def test_imported_augment_pipe_state_loads_into_ours(nvidia_modules, tmp_path: Path) -> None:
    from mad_cli.models.stylegan2.augment import AugmentPipe

    G, D, pipe = _stylegan3_networks()
    data = {"G_ema": _Persistent(nvidia_modules, G, "Generator", SG3_G), "augment_pipe": _Persistent(nvidia_modules, pipe, "AugmentPipe", SG3_AUGMENT)}
    snap = load_nvidia_pkl(_dump(tmp_path / "net.pkl", data, 4))
    ours = AugmentPipe(**snap["config"]["augment_kwargs"])
    ours.load_state_dict(snap["augment_pipe"])  # strict: NVIDIA's buffer names are ours
    assert ours.p.item() == 0.171875 and ours.xflip == 1 and ours.imgfilter == 0


def test_stylegan2_ada_pickle_keeps_its_own_defaults(nvidia_modules, tmp_path: Path) -> None:
    """Nested synthesis_kwargs = stylegan2-ada-pytorch: no stylegan3 defaults, recorded settings still win."""
    from mad_cli.models.stylegan2.networks import Generator as OurGenerator

    torch.manual_seed(3)
    G = OurGenerator(16, 0, 16, 16, 1, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=16, conv_clamp=256)).eval()
    kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=1, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=256, channel_max=16))  # conv_clamp missing from the kwargs
    snap = load_nvidia_pkl(_dump(tmp_path / "ada.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs)}, 4))
    assert snap["config"]["source_code_base"] == "stylegan2-ada-pytorch"
    assert snap["config"]["G_kwargs"]["mapping_kwargs"] == {"num_layers": 2}
    assert snap["config"]["G_kwargs"]["synthesis_kwargs"] == {"channel_base": 256, "channel_max": 16, "conv_clamp": 256}
    snap = load_nvidia_pkl(_dump(tmp_path / "ada2.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs, RECORDED)}, 4))
    assert snap["config"]["G_kwargs"]["synthesis_kwargs"] == {"channel_base": 256, "channel_max": 16}


def test_fp32_stylegan3_pickle_keeps_its_explicit_settings(nvidia_modules, tmp_path: Path) -> None:
    """train.py --fp32 passes num_fp16_res=0 and conv_clamp=None explicitly: they win over the defaults."""
    from mad_cli.models.stylegan2.networks import Generator as OurGenerator

    torch.manual_seed(4)
    G = OurGenerator(32, 0, 32, 16, 3, mapping_kwargs=dict(num_layers=2, w_avg_beta=0.998), synthesis_kwargs=dict(channel_base=512, channel_max=32)).eval()
    kwargs = {**SG3_G, "num_fp16_res": 0, "conv_clamp": None}
    snap = load_nvidia_pkl(_dump(tmp_path / "fp32.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs, RECORDED)}, 4))
    assert snap["config"]["G_kwargs"]["synthesis_kwargs"] == {"channel_base": 512, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": None}


class _AliasFreeSynthesis(torch.nn.Module):
    """The module layout of stylegan3's networks_stylegan3.SynthesisNetwork (input, L0_36_512, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.input = torch.nn.Module()
        self.input.register_buffer("transform", torch.eye(3))
        self.L0_36_512 = torch.nn.Module()
        self.L0_36_512.weight = torch.nn.Parameter(torch.zeros(2, 2, 3, 3))


@pytest.mark.parametrize("cfg", ["stylegan3-t", "stylegan3-r"])
def test_stylegan3_config_pickles_are_refused_in_one_line(nvidia_modules, tmp_path: Path, cfg: str) -> None:
    G = torch.nn.Module()
    G.mapping = torch.nn.Module()
    G.synthesis = _AliasFreeSynthesis()
    # What stylegan3's train.py passes to training.networks_stylegan3.Generator for -t / -r.
    kwargs = dict(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=2), channel_base=32768, channel_max=512,
                  magnitude_ema_beta=0.5 ** (32 / 20_000), c_dim=0, img_resolution=256, img_channels=3)
    if cfg == "stylegan3-r":
        kwargs.update(conv_kernel=1, channel_base=65536, channel_max=1024, use_radial_filters=True)
    path = _dump(tmp_path / f"{cfg}.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs)}, 4)
    with pytest.raises(MadError) as info:
        load_snapshot(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:")
    assert "StyleGAN3" in message and "only StyleGAN2 configs are supported" in message
    assert not nvidia_modules.marker.exists()


def test_conditional_pickle_loads_and_generates_with_a_one_hot_label(nvidia_modules, tmp_path: Path) -> None:
    from mad_cli.models.stylegan2.networks import Discriminator, Generator as OurGenerator
    from mad_cli.models.stylegan2.sampler import load_generator

    torch.manual_seed(5)
    g_kwargs = dict(z_dim=16, c_dim=4, w_dim=16, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=2),
                    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None))
    G = OurGenerator(**g_kwargs).eval().requires_grad_(False)
    D = Discriminator(c_dim=4, img_resolution=8, img_channels=3, channel_base=128, channel_max=16).eval().requires_grad_(False)
    data = {
        "G": _Persistent(nvidia_modules, G, "Generator", g_kwargs),
        "D": _Persistent(nvidia_modules, D, "Discriminator", {"c_dim": 4, "img_resolution": 8, "img_channels": 3, "channel_base": 128, "channel_max": 16}),
        "G_ema": _Persistent(nvidia_modules, G, "Generator", g_kwargs),
        "augment_pipe": None,
        "training_set_kwargs": {"path": "digits.zip", "use_labels": True, "resolution": 8},
    }
    snap = load_snapshot(_dump(tmp_path / "cond.pkl", data, 4))
    assert snap["config"]["G_kwargs"]["c_dim"] == 4 and snap["config"]["D_kwargs"]["c_dim"] == 4
    assert snap["G_ema"]["mapping.embed.weight"].shape == (16, 4) and snap["D"]["mapping.embed.weight"].shape == (16, 4)
    imported = load_generator(snap, "cpu", tmp_path / "cond.pkl")
    z = torch.randn(4, 16)
    c = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 4).float()
    with torch.no_grad():
        out = imported(z, c, truncation_psi=0.8)
        assert torch.equal(out, G(z, c, truncation_psi=0.8))
        other = imported(z, c.roll(1, dims=1), truncation_psi=0.8)
    assert out.shape == (4, 3, 8, 8) and (out - other).abs().max() > 1e-3  # the label matters
    D2 = Discriminator(**snap["config"]["D_kwargs"]).eval()
    D2.load_state_dict(snap["D"])
    with torch.no_grad():
        assert torch.equal(D2(out, c), D(out, c))


def test_training_from_an_nvidia_pickle_starts_ada_at_its_augment_pipes_p(nvidia_modules, tmp_path: Path, run_cli, make_images, one_thread) -> None:
    """`mad train --resume NVIDIA.pkl`: G, D and the augment pipe's p come from the pickle."""
    G, D, pipe = _stylegan3_networks()
    data = {
        "G": _Persistent(nvidia_modules, G, "Generator", SG3_G),
        "D": _Persistent(nvidia_modules, D, "Discriminator", SG3_D),
        "G_ema": _Persistent(nvidia_modules, G, "Generator", SG3_G),
        "augment_pipe": _Persistent(nvidia_modules, pipe, "AugmentPipe", SG3_AUGMENT),
    }
    pkl = _dump(tmp_path / "net.pkl", data, 4)
    make_images(tmp_path / "data", 4, size=16, channels=3)
    base = ["train", tmp_path / "data", "--cfg", "tiny", "--batch", "4", "--kimg", "0.004", "--device", "cpu", "--resume", pkl]
    res = run_cli(*base, "--out", tmp_path / "ada", "--aug", "ada")
    assert res.exit_code == 0, res.stderr
    snap = load_snapshot(tmp_path / "ada" / "latest.pt")
    assert snap["config"]["augment"]["p"] == 0.171875 and snap["config"]["augment"]["p_from"] == str(pkl)
    assert snap["ada"]["p"] == 0.171875 and snap["augment_pipe"]["p"].item() == 0.171875  # one minibatch: not adjusted yet
    assert snap["config"]["init_from"] == str(pkl) and snap["config"]["D_kwargs"]["channel_base"] == 512  # D from the pickle too
    # Without ADA the pickle's p is not used: noaug has no pipe.
    res = run_cli(*base, "--out", tmp_path / "plain")
    assert res.exit_code == 0, res.stderr
    assert "augment_pipe" not in load_snapshot(tmp_path / "plain" / "latest.pt")


@pytest.mark.parametrize("cfg", ["stylegan3-t", "stylegan3-r"])
def test_stylegan3_config_pickles_are_one_line_on_the_command_line(nvidia_modules, tmp_path: Path, run_cli, make_images, cfg: str) -> None:
    G = torch.nn.Module()
    G.mapping = torch.nn.Module()
    G.synthesis = _AliasFreeSynthesis()
    kwargs = dict(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=2), channel_base=32768, channel_max=512,
                  magnitude_ema_beta=0.5 ** (32 / 20_000), c_dim=0, img_resolution=16, img_channels=3)
    if cfg == "stylegan3-r":
        kwargs.update(conv_kernel=1, use_radial_filters=True)
    pkl = _dump(tmp_path / f"{cfg}.pkl", {"G_ema": _Persistent(nvidia_modules, G, "Generator", kwargs)}, 4)
    make_images(tmp_path / "data", 4, size=16, channels=3)
    for args, out in ((("sample", pkl, tmp_path / "s", "--n", "2", "--device", "cpu"), tmp_path / "s"),
                      (("train", tmp_path / "data", "--out", tmp_path / "r", "--resume", pkl, "--device", "cpu", "--cfg", "tiny"), tmp_path / "r")):
        res = run_cli(*args)
        assert res.exit_code == 1, res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("mad: error: "), res.stderr  # no traceback
        assert "only StyleGAN2 configs are supported" in lines[0] and str(pkl) in lines[0]
        assert not list(out.glob("*.png")) and not (out / "latest.pt").exists()
    assert not nvidia_modules.marker.exists()
