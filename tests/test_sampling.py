"""`mad sample`: determinism, resume, provenance tags, grid, ψ, and bad input."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.devices import COMPUTE_BATCH
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid, list_images, read_image, read_tags, to_uint8, write_png
from mad_cli.models.gaussian.sampler import GaussianSampler
from mad_cli.models.snapshot import load_snapshot, save_snapshot, snapshot_id
from mad_cli.models.stylegan2.sampler import stylegan2_latents
from mad_cli.sampling import parse_seeds, sample_snapshot
from mad_cli.train import train


@pytest.fixture(scope="module")
def gauss_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Gaussian fitted to 40 correlated 8×8 RGB images (the fit takes well under a second)."""
    root = tmp_path_factory.mktemp("gauss")
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, size=(8, 8, 3))
    for i in range(40):
        img = np.clip(base + rng.normal(0, 25) + rng.normal(0, 10, size=(8, 8, 3)), 0, 255).astype(np.uint8)
        write_png(root / "data" / f"img{i:03d}.png", img)
    train(root / "data", root / "run", model="gaussian")
    return root / "run"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in list_images(folder)}


def test_parse_seeds() -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,7-9") == [1, 5, 7, 8, 9]
    assert parse_seeds(" 4, 2 ,4,2-3") == [4, 2, 3]
    for bad in ("", "a", "5-2", "-1", "1,,2", str(2**32)):
        with pytest.raises(MadError, match="--seeds"):
            parse_seeds(bad)


def test_identical_across_batch_sizes_and_runs(gauss_run: Path, tmp_path: Path) -> None:
    outs = []
    for i, batch in enumerate([1, 7, 32, 7]):
        out = tmp_path / f"s{i}"
        sample_snapshot(gauss_run / "latest.pt", out, n=20, psi=0.9, batch=batch, device="cpu", writers=1 + i)
        outs.append(_files(out))
    assert len(outs[0]) == 20 and sorted(outs[0])[0] == "seed000000.png"
    assert all(o == outs[0] for o in outs[1:])
    # Different seeds give different images.
    assert len({v for v in outs[0].values()}) == 20


def test_seeds_option_and_run_folder_shortcut(gauss_run: Path, tmp_path: Path) -> None:
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "all", n=10, device="cpu")
    result = sample_snapshot(gauss_run, tmp_path / "some", seeds="2,5-6", device="cpu")
    assert result["written"] == 3
    some = _files(tmp_path / "some")
    assert sorted(some) == ["seed000002.png", "seed000005.png", "seed000006.png"]
    every = _files(tmp_path / "all")
    assert all(some[k] == every[k] for k in some)


def test_tags(gauss_run: Path, tmp_path: Path) -> None:
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "out", n=3, psi=0.7, generation=2, device="cpu")
    tags = read_tags(tmp_path / "out" / "seed000002.png")
    assert tags == {"origin": "synthetic", "generator": snapshot_id(gauss_run / "latest.pt"), "psi": "0.7", "seed": "2", "generation": "2"}


def test_resume_completes_only_missing_files(gauss_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sample_snapshot(gauss_run / "latest.pt", out, n=10, psi=0.5, device="cpu")
    for s in (1, 4, 9):
        (out / f"seed{s:06d}.png").unlink()
    (out / ".seed000004.png.abc123.tmp").write_bytes(b"half an image from a killed run")
    old = 1_000_000_000_000_000_000  # set an old mtime so that any rewrite would show
    kept = [p for p in list_images(out)]
    for p in kept:
        os.utime(p, ns=(old, old))
    result = sample_snapshot(gauss_run / "latest.pt", out, n=15, psi=0.5, device="cpu")
    assert (result["written"], result["skipped"]) == (8, 7)
    assert all(p.stat().st_mtime_ns == old for p in kept)
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "fresh", n=15, psi=0.5, device="cpu")
    assert _files(out) == _files(tmp_path / "fresh")


def test_interrupted_run_leaves_only_complete_files(gauss_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = GaussianSampler.generate

    def flaky(self, seeds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, seeds)

    monkeypatch.setattr(GaussianSampler, "generate", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        sample_snapshot(gauss_run / "latest.pt", out, n=20, batch=4, device="cpu")
    partial = _files(out)
    assert len(partial) <= 8  # queued writes may be dropped, never half-written
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    monkeypatch.setattr(GaussianSampler, "generate", original)
    result = sample_snapshot(gauss_run / "latest.pt", out, n=20, batch=4, device="cpu")
    assert result["written"] == 20 - len(partial)
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "fresh", n=20, device="cpu")
    fresh = _files(tmp_path / "fresh")
    assert all(partial[k] == fresh[k] for k in partial)
    assert _files(out) == fresh


def test_sigkill_then_rerun_completes_the_folder(gauss_run: Path, tmp_path: Path) -> None:
    """A real `mad sample` process killed with SIGKILL mid-run; re-running finishes the job."""
    import signal
    import subprocess
    import time

    out = tmp_path / "out"
    n = 3000
    cmd = [sys.executable, "-m", "mad_cli", "sample", str(gauss_run / "latest.pt"), str(out), "--n", str(n), "--device", "cpu", "--batch", "8"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and sum(1 for _ in out.glob("seed*.png")) >= 50:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_early = proc.returncode == -signal.SIGKILL
    partial = _files(out)
    result = sample_snapshot(gauss_run / "latest.pt", out, n=n, device="cpu")
    assert result["written"] == n - len(partial)
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "fresh", seeds=",".join(k[4:10] for k in list(partial)[:200]) or "0", device="cpu")
    fresh = _files(tmp_path / "fresh")
    assert all(partial[k] == fresh[k] for k in fresh)  # what the killed run left is complete
    assert len(_files(out)) == n
    if killed_early:
        assert 0 < len(partial) < n


def test_refuses_other_generator_psi_or_files_unless_force(gauss_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.5, device="cpu")
    with pytest.raises(MadError, match="psi tag is '0.5'.*--force"):
        sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.6, device="cpu")
    with pytest.raises(MadError, match="generation"):
        sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.5, generation=3, device="cpu")
    # A snapshot with other weights has another id.
    snap = load_snapshot(gauss_run / "latest.pt")
    snap["model"]["mean"] = snap["model"]["mean"] * 0.5
    save_snapshot(tmp_path / "other.pt", snap)
    with pytest.raises(MadError, match="generator tag"):
        sample_snapshot(tmp_path / "other.pt", out, n=4, psi=0.5, device="cpu")
    before = _files(out)
    result = sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.6, device="cpu", force=True)
    assert result["written"] == 4 and _files(out) != before
    assert read_tags(out / "seed000000.png")["psi"] == "0.6"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(MadError, match="notes.txt"):
        sample_snapshot(gauss_run / "latest.pt", tmp_path / "foreign", n=2, device="cpu")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_grid_is_the_first_64(gauss_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    sample_snapshot(gauss_run / "latest.pt", out, n=40, device="cpu")
    # Resume with a grid: 40 tiles come back from disk, 24 from this run.
    sample_snapshot(gauss_run / "latest.pt", out, n=70, device="cpu", grid=tmp_path / "grid.png")
    grid = read_image(tmp_path / "grid.png")
    assert grid.shape == (64, 64, 3)
    tiles = np.stack([read_image(out / f"seed{s:06d}.png") for s in range(64)])
    assert np.array_equal(grid, image_grid(tiles))
    assert read_tags(tmp_path / "grid.png")["origin"] == "synthetic"
    with pytest.raises(MadError, match="inside OUT"):
        sample_snapshot(gauss_run / "latest.pt", out, n=70, device="cpu", grid=out / "grid.png")


def test_psi_zero_gives_the_mean_image(gauss_run: Path, tmp_path: Path) -> None:
    sample_snapshot(gauss_run / "latest.pt", tmp_path / "out", n=6, psi=0.0, device="cpu")
    images = [read_image(p) for p in list_images(tmp_path / "out")]
    snap = load_snapshot(gauss_run / "latest.pt")
    mean_img = to_uint8(snap["model"]["mean"].clamp(-1, 1)).numpy().reshape(8, 8, 3)
    assert all(np.array_equal(img, mean_img) for img in images)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "3", "--psi", "-1"], "--psi"),
        (["--n", "0"], "--n 0"),
        ([], "--n"),
        (["--seeds", "9-3"], "--seeds"),
        (["--n", "3", "--psi-cutoff", "2"], "--psi-cutoff"),
        (["--n", "3", "--noise-mode", "loud"], "--noise-mode"),
        (["--n", "3", "--batch", "0"], "--batch"),
    ],
)
def test_cli_bad_flags(gauss_run: Path, tmp_path: Path, run_cli, args: list[str], message: str) -> None:
    result = run_cli("sample", gauss_run / "latest.pt", tmp_path / "out", "--device", "cpu", *args)
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("mad: error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, message", [("file/grid.png", "a file is in the way"), ("dir.png", "is a folder")])
def test_cli_unwritable_grid_fails_before_sampling(gauss_run: Path, tmp_path: Path, run_cli, where: str, message: str) -> None:
    (tmp_path / "file").write_text("in the way")
    (tmp_path / "dir.png").mkdir()
    result = run_cli("sample", gauss_run / "latest.pt", tmp_path / "out", "--n", "2", "--device", "cpu", "--grid", tmp_path / where)
    assert result.exit_code == 1 and result.exception is not None and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("mad: error: --grid") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before any image was drawn


@pytest.mark.parametrize("kind", ["truncated", "foreign", "text", "missing"])
def test_cli_bad_snapshots(gauss_run: Path, tmp_path: Path, run_cli, kind: str) -> None:
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        data = (gauss_run / "latest.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, bad)
    elif kind == "text":
        bad.write_text("not a model")
    result = run_cli("sample", bad, tmp_path / "out", "--n", "2", "--device", "cpu")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"mad: error: {bad}")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when no GPU is present")
def test_cli_cuda_without_gpu(gauss_run: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("sample", gauss_run / "latest.pt", tmp_path / "out", "--n", "2", "--device", "cuda")
    assert result.exit_code == 1 and "--device cuda" in result.stderr


def test_cli_json(gauss_run: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("sample", gauss_run / "latest.pt", tmp_path / "out", "--n", "5", "--psi", "0.8", "--generation", "1", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    (row,) = result.json_rows()
    assert row["written"] == 5 and row["model"] == "gaussian" and row["generator"] == snapshot_id(gauss_run / "latest.pt")
    assert len(list_images(tmp_path / "out")) == 5


# ---------------------------------------------------------------------------------------
# StyleGAN2 snapshots


TINY_G = dict(
    z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=0, conv_clamp=None),
)


@pytest.fixture(scope="module")
def sg_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mad_cli.models.stylegan2.networks import Generator

    torch.manual_seed(0)
    G = Generator(**TINY_G)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)  # make noise visible, so noise modes are really tested
    path = tmp_path_factory.mktemp("sg") / "snap.pt"
    save_snapshot(path, {"format": "mad.stylegan2", "version": 1, "config": {"G_kwargs": TINY_G}, "G_ema": G.state_dict(), "progress": {"kimg": 0.0}})
    return path


@pytest.mark.parametrize("noise_mode, n", [("const", 48), ("random", 12)])
def test_stylegan2_identical_across_batch_sizes_and_resume(sg_snapshot: Path, tmp_path: Path, noise_mode: str, n: int) -> None:
    outs = []
    for batch in (1, 5, 40):
        out = tmp_path / f"b{batch}"
        sample_snapshot(sg_snapshot, out, n=n, psi=0.7, batch=batch, noise_mode=noise_mode, device="cpu")
        outs.append(_files(out))
    assert len(outs[0]) == n
    assert outs[0] == outs[1] == outs[2]
    assert read_tags(tmp_path / "b1" / "seed000003.png")["noise_mode"] == noise_mode
    # Resume: the missing seeds land in other chunk positions than before, same bytes.
    for s in (0, 3, 4, n - 1):
        (tmp_path / "b5" / f"seed{s:06d}.png").unlink()
    result = sample_snapshot(sg_snapshot, tmp_path / "b5", n=n, psi=0.7, batch=5, noise_mode=noise_mode, device="cpu")
    assert result["written"] == 4 and _files(tmp_path / "b5") == outs[0]


def test_stylegan2_seed_convention_and_psi_zero(sg_snapshot: Path, tmp_path: Path) -> None:
    from mad_cli.models.stylegan2.networks import Generator

    snap = load_snapshot(sg_snapshot)
    G = Generator(**TINY_G).eval()
    G.load_state_dict(snap["G_ema"])
    chunk = COMPUTE_BATCH["cpu"]
    sample_snapshot(sg_snapshot, tmp_path / "one", seeds="7", psi=0.6, device="cpu")
    z = torch.from_numpy(np.random.RandomState(7).randn(1, 16)).float()
    assert torch.equal(stylegan2_latents([7], 16), z)
    with torch.no_grad():  # the sampler runs fixed-size chunks; compare at that shape
        expected = G(z.expand(chunk, -1), None, truncation_psi=0.6, noise_mode="const")[:1]
    want = to_uint8(expected).permute(0, 2, 3, 1)[0].numpy()
    assert np.array_equal(read_image(tmp_path / "one" / "seed000007.png"), want)

    sample_snapshot(sg_snapshot, tmp_path / "zero", n=20, psi=0.0, device="cpu")
    images = [read_image(p) for p in list_images(tmp_path / "zero")]
    with torch.no_grad():
        ws = G.mapping.w_avg.reshape(1, 1, -1).repeat(chunk, G.num_ws, 1)
        avg = to_uint8(G.synthesis(ws, noise_mode="const")).permute(0, 2, 3, 1)[0].numpy()
    assert len(images) == 20 and all(np.array_equal(img, avg) for img in images)


def test_stylegan2_weights_not_fitting_config(sg_snapshot: Path, tmp_path: Path) -> None:
    snap = load_snapshot(sg_snapshot)
    snap["config"]["G_kwargs"] = {**TINY_G, "w_dim": 32}
    save_snapshot(tmp_path / "bad.pt", snap)
    with pytest.raises(MadError, match="bad.pt"):
        sample_snapshot(tmp_path / "bad.pt", tmp_path / "out", n=2, device="cpu")


def test_force_never_leaves_a_mix_of_settings(gauss_run: Path, tmp_path: Path) -> None:
    """--force replaces our samples of another setting, all of them, and keeps other files."""
    out = tmp_path / "out"
    sample_snapshot(gauss_run / "latest.pt", out, n=8, psi=1.0, device="cpu")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(MadError, match="use --force"):
        sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.5, device="cpu")
    sample_snapshot(gauss_run / "latest.pt", out, n=4, psi=0.5, device="cpu", force=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["notes.txt"] + [f"seed{i:06d}.png" for i in range(4)]
    assert {read_tags(out / f"seed{i:06d}.png")["psi"] for i in range(4)} == {"0.5"}
    assert (out / "notes.txt").read_text() == "mine"
