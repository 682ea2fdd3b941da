"""How far generated images drifted from real ones: FID, KID, precision/recall, density/coverage.

Conventions follow torch-fidelity 0.4: generated is input1, real is input2; KID uses the
cubic polynomial kernel and the unbiased MMD² estimator on `subsets` random subsets drawn
with numpy's RandomState(seed), generated first, exactly as torch-fidelity draws them, so
the numbers agree with theirs on the same features.

Where we differ, and why:
- FID takes tr√(Σ₁Σ₂) as tr√(Σ₁^½ Σ₂ Σ₁^½) from two symmetric eigendecompositions with
  negative eigenvalues clamped to 0 (Σ₁Σ₂ is not symmetric; its general eigenvalues come out
  complex or negative from round-off with few samples), and the result is clamped at 0.
  With fewer samples than dimensions the same trace is the nuclear norm of A₁A₂ᵀ (see
  `fid_from_features`), exact and much cheaper.
- Neighbourhood metrics use the strict inequality d < r of Naeem et al.'s reference code:
  then identical sets give density exactly 1 (each real ball holds its own centre and k-1
  neighbours). torch-fidelity's precision/recall use d <= r; the two differ only on exact
  ties (duplicate images), where ours is the one that reports a collapsed generator's
  recall as 0.
- Pairwise distances come from one float64 matrix product per chunk; squared distances
  below 1e-10 of the squared norms are snapped to 0 so that duplicates are duplicates
  whatever batch they were extracted in, and "strictly inside" means inside by more than
  that round-off, so a ball's own k-th neighbour never counts twice. These kernels live in
  `mad_cli.neighbours`, shared with `mad filter --by realism`, so both draw the same balls.
- FID is biased upward at small n, so every row also carries the split-half FID of REAL
  against itself (two random halves, once per REAL): a generation is indistinguishable
  from real data at this n only if its FID is near that floor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError
from mad_cli.neighbours import (
    CHUNK,
    as_float64,
    knn_sq_radii,
    sq_distances,
    squared_norms,
    strictly_inside,
)
from mad_cli.output import progress, warn

METRICS = ("fid", "kid", "pr", "dc")
KID_MAX_SUBSET = 1000
KID_SUBSETS = 100
DEFAULT_SEED = 2020  # torch-fidelity's default rng_seed, so KID subsets match theirs


# ---------------------------------------------------------------------------------------
# FID


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError("FID needs at least 2 feature vectors")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr√(Σ₁^½ Σ₂ Σ₁^½), clamped at 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    root1 = _sqrtm_psd(s1)
    inner = root1 @ s2 @ root1
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(ev, 0, None)).sum())
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fid, 0.0)


def fid_from_features(gen: np.ndarray, real: np.ndarray) -> float:
    """FID of two feature sets; with fewer samples than dimensions, through the samples (same value, far cheaper).

    With centred features A₁ (n₁×d) and A₂, Σᵢ = AᵢᵀAᵢ/(nᵢ−1), and the eigenvalues of
    Σ₁^½Σ₂Σ₁^½ are the squared singular values of A₁A₂ᵀ/√((n₁−1)(n₂−1)); so tr√(·) is that
    matrix's nuclear norm. An SVD of n₁×n₂ instead of two eigendecompositions of d×d (2048²
    for Inception) makes small-n runs, like split halves and tests, take milliseconds.
    """
    g, r = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    if len(g) < 2 or len(r) < 2:
        raise ValueError("FID needs at least 2 feature vectors on each side")
    if max(len(g), len(r)) > g.shape[1]:
        mu1, s1 = feature_statistics(g)
        mu2, s2 = feature_statistics(r)
        return fid_from_statistics(mu1, s1, mu2, s2)
    mu1, mu2 = g.mean(axis=0), r.mean(axis=0)
    a1, a2 = g - mu1, r - mu2
    n1, n2 = len(g) - 1, len(r) - 1
    tr1, tr2 = float((a1 * a1).sum()) / n1, float((a2 * a2).sum()) / n2
    tr_covmean = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()) / np.sqrt(n1 * n2)
    diff = mu1 - mu2
    return max(float(diff @ diff + tr1 + tr2 - 2.0 * tr_covmean), 0.0)


def split_half_fid(real: np.ndarray, seed: int = DEFAULT_SEED) -> float | None:
    """FID between two random halves of REAL: the value a perfect generator would get at n/2 (None below 4 images)."""
    n = len(real)
    half = n // 2
    if half < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    return fid_from_features(real[order[:half]], real[order[half : 2 * half]])


# ---------------------------------------------------------------------------------------
# KID


def kid_subset_size(n_real: int, n_gen: int) -> int:
    return min(KID_MAX_SUBSET, n_real, n_gen)


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x·y/d + 1)³, cubed by multiplication (numpy's float power is several times slower)."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k


def kid_from_features(gen: np.ndarray, real: np.ndarray, subset_size: int | None = None, subsets: int = KID_SUBSETS, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Mean and std over `subsets` of the unbiased MMD² with the kernel (x·y/d + 1)³."""
    g, r = np.asarray(gen, np.float64), np.asarray(real, np.float64)
    m = subset_size if subset_size is not None else kid_subset_size(len(r), len(g))
    if m < 2 or m > len(g) or m > len(r):
        raise ValueError(f"KID subset size {m} needs 2 <= size <= min(n_gen={len(g)}, n_real={len(r)})")
    rng = np.random.RandomState(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = g[rng.choice(len(g), m, replace=False)]
        y = r[rng.choice(len(r), m, replace=False)]
        kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = within - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


# ---------------------------------------------------------------------------------------
# Neighbourhoods: precision/recall (Kynkäänniemi 2019), density/coverage (Naeem 2020)


def neighbourhood_metrics(gen: np.ndarray, real: np.ndarray, k_pr: int | None = 3, k_dc: int | None = 5) -> dict[str, float]:
    """precision/recall with k_pr and density/coverage with k_dc (either None to skip), in one pass."""
    g, r = as_float64(gen), as_float64(real)
    g_sq, r_sq = squared_norms(g), squared_norms(r)
    out: dict[str, float] = {}
    if k_pr is not None:
        real_pr, gen_pr = knn_sq_radii(r, k_pr), knn_sq_radii(g, k_pr)
        precise = 0
        recalled = torch.zeros(len(r), dtype=torch.bool)
    if k_dc is not None:
        real_dc = real_pr if k_pr == k_dc else knn_sq_radii(r, k_dc)
        inside_total = 0
        covered = torch.zeros(len(r), dtype=torch.bool)
    for i in range(0, len(g), CHUNK):
        d, tol = sq_distances(g[i : i + CHUNK], r, g_sq[i : i + CHUNK], r_sq, margin=True)  # gen chunk × real
        if k_pr is not None:
            precise += int(strictly_inside(d, tol, real_pr[None, :]).any(1).sum())
            recalled |= strictly_inside(d, tol, gen_pr[i : i + CHUNK, None]).any(0)
        if k_dc is not None:
            inside = strictly_inside(d, tol, real_dc[None, :])
            inside_total += int(inside.sum())
            covered |= inside.any(0)
    if k_pr is not None:
        out["precision"] = precise / len(g)
        out["recall"] = float(recalled.double().mean())
    if k_dc is not None:
        out["density"] = inside_total / (k_dc * len(g))
        out["coverage"] = float(covered.double().mean())
    return out


# ---------------------------------------------------------------------------------------
# Folders


def parse_metrics(spec: str | Sequence[str]) -> list[str]:
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in items if s not in METRICS]
    if bad or not items:
        raise MadError(f"--metrics {','.join(items) if items else spec!r}: expected a comma list of {','.join(METRICS)}")
    return list(dict.fromkeys(items))


def _check_counts(label: str, count: int, wanted: Sequence[str], k_pr: int, k_dc: int, real: bool) -> None:
    """Refuse before any feature is extracted when a metric is undefined at this many images."""
    if "fid" in wanted and count < 2:
        raise MadError(f"{label}: {count} image(s); FID is undefined with fewer than 2 (a covariance needs 2 samples)")
    if "kid" in wanted and count < 2:
        raise MadError(f"{label}: {count} image(s); KID needs subsets of at least 2 images")
    if "pr" in wanted and count < k_pr + 1:
        raise MadError(f"{label}: {count} image(s); precision/recall with --k-pr {k_pr} need at least {k_pr + 1}")
    if real and "dc" in wanted and count < k_dc + 1:
        raise MadError(f"{label}: {count} image(s); density/coverage with --k-dc {k_dc} need at least {k_dc + 1} real images")


def torch_fidelity_version() -> str:
    try:
        return metadata.version("torch-fidelity")
    except metadata.PackageNotFoundError:
        return "unknown"


def compare(
    real: str | os.PathLike[str],
    gens: Sequence[str | os.PathLike[str]],
    *,
    features: str = "digits",
    weights: str | os.PathLike[str] | None = None,
    metrics: str | Sequence[str] = METRICS,
    n: int | None = None,
    k_pr: int = 3,
    k_dc: int = 5,
    batch: int = 64,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] | bool | None = None,
    seed: int = DEFAULT_SEED,
) -> Iterator[dict[str, Any]]:
    """Yield one result row per generated folder, as soon as it is computed.

    Everything that can be checked without features (folders, counts against k and the KID
    subset size, --n, the extractor and its weights) is checked before the first image is read.
    """
    from mad_cli.devices import resolve_device
    from mad_cli.features import folder_features, get_extractor, select_paths

    wanted = parse_metrics(metrics)
    if not gens:
        raise MadError("GEN: give at least one folder of generated images")
    if k_pr < 1:
        raise MadError(f"--k-pr {k_pr}: must be at least 1")
    if k_dc < 1:
        raise MadError(f"--k-dc {k_dc}: must be at least 1")
    if batch < 1:
        raise MadError(f"--batch {batch}: must be at least 1")
    real_paths = select_paths(real, n)
    _check_counts(f"REAL {real}", len(real_paths), wanted, k_pr, k_dc, real=True)
    gen_paths = []
    for g in gens:
        paths = select_paths(g, n)
        _check_counts(f"GEN {g}", len(paths), wanted, k_pr, k_dc, real=False)
        gen_paths.append(paths)
    dev = resolve_device(device)
    extractor = get_extractor(features, weights=weights, device=dev)
    prefix = extractor.metric_prefix

    common = {
        "extractor": extractor.name,
        "weights_sha256": extractor.weights_sha256,
        "feature_dim": extractor.dim,
        "torch_fidelity_version": torch_fidelity_version(),
        "seed": seed,
    }
    total = len(real_paths) + sum(len(p) for p in gen_paths)
    with progress(total, f"features ({extractor.name})") as bar:
        real_feats = folder_features(real, extractor, n=n, batch=batch, cache_dir=cache_dir, paths=real_paths, on_batch=bar.advance)
        floor = split_half_fid(real_feats, seed) if "fid" in wanted else None
        if "fid" in wanted and floor is None:
            warn(f"REAL {real}: fewer than 4 images, no split-half FID noise floor")
        for g, paths in zip(gens, gen_paths):
            gen_feats = folder_features(g, extractor, n=n, batch=batch, cache_dir=cache_dir, paths=paths, on_batch=bar.advance)
            row: dict[str, Any] = {"real": str(real), "gen": str(g), "n_real": len(real_feats), "n_gen": len(gen_feats)}
            if "fid" in wanted:
                row[prefix] = fid_from_features(gen_feats, real_feats)
                row[f"{prefix}_real_split_half"] = floor
            if "kid" in wanted:
                size = kid_subset_size(len(real_feats), len(gen_feats))
                row["kid_mean"], row["kid_std"] = kid_from_features(gen_feats, real_feats, size, KID_SUBSETS, seed)
                row["kid_subset_size"], row["kid_subsets"] = size, KID_SUBSETS
            if "pr" in wanted or "dc" in wanted:
                row.update(neighbourhood_metrics(gen_feats, real_feats, k_pr if "pr" in wanted else None, k_dc if "dc" in wanted else None))
            if "pr" in wanted:
                row["k_pr"] = k_pr
            if "dc" in wanted:
                row["k_dc"] = k_dc
            row.update(common)
            yield row
