"""Gaussian pixel model: the fit against numpy, the low-rank path, and the MAD §3 variance law."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import list_images, read_image, to_uint8, write_png
from mad_cli.models.gaussian.model import fit_gaussian, model_covariance, sample_gaussian
from mad_cli.models.snapshot import load_snapshot, snapshot_id
from mad_cli.sampling import sample_snapshot
from mad_cli.train import train


def _correlated(n: int, dim: int, seed: int, scale: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mix * scale + rng.uniform(-0.3, 0.3, size=dim)


def test_full_fit_matches_numpy() -> None:
    x = _correlated(60, 24, seed=1)
    model = fit_gaussian(x, max_full_dim=4096)
    np.testing.assert_allclose(model["mean"].numpy(), x.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(model_covariance(model).numpy(), np.cov(x, rowvar=False, ddof=1), rtol=1e-5, atol=1e-7)
    assert model["components"].shape == (24, 24)
    assert float(model["residual_std"].abs().max()) == 0.0


def test_full_fit_drops_null_directions_when_n_below_dim() -> None:
    x = _correlated(10, 30, seed=2)
    model = fit_gaussian(x)
    assert model["scales"].numel() == 9  # rank of a covariance from 10 samples
    np.testing.assert_allclose(model_covariance(model).numpy(), np.cov(x, rowvar=False, ddof=1), rtol=1e-5, atol=1e-7)


def test_lowrank_fit_keeps_top_components_and_pixel_variances() -> None:
    rng = np.random.default_rng(3)
    n, dim, k = 300, 120, 4
    basis = np.linalg.qr(rng.normal(size=(dim, k)))[0]
    x = (rng.normal(size=(n, k)) * np.array([3.0, 2.0, 1.5, 1.0])) @ basis.T * 0.1 + rng.normal(size=(n, dim)) * 0.01
    model = fit_gaussian(x, max_full_dim=50, rank=k, seed=0)
    assert model["components"].shape == (dim, k)
    top = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, ddof=1)))[::-1][:k]
    np.testing.assert_allclose(model["scales"].numpy() ** 2, top, rtol=1e-4)
    # Each pixel keeps exactly its sample variance: components plus diagonal residual.
    np.testing.assert_allclose(torch.diag(model_covariance(model)).numpy(), x.var(axis=0, ddof=1), rtol=1e-5)
    # Components span the true subspace.
    overlap = np.linalg.svd(basis.T @ model["components"].numpy().astype(np.float64), compute_uv=False)
    assert overlap.min() > 0.99


def test_psi_zero_gives_the_mean_and_sampling_is_per_seed() -> None:
    x = _correlated(50, 16, seed=4)
    model = fit_gaussian(x)
    at_mean = sample_gaussian(model, range(5), psi=0.0)
    assert torch.equal(at_mean, model["mean"].clamp(-1, 1).expand(5, -1))
    together = sample_gaussian(model, [3, 7, 11], psi=0.8)
    alone = torch.cat([sample_gaussian(model, [s], psi=0.8) for s in (3, 7, 11)])
    assert torch.equal(together, alone)


def _trace_after_loop(x0: np.ndarray, psi: float, generations: int, n: int, chain: int) -> list[float]:
    """Fully synthetic loop in memory: fit → sample n with ψ → fit ... ; traces of Σ_t."""
    model = fit_gaussian(x0)
    traces = [float(model["scales"].pow(2).sum())]
    for t in range(1, generations + 1):
        seeds = range((chain * (generations + 1) + t) * n, (chain * (generations + 1) + t + 1) * n)
        x = sample_gaussian(model, seeds, psi=psi).numpy()
        model = fit_gaussian(x)
        traces.append(float(model["scales"].pow(2).sum()))
    return traces


@pytest.mark.parametrize("psi", [0.8, 1.0])
def test_expected_variance_scales_by_psi_squared_per_generation(psi: float) -> None:
    """MAD §3 with λ = ψ²: E[tr Σ_t] = λ^t tr Σ_true for the unbiased estimator (Monte Carlo)."""
    dim, n, generations, chains = 3, 12, 4, 300
    rng = np.random.default_rng(5)
    true_cov = np.diag([0.02, 0.01, 0.005])  # small: clamping to [-1, 1] never matters
    ratios = []
    for c in range(chains):
        x0 = rng.multivariate_normal(np.zeros(dim), true_cov, size=n)
        traces = _trace_after_loop(x0, psi, generations, n, c)
        ratios.append(np.array(traces) / np.trace(true_cov))
    ratios_arr = np.array(ratios)  # chains × (generations + 1)
    mean = ratios_arr.mean(axis=0)
    stderr = ratios_arr.std(axis=0, ddof=1) / np.sqrt(chains)
    expected = np.array([psi ** (2 * t) for t in range(generations + 1)])
    assert np.all(np.abs(mean - expected) < 4 * stderr + 1e-12), (mean, expected, stderr)
    if psi < 1:
        # The law is distinguishable from "no decay" at this sample size.
        assert mean[-1] + 4 * stderr[-1] < 1.0
    # Each single run still loses variance (σ²_t → 0 a.s.): the median falls below the mean.
    assert np.median(ratios_arr[:, -1]) < mean[-1]


def _write_folder(folder: Path, x: np.ndarray, side: int) -> None:
    for i, row in enumerate(x):
        write_png(folder / f"img{i:04d}.png", to_uint8(torch.from_numpy(row)).numpy().reshape(side, side))


def test_fit_folder_writes_a_run_that_samples(tmp_path: Path) -> None:
    x = _correlated(80, 64, seed=6)
    _write_folder(tmp_path / "data", x, 8)
    result = train(tmp_path / "data", tmp_path / "run", model="gaussian")
    run = tmp_path / "run"
    for name in ("config.json", "log.jsonl", "snapshot-000000.pt", "latest.pt", "fakes-000000.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["mode"] == "full" and config["dim"] == 64 and config["channels"] == 1
    snap = load_snapshot(run / "latest.pt")
    assert snap["format"] == "mad.gaussian" and snap["config"]["n_images"] == 80
    pixels = np.stack([read_image(p).reshape(-1) for p in list_images(tmp_path / "data")]) / 127.5 - 1
    np.testing.assert_allclose(snap["model"]["mean"].numpy(), pixels.mean(axis=0), atol=1e-6)
    assert read_image(run / "fakes-000000.png").shape == (64, 64)
    assert result["rank"] == config["rank"] and result["mode"] == "full"
    # Deterministic: refitting gives a byte-identical snapshot, hence the same generator id.
    first = snapshot_id(run / "latest.pt")
    train(tmp_path / "data", run, model="gaussian", resume="latest")  # re-running the same step over its own output
    assert snapshot_id(run / "latest.pt") == first
    assert snapshot_id(run / "snapshot-000000.pt") == first
    with pytest.raises(MadError, match="holds a training run; continue it with --resume latest"):
        train(tmp_path / "data", run, model="gaussian")  # a new run must not overwrite an old one
    with pytest.raises(MadError, match="nothing to fine-tune"):
        train(tmp_path / "data", tmp_path / "run-b", model="gaussian", resume=str(run / "latest.pt"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not ours")
    with pytest.raises(MadError, match="not empty"):
        train(tmp_path / "data", tmp_path / "other", model="gaussian")


def test_folder_loop_loses_variance_by_psi_squared(tmp_path: Path) -> None:
    """The real file loop (fit → sample PNGs → fit) shows the ψ² law on one long chain."""
    x = _correlated(300, 16, seed=7, scale=0.25)
    _write_folder(tmp_path / "gen0", x, 4)
    psi, var = 0.5, []
    data = tmp_path / "gen0"
    for t in range(3):
        train(data, tmp_path / f"run{t}", model="gaussian")
        snap = load_snapshot(tmp_path / f"run{t}" / "latest.pt")
        var.append(float(snap["model"]["scales"].pow(2).sum()))
        data = tmp_path / f"gen{t + 1}"
        sample_snapshot(tmp_path / f"run{t}" / "latest.pt", data, n=300, psi=psi, generation=t + 1, device="cpu")
    ratio = np.array(var) / var[0]
    # Expected 1, 0.25, 0.0625; with n=300 the relative sampling error is about 2.5%/generation.
    np.testing.assert_allclose(ratio, [1.0, psi**2, psi**4], rtol=0.15)


def test_fit_folder_bad_input(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "mixed", 3, size=8)
    make_images(tmp_path / "mixed", 1, size=16, prefix="z")
    with pytest.raises(MadError, match="z0000.png"):
        train(tmp_path / "mixed", tmp_path / "run1", model="gaussian")
    make_images(tmp_path / "one", 1, size=8)
    with pytest.raises(MadError, match="at least 2"):
        train(tmp_path / "one", tmp_path / "run2", model="gaussian")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MadError, match="no images"):
        train(tmp_path / "empty", tmp_path / "run3", model="gaussian")
    with pytest.raises(MadError, match="inside input folder"):
        train(tmp_path / "one", tmp_path / "one" / "run", model="gaussian")
    # A failed fit leaves no empty RUN folder behind (it would look like a run).
    assert not any((tmp_path / name).exists() for name in ("run1", "run2", "run3"))
