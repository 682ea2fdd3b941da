"""The Gaussian's mathematics: fit N(μ, Σ) to pixel vectors, sample from it with bias ψ.

See the package docstring for the model and its mapping to the MAD paper's theory; the
run folder and `mad sample` adapters are in `training` and `sampler`.
"""


from __future__ import annotations

import numpy as np
import torch

from mad_cli.errors import MadError

DEFAULT_MAX_FULL_DIM = 4096
DEFAULT_RANK = 256
PIXEL_RANGE = (-1.0, 1.0)


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
