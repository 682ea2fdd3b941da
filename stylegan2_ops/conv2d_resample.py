"""2-D convolution fused with FIR up/down-sampling, the way StyleGAN2 does it.

Upsampling: a stride-`up` transposed convolution does zero insertion and the
convolution in one go, then the FIR filter removes the aliasing. Downsampling:
the FIR filter first, then a strided convolution that only computes the pixels
that are kept. 1x1 kernels (the skip connections) resample on the
low-resolution side of the convolution. The order of operations and the
padding arithmetic follow NVIDIA's, so weights trained with their code give
the same images here.

Second-order gradients (R1, path length) go through stock `torch.nn.functional.conv2d`
and `conv_transpose2d`. NVIDIA shipped `conv2d_gradfix` because the PyTorch of
2020 could not differentiate cuDNN's convolution backward twice without a slow
path. On the torch this package is built against (2.15) the double backward of
both convolutions, grouped and strided included, is a native differentiable
op: `gradgradcheck` passes for them in float64 (tests/test_ops_conv2d_resample.py
checks it on every run), and autograd only computes weight gradients when they
are asked for, which is what NVIDIA's `no_weight_gradients()` context did by hand.
So no replacement op is needed; `grid_sample`'s double backward (NVIDIA's
`grid_sample_gradfix`, used by ADA augmentation) also works natively now.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._args import check_filter, filter_size, parse_padding, require_floating, require_rank, require_tensor
from .upfirdn2d import upfirdn2d


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if v < 1:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}")
    return v


def _conv(x: torch.Tensor, w: torch.Tensor, stride: int = 1, padding: Sequence[int] | int = 0, groups: int = 1,
          transpose: bool = False, flip_weight: bool = True) -> torch.Tensor:
    """conv2d correlates; `flip_weight=False` asks for a true convolution."""
    kh, kw = w.shape[2], w.shape[3]
    if not flip_weight and (kw > 1 or kh > 1):
        w = w.flip([2, 3])
    w = w.to(x.dtype)
    if transpose:
        return F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return F.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int | Sequence[int] = 0, groups: int = 1, flip_weight: bool = True,
                    flip_filter: bool = False, impl: str = "auto") -> torch.Tensor:
    """Convolve `x` [N, C_in, H, W] with `w` [C_out, C_in/groups, kh, kw], resampling by `up`/`down`
    with the FIR filter `f` (see setup_filter). `padding` is counted on the upsampled input;
    `flip_weight=True` means correlation, like conv2d. `impl` applies to the upfirdn2d steps.
    """
    x = require_tensor("x", x)
    require_rank("x", x, 4, "[batch, channels, height, width]")
    require_floating("x", x)
    w = require_tensor("w", w)
    require_rank("w", w, 4, "[out_channels, in_channels/groups, kh, kw]")
    require_floating("w", w)
    check_filter(f)
    up = _positive_int("up", up)
    down = _positive_int("down", down)
    groups = _positive_int("groups", groups)
    out_channels, in_per_group, kh, kw = (int(s) for s in w.shape)
    if x.shape[1] != in_per_group * groups:
        raise ValueError(f"w: expects {in_per_group * groups} input channels ({in_per_group} x {groups} groups), "
                         f"x has {x.shape[1]}")
    if out_channels % groups:
        raise ValueError(f"groups: {groups} does not divide the {out_channels} output channels of w")
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)

    # Make the FIR step keep the image size (times up, divided by down).
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel, downsampling only: resample first (fewer pixels to convolve).
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel, upsampling only: convolve first, then upsample.
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter,
                         impl=impl)

    # Downsampling only: filter, then a strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter, impl=impl)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (maybe also downsampling): strided transposed convolution, then filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        # Let conv_transpose2d crop what it can (cheaper than producing and discarding it).
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True, flip_weight=not flip_weight)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter, impl=impl)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
        return x

    # No resampling and a symmetric, non-negative padding: a plain convolution.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (asymmetric or negative padding): pad/crop with upfirdn2d, then convolve.
    x = upfirdn2d(x, f if up > 1 else None, up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                  flip_filter=flip_filter, impl=impl)
    x = _conv(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter, impl=impl)
    return x
