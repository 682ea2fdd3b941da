"""k-nearest-neighbour distance kernels shared by `mad metrics` and `mad filter`.

Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) in
metrics, and the realism score (Kynkäänniemi et al.) in filter, all ask the same question:
is a point inside the ball around a real point whose radius is the distance to that
point's k-th nearest real neighbour? Both commands must draw exactly the same balls, or a
filter tuned on `mad metrics` numbers would judge in a slightly different geometry; so the
distances and radii are computed here, once, and nowhere else.

Conventions (see metrics' docstring for why):
- everything in float64, squared Euclidean distances from one matrix product per chunk;
- squared distances below SNAP times the squared norms are round-off and snapped to 0, so
  that duplicates are duplicates whatever batch their features were extracted in;
- "inside" is strict (d < r) by more than that round-off, so a ball's own k-th neighbour
  never counts as inside it.
"""

from __future__ import annotations

import numpy as np
import torch

SNAP = 1e-10
CHUNK = 2048


def as_float64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Features as a float64 CPU tensor (numpy arrays are shared, not copied, when already float64)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def squared_norms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum(1)


def sq_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor, margin: bool = False) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Squared distances (duplicates snapped to 0); with `margin`, also the round-off scale of each entry."""
    scale = a_sq[:, None] + b_sq[None, :]
    d = (scale - 2.0 * (a @ b.T)).clamp_min_(0)
    d[d <= SNAP * scale] = 0.0
    return (d, SNAP * scale) if margin else d


def strictly_inside(d: torch.Tensor, tol: torch.Tensor, sq_radii: torch.Tensor) -> torch.Tensor:
    """d < r strictly, where a distance equal to r up to round-off (the k-th neighbour itself) counts as on the border."""
    return d < sq_radii - tol


def knn_sq_radii(x: np.ndarray | torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest other point (the point itself excluded)."""
    t = as_float64(x)
    if k < 1 or len(t) < k + 1:
        raise ValueError(f"k={k} needs at least k+1={k + 1} points, got {len(t)}")
    sq = squared_norms(t)
    out = torch.empty(len(t), dtype=torch.float64)
    for i in range(0, len(t), CHUNK):
        d = sq_distances(t[i : i + CHUNK], t, sq[i : i + CHUNK], sq)
        out[i : i + CHUNK] = d.kthvalue(k + 1, dim=1).values
    return out
