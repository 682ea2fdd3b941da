"""Fused bias + activation + gain + clamp with first- and second-order gradients.

StyleGAN2 applies `clamp(act(x + b) * gain)` after every layer; unfused that is
four passes over memory and four saved tensors. The reference path below is the
specification (plain torch ops, differentiable to any order). The CUDA path runs
one kernel and expresses its gradient through the same kernel (modes 1 and 2 in
csrc/bias_act.cu), so R1 and path-length regularisation, which differentiate
through gradients, work on it too. Third-order gradients are not supported by
the CUDA path (nothing in StyleGAN2 needs them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from . import dispatch
from ._args import check_gain, require_floating, require_tensor


@dataclass(frozen=True)
class Activation:
    func: Callable[[torch.Tensor, float], torch.Tensor]
    default_alpha: float
    default_gain: float
    cuda_index: int
    second_order: bool  # has a non-zero second derivative (needs x saved)


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0, 0, False),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2), 1, False),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2), 2, False),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0, 3, True),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0, 4, True),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0, 5, True),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0, 6, True),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0, 7, True),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2), 8, True),
}


class _Config(NamedTuple):
    dim: int
    act: str
    alpha: float
    gain: float
    clamp: float  # < 0: no clamping

    @property
    def spec(self) -> Activation:
        return ACTIVATIONS[self.act]

    @property
    def needs_x(self) -> bool:
        """Keep x (and b) for backward: curved activations, or when sign(y) no longer tells
        which side of the kink x was on (gain <= 0, or lrelu with a negative slope)."""
        sign_lies = self.gain <= 0 or (self.act == "lrelu" and self.alpha < 0)
        return self.spec.second_order or (self.act in ("relu", "lrelu") and sign_lies)

    @property
    def needs_y(self) -> bool:
        """Keep y: the clamp mask, or act' of relu/lrelu read from the output's sign."""
        return self.clamp >= 0 or (self.act in ("relu", "lrelu") and not self.needs_x)


def _parse(x: object, b: object, dim: int, act: str, alpha: float | None, gain: float | None,
           clamp: float | None) -> _Config:
    """Validate everything before dispatch so both implementations reject the same input."""
    x = require_tensor("x", x)
    require_floating("x", x)
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise ValueError(f"act: unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    spec = ACTIVATIONS[act]
    try:
        alpha_v = float(spec.default_alpha if alpha is None else alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha: expected a number, got {alpha!r}") from None
    gain_v = check_gain(spec.default_gain if gain is None else gain)
    if clamp is None:
        clamp_v = -1.0
    else:
        try:
            clamp_v = float(clamp)
        except (TypeError, ValueError):
            raise ValueError(f"clamp: expected a non-negative number or None, got {clamp!r}") from None
        if not clamp_v >= 0:
            raise ValueError(f"clamp: expected a non-negative number or None, got {clamp!r}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise ValueError(f"dim: expected an integer, got {dim!r}")
    if b is not None:
        b = require_tensor("b", b)
        if b.ndim != 1:
            raise ValueError(f"b: expected a 1-D bias vector, got shape {list(b.shape)}")
        if x.ndim == 0:
            raise ValueError("x: a bias needs x with at least one dimension, got a 0-D tensor")
        if not -x.ndim <= dim < x.ndim:
            raise ValueError(f"dim: {dim} is out of range for x with {x.ndim} dimensions")
        dim %= x.ndim
        if b.shape[0] != x.shape[dim]:
            raise ValueError(f"b: length {b.shape[0]} does not match x.shape[{dim}] = {x.shape[dim]}")
        if b.device != x.device:
            raise ValueError(f"b: is on {b.device} but x is on {x.device}")
        require_floating("b", b)
    else:
        dim = 0  # meaningless without a bias; keep the kernel's range check happy
    return _Config(dim, act, alpha_v, gain_v, clamp_v)


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """`clamp(act(x + b) * gain)`; the result has x's shape and dtype.

    Args:
        x: any floating tensor.
        b: optional 1-D bias along dimension `dim` of x (cast to x's dtype).
        act: linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish.
        alpha: slope of lrelu's negative part (default 0.2); other activations ignore it.
        gain: output scale; default sqrt(2) for relu/lrelu/swish, 1 otherwise.
        clamp: clamp the output to [-clamp, clamp]; None disables.
        impl: 'ref', 'cuda' or 'auto' (see dispatch.py; MAD_OPS overrides).
    """
    cfg = _parse(x, b, dim, act, alpha, gain, clamp)
    plugin = dispatch.plugin_for(impl, x, "bias_act")
    if b is not None:
        b = b.to(x.dtype)
    if plugin is None:
        return bias_act_ref(x, b, cfg)
    if cfg.act == "linear" and cfg.gain == 1 and cfg.clamp < 0 and b is None:
        return x
    # Layout changes happen here, outside the Function, so autograd links saved x to the caller's x.
    x = x.contiguous(memory_format=_memory_format(x))
    if b is not None:
        b = b.contiguous()
    return _BiasActCuda.apply(x, b, plugin, cfg)


def bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
    """The specification: plain torch ops, differentiable to any order."""
    if b is not None:
        x = x + b.reshape([-1 if i == cfg.dim else 1 for i in range(x.ndim)])
    x = cfg.spec.func(x, cfg.alpha)
    if cfg.gain != 1:
        x = x * cfg.gain
    if cfg.clamp >= 0:
        x = x.clamp(-cfg.clamp, cfg.clamp)
    return x


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty(like: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=like.dtype, device=like.device)


class _BiasActCuda(torch.autograd.Function):
    """Forward kernel; saves only what the gradient kernel needs (see _Config)."""

    @staticmethod
    def forward(ctx, x, b, plugin, cfg: _Config):  # type: ignore[override]
        e = _empty(x)
        bb = b if b is not None else e
        y = plugin.bias_act(x, bb, e, e, e, 0, cfg.dim, cfg.spec.cuda_index, cfg.alpha, cfg.gain, cfg.clamp)
        ctx.plugin, ctx.cfg, ctx.fmt = plugin, cfg, _memory_format(x)
        ctx.save_for_backward(x if cfg.needs_x else e, bb if cfg.needs_x else e, y if cfg.needs_y else e)
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, b, y = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        dx = db = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dy = dy.contiguous(memory_format=ctx.fmt)
            if cfg.act == "linear" and cfg.clamp < 0:
                dx = dy * cfg.gain if cfg.gain != 1 else dy
            else:
                dx = _BiasActCudaGrad.apply(dy, x, b, y, ctx.plugin, cfg)
        if ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != cfg.dim])
        return dx, db, None, None


class _BiasActCudaGrad(torch.autograd.Function):
    """dx = dy * act'(x + b) * gain (masked by the clamp), itself differentiable once more."""

    @staticmethod
    def forward(ctx, dy, x, b, y, plugin, cfg: _Config):  # type: ignore[override]
        dx = plugin.bias_act(dy, b, x, y, _empty(dy), 1, cfg.dim, cfg.spec.cuda_index, cfg.alpha, cfg.gain, cfg.clamp)
        ctx.plugin, ctx.cfg, ctx.fmt = plugin, cfg, _memory_format(dy)
        ctx.save_for_backward(dy if cfg.spec.second_order else _empty(dy), x, b, y)
        return dx

    @staticmethod
    def backward(ctx, d_dx):  # type: ignore[override]
        dy, x, b, y = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        d_dx = d_dx.contiguous(memory_format=ctx.fmt)
        d_dy = d_x = d_b = None
        if ctx.needs_input_grad[0]:
            d_dy = _BiasActCudaGrad.apply(d_dx, x, b, y, ctx.plugin, cfg)
        if cfg.spec.second_order and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_x = ctx.plugin.bias_act(d_dx, b, x, y, dy, 2, cfg.dim, cfg.spec.cuda_index, cfg.alpha, cfg.gain,
                                      cfg.clamp)
            if ctx.needs_input_grad[2] and b.numel():
                d_b = d_x.sum([i for i in range(d_x.ndim) if i != cfg.dim])
        return d_dy, d_x, d_b, None, None, None
