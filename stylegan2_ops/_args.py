"""Argument parsing and validation shared by the reference and the CUDA paths.

Why a separate module: the issue requires that bad input raises the *same*
`ValueError` whichever implementation would have run. Validating once, before
dispatch, makes that true by construction instead of by keeping two copies of
the checks in sync.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

IMPLS = ("ref", "cuda", "auto")


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def require_rank(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {layout}, got shape {list(t.shape)}")


def require_floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")


def parse_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {', '.join(IMPLS)}, got {impl!r}")
    return impl


def _as_int(name: str, v: object) -> int:
    """Integers only (numpy ints welcome); floats and bools are mistakes worth naming."""
    if isinstance(v, bool):
        raise ValueError(f"{name}: expected an integer, got {v!r}")
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: expected an integer, got {v!r}") from None


def parse_scaling(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """`up`/`down` as (x, y); a single int applies to both axes."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or [x, y], got {list(value)!r}")
        sx, sy = (_as_int(name, v) for v in value)
    else:
        sx = sy = _as_int(name, value)
    if sx < 1 or sy < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return sx, sy


def parse_padding(value: int | Sequence[int], name: str = "padding") -> tuple[int, int, int, int]:
    """Padding as (x0, x1, y0, y1); accepts p, [px, py] or [x0, x1, y0, y1]."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        vals = [_as_int(name, v) for v in value]
        if len(vals) == 2:
            return vals[0], vals[0], vals[1], vals[1]
        if len(vals) == 4:
            return vals[0], vals[1], vals[2], vals[3]
        raise ValueError(f"{name}: expected an int, [x, y] or [x0, x1, y0, y1], got {list(value)!r}")
    p = _as_int(name, value)
    return p, p, p, p


def check_filter(f: torch.Tensor | None) -> None:
    """A FIR filter is None (identity), 1-D (separable) or 2-D, never learned."""
    if f is None:
        return
    require_tensor("f", f)
    if f.ndim not in (1, 2):
        raise ValueError(f"f: expected a 1-D (separable) or 2-D filter, got shape {list(f.shape)}")
    if f.numel() == 0:
        raise ValueError("f: filter is empty")
    require_floating("f", f)
    if f.requires_grad:
        raise ValueError("f: gradients with respect to the filter are not supported; pass f.detach()")


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter; a 1-D filter is square (applied along both axes)."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def check_gain(gain: float) -> float:
    try:
        g = float(gain)
    except (TypeError, ValueError):
        raise ValueError(f"gain: expected a number, got {gain!r}") from None
    if not math.isfinite(g):
        raise ValueError(f"gain: must be finite, got {gain!r}")
    return g
