"""Snapshots: round trip, atomic writes, refusal of foreign/corrupt files, stable ids."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.errors import MadError
from mad_cli.models.snapshot import load_snapshot, save_snapshot, snapshot_id


def _example_snapshot() -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.0, 0.99))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {
        "format": "mad.stylegan2",
        "version": 1,
        "config": {"G_kwargs": {"z_dim": 8, "mapping_kwargs": {"num_layers": 2}}, "seed": 0, "nan": float("nan")},
        "G": net.state_dict(),
        "optim": {"G": opt.state_dict()},
        "progress": {"kimg": 1.5, "rng": torch.get_rng_state(), "history": [1, 2.0, None, "x"]},
    }


def test_round_trip_preserves_tensors_and_values(tmp_path: Path) -> None:
    snap = _example_snapshot()
    path = save_snapshot(tmp_path / "run" / "snap.pt", snap)
    loaded = load_snapshot(path)
    assert loaded["format"] == "mad.stylegan2" and loaded["version"] == 1
    assert loaded["config"]["G_kwargs"] == {"z_dim": 8, "mapping_kwargs": {"num_layers": 2}}
    for k, v in snap["G"].items():
        assert torch.equal(loaded["G"][k], v)
    assert loaded["optim"]["G"]["param_groups"][0]["betas"] == (0.0, 0.99)
    assert torch.equal(loaded["progress"]["rng"], snap["progress"]["rng"])
    assert loaded["progress"]["history"] == [1, 2.0, None, "x"]
    # The file must also load with plain torch.load(weights_only=True): nothing of ours needed.
    plain = torch.load(path, weights_only=True)
    assert type(plain["G"]) is dict
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_save_refuses_objects_and_arrays(tmp_path: Path) -> None:
    base = {"format": "mad.gaussian", "version": 1, "config": {}}
    with pytest.raises(TypeError, match="numpy"):
        save_snapshot(tmp_path / "a.pt", {**base, "model": {"mean": np.zeros(3)}})
    with pytest.raises(TypeError, match="Linear"):
        save_snapshot(tmp_path / "b.pt", {**base, "model": torch.nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="format"):
        save_snapshot(tmp_path / "c.pt", {"format": "other", "version": 1})
    assert not list(tmp_path.iterdir())


def test_failed_save_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.pt"
    save_snapshot(path, {"format": "mad.gaussian", "version": 1, "model": {"x": torch.ones(2)}})
    before = path.read_bytes()

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(path, {"format": "mad.gaussian", "version": 1, "model": {"x": torch.zeros(2)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_snapshot_id_is_sha256_prefix(tmp_path: Path) -> None:
    path = save_snapshot(tmp_path / "s.pt", {"format": "mad.gaussian", "version": 1, "model": {"x": torch.arange(5.0)}})
    assert snapshot_id(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert len(snapshot_id(path)) == 16
    with pytest.raises(MadError, match="not found"):
        snapshot_id(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "not found"),
        ("folder", "is a folder"),
        ("truncated", "truncated"),
        ("text", "not a mad snapshot"),
        ("foreign_dict", "not a mad snapshot"),
        ("unknown_format", "unknown snapshot format"),
        ("newer", "newer than this mad"),
        ("object", "refusing to load"),
        ("corrupt_zip", "corrupted"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path: Path, kind: str, message: str) -> None:
    path = tmp_path / "bad.pt"
    good = tmp_path / "good.pt"
    save_snapshot(good, {"format": "mad.gaussian", "version": 1, "model": {"x": torch.randn(1000)}})
    if kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("hello\n")
    elif kind == "foreign_dict":
        torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    elif kind == "unknown_format":
        torch.save({"format": "someone.else", "version": 1}, path)
    elif kind == "newer":
        torch.save({"format": "mad.gaussian", "version": 99}, path)
    elif kind == "object":
        torch.save({"format": "mad.gaussian", "version": 1, "model": torch.nn.Linear(2, 2)}, path)
    elif kind == "corrupt_zip":
        data = bytearray(good.read_bytes())
        # Flip bytes inside the stored tensor data: the zip's CRC check must catch it.
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(64)
        path.write_bytes(bytes(data))
    with pytest.raises(MadError, match=message) as info:
        load_snapshot(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_plain_pickle_goes_to_nvidia_importer(tmp_path: Path) -> None:
    """A plain pickle (not a torch zip) is never unpickled by pickle.load; the importer refuses it."""
    path = tmp_path / "thing.pt"
    path.write_bytes(pickle.dumps({"format": "mad.gaussian", "version": 1, "x": Path("/")}, protocol=4))
    with pytest.raises(MadError, match="refusing to load"):
        load_snapshot(path)


class _RunsCode:
    """Unpickling this would touch a marker file: what a hostile snapshot would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_torch_file_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "mad.stylegan2", "version": 1, "G": _RunsCode(marker)}, path)
    with pytest.raises(MadError, match="refusing to load") as info:
        load_snapshot(path)
    assert not marker.exists()
    message = str(info.value)
    assert "system" in message and "\n" not in message
    # torch's own advice (retry with weights_only=False) would run the code: never echo it.
    assert "weights_only" not in message


# ---------------------------------------------------------------------------------------
# Structure and architecture, checked before anything is built


def test_a_snapshot_that_contains_itself_or_nests_too_deep_is_one_line(tmp_path: Path) -> None:
    from mad_cli.models.snapshot import MAX_DEPTH, check_structure

    loop: list = []
    loop.append(loop)
    torch.save({"format": "mad.gaussian", "version": 1, "config": {"notes": loop}}, tmp_path / "loop.pt")
    with pytest.raises(MadError, match=r"loop.pt: refusing to load: its data contains itself"):
        load_snapshot(tmp_path / "loop.pt")
    deep: dict = {}
    cur = deep
    for _ in range(MAX_DEPTH + 1):
        cur["x"] = {}
        cur = cur["x"]
    with pytest.raises(MadError, match=f"nested more than {MAX_DEPTH} levels deep"):
        check_structure(deep, "deep.pt")
    shared = {"a": 1}
    check_structure({"x": shared, "y": [shared, (shared,)]}, "ok.pt")  # shared, not recursive: fine


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _networks() -> list:
    from mad_cli.models.ddpm.configs import resolve_config
    from mad_cli.models.ddpm.unet import UNet
    from mad_cli.models.stylegan2.networks import Discriminator, Generator

    g = dict(z_dim=32, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs={"num_layers": 3}, synthesis_kwargs={"channel_base": 512, "channel_max": 64, "num_fp16_res": 2})
    nets = [
        lambda: Generator(c_dim=0, **g),
        lambda: Generator(c_dim=5, **g),
        lambda: Discriminator(c_dim=0, img_resolution=32, img_channels=1, channel_base=512, channel_max=64),
        lambda: Discriminator(c_dim=4, img_resolution=16, img_channels=3, channel_base=256, channel_max=32, architecture="resnet"),
    ]
    for preset, classes in (("tiny", 0), ("tiny", 10), ("small", 0)):
        config = resolve_config(preset, resolution=32, channels=3, num_classes=classes)
        nets.append(lambda c=config: UNet(**c["unet"]))
    return nets


@pytest.mark.parametrize("index", range(7))
def test_expected_shapes_match_the_real_network_without_allocating_it(index: int) -> None:
    from mad_cli.models.snapshot import expected_shapes

    build = _networks()[index]
    torch.manual_seed(0)
    real = _shapes(build())
    assert expected_shapes(build, budget=10_000) == real
    assert torch.randn(2).device.type == "cpu"  # the meta mode ends with the check


def test_check_architecture_refuses_before_building(tmp_path: Path) -> None:
    import time

    from mad_cli.models.snapshot import check_architecture
    from mad_cli.models.stylegan2.networks import Generator

    build = _networks()[0]
    state = build().state_dict()
    check_architecture(build, state, where="ok.pt", what="G_ema", config="config.G_kwargs")
    huge = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={}, synthesis_kwargs={"channel_base": 2**24, "channel_max": 2**14})
    t0 = time.perf_counter()
    with pytest.raises(MadError, match=r"^x.pt: G_ema weights do not fit the architecture in config.G_kwargs \(missing"):
        check_architecture(lambda: Generator(**huge), state, where="x.pt", what="G_ema", config="config.G_kwargs")
    endless = dict(huge, synthesis_kwargs={}, mapping_kwargs={"num_layers": 10**7})
    with pytest.raises(MadError, match=r"describes a far larger G_ema than the \d+ weight tensors"):
        check_architecture(lambda: Generator(**endless), state, where="x.pt", what="G_ema", config="config.G_kwargs")
    assert time.perf_counter() - t0 < 5  # a real build of the first would allocate ~150 GB
    bad = {**state, next(iter(state)): torch.zeros(1)}
    with pytest.raises(MadError, match=r"has shape \[1\], the architecture in config.G_kwargs wants"):
        check_architecture(build, bad, where="x.pt", what="G_ema", config="config.G_kwargs")
    with pytest.raises(MadError, match=r"cannot build the G_ema from config.G_kwargs \(.*unexpected keyword"):
        check_architecture(lambda: Generator(colour="blue", **huge), state, where="x.pt", what="G_ema", config="config.G_kwargs")
    with pytest.raises(MadError, match="holds no G_ema weights"):
        check_architecture(build, {"a": 1}, where="x.pt", what="G_ema", config="config.G_kwargs")
