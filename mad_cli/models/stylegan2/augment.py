"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative
Adversarial Networks with Limited Data").

Why: every generation of a self-consuming loop trains on a few thousand images or fewer,
and on so little data the discriminator memorises the training set. ADA shows D only
augmented images — reals and fakes alike, in every D evaluation — so D cannot memorise
them, and because every transform is applied only with probability p (the paper measures
no "leaking" into the generated distribution up to p ≈ 0.8) G still learns the
un-augmented images. The controller raises p while D overfits
and lowers it when it does not.

`AugmentPipe` follows the paper's appendix and NVIDIA's stylegan2-ada-pytorch
(`training/augment.py`, read for its semantics; this is our own code):

* pixel blitting: xflip, rotate90, xint (integer translation, uniform in ±xint_max);
* general geometry: isotropic scale (log2-normal), arbitrary rotation (uniform, split into a
  pre- and post-rotation around the anisotropic scaling, each with probability
  1 − sqrt(1 − p) so that "any rotation" has probability p), anisotropic scale, fractional
  translation (normal). All geometric transforms are composed into one inverse affine
  matrix per image and executed once: reflect-pad by what the transform will reach (plus
  the filter's support), 2× upsample with the orthogonal sym6 wavelet low-pass (our
  `stylegan2_ops.upsample2d`), bilinear `grid_sample`, 2× downsample with the same filter
  flipped, crop. Sampling at twice the resolution with a wavelet filter is what keeps the
  transform from aliasing;
* colour: brightness (additive, normal), contrast (log2-normal), luma flip (Householder
  reflection across the plane orthogonal to the luma axis (1,1,1)/√3), hue rotation about
  the luma axis (uniform), saturation (log2-normal scaling away from the luma axis), all
  composed into one 4×4 matrix per image;
* imgfilter: random log2-normal gains for 4 frequency bands of a sym2 wavelet filter bank,
  normalised so the expected power of a 1/f image stays the same;
* noise: additive Gaussian noise with σ = |N(0, noise_std²)| per image;
* cutout: a square of side cutout_size (relative) at a uniform centre is zeroed.

Each transform is applied to an image with probability `p × multiplier`, drawn
independently per image; `PRESETS` holds NVIDIA's `--augpipe` multipliers and the
constructor defaults are NVIDIA's parameter values.

Our deliberate differences:

* An image that no transform of a stage selected leaves that stage bit-identical (per-image
  `torch.where`): at p = 0 the pipe is exactly the identity. NVIDIA always runs the
  resampling round trip once geometric multipliers are set, which changes pixels by float
  rounding even at p = 0. The geometric stage (whose padding needs a host sync anyway) is
  skipped when no image of the batch needs it, imgfilter too but only on CPU (on CUDA it is
  computed and discarded rather than stall on a sync); either way the result is the same.
* imgfilter pads with a true (repeating) reflection, so it also works on images smaller
  than its 43-tap filter (16² digits); NVIDIA's single reflect pad needs ≥ 22 pixels.
* `p` starts at 0 (NVIDIA: 1, always overwritten by their training loop), and the
  controller clamps it to [0, 1] (NVIDIA only at 0; above 1 every transform already fires
  always, so the only effect of NVIDIA's overshoot is a slower way back down).

Kept from NVIDIA although it looks odd: flips and quarter turns go through the same 2×
resampler as the general transforms. The sym6 round trip is exact for even shifts of the 2×
grid but a mirror image lands on odd ones, so flipped images come out slightly low-passed
(≤ 0.06 off on smooth images, up to 0.3 on white noise, in [-1, 1] units). Our outputs
match NVIDIA's AugmentPipe to ≤ 5e-5 for every preset, RGB and grey, given the same random
draws (checked once against their code; their code is not part of this repository).

Grey images (1 channel), as NVIDIA: a grey value g is treated as the colour (g, g, g), the
4×4 colour matrix applied, and the three outputs averaged back to one channel. So
brightness and contrast act as on RGB, luma flip negates the image (g → −g, i.e. inverts
it around mid-grey in our [-1, 1] range), and hue and saturation — which leave the luma
axis unchanged — are neither drawn nor applied. Geometry, imgfilter, noise and cutout act
on every channel alike.

Randomness: every draw comes from torch's global generator on the images' device, in a
fixed order and amount that do not depend on p or on which images were selected; the
training loop re-seeds that generator per chunk, so resume is exact.

Second-order gradients (R1 under geometric augmentation): R1 differentiates D(aug(x)) with
respect to x and then differentiates that gradient again, so `grid_sample` needs a double
backward with respect to its input image. NVIDIA ships `grid_sample_gradfix` because the
PyTorch of 2020 had none. torch 2.14 defines it natively (`grid_sampler_2d_double_backward`
in derivatives.yaml); torch 2.11 does not (measured on an H200). `grid_sample.grid_sample`
uses the native one where the probe finds it and a two-function fallback otherwise;
tests/test_augment.py runs `gradgradcheck` on both paths. Every other op here (upfirdn2d,
conv2d, pad, matmul, where) is differentiable to any order.

See `AdaController` for the heuristic that adjusts p, and `configs.resolve_augment_config` /
`build_augment` for the flags (`--aug/--augpipe/--p/--target`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mad_cli.errors import MadError
from mad_cli.models.stylegan2.configs import DEFAULT_AUGPIPE
from mad_cli.models.stylegan2.grid_sample import grid_sample
from stylegan2_ops import downsample2d, setup_filter, upsample2d

# Low-pass decomposition filters of two orthogonal wavelets (Daubechies' symlets; the
# published coefficients, as in PyWavelets). sym6 resamples the geometric transforms,
# sym2 builds the imgfilter bank.
SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)

_BLIT = ("xflip", "rotate90", "xint")
_GEOM = ("scale", "rotate", "aniso", "xfrac")
_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")

#: NVIDIA's `--augpipe` presets: which transforms run (multiplier 1), all others off.
PRESETS: dict[str, tuple[str, ...]] = {
    "blit": _BLIT,
    "geom": _GEOM,
    "color": _COLOR,
    "filter": ("imgfilter",),
    "noise": ("noise",),
    "cutout": ("cutout",),
    "bg": _BLIT + _GEOM,
    "bgc": _BLIT + _GEOM + _COLOR,
    "bgcf": _BLIT + _GEOM + _COLOR + ("imgfilter",),
    "bgcfn": _BLIT + _GEOM + _COLOR + ("imgfilter", "noise"),
    "bgcfnc": _BLIT + _GEOM + _COLOR + ("imgfilter", "noise", "cutout"),
}

#: Relative power of the 4 imgfilter bands in a typical (1/f) image: gains are normalised
#: against it so that filtering changes the spectrum's shape, not the image's energy.
_EXPECTED_BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)


def imgfilter_bank(lowpass: Sequence[float] = SYM2, bands: int = 4) -> np.ndarray:
    """Band-pass filters splitting the spectrum into `bands` octaves, finest last ([bands, taps]).

    Built like a wavelet packet: start from a unit impulse in band 0; at each level every
    filter so far is stretched ×2 (zeros between taps) and convolved with the low-pass
    product filter H(z)H(z⁻¹)/2, and the new band gets the high-pass product
    H(−z)H(−z⁻¹)/2 centred. The rows sum to a unit impulse (with gains 1 the bank is the
    identity), and every row is symmetric, so correlation and convolution agree.
    """
    lo = np.asarray(lowpass, dtype=np.float64)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2 = np.convolve(lo, lo[::-1]) / 2
    hi2 = np.convolve(hi, hi[::-1]) / 2
    bank = np.zeros([bands, 1])
    bank[0, 0] = 1
    for band in range(1, bands):
        stretched = np.zeros([bands, 2 * bank.shape[1] - 1])
        stretched[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo2) for row in stretched])
        start = (bank.shape[1] - hi2.size) // 2
        bank[band, start : start + hi2.size] += hi2
    return bank


# ---- batched homogeneous matrices (per-image parameters -> [N, k, k]) -----------------------


def _eye(n: int, k: int, device: torch.device) -> torch.Tensor:
    return torch.eye(k, device=device).expand(n, k, k).clone()


def _translate2(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(tx.shape[0], 3, tx.device)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale2(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(sx.shape[0], 3, sx.device)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2(theta: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise rotation by theta in (x right, y down) pixel coordinates."""
    m = _eye(theta.shape[0], 3, theta.device)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _const3(rows: Sequence[Sequence[float]], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, device=device)


def _translate3(t: torch.Tensor) -> torch.Tensor:
    m = _eye(t.shape[0], 4, t.device)
    m[:, :3, 3] = t[:, None]
    return m


def _scale3(s: torch.Tensor) -> torch.Tensor:
    m = _eye(s.shape[0], 4, s.device)
    idx = torch.arange(3, device=s.device)
    m[:, idx, idx] = s[:, None]
    return m


def _rotate_about(axis: Sequence[float], theta: torch.Tensor) -> torch.Tensor:
    """Rotation by theta about the unit `axis` (Rodrigues: cos·I + sin·[v]× + (1 − cos)·vvᵀ)."""
    vx, vy, vz = (float(a) for a in axis)
    cross = torch.tensor([[0, -vz, vy], [vz, 0, -vx], [-vy, vx, 0]], device=theta.device)
    outer = torch.tensor([[a * b for b in (vx, vy, vz)] for a in (vx, vy, vz)], device=theta.device)
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    m = _eye(theta.shape[0], 4, theta.device)
    m[:, :3, :3] = c * torch.eye(3, device=theta.device) + s * cross + (1 - c) * outer
    return m


def _reflect_indices(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source index of every position of a reflect-padded axis, for pads of any length.

    Reflection without repeating the edge sample, continued periodically (period 2·(size−1)),
    so pads longer than the image keep reflecting instead of failing like F.pad does.
    """
    idx = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    x = x.index_select(-1, _reflect_indices(w, pad, pad, x.device))
    return x.index_select(-2, _reflect_indices(h, pad, pad, x.device))


def _maybe_any(mask: torch.Tensor) -> bool:
    """Whether any image needs a stage; on CUDA assume yes rather than stall on a host sync."""
    return True if mask.device.type == "cuda" else bool(mask.any())


class AugmentPipe(torch.nn.Module):
    """ADA's augmentation pipeline: `pipe(images)` for float NCHW images in [-1, 1], 1 or 3 channels.

    Constructor arguments, buffer names (`p`, `Hz_geom`, `Hz_fbank`) and defaults are
    NVIDIA's, so `AugmentPipe(**their_init_kwargs).load_state_dict(their_state)` imports the
    augment pipe of a stylegan2-ada-pytorch / stylegan3 pickle, p included. A multiplier
    (xflip, …, cutout) is that transform's probability per image relative to `p`; the
    other arguments are the paper's distributions (stds in log2 units where noted).
    """

    def __init__(
        self,
        xflip: float = 0, rotate90: float = 0, xint: float = 0, xint_max: float = 0.125,
        scale: float = 0, rotate: float = 0, aniso: float = 0, xfrac: float = 0,
        scale_std: float = 0.2, rotate_max: float = 1, aniso_std: float = 0.2, xfrac_std: float = 0.125,
        brightness: float = 0, contrast: float = 0, lumaflip: float = 0, hue: float = 0, saturation: float = 0,
        brightness_std: float = 0.2, contrast_std: float = 0.5, hue_max: float = 1, saturation_std: float = 1,
        imgfilter: float = 0, imgfilter_bands: Sequence[float] = (1, 1, 1, 1), imgfilter_std: float = 1,
        noise: float = 0, cutout: float = 0, noise_std: float = 0.1, cutout_size: float = 0.5,
    ):
        super().__init__()
        self.register_buffer("p", torch.zeros([]))
        self.xflip, self.rotate90, self.xint, self.xint_max = float(xflip), float(rotate90), float(xint), float(xint_max)
        self.scale, self.rotate, self.aniso, self.xfrac = float(scale), float(rotate), float(aniso), float(xfrac)
        self.scale_std, self.rotate_max = float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness, self.contrast, self.lumaflip = float(brightness), float(contrast), float(lumaflip)
        self.hue, self.saturation = float(hue), float(saturation)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.hue_max, self.saturation_std = float(hue_max), float(saturation_std)
        self.imgfilter, self.imgfilter_bands, self.imgfilter_std = float(imgfilter), [float(b) for b in imgfilter_bands], float(imgfilter_std)
        self.noise, self.cutout, self.noise_std, self.cutout_size = float(noise), float(cutout), float(noise_std), float(cutout_size)
        self.register_buffer("Hz_geom", setup_filter(list(SYM6)))
        self.register_buffer("Hz_fbank", torch.as_tensor(imgfilter_bank(SYM2), dtype=torch.float32))
        if len(self.imgfilter_bands) != self.Hz_fbank.shape[0]:
            raise ValueError(f"imgfilter_bands needs {self.Hz_fbank.shape[0]} values, got {len(self.imgfilter_bands)}")

    def extra_repr(self) -> str:
        on = [k for k in PRESETS["bgcfnc"] if getattr(self, k) > 0]
        return f"transforms={on}"

    # ---- drawing -----------------------------------------------------------------------

    def _chosen(self, multiplier: float | torch.Tensor, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """Per-image Bernoulli(multiplier × p) selection (one uniform draw per entry)."""
        return torch.rand(list(shape), device=device) < multiplier * self.p

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"images must be [N, 1 or 3, H, W], got {getattr(images, 'shape', type(images))}")
        images = self._geometric(images)
        images = self._color(images)
        if self.imgfilter > 0:
            images = self._filter(images)
        if self.noise > 0:
            images = self._noise(images)
        if self.cutout > 0:
            images = self._cutout(images)
        return images

    # ---- geometry ----------------------------------------------------------------------

    def _geometric_matrix(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """The inverse transform (output pixel → input pixel, centred coordinates) per image."""
        if not any(getattr(self, k) > 0 for k in _BLIT + _GEOM):
            return None
        G = _eye(n, 3, device)
        zeros, ones = torch.zeros(n, device=device), torch.ones(n, device=device)
        if self.xflip > 0:
            flip = torch.floor(torch.rand(n, device=device) * 2)
            flip = torch.where(self._chosen(self.xflip, [n], device), flip, zeros)
            G = G @ _scale2(1 - 2 * flip, ones)
        if self.rotate90 > 0:
            quarter = torch.floor(torch.rand(n, device=device) * 4)
            quarter = torch.where(self._chosen(self.rotate90, [n], device), quarter, zeros)
            G = G @ _rotate2(math.pi / 2 * quarter)
        if self.xint > 0:
            t = (torch.rand([n, 2], device=device) * 2 - 1) * self.xint_max
            t = torch.where(self._chosen(self.xint, [n, 1], device), t, torch.zeros_like(t))
            G = G @ _translate2(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height))
        if self.scale > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.scale_std)
            s = torch.where(self._chosen(self.scale, [n], device), s, ones)
            G = G @ _scale2(1 / s, 1 / s)
        # Two independent rotations, each with 1 − sqrt(1 − p): P(at least one) = p, and a
        # rotation on both sides of the anisotropic scale makes its axis arbitrary.
        p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))
        if self.rotate > 0:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(torch.rand(n, device=device) < p_rot, theta, zeros)
            G = G @ _rotate2(theta)
        if self.aniso > 0:
            s = torch.exp2(torch.randn(n, device=device) * self.aniso_std)
            s = torch.where(self._chosen(self.aniso, [n], device), s, ones)
            G = G @ _scale2(1 / s, s)
        if self.rotate > 0:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(torch.rand(n, device=device) < p_rot, theta, zeros)
            G = G @ _rotate2(theta)
        if self.xfrac > 0:
            t = torch.randn([n, 2], device=device) * self.xfrac_std
            t = torch.where(self._chosen(self.xfrac, [n, 1], device), t, torch.zeros_like(t))
            G = G @ _translate2(-t[:, 0] * width, -t[:, 1] * height)
        return G

    def _geometric(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        device = images.device
        G = self._geometric_matrix(n, h, w, device)
        if G is None:
            return images
        moved = (G != torch.eye(3, device=device)).any(dim=2).any(dim=1)
        if not bool(moved.any()):  # the padding below needs a host sync anyway
            return images
        original = images
        pad = self.Hz_geom.shape[0] // 4  # margin the resampling filters need, in input pixels

        # Reflect-pad by how far outside the image the transformed corners reach (plus the
        # filter support), so grid_sample reads mirrored content rather than black borders.
        cx, cy = (w - 1) / 2, (h - 1) / 2
        corners = _const3([[-cx, cx, cx, -cx], [-cy, -cy, cy, cy], [1, 1, 1, 1]], device)
        reach = (G @ corners)[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, batch·corner]
        margin = torch.cat([-reach, reach]).amax(dim=1)  # x0, y0, x1, y1
        margin = margin + torch.tensor([2 * pad - cx, 2 * pad - cy] * 2, device=device)
        margin = torch.minimum(margin.clamp(min=0), torch.tensor([w - 1, h - 1] * 2, device=device, dtype=margin.dtype))
        mx0, my0, mx1, my1 = (int(v) for v in margin.ceil().tolist())
        images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
        G = _const3([[1, 0, (mx0 - mx1) / 2], [0, 1, (my0 - my1) / 2], [0, 0, 1]], device) @ G

        # Resample at twice the resolution: upsample, warp, downsample (filter flipped, the adjoint).
        images = upsample2d(images, self.Hz_geom, up=2)
        G = _const3([[2, 0, 0], [0, 2, 0], [0, 0, 1]], device) @ G @ _const3([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]], device)
        G = _const3([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], device) @ G @ _const3([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], device)
        out_h, out_w = (h + 2 * pad) * 2, (w + 2 * pad) * 2
        in_h, in_w = images.shape[2], images.shape[3]
        to_unit = _const3([[2 / in_w, 0, 0], [0, 2 / in_h, 0], [0, 0, 1]], device)
        from_unit = _const3([[out_w / 2, 0, 0], [0, out_h / 2, 0], [0, 0, 1]], device)
        theta = (to_unit @ G @ from_unit)[:, :2, :].to(images.dtype)
        grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
        images = grid_sample(images, grid)
        images = downsample2d(images, self.Hz_geom, down=2, padding=-2 * pad, flip_filter=True)
        return torch.where(moved[:, None, None, None], images, original)

    # ---- colour ------------------------------------------------------------------------

    def _color(self, images: torch.Tensor) -> torch.Tensor:
        if not any(getattr(self, k) > 0 for k in _COLOR):
            return images
        n, c, h, w = images.shape
        device = images.device
        C = _eye(n, 4, device)
        zeros, ones = torch.zeros(n, device=device), torch.ones(n, device=device)
        luma = torch.tensor([1, 1, 1, 0], dtype=torch.float32, device=device) / math.sqrt(3)
        luma_outer = torch.outer(luma, luma)
        if self.brightness > 0:
            b = torch.randn(n, device=device) * self.brightness_std
            b = torch.where(self._chosen(self.brightness, [n], device), b, zeros)
            C = _translate3(b) @ C
        if self.contrast > 0:
            k = torch.exp2(torch.randn(n, device=device) * self.contrast_std)
            k = torch.where(self._chosen(self.contrast, [n], device), k, ones)
            C = _scale3(k) @ C
        if self.lumaflip > 0:
            flip = torch.floor(torch.rand([n, 1, 1], device=device) * 2)
            flip = torch.where(self._chosen(self.lumaflip, [n, 1, 1], device), flip, torch.zeros_like(flip))
            C = (torch.eye(4, device=device) - 2 * luma_outer * flip) @ C
        if self.hue > 0 and c > 1:
            theta = (torch.rand(n, device=device) * 2 - 1) * math.pi * self.hue_max
            theta = torch.where(self._chosen(self.hue, [n], device), theta, zeros)
            C = _rotate_about((1 / math.sqrt(3),) * 3, theta) @ C
        if self.saturation > 0 and c > 1:
            s = torch.exp2(torch.randn([n, 1, 1], device=device) * self.saturation_std)
            s = torch.where(self._chosen(self.saturation, [n, 1, 1], device), s, torch.ones_like(s))
            # I + (s − 1)(I − vvᵀ): chroma scaled by s, luma kept; exactly I when s = 1.
            C = (torch.eye(4, device=device) + (s - 1) * (torch.eye(4, device=device) - luma_outer)) @ C
        changed = (C != torch.eye(4, device=device)).any(dim=2).any(dim=1)
        C = C.to(images.dtype)
        flat = images.reshape(n, c, h * w)
        if c == 3:
            out = C[:, :3, :3] @ flat + C[:, :3, 3:]
        else:  # grey g as (g, g, g), transformed, averaged back
            gain = C[:, :3, :3].sum(dim=2).mean(dim=1)
            offset = C[:, :3, 3].mean(dim=1)
            out = flat * gain[:, None, None] + offset[:, None, None]
        return torch.where(changed[:, None, None, None], out.reshape(n, c, h, w), images)

    # ---- image-space filtering and corruptions -----------------------------------------------

    def _filter(self, images: torch.Tensor) -> torch.Tensor:
        n, c, h, w = images.shape
        device = images.device
        bands = self.Hz_fbank.shape[0]
        power = torch.tensor(_EXPECTED_BAND_POWER, dtype=torch.float32, device=device)
        gains = torch.ones([n, bands], device=device)
        changed = torch.zeros(n, dtype=torch.bool, device=device)
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = torch.exp2(torch.randn(n, device=device) * self.imgfilter_std)
            chosen = self._chosen(self.imgfilter * band_strength, [n], device)
            t_i = torch.where(chosen, t_i, torch.ones_like(t_i))
            changed = changed | chosen
            t = torch.ones([n, bands], device=device)
            t[:, i] = t_i
            gains = gains * t / (power * t.square()).sum(dim=-1, keepdim=True).sqrt()
        if not _maybe_any(changed):
            return images
        taps = (gains @ self.Hz_fbank).to(images.dtype)  # [n, taps], symmetric
        taps = taps.repeat_interleave(c, dim=0)[:, None, None, :]  # one filter per (image, channel)
        half = self.Hz_fbank.shape[1] // 2
        x = _reflect_pad(images.reshape(1, n * c, h, w), half)
        x = F.conv2d(x, taps, groups=n * c)
        x = F.conv2d(x, taps.transpose(2, 3), groups=n * c)
        return torch.where(changed[:, None, None, None], x.reshape(n, c, h, w), images)

    def _noise(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        device = images.device
        sigma = torch.randn([n, 1, 1, 1], device=device).abs() * self.noise_std
        chosen = self._chosen(self.noise, [n, 1, 1, 1], device)
        noise = torch.randn(images.shape, device=device) * sigma
        return torch.where(chosen, images + noise.to(images.dtype), images)

    def _cutout(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        device = images.device
        chosen = self._chosen(self.cutout, [n, 1, 1, 1], device)
        size = torch.where(chosen, self.cutout_size, 0.0)  # [n, 1, 1, 1]
        centre = torch.rand([n, 2, 1, 1], device=device)
        xs = (torch.arange(w, device=device).reshape(1, 1, 1, -1) + 0.5) / w
        ys = (torch.arange(h, device=device).reshape(1, 1, -1, 1) + 0.5) / h
        inside = ((xs - centre[:, 0:1]).abs() < size / 2) & ((ys - centre[:, 1:2]).abs() < size / 2)
        return torch.where(inside, torch.zeros_like(images), images)


# ---- the adjustment heuristic ------------------------------------------------------------------


class AdaController:
    """Adjusts `pipe.p` from how sure D is about the reals (the paper's overfitting heuristic r_t).

    r_t = E[sign(D(x_real))] over the real logits of the last `interval` minibatches: near 0
    when D cannot tell reals from fakes, near 1 when it has memorised the reals. Every
    `interval` minibatches p moves by sign(r_t − target) · batch·interval / (kimg·1000),
    i.e. it can go from 0 to 1 in `kimg` thousand images, and is clamped to [0, 1].

    Use (see also the module docstring):
        ctrl.accumulate(real_logits)   # every D evaluation of reals (Dmain and Dreg phases)
        ctrl.step(reduce)              # once after every minibatch (after the optimiser steps)

    Everything stays on the device between adjustments (no host syncs); `reduce` is an
    in-place sum across processes (e.g. ``torch.distributed.all_reduce``) so that every
    rank computes the same p. `state_dict()` holds plain numbers only; restoring it (with
    the RNG states) continues a run bit-identically.
    """

    def __init__(self, pipe: AugmentPipe, batch_size: int, target: float = 0.6, interval: int = 4, kimg: float = 500):
        if not 0 <= target <= 1:
            raise ValueError(f"target must be in [0, 1], got {target}")
        if batch_size < 1 or interval < 1 or kimg <= 0:
            raise ValueError("batch_size and interval must be >= 1 and kimg > 0")
        self.pipe = pipe
        self.batch_size, self.target, self.interval, self.kimg = int(batch_size), float(target), int(interval), float(kimg)
        device = pipe.p.device
        self._sum = torch.zeros([], dtype=torch.float64, device=device)
        self._count = torch.zeros([], dtype=torch.float64, device=device)
        self._rt = torch.full([], float("nan"), dtype=torch.float64, device=device)
        self.batches = 0  # minibatches seen; p adjusts when this reaches a multiple of interval
        self.adjustments = 0

    @property
    def step_size(self) -> float:
        return self.batch_size * self.interval / (self.kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of this process's real logits to the current interval's statistic."""
        signs = real_logits.detach().sign().to(torch.float64)
        self._sum += signs.sum().to(self._sum.device)
        self._count += signs.numel()

    def step(self, reduce: Callable[[torch.Tensor], Any] | None = None) -> None:
        """Count one finished minibatch; every `interval`-th one, adjust p and start a new interval."""
        self.batches += 1
        if self.batches % self.interval:
            return
        stats = torch.stack([self._sum, self._count])
        if reduce is not None:
            reduce(stats)  # in-place sum over processes
        total, count = stats[0], stats[1]
        rt = total / count.clamp(min=1)
        direction = torch.where(count > 0, torch.sign(rt - self.target), torch.zeros_like(rt))
        p = self.pipe.p
        p.copy_((p + (direction * self.step_size).to(p.dtype)).clamp(0, 1))
        self._rt = torch.where(count > 0, rt, torch.full_like(rt, float("nan")))
        self._sum.zero_()
        self._count.zero_()
        self.adjustments += 1

    def tick_stats(self) -> dict[str, float | None]:
        """For the per-tick log line (one host sync): current p and the last r_t (None before the first)."""
        rt = float(self._rt)
        return {"augment_p": float(self.pipe.p), "ada_rt": None if math.isnan(rt) else rt}

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers (JSON-able, exact: p is a float32 value, the sums are integers)."""
        rt = float(self._rt)
        return {
            "p": float(self.pipe.p), "sum": float(self._sum), "count": float(self._count), "batches": self.batches,
            "adjustments": self.adjustments, "rt": None if math.isnan(rt) else rt,
            "target": self.target, "interval": self.interval, "kimg": self.kimg, "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore p, the running interval and the counters (settings stay as constructed)."""
        self.pipe.p.fill_(float(state["p"]))
        self._sum.fill_(float(state["sum"]))
        self._count.fill_(float(state["count"]))
        rt = state.get("rt")
        self._rt.fill_(float("nan") if rt is None else float(rt))
        self.batches = int(state["batches"])
        self.adjustments = int(state.get("adjustments", 0))


# ---- flags -> pipe + controller ------------------------------------------------------------------


def make_augment_pipe(augpipe: str = DEFAULT_AUGPIPE, p: float = 0.0, **overrides: Any) -> AugmentPipe:
    """NVIDIA's preset `augpipe` (multiplier 1 for its transforms, NVIDIA's parameter values) at probability p."""
    if augpipe not in PRESETS:
        raise MadError(f"--augpipe {augpipe}: unknown pipeline; choose one of {', '.join(PRESETS)}")
    pipe = AugmentPipe(**{name: 1 for name in PRESETS[augpipe]}, **overrides)
    pipe.p.fill_(float(p))
    return pipe


def build_augment(config: dict[str, Any], batch_size: int, device: torch.device | str = "cpu") -> tuple[AugmentPipe | None, AdaController | None]:
    """The pipe (None for noaug) and the controller (ada only) for a `resolve_augment_config` entry."""
    if config.get("aug", "noaug") == "noaug":
        return None, None
    pipe = make_augment_pipe(config["augpipe"], float(config.get("p", 0.0))).to(device)
    if config["aug"] != "ada":
        return pipe, None
    ctrl = AdaController(pipe, batch_size=batch_size, target=float(config["target"]),
                         interval=int(config.get("ada_interval", 4)), kimg=float(config.get("ada_kimg", 500)))
    return pipe, ctrl
