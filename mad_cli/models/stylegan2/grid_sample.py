"""Bilinear `grid_sample` with a double backward on every torch we support.

Why: R1 under ADA's geometric augmentation differentiates D(aug(x)) with respect to x and
then differentiates that gradient again, so the sampler's backward must itself be
differentiable. torch 2.14 defines that derivative natively; torch 2.11 (measured on an
H200, 2026-11-30) raises "derivative for aten::grid_sampler_2d_backward is not
implemented". On such a torch we route through two autograd functions of our own:

- forward: y = A x, where A is the (sparse, linear) bilinear interpolation given by grid;
- backward: gx = Aᵀ gy, computed by aten's own `grid_sampler_2d_backward`;
- double backward: the gradient of <gx, v> with respect to gy is A v, i.e. grid_sample
  of v. gx does not depend on x (A is fixed), so that term is zero.

The grid must not need a gradient (ADA's grid is built from constants and random draws);
the second-order term with respect to the grid is not implemented and we refuse it
rather than return a wrong zero.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_BILINEAR, _ZEROS = 0, 0  # aten's enums for mode="bilinear", padding_mode="zeros"


@functools.cache
def native_double_backward() -> bool:
    """Whether this torch differentiates grid_sample's backward (probed once, on the CPU:
    the derivative formula is shared by every device)."""
    x = torch.ones([1, 1, 2, 2], dtype=torch.float64, requires_grad=True)
    grid = torch.zeros([1, 1, 1, 2], dtype=torch.float64)
    (gx,) = torch.autograd.grad(F.grid_sample(x, grid, align_corners=False).sum(), [x], create_graph=True)
    try:
        torch.autograd.grad(gx.square().sum(), [x], allow_unused=True)
    except RuntimeError:
        return False
    return True


def grid_sample(x: torch.Tensor, grid: torch.Tensor, *, force_fallback: bool = False) -> torch.Tensor:
    """`F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)`."""
    if native_double_backward() and not force_fallback:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _GridSample.apply(x, grid)


class _GridSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    def backward(ctx, gy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        x, grid = ctx.saved_tensors
        gx, ggrid = _GridSampleBackward.apply(gy, x, grid)
        return gx, (ggrid if ctx.needs_input_grad[1] else None)


class _GridSampleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gy: torch.Tensor, x: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        ctx.save_for_backward(grid)
        ctx.grid_needs_grad = grid.requires_grad
        gx, ggrid = torch.ops.aten.grid_sampler_2d_backward(gy, x, grid, _BILINEAR, _ZEROS, False, [True, grid.requires_grad])
        return gx, ggrid

    @staticmethod
    def backward(ctx, ggx: torch.Tensor, gggrid: torch.Tensor | None) -> tuple[torch.Tensor | None, None, None]:  # type: ignore[override]
        (grid,) = ctx.saved_tensors
        if ctx.grid_needs_grad:
            raise RuntimeError("grid_sample: second-order gradients with respect to the grid are not implemented on this torch")
        return (_GridSample.apply(ggx, grid) if ctx.needs_input_grad[0] else None), None, None
