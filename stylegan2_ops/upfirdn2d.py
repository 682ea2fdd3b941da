"""upfirdn2d: upsample, pad, FIR-filter and downsample 2-D images, per channel.

StyleGAN2 resamples with low-pass FIR filters instead of nearest/bilinear
interpolation (aliasing shows up as texture sticking). Per channel:

1. upsample by inserting `up - 1` zeros after every pixel,
2. pad with zeros (negative padding crops), padding counted on the upsampled image,
3. convolve with the filter `f` (a true convolution unless `flip_filter`), keeping
   only outputs whose footprint lies inside the padded image,
4. keep every `down`-th pixel.

This is scipy.signal.upfirdn in 2-D. The reference path builds the zero-stuffed
image and runs a depthwise conv2d; the CUDA path gathers only the taps that hit
real pixels (csrc/upfirdn2d.cu). Its gradient is another upfirdn2d (up and down
swapped, filter flipped), so gradients of any order work on both paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import dispatch
from ._args import (check_filter, check_gain, filter_size, parse_padding, parse_scaling, require_floating,
                    require_rank, require_tensor)

Padding = int | Sequence[int]
Scaling = int | Sequence[int]


class _Config(NamedTuple):
    upx: int
    upy: int
    downx: int
    downy: int
    padx0: int
    padx1: int
    pady0: int
    pady1: int
    flip_filter: bool
    gain: float


def setup_filter(f: object = None, device: torch.device | str = "cpu", normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1, separable: bool | None = None) -> torch.Tensor:
    """Turn taps (list, array, tensor, None) into the float32 filter the ops expect.

    A 1-D list becomes separable when it has 8 taps or more (two 1-D passes beat
    one 2-D pass there) and an outer-product 2-D filter otherwise, unless
    `separable` says. `normalize` makes the taps sum to 1 (so flat areas keep
    their value), `gain` scales the overall signal.
    """
    if f is None:
        f = 1
    t = torch.as_tensor(np.asarray(f) if not isinstance(f, torch.Tensor) else f, dtype=torch.float32)
    if t.ndim not in (0, 1, 2):
        raise ValueError(f"f: expected filter taps as a scalar, 1-D or 2-D array, got shape {list(t.shape)}")
    if t.numel() == 0:
        raise ValueError("f: filter is empty")
    if t.ndim == 0:
        t = t.reshape(1)
    if separable is None:
        separable = t.ndim == 1 and t.numel() >= 8
    if t.ndim == 1 and not separable:
        t = torch.outer(t, t)
    if t.ndim != (1 if separable else 2):
        raise ValueError(f"separable: a {t.ndim}-D filter cannot be {'separable' if separable else 'non-separable'}")
    if normalize:
        total = t.sum()
        if total == 0:
            raise ValueError("f: taps sum to zero and cannot be normalized (pass normalize=False)")
        t = t / total
    if flip_filter:
        t = t.flip(list(range(t.ndim)))
    t = t * (gain ** (t.ndim / 2))
    return t.to(device)


def _parse(x: object, f: object, up: Scaling, down: Scaling, padding: Padding, flip_filter: bool,
           gain: float) -> _Config:
    """Validate before dispatch, so both implementations reject the same input the same way."""
    x = require_tensor("x", x)
    require_rank("x", x, 4, "[batch, channels, height, width]")
    require_floating("x", x)
    check_filter(f)  # type: ignore[arg-type]
    if f is not None and f.device != x.device:  # type: ignore[union-attr]
        raise ValueError(f"f: is on {f.device} but x is on {x.device}")  # type: ignore[union-attr]
    upx, upy = parse_scaling("up", up)
    downx, downy = parse_scaling("down", down)
    px0, px1, py0, py1 = parse_padding(padding)
    g = check_gain(gain)
    fw, fh = filter_size(f)  # type: ignore[arg-type]
    _, _, h, w = x.shape
    if w * upx + px0 + px1 < fw or h * upy + py0 + py1 < fh:
        raise ValueError(f"padding: {list(padding) if isinstance(padding, Sequence) else padding} leaves an image "
                         f"smaller than the {fh}x{fw} filter for input {h}x{w} with up={up}; nothing to output")
    return _Config(upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), g)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: Scaling = 1, down: Scaling = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample, pad, FIR-filter and downsample `x` ([N, C, H, W]); see the module docstring.

    `f` is a 2-D filter, a 1-D separable filter (applied along both axes) or None
    (identity); `up`/`down` are ints or [x, y]; `padding` is p, [px, py] or
    [x0, x1, y0, y1] on the upsampled image; `gain` scales the result.
    """
    cfg = _parse(x, f, up, down, padding, flip_filter, gain)
    plugin = dispatch.plugin_for(impl, x, "upfirdn2d")
    if plugin is None:
        return upfirdn2d_ref(x, f, cfg)
    ff = torch.ones([1, 1], dtype=torch.float32, device=x.device) if f is None else f.to(torch.float32).contiguous()
    return _Upfirdn2dCuda.apply(x, ff, plugin, cfg)


def upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
    """The specification, with plain torch ops (differentiable to any order)."""
    n, c, h, w = x.shape
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    # 1. Zero insertion: each pixel followed by up-1 zeros, along both axes.
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, cfg.upx - 1, 0, 0, 0, cfg.upy - 1])
    x = x.reshape(n, c, h * cfg.upy, w * cfg.upx)
    # 2. Pad, then crop where the padding is negative.
    x = F.pad(x, [max(cfg.padx0, 0), max(cfg.padx1, 0), max(cfg.pady0, 0), max(cfg.pady1, 0)])
    x = x[:, :, max(-cfg.pady0, 0): x.shape[2] - max(-cfg.pady1, 0),
          max(-cfg.padx0, 0): x.shape[3] - max(-cfg.padx1, 0)]
    # 3. Filter. conv2d correlates, so a true convolution flips the taps first.
    k = (f * (cfg.gain ** (f.ndim / 2))).to(x.dtype)  # gain folded in at the filter's precision, like NVIDIA
    if not cfg.flip_filter:
        k = k.flip(list(range(k.ndim)))
    if k.ndim == 2:
        x = F.conv2d(x, k[None, None].expand(c, 1, *k.shape), groups=c)
    else:
        x = F.conv2d(x, k[None, None, None, :].expand(c, 1, 1, k.shape[0]), groups=c)
        x = F.conv2d(x, k[None, None, :, None].expand(c, 1, k.shape[0], 1), groups=c)
    # 4. Decimate.
    return x[:, :, ::cfg.downy, ::cfg.downx]


class _Upfirdn2dCuda(torch.autograd.Function):
    """CUDA forward; the backward is the adjoint upfirdn2d, itself this Function again."""

    @staticmethod
    def forward(ctx, x, f, plugin, cfg: _Config):  # type: ignore[override]
        if f.ndim == 2:
            y = plugin.upfirdn2d(x, f, cfg.upx, cfg.upy, cfg.downx, cfg.downy, cfg.padx0, cfg.padx1, cfg.pady0,
                                 cfg.pady1, cfg.flip_filter, cfg.gain)
        else:  # separable: a horizontal pass, then a vertical one
            y = plugin.upfirdn2d(x, f[None, :].contiguous(), cfg.upx, 1, cfg.downx, 1, cfg.padx0, cfg.padx1, 0, 0,
                                 cfg.flip_filter, 1.0)
            y = plugin.upfirdn2d(y, f[:, None].contiguous(), 1, cfg.upy, 1, cfg.downy, 0, 0, cfg.pady0, cfg.pady1,
                                 cfg.flip_filter, cfg.gain)
        ctx.save_for_backward(f)
        ctx.plugin, ctx.cfg, ctx.x_shape = plugin, cfg, x.shape
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (f,) = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        dx = None
        if ctx.needs_input_grad[0]:
            dx = _Upfirdn2dCuda.apply(dy, f, ctx.plugin, adjoint_config(cfg, f, ctx.x_shape, dy.shape))
        return dx, None, None, None


def adjoint_config(cfg: _Config, f: torch.Tensor, x_shape: Sequence[int], y_shape: Sequence[int]) -> _Config:
    """Parameters of the upfirdn2d that is the transpose of `cfg`.

    Transposing swaps up and down and reverses the filter; the leading pad puts
    the reversed filter's first tap where the forward's last tap was, and the
    trailing pad is whatever makes the output exactly the forward's input size.
    """
    fw, fh = filter_size(f)
    ih, iw = x_shape[2], x_shape[3]
    oh, ow = y_shape[2], y_shape[3]
    return _Config(
        upx=cfg.downx, upy=cfg.downy, downx=cfg.upx, downy=cfg.upy,
        padx0=fw - cfg.padx0 - 1, padx1=iw * cfg.upx - ow * cfg.downx + cfg.padx0 - cfg.upx + 1,
        pady0=fh - cfg.pady0 - 1, pady1=ih * cfg.upy - oh * cfg.downy + cfg.pady0 - cfg.upy + 1,
        flip_filter=not cfg.flip_filter, gain=cfg.gain,
    )


# ---- helpers that pick the padding for the common cases -------------------------------------------


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Filter without changing the size (extra `padding` on top, negative crops)."""
    px0, px1, py0, py1 = parse_padding(padding)
    check_filter(f)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: Scaling = 2, padding: Padding = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample to exactly `up` times the size; gain up_x*up_y keeps the brightness."""
    upx, upy = parse_scaling("up", up)
    px0, px1, py0, py1 = parse_padding(padding)
    check_filter(f)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=check_gain(gain) * upx * upy,
                     impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: Scaling = 2, padding: Padding = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Downsample to exactly 1/`down` of the size (padding counted on the input)."""
    downx, downy = parse_scaling("down", down)
    px0, px1, py0, py1 = parse_padding(padding)
    check_filter(f)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
           py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)
