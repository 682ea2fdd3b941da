"""A Gaussian fitted to the pixels of an image folder: the MAD paper's theory, in seconds.

Why it exists: the paper's analysis of self-consuming loops (Alemohammad et al. 2023, §3)
is for a Gaussian model re-fitted each generation to samples of the previous one. Running
the very same shell loop (`mad train --model gaussian` → `mad sample --psi` → `mad mix` →
...) with this model lets anyone check the loop machinery against that theory before
spending hours on StyleGAN2.

Model. Every image is flattened to a vector x of D = H·W·C pixels scaled to [-1, 1]
(x = p / 127.5 − 1 for uint8 p, the same range StyleGAN2 works in). We fit

    μ = mean of x,   Σ = Σ_i (x_i − μ)(x_i − μ)ᵀ / (n − 1)      (unbiased, ddof = 1)

and store Σ in factored form Σ = U diag(s²) Uᵀ + diag(r²):

* ``full``    (D ≤ max_full_dim): U, s from the exact eigendecomposition of Σ
  (zero eigenvalues dropped, r = 0), so the model covariance *is* the sample covariance.
* ``lowrank`` (D > max_full_dim): U, s are the top-k principal directions (randomised
  SVD, seeded), and r² = diag(Σ) − diag(U s² Uᵀ) is the variance the k components miss,
  so every pixel keeps exactly its sample variance (a probabilistic-PCA-like model).

Sampling with bias ψ (`mad sample --psi`): x = μ + ψ (U (s ⊙ z₁) + r ⊙ z₂), z ~ N(0, I),
i.e. samples from N(μ, ψ² Σ); values are clamped to [-1, 1] and rounded to uint8. ψ scales
the deviation from the mean exactly like the truncation trick scales w − w_avg in
StyleGAN2 (ψ = 0 gives the mean image every time).

Mapping to the paper. The paper's sampling bias λ multiplies the covariance of the
distribution sampled from, so λ = ψ². For a fully synthetic loop that re-fits with the
unbiased estimator on n samples per generation, E[Σ_t] = λ Σ_{t−1}, hence
E[σ²_t] = λ^t σ²_0 = ψ^{2t} σ²_0 for every pixel variance (and trace). With ψ = 1 the
expected variance stays constant although each individual run still collapses (σ²_t → 0
almost surely, the estimation noise compounds). tests/test_gaussian.py checks the ψ^{2t}
law by Monte Carlo over many independent loops (and the constant expectation at ψ = 1).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_write_text, iter_images, place_file, prepare_output_dir, read_image, require_images
from mad_cli.models.snapshot import save_snapshot

DEFAULT_MAX_FULL_DIM = 4096
DEFAULT_RANK = 256
PIXEL_RANGE = (-1.0, 1.0)


def to_unit_range(pixels_uint8: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] → float64 [-1, 1] (StyleGAN2's convention, so ψ means the same in both models)."""
    return pixels_uint8.astype(np.float64) / 127.5 - 1.0


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats → uint8 with NVIDIA's rounding (x·127.5 + 128, clamp, truncate)."""
    return (values * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def fit_gaussian(x: np.ndarray, *, max_full_dim: int = DEFAULT_MAX_FULL_DIM, rank: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit N(μ, Σ) (unbiased Σ) to rows of `x` (n × D floats) and return the factored model tensors.

    Returns {"mean": D float64, "components": D×k float32 (orthonormal columns),
    "scales": k float64 (standard deviations along them), "residual_std": D float64}.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"fit_gaussian expects an n × D array, got shape {x.shape}")
    n, dim = x.shape
    if n < 2:
        raise MadError(f"a Gaussian needs at least 2 images to estimate a covariance, got {n}")
    mean = x.mean(axis=0)
    xc = torch.from_numpy(x - mean)
    if dim <= max_full_dim:
        if n <= dim:
            # Fewer images than pixels: Σ has rank ≤ n−1, and the n × n Gram matrix has the
            # same non-zero eigenvalues at a fraction of the cost (and none of the
            # slow, degenerate null space): u = Xcᵀ v / sqrt((n−1) λ).
            evals, v = torch.linalg.eigh((xc @ xc.T) / (n - 1))
            keep = evals > evals.max().clamp_min(0) * max(n, dim) * torch.finfo(torch.float64).eps * 10
            evals, v = evals[keep].flip(0), v[:, keep].flip(1)
            evecs = (xc.T @ v) / torch.sqrt(evals * (n - 1))
        else:
            evals, evecs = torch.linalg.eigh((xc.T @ xc) / (n - 1))
            # Eigenvalues at round-off level are rank deficiency, not variance: drop them.
            keep = evals > evals.max().clamp_min(0) * dim * torch.finfo(torch.float64).eps * 10
            evals, evecs = evals[keep].flip(0), evecs[:, keep].flip(1)
        residual = torch.zeros(dim, dtype=torch.float64)
    else:
        k = min(rank or DEFAULT_RANK, n - 1, dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _u, sv, v = torch.svd_lowrank(xc, q=min(k + 10, n, dim), niter=6)
        evals = (sv[:k] ** 2) / (n - 1)
        evecs = v[:, :k]
        pixel_var = (xc * xc).sum(dim=0) / (n - 1)
        explained = (evecs * evecs) @ evals
        residual = (pixel_var - explained).clamp_min(0).sqrt()
    return {
        "mean": torch.from_numpy(mean),
        "components": evecs.to(torch.float32).contiguous(),
        "scales": evals.clamp_min(0).sqrt().contiguous(),
        "residual_std": residual.contiguous(),
    }


def model_covariance(model: dict[str, torch.Tensor]) -> torch.Tensor:
    """The D × D covariance a fitted model represents (tests and small-D analysis only)."""
    u = model["components"].to(torch.float64)
    s2 = model["scales"].to(torch.float64) ** 2
    return (u * s2) @ u.T + torch.diag(model["residual_std"].to(torch.float64) ** 2)


def latent_dims(model: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(k, D_residual): how many N(0,1) numbers one sample draws (fixed per model, so seeds are stable)."""
    k = int(model["scales"].numel())
    has_residual = bool((model["residual_std"] > 0).any())
    return k, int(model["residual_std"].numel()) if has_residual else 0


def latents_for_seed(model: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The standard-normal draws of image `seed`: a per-image torch.Generator, so batch size never matters."""
    k, d_res = latent_dims(model)
    gen = torch.Generator().manual_seed(int(seed))
    z1 = torch.randn(k, generator=gen, dtype=torch.float64)
    z2 = torch.randn(d_res, generator=gen, dtype=torch.float64) if d_res else None
    return z1, z2


def sample_gaussian(model: dict[str, torch.Tensor], seeds: list[int] | range, psi: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Samples x = μ + ψ (U (s ⊙ z₁) + r ⊙ z₂) as float64 rows in [-1, 1] (clamped), one per seed.

    Computed in float64, image by image, so that a pixel never depends on the batching.
    """
    dev = torch.device(device)
    mean = model["mean"].to(dev, torch.float64)
    basis = (model["components"].to(dev, torch.float64) * model["scales"].to(dev, torch.float64))
    residual = model["residual_std"].to(dev, torch.float64)
    rows = []
    for s in seeds:
        # One matrix-vector product per image: a batched matmul may sum in a different
        # order for different batch sizes, and a 1e-16 difference can flip a rounded pixel.
        z1, z2 = latents_for_seed(model, s)
        row = torch.mv(basis, z1.to(dev))
        if z2 is not None:
            row = row + z2.to(dev) * residual
        rows.append(row)
    dev_x = torch.stack(rows) if rows else torch.zeros(0, mean.numel(), dtype=torch.float64, device=dev)
    return (mean + psi * dev_x).clamp(*PIXEL_RANGE)


def _load_folder(data: Path, channels: int | None) -> tuple[np.ndarray, tuple[int, int, int], list[Path]]:
    """All images as an n × D float64 array in [-1, 1]; all must share one size."""
    paths = require_images(data)
    if len(paths) < 2:
        raise MadError(f"{data}: a Gaussian needs at least 2 images to estimate a covariance, found {len(paths)}")
    first = read_image(paths[0], channels)
    c = 1 if first.ndim == 2 else 3
    h, w = first.shape[:2]
    rows = np.empty((len(paths), h * w * c), dtype=np.float32)
    for i, (p, img) in enumerate(iter_images(paths, channels=c, workers=2)):
        if img.shape[:2] != (h, w):
            raise MadError(
                f"{p}: image is {img.shape[1]}×{img.shape[0]} but {paths[0].name} is {w}×{h}; "
                "a Gaussian needs one size (resize with `mad dataset --resolution`)"
            )
        rows[i] = to_unit_range(img.reshape(-1))
    return rows.astype(np.float64), (h, w, c), paths


def fit_gaussian_folder(
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    max_full_dim: int = DEFAULT_MAX_FULL_DIM,
    rank: int | None = None,
    channels: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """`mad train DATA --out RUN --model gaussian`: fit, then write RUN like a StyleGAN2 run does.

    Writes RUN/config.json, RUN/log.jsonl (one line), RUN/snapshot-000000.pt (format
    ``mad.gaussian``), RUN/latest.pt (a copy, so `mad sample RUN/latest.pt` works for
    either model) and RUN/fakes-000000.png (64 samples, seeds 0–63, ψ = 1). Fitting is
    deterministic: re-running into a RUN that holds only an earlier Gaussian run rewrites
    the same files; any other non-empty RUN needs `force`.
    Returns a summary dict (paths, mode, rank, n, D, seconds).
    """
    t0 = time.perf_counter()
    data_p = Path(data)
    if max_full_dim < 1:
        raise MadError(f"--max-full-dim {max_full_dim}: must be >= 1")
    if rank is not None and rank < 1:
        raise MadError(f"--rank {rank}: must be >= 1")
    require_images(data_p)
    created = not Path(out_dir).exists()
    # Re-running the same command over its own earlier output refits (deterministically) in place.
    out = prepare_output_dir(out_dir, sources=[data_p], force=force or is_gaussian_run(out_dir), flag="--out")
    try:
        x, (h, w, c), paths = _load_folder(data_p, channels)
        n, dim = x.shape
        model = fit_gaussian(x, max_full_dim=max_full_dim, rank=rank, seed=seed)
    except BaseException:
        if created:  # bad data must not leave an empty RUN behind that looks like a run
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    del x
    mode = "full" if dim <= max_full_dim else "lowrank"
    config = {
        "model": "gaussian",
        "data": str(data_p),
        "n_images": n,
        "height": h,
        "width": w,
        "channels": c,
        "dim": dim,
        "pixel_range": list(PIXEL_RANGE),
        "mode": mode,
        "rank": int(model["scales"].numel()),
        "max_full_dim": max_full_dim,
        "estimator": "unbiased covariance (ddof=1)",
        "seed": seed,
    }
    seconds = time.perf_counter() - t0
    snap = {
        "format": "mad.gaussian",
        "version": 1,
        "config": config,
        "model": model,
        # No timings in the snapshot: the same data must give the same file (and generator id).
        "progress": {"kimg": 0.0, "n_images": n},
    }
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    snapshot_path = save_snapshot(out / "snapshot-000000.pt", snap)
    place_file(snapshot_path, out / "latest.pt", link="copy")
    atomic_write_text(out / "log.jsonl", json.dumps({"kimg": 0.0, "n_images": n, "dim": dim, "mode": mode, "rank": config["rank"], "seconds": round(seconds, 4)}) + "\n")

    from mad_cli.sampling import write_contact_sheet

    grid_images = to_uint8(sample_gaussian(model, range(64))).reshape(64, h, w, c).numpy()
    write_contact_sheet(out / "fakes-000000.png", grid_images, tags={"origin": "synthetic"})
    return {
        "out": str(out),
        "snapshot": str(snapshot_path),
        "latest": str(out / "latest.pt"),
        "model": "gaussian",
        "mode": mode,
        "rank": config["rank"],
        "n_images": n,
        "dim": dim,
        "seconds": round(time.perf_counter() - t0, 3),
    }


RUN_FILES = frozenset({"config.json", "log.jsonl", "snapshot-000000.pt", "latest.pt", "fakes-000000.png"})


def is_gaussian_run(folder: str | os.PathLike[str]) -> bool:
    """True for a folder holding nothing but an earlier `fit_gaussian_folder` output."""
    p = Path(folder)
    if not (p / "config.json").is_file():
        return False
    try:
        if json.loads((p / "config.json").read_text(encoding="utf-8")).get("model") != "gaussian":
            return False
    except (OSError, ValueError, AttributeError):
        return False
    return all(e.name in RUN_FILES or e.name.startswith(".") for e in p.iterdir())


def image_shape(config: dict[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of a gaussian snapshot's images."""
    try:
        return int(config["height"]), int(config["width"]), int(config["channels"])
    except (KeyError, TypeError, ValueError):
        raise MadError("gaussian snapshot config lacks height/width/channels") from None

