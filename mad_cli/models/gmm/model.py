"""The GMM's mathematics: a whitened PCA, a Gaussian mixture in it, and seeded sampling.

See the package docstring for the model and its sampling bias; the run folder and `mad
sample` adapters are in `training` and `sampler`. Everything is float64 on the CPU: the
model is small, and a sample must not depend on the device or the batch.

The tensors (one snapshot's "model" dict; C = classes, 1 for an unlabelled folder):

    pca_mean        D        the mean image (pixels in [-1, 1])
    pca_components  d × D    principal directions (orthonormal rows for a fit)
    pca_scales      d        standard deviation along each (whitening divides by it)
    weights         C × K    mixture weights per class (rows sum to 1)
    means           C × K × d         component means, whitened coordinates
    covariances     C × K × d × d     component covariances, always stored full

Covariances are stored full whatever `--covariance` was, so sampling and `mad merge` have
one form to deal with; the type is kept in the config as how they were estimated.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError

PIXEL_RANGE = (-1.0, 1.0)
#: scikit-learn's default regularisation: added to each covariance's diagonal (whitened units).
REG_COVAR = 1e-6
MAX_ITER = 200
MODEL_TENSORS = ("pca_mean", "pca_components", "pca_scales", "weights", "means", "covariances")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run numpy/scikit-learn linear algebra on one thread.

    Why: the fits are small, and a threaded BLAS or OpenMP k-means both sums in an order
    that depends on the core count (the same data would give a snapshot differing in the
    last bits on another machine) and, on a busy machine, spends most of its time
    waiting: a 20-component fit took 12 s threaded and 0.4 s on one thread here.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def fit_pca(x: np.ndarray, dims: int) -> dict[str, torch.Tensor]:
    """The top `dims` principal directions of the rows of `x` (n × D), with their standard deviations.

    Signs are fixed (largest entry of each direction positive), so the same data always
    gives the same tensors.
    """
    x = np.asarray(x, dtype=np.float64)
    n, dim = x.shape
    if dims > dim:
        raise MadError(f"--pca-dims {dims}: larger than the {dim} pixels of an image")
    if dims > n - 1:
        raise MadError(f"--pca-dims {dims}: {n} images span at most {max(n - 1, 0)} dimensions; use fewer dimensions or more images")
    mean = x.mean(axis=0)
    with one_thread():
        _u, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dims].copy()
    flip = np.sign(comps[np.arange(dims), np.abs(comps).argmax(axis=1)])
    comps *= flip[:, None]
    scales = sv[:dims] / np.sqrt(n - 1)
    if scales[-1] <= scales[0] * 1e-9:
        rank = int((scales > scales[0] * 1e-9).sum())
        raise MadError(f"--pca-dims {dims}: the images vary in only {rank} dimensions; use at most {rank}")
    return {"pca_mean": torch.from_numpy(mean), "pca_components": torch.from_numpy(comps), "pca_scales": torch.from_numpy(scales.copy())}


def decoder(model: dict[str, torch.Tensor]) -> torch.Tensor:
    """d × D: whitened coordinates y ↦ pixels pca_mean + y @ decoder."""
    return model["pca_scales"].to(torch.float64)[:, None] * model["pca_components"].to(torch.float64)


def encode(x: np.ndarray, model: dict[str, torch.Tensor]) -> np.ndarray:
    """Pixels (n × D) → whitened coordinates (n × d): the least-squares inverse of `decoder`.

    For a fitted PCA (orthonormal directions) that is the usual projection divided by the
    scales; a merged snapshot's directions need not be orthonormal, and the pseudo-inverse
    still gives the coordinates whose decoding is nearest to each image.
    """
    with one_thread():
        pinv = np.linalg.pinv(decoder(model).numpy())
        return (np.asarray(x, dtype=np.float64) - model["pca_mean"].numpy()) @ pinv


def _full_covariances(gm: Any, covariance: str, k: int, d: int) -> np.ndarray:
    cov = np.asarray(gm.covariances_, dtype=np.float64)
    if covariance == "full":
        return cov
    if covariance == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    if covariance == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])  # spherical


def _precisions_init(covariances: np.ndarray, covariance: str) -> np.ndarray:
    """sklearn's `precisions_init` for a warm start, from full covariances.

    The fit's regularisation is added first, as EM adds it to its own estimates: a merged
    snapshot may hold a singular (positive semi-definite) covariance, which has no inverse.
    """
    covariances = covariances + REG_COVAR * np.eye(covariances.shape[-1])
    if covariance == "full":
        return np.linalg.inv(covariances)
    if covariance == "tied":
        return np.linalg.inv(covariances.mean(axis=0))
    diag = np.diagonal(covariances, axis1=1, axis2=2)
    return 1.0 / diag if covariance == "diag" else 1.0 / diag.mean(axis=1)


def fit_mixture(
    z: np.ndarray, components: int, covariance: str, *, seed: int, init: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """EM for a `components`-Gaussian mixture on rows of `z`; k-means start seeded by `seed`,
    or a warm start from `init` (weights, means, covariances: fine-tuning).

    Returns ({weights K, means K×d, covariances K×d×d}, {converged, n_iter, avg_log_likelihood}).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    n, d = z.shape
    if n < components:
        raise MadError(f"--components {components}: only {n} images to fit them; use at most {n} components")
    kwargs: dict[str, Any] = {}
    if init is not None:
        kwargs = {
            "weights_init": init["weights"] / init["weights"].sum(),
            "means_init": init["means"],
            "precisions_init": _precisions_init(init["covariances"], covariance),
        }
    gm = GaussianMixture(
        n_components=components, covariance_type=covariance, reg_covar=REG_COVAR, max_iter=MAX_ITER, n_init=1,
        random_state=seed, **kwargs,
    )
    with warnings.catch_warnings(), one_thread():
        # Reported in the log ("converged": false) rather than as a Python warning.
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            gm.fit(z)
        except ValueError as exc:  # e.g. a covariance that collapses although regularised
            raise MadError(f"--components {components}: the mixture could not be fitted ({str(exc).splitlines()[0][:160]})") from None
        score = float(gm.score(z))
    params = {
        "weights": np.asarray(gm.weights_, dtype=np.float64),
        "means": np.asarray(gm.means_, dtype=np.float64),
        "covariances": _full_covariances(gm, covariance, components, d),
    }
    info = {"converged": bool(gm.converged_), "n_iter": int(gm.n_iter_), "avg_log_likelihood": score}
    return params, info


def component_factors(covariances: torch.Tensor, *, where: str = "the snapshot") -> torch.Tensor:
    """B with B Bᵀ = Σ for every covariance (… × d × d), from its eigendecomposition.

    Eigenvectors rather than Cholesky so that a positive semi-definite but singular
    covariance (which a merge can produce) still samples; a clearly negative eigenvalue
    means the tensors are not a covariance and is refused.
    """
    cov = covariances.to(torch.float64)
    cov = (cov + cov.transpose(-1, -2)) / 2
    evals, evecs = torch.linalg.eigh(cov)
    scale = evals.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    if bool((evals < -1e-9 * scale).any()):
        raise MadError(f"{where}: a component covariance is not positive semi-definite")
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def sample_gmm(
    model: dict[str, torch.Tensor], factors: torch.Tensor, seeds: Sequence[int], classes: Sequence[int], psi: float = 1.0,
) -> torch.Tensor:
    """One image per seed, float64 rows clamped to [-1, 1].

    Image i uses only seed i's generator: one uniform picks its component (by class c's
    weights), then d normals z give y = μ_k + ψ B_k z, decoded to pixels. Computed image by
    image, so no pixel depends on which other seeds share the batch.
    """
    weights = model["weights"].to(torch.float64)
    cum = weights.cumsum(dim=1)
    means = model["means"].to(torch.float64)
    dec_t = decoder(model).T.contiguous()
    mean = model["pca_mean"].to(torch.float64)
    d = means.shape[-1]
    rows = []
    for s, c in zip(seeds, classes):
        gen = torch.Generator().manual_seed(int(s))
        u = torch.rand(1, generator=gen, dtype=torch.float64)
        z = torch.randn(d, generator=gen, dtype=torch.float64)
        k = min(int(torch.searchsorted(cum[c], u * cum[c, -1], right=True)), cum.shape[1] - 1)
        y = means[c, k] + psi * torch.mv(factors[c, k], z)
        rows.append(mean + torch.mv(dec_t, y))
    if not rows:
        return torch.zeros(0, mean.numel(), dtype=torch.float64)
    return torch.stack(rows).clamp(*PIXEL_RANGE)
