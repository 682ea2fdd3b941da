"""`mad merge`: θ = θ_BASE + W·(θ_OTHER − θ_BASE) for every backend, exact at the ends,
the parameter mean at W = 0.5, a fine-tuning start, and one line for every refusal."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mad_cli.datasets import write_digits
from mad_cli.errors import MadError
from mad_cli.imagedir import list_images, read_image, write_png
from mad_cli.merge import get_spec, merge_snapshots
from mad_cli.models import BACKENDS
from mad_cli.models.gaussian.merge_spec import ROUNDING_VARIANCE
from mad_cli.models.gaussian.model import model_covariance
from mad_cli.models.snapshot import load_snapshot, save_snapshot, snapshot_id
from mad_cli.sampling import sample_snapshot
from mad_cli.train import train

BACKEND_NAMES = ["gaussian", "gmm", "stylegan2", "ddpm"]
#: Sampling settings that keep each backend's check short (ddpm: few DDIM steps).
SAMPLE = {"gaussian": {}, "gmm": {}, "stylegan2": {}, "ddpm": {"steps": 4}}
SLOW = {"ddpm"}  # two tiny trainings of the U-Net take ~15 s on a busy 2-core CPU


def _param(name: str) -> Any:
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


BACKENDS_PARAMS = [_param(n) for n in BACKEND_NAMES]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8² digits (labelled, for the networks) and two unlabelled halves (Gaussian, GMM)."""
    root = tmp_path_factory.mktemp("merge-data")
    write_digits(root / "digits", resolution=8, split="train", limit=64)
    write_digits(root / "all", resolution=8, split="train", limit=400)
    halves = {"half-a": root / "half-a", "half-b": root / "half-b"}
    for i, p in enumerate(list_images(root / "all")):
        folder = halves["half-a" if i % 2 == 0 else "half-b"]
        folder.mkdir(exist_ok=True)
        write_png(folder / p.name, read_image(p))  # pixels only: unlabelled
    return {"digits": root / "digits", "all": root / "all", **halves}


def _perturb(path: Path) -> None:
    """Add seeded noise to a ddpm snapshot's weights.

    Why: a tiny ddpm run barely trains (the learning rate warms up from 0 and the U-Net's
    output layer starts at zero), so BASE and OTHER would predict ε ≈ 0 alike and draw the
    same images, and "W = 1 gives OTHER's images" could not fail. Stands in for a longer
    fine-tuning; the file stays a valid snapshot of the same architecture.
    """
    snap = load_snapshot(path)
    gen = torch.Generator().manual_seed(7)
    for key in ("ema", "model"):
        for name, t in snap[key].items():
            if t.is_floating_point():
                snap[key][name] = t + 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    path.unlink()  # latest.pt is a hard link to the run's snapshot: write a new file, not through it
    save_snapshot(path, snap)


class Runs:
    """BASE and OTHER of each backend, trained on first use and shared by the module.

    OTHER is BASE fine-tuned on other data (`--resume BASE`), the Neon set-up, for the GMM
    and StyleGAN2 (ddpm's fine-tuned weights are then perturbed, see `_perturb`); the
    Gaussian has nothing to fine-tune, its OTHER is fitted to the other half.
    """

    def __init__(self, root: Path, data: dict[str, Path]):
        self.root, self.data = root, data
        self.done: dict[str, tuple[Path, Path]] = {}

    def __call__(self, backend: str) -> tuple[Path, Path]:
        if backend not in self.done:
            a, b = self.root / f"{backend}-base", self.root / f"{backend}-other"
            torch.set_num_threads(1)
            if backend == "gaussian":
                train(self.data["half-a"], a, model="gaussian")
                train(self.data["half-b"], b, model="gaussian")
            elif backend == "gmm":
                train(self.data["half-a"], a, model="gmm", pca_dims=8, components=4)
                train(self.data["half-b"], b, model="gmm", resume=str(a / "latest.pt"))
            else:
                tiny = {"cfg": "tiny", "kimg": 0.008, "batch": 8, "device": "cpu"}
                train(self.data["digits"], a, model=backend, **tiny)
                train(self.data["digits"], b, model=backend, resume=str(a / "latest.pt"), seed=1, **tiny)
                if backend == "ddpm":
                    _perturb(b / "latest.pt")
            self.done[backend] = (a / "latest.pt", b / "latest.pt")
        return self.done[backend]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data: dict[str, Path]) -> Runs:
    return Runs(tmp_path_factory.mktemp("merge-runs"), data)


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p) for p in list_images(folder)}


def _flat(snap: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor a merge combines, by key path."""
    spec = get_spec(next(n for n, b in BACKENDS.items() if b.format == snap["format"]))
    out = {}
    for key in (*spec.networks, "model"):
        for name, t in (snap.get(key) or {}).items():
            out[f"{key}.{name}"] = t
    return out


def test_every_backend_has_a_merge_rule() -> None:
    for name in BACKENDS:
        spec = get_spec(name)
        assert spec.networks or spec.model is not None


@pytest.mark.parametrize("backend", BACKENDS_PARAMS)
def test_ends_reproduce_the_inputs_byte_for_byte(backend: str, runs: Runs, tmp_path: Path) -> None:
    base, other = runs(backend)
    seeds = "0-5,17"
    for name, snap in (("base", base), ("other", other)):
        sample_snapshot(snap, tmp_path / name, seeds=seeds, device="cpu", **SAMPLE[backend])
    for w, like in ((0.0, "base"), (1.0, "other")):
        out = tmp_path / f"w{w:g}.pt"
        row = merge_snapshots(base, other, out, weight=w)
        sample_snapshot(out, tmp_path / f"s{w:g}", seeds=seeds, device="cpu", **SAMPLE[backend])
        got, want = _pixels(tmp_path / f"s{w:g}"), _pixels(tmp_path / like)
        assert got.keys() == want.keys()
        for name in want:
            assert np.array_equal(got[name], want[name]), (w, name)
        # A new file, a new generator id; provenance records both inputs.
        assert row["generator"] == snapshot_id(out) not in (snapshot_id(base), snapshot_id(other))
        snap = load_snapshot(out)
        assert snap["merge"] == {
            "base": str(base), "other": str(other), "weight": w,
            "base_generator": snapshot_id(base), "other_generator": snapshot_id(other),
        }
        assert not {"optim", "progress", "rng", "loss", "augment_pipe", "ada"} & set(snap)
    # The two inputs do differ, so the checks above could fail.
    assert any(not np.array_equal(a, b) for a, b in zip(_pixels(tmp_path / "base").values(), _pixels(tmp_path / "other").values()))


@pytest.mark.parametrize("backend", BACKENDS_PARAMS)
def test_half_is_the_parameter_mean(backend: str, runs: Runs, tmp_path: Path) -> None:
    base, other = runs(backend)
    merge_snapshots(base, other, tmp_path / "half.pt", weight=0.5)
    a, b, m = (load_snapshot(p) for p in (base, other, tmp_path / "half.pt"))
    if backend == "gaussian":
        # Mean and covariance are averaged; the covariance is stored factored again.
        torch.testing.assert_close(m["model"]["mean"], (a["model"]["mean"] + b["model"]["mean"]) / 2, rtol=0, atol=1e-15)
        want = (model_covariance(a["model"]) + model_covariance(b["model"])) / 2
        torch.testing.assert_close(model_covariance(m["model"]), want, rtol=1e-5, atol=1e-7)
        assert m["config"]["rank"] == m["model"]["scales"].numel() > a["model"]["scales"].numel()
        return
    fa, fb, fm = _flat(a), _flat(b), _flat(m)
    assert fa.keys() == fm.keys() and len(fm) > 3
    moved = 0
    for key, t in fm.items():
        assert t.dtype == fa[key].dtype and t.shape == fa[key].shape
        assert torch.equal(t, ((fa[key].double() + fb[key].double()) / 2).to(t.dtype)), key
        moved += not torch.equal(fa[key], fb[key])
    assert moved >= 3  # the check above compares different tensors (the GMM's PCA is shared)
    if backend == "stylegan2":
        assert "mapping.w_avg" in m["G_ema"] and set(m) >= {"G", "D", "G_ema"}


@pytest.mark.parametrize("backend", BACKENDS_PARAMS)
def test_neon_extrapolates_and_fine_tunes(backend: str, runs: Runs, data: dict[str, Path], tmp_path: Path) -> None:
    """W < 0 is θ_BASE − |W| (θ_OTHER − θ_BASE) (Neon); the result is a fine-tuning start (`--resume MERGED.pt`)."""
    base, other = runs(backend)
    weight = -1.0
    if backend == "gaussian":
        # Neon's set-up: OTHER is fitted to BASE's own ψ = 0.7 samples, Σ_O ≈ 0.49 Σ_B, so
        # 2 Σ_B − Σ_O is a covariance. (BASE and OTHER of the fixture were fitted to different
        # digits: far out, their difference has negative variance, refused below.)
        sample_snapshot(base, tmp_path / "self", n=300, psi=0.7, device="cpu")
        other = train(tmp_path / "self", tmp_path / "self-run", model="gaussian")["latest"]
        other = Path(other)
    if backend == "gmm":
        weight = -0.2  # the fixture's OTHER was fine-tuned on other digits: far out, weights turn negative
    out = tmp_path / "neon.pt"
    merge_snapshots(base, other, out, weight=weight)
    a, b, m = (load_snapshot(p) for p in (base, other, out))
    if backend == "gaussian":
        torch.testing.assert_close(m["model"]["mean"], 2 * a["model"]["mean"] - b["model"]["mean"], rtol=0, atol=1e-12)
        # Equal up to the variance 8-bit rounding adds (OTHER saw BASE's rounded samples:
        # where BASE has no variance, 2 Σ_B − Σ_O is that slightly negative and set to 0).
        want = 2 * model_covariance(a["model"]) - model_covariance(b["model"])
        got = model_covariance(m["model"])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=3 * ROUNDING_VARIANCE)
        assert float(torch.linalg.eigvalsh(got).min()) > -1e-12
    else:
        fa, fb = _flat(a), _flat(b)
        for key, t in _flat(m).items():
            want = ((1 - weight) * fa[key].double() + weight * fb[key].double()).to(t.dtype)
            assert torch.equal(t, want), key
    sample_snapshot(out, tmp_path / "samples", n=3, device="cpu", **SAMPLE[backend])
    folder = data["half-b"] if backend in ("gaussian", "gmm") else data["digits"]
    settings = {"cfg": "tiny", "kimg": 0.008, "batch": 8, "device": "cpu"} if backend in ("stylegan2", "ddpm") else {}
    if backend == "gaussian":
        # The Gaussian is fitted in closed form: it refuses every --resume SNAPSHOT, merged or not.
        with pytest.raises(MadError, match="nothing to fine-tune"):
            train(folder, tmp_path / "tuned", model=backend, resume=str(out))
        return
    result = train(folder, tmp_path / "tuned", model=backend, resume=str(out), **settings)
    tuned = load_snapshot(result["snapshot"])
    assert tuned["config"]["init_from"] == str(out)


def _edited(snap_path: Path, out: Path, edit) -> Path:
    snap = load_snapshot(snap_path)
    edit(snap)
    save_snapshot(out, snap)
    return out


def test_refuses_snapshots_of_different_models(runs: Runs, tmp_path: Path) -> None:
    with pytest.raises(MadError, match=r"is a mad.gaussian snapshot, OTHER .* a mad.gmm one; merge two snapshots of one model"):
        merge_snapshots(runs("gaussian")[0], runs("gmm")[0], tmp_path / "m.pt", weight=0.5)
    assert not (tmp_path / "m.pt").exists() and not list(tmp_path.iterdir())


def test_refuses_different_configs(runs: Runs, data: dict[str, Path], tmp_path: Path) -> None:
    base, _ = runs("gmm")
    train(data["half-b"], tmp_path / "wider", model="gmm", pca_dims=9, components=4)
    with pytest.raises(MadError, match=r"differ in config.pca_dims: 8 in BASE, 9 in OTHER"):
        merge_snapshots(base, tmp_path / "wider", tmp_path / "m.pt", weight=0.5)
    big = tmp_path / "big"
    big.mkdir()
    for p in list_images(data["half-b"])[:40]:
        write_png(big / p.name, np.kron(read_image(p), np.ones((2, 2), dtype=np.uint8)))
    train(big, tmp_path / "g16", model="gaussian")
    with pytest.raises(MadError, match=r"differ in config.dim: 64 in BASE, 256 in OTHER"):
        merge_snapshots(runs("gaussian")[0], tmp_path / "g16", tmp_path / "m.pt", weight=0.5)
    sg, _ = runs("stylegan2")

    def wider(snap: dict) -> None:
        snap["config"]["G_kwargs"]["w_dim"] += 1

    with pytest.raises(MadError, match=r"differ in config.G_kwargs.w_dim: \d+ in BASE, \d+ in OTHER"):
        merge_snapshots(sg, _edited(sg, tmp_path / "sg.pt", wider), tmp_path / "m.pt", weight=0.5)
    assert not (tmp_path / "m.pt").exists()


def test_refuses_different_shapes_networks_and_integer_buffers(runs: Runs, tmp_path: Path) -> None:
    base, other = runs("stylegan2")
    name = next(k for k in load_snapshot(other)["G_ema"] if k.endswith(".weight"))

    def reshape(snap: dict) -> None:
        snap["G_ema"][name] = snap["G_ema"][name][..., :1]

    with pytest.raises(MadError, match=rf"differ in shape: G_ema.{name} is \[.*\] in BASE, \[.*\] in OTHER"):
        merge_snapshots(base, _edited(other, tmp_path / "a.pt", reshape), tmp_path / "m.pt", weight=0.5)

    def drop_d(snap: dict) -> None:
        del snap["D"]

    with pytest.raises(MadError, match=r"OTHER .* has no D weights but the other snapshot has"):
        merge_snapshots(base, _edited(other, tmp_path / "b.pt", drop_d), tmp_path / "m.pt", weight=0.5)

    def extra(snap: dict) -> None:
        snap["G_ema"]["extra.weight"] = torch.zeros(2)

    with pytest.raises(MadError, match=r"G_ema.extra.weight is missing from BASE"):
        merge_snapshots(base, _edited(other, tmp_path / "c.pt", extra), tmp_path / "m.pt", weight=0.5)

    def counter(value: int):
        def edit(snap: dict) -> None:
            snap["D"]["steps"] = torch.tensor([value], dtype=torch.int64)

        return edit

    b2, o2 = _edited(base, tmp_path / "b2.pt", counter(3)), _edited(other, tmp_path / "o2.pt", counter(4))
    with pytest.raises(MadError, match=r"differ in the integer buffer D.steps, which cannot be interpolated"):
        merge_snapshots(b2, o2, tmp_path / "m.pt", weight=0.5)
    # Equal integer buffers are kept as they are.
    merge_snapshots(b2, _edited(other, tmp_path / "o3.pt", counter(3)), tmp_path / "m.pt", weight=0.5)
    assert torch.equal(load_snapshot(tmp_path / "m.pt")["D"]["steps"], torch.tensor([3]))


def test_refuses_different_label_sets(runs: Runs, data: dict[str, Path], tmp_path: Path) -> None:
    base, _ = runs("gmm")
    labelled = tmp_path / "labelled"
    write_digits(labelled, resolution=8, split="train", limit=200)
    train(labelled, tmp_path / "cond", model="gmm", pca_dims=8, components=4)
    with pytest.raises(MadError, match=r"different label sets: no classes \(unconditional\) in BASE, 10 classes in OTHER"):
        merge_snapshots(base, tmp_path / "cond", tmp_path / "m.pt", weight=0.5)


@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf, "abc"])
def test_refuses_a_weight_that_is_not_finite(weight: Any, runs: Runs, tmp_path: Path) -> None:
    base, other = runs("gaussian")
    with pytest.raises(MadError, match=r"--weight .*: must be a finite number"):
        merge_snapshots(base, other, tmp_path / "m.pt", weight=weight)


def test_refuses_a_result_that_is_no_distribution(runs: Runs, tmp_path: Path) -> None:
    base, other = runs("gaussian")
    with pytest.raises(MadError, match=r"--weight -50: the merged covariance is not positive semi-definite"):
        merge_snapshots(base, other, tmp_path / "m.pt", weight=-50)
    gbase, gother = runs("gmm")
    with pytest.raises(MadError, match=r"--weight -20: component \d of class 0 gets a negative mixture weight"):
        merge_snapshots(gbase, gother, tmp_path / "m.pt", weight=-20)

    def same_weights(snap: dict) -> None:
        snap["model"]["weights"] = load_snapshot(gbase)["model"]["weights"].clone()

    with pytest.raises(MadError, match=r"--weight -20: component \d of class 0 gets a covariance that is not positive semi-definite"):
        merge_snapshots(gbase, _edited(gother, tmp_path / "w.pt", same_weights), tmp_path / "m.pt", weight=-20)
    assert not (tmp_path / "m.pt").exists()


def test_never_writes_over_an_input(runs: Runs, tmp_path: Path) -> None:
    base, other = runs("gaussian")
    before = base.read_bytes()
    with pytest.raises(MadError, match=r"--out .*latest.pt: is the input"):
        merge_snapshots(base, other, base, weight=0.5)
    # latest.pt is a hard link to the run's snapshot: the same file under another name.
    with pytest.raises(MadError, match=r"--out .*snapshot-000000.pt: is the input"):
        merge_snapshots(base, other, base.parent / "snapshot-000000.pt", weight=0.5)
    with pytest.raises(MadError, match=r"--out .*: is a folder"):
        (tmp_path / "dir.pt").mkdir()
        merge_snapshots(base, other, tmp_path / "dir.pt", weight=0.5)
    with pytest.raises(MadError, match=r"--out .*merged: must end in .pt"):
        merge_snapshots(base, other, tmp_path / "merged", weight=0.5)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MadError, match=r"--out .*afile/m.pt: .*a file is in the way"):
        merge_snapshots(base, other, tmp_path / "afile" / "m.pt", weight=0.5)
    assert base.read_bytes() == before
    # An existing file is never replaced (it might be another run's latest.pt).
    out = tmp_path / "m.pt"
    out.write_bytes(b"old")
    with pytest.raises(MadError, match=r"--out .*m.pt: exists and is not this merge"):
        merge_snapshots(base.parent, other.parent, out, weight=0.25)
    assert out.read_bytes() == b"old"
    # A run folder stands for its latest.pt; re-running the same merge (any weight) rewrites its own output.
    row = merge_snapshots(base.parent, other.parent, tmp_path / "new.pt", weight=0.25)
    assert row["base"] == str(base) and load_snapshot(tmp_path / "new.pt")["merge"]["weight"] == 0.25
    merge_snapshots(base.parent, other.parent, tmp_path / "new.pt", weight=0.5)
    assert load_snapshot(tmp_path / "new.pt")["merge"]["weight"] == 0.5
    with pytest.raises(MadError, match="exists and is not this merge"):
        merge_snapshots(other, base, tmp_path / "new.pt", weight=0.5)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left


def test_cli(runs: Runs, tmp_path: Path, run_cli) -> None:
    base, other = runs("gmm")
    res = run_cli("merge", base, other, "--out", tmp_path / "neon.pt", "--weight", "-0.1", "--json")
    assert res.exit_code == 0, res.stderr
    row = res.json_rows()[0]
    assert row["model"] == "gmm" and row["weight"] == -0.1 and row["generator"] == snapshot_id(tmp_path / "neon.pt")
    res = run_cli("merge", base, runs("gaussian")[0], "--out", tmp_path / "x.pt", "--weight", "0.5")
    assert res.exit_code == 1 and res.stderr.count("\n") == 1 and "merge two snapshots of one model" in res.stderr
    res = run_cli("merge", "--help")
    assert res.exit_code == 0 and "Example:" in res.stdout and "--weight" in res.stdout
