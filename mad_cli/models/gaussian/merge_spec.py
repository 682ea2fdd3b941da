"""How `mad merge` combines two Gaussian snapshots (see `mad_cli.merge`).

The parameters are μ and Σ, so the merge is μ = (1 − W) μ_B + W μ_O and
Σ = (1 − W) Σ_B + W Σ_O, the covariance taken from its factored form
Σ = U diag(s²) Uᵀ + diag(r²) and factored again without ever forming the D × D matrix:
with A = [U_B, U_O] = Q R (thin QR) and c = ((1 − W) s_B², W s_O²),

    Σ = Q (R diag(c) Rᵀ) Qᵀ + diag((1 − W) r_B² + W r_O²),

and the small matrix R diag(c) Rᵀ = V diag(λ) Vᵀ gives U = Q V, s² = λ (round-off-level
eigenvalues dropped, as the fit drops them). For W outside [0, 1] the result can have a
negative variance: a λ or residual more negative than 8-bit rounding can explain
(`ROUNDING_VARIANCE`) is refused with one line, since it is no distribution at all; a
smaller one is rounding noise of the data and is set to 0. At W = 0 and W = 1 the merged covariance *is* an input's, and that
input's factors are kept unchanged (a refactorisation would equal them only up to
round-off and the order of equal eigenvalues, and change every seed's image).
"""

from __future__ import annotations

from typing import Any

import torch

from mad_cli.errors import MadError
from mad_cli.merge import MergeSpec, Names, lerp
from mad_cli.models.gaussian.sampler import check_model

#: Relative size below which an eigenvalue or residual variance is round-off, not variance.
TOLERANCE = 1e-9
#: The variance that rounding to 8 bits adds to a pixel in [-1, 1] (a step of 2/255): both
#: inputs were fitted to such pixels, so a merged variance this small either way is noise
#: of the data, not a property of the model. A snapshot fitted to its own base's samples
#: (Neon's set-up) holds that noise in directions where the base has none, and 2 Σ_B − Σ_O
#: is then "negative" by about this much there.
ROUNDING_VARIANCE = (2 / 255) ** 2 / 12


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("height", "width", "channels", "dim", "mode", "pixel_range")}


def classes(config: dict[str, Any]) -> int:
    return 0


def merge_covariance(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], weight: float, names: Names) -> dict[str, torch.Tensor]:
    """(components, scales, residual_std) of (1 − W) Σ_B + W Σ_O; refuses a non-PSD result."""
    f64 = torch.float64
    a = torch.cat([base["components"].to(f64), other["components"].to(f64)], dim=1)
    c = torch.cat([(1 - weight) * base["scales"].to(f64) ** 2, weight * other["scales"].to(f64) ** 2])
    r2 = (1 - weight) * base["residual_std"].to(f64) ** 2 + weight * other["residual_std"].to(f64) ** 2
    size = float(c.abs().max()) if c.numel() else 0.0
    size = max(size, float(r2.abs().max()) if r2.numel() else 0.0, 1e-300)
    q, r = torch.linalg.qr(a, mode="reduced")
    small = (r * c) @ r.T
    evals, evecs = torch.linalg.eigh((small + small.T) / 2)
    tol = TOLERANCE * size
    neg_tol = tol + ROUNDING_VARIANCE * (abs(1 - weight) + abs(weight))
    if evals.numel() and float(evals.min()) < -neg_tol:
        raise MadError(
            f"{names.flag}: the merged covariance is not positive semi-definite (eigenvalue {float(evals.min()):.3g}); "
            "extrapolating this far leaves the Gaussians, choose W closer to [0, 1]"
        )
    if r2.numel() and float(r2.min()) < -neg_tol:
        pixel = int(r2.argmin())
        raise MadError(f"{names.flag}: the merged covariance is not positive semi-definite (pixel {pixel}'s residual variance {float(r2.min()):.3g}); choose W closer to [0, 1]")
    keep = evals > tol
    evals, evecs = evals[keep].flip(0), evecs[:, keep].flip(1)
    return {
        "components": (q @ evecs).to(torch.float32).contiguous(),
        "scales": evals.sqrt().contiguous(),
        "residual_std": r2.clamp_min(0).sqrt().contiguous(),
    }


def merge_model(base: dict[str, Any], other: dict[str, Any], weight: float, names: Names) -> tuple[dict[str, Any], dict[str, Any]]:
    mb, _ = check_model(base, names.base)
    mo, _ = check_model(other, names.other)
    if weight in (0.0, 1.0):
        chosen = mb if weight == 0 else mo
        model = {k: v.clone() for k, v in chosen.items()}
    else:
        model = {"mean": lerp(mb["mean"], mo["mean"], weight), **merge_covariance(mb, mo, weight, names)}
    return {"model": model}, {"rank": int(model["scales"].numel())}


SPEC = MergeSpec(networks=(), architecture=architecture, classes=classes, model=merge_model)
