"""ADA: the augmentation pipe (each transform's effect, identity at p = 0, grey and RGB),
the p controller, exact save/restore, and second-order gradients through grid_sample."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mad_cli.errors import MadError
from mad_cli.models.stylegan2.augment import (
    PRESETS,
    SYM2,
    SYM6,
    AdaController,
    AugmentPipe,
    build_augment,
    imgfilter_bank,
    make_augment_pipe,
)
from mad_cli.models.stylegan2.configs import resolve_augment_config
from mad_cli.models.stylegan2.grid_sample import grid_sample


@pytest.fixture(autouse=True)
def _one_thread_fixed_seed():
    """The pipe draws from the global RNG: seed it, so every test sees the same draws."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield
    torch.set_num_threads(before)


def _pipe(p: float = 1.0, **kwargs) -> AugmentPipe:
    pipe = AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _images(n: int = 16, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand([n, channels, size, size], generator=g) * 2 - 1


def _smooth(n: int, channels: int = 3, size: int = 32, seed: int = 0, sigma: float = 2.0) -> torch.Tensor:
    """Band-limited random images (Gaussian-blurred noise scaled to [-1, 1])."""
    x = _images(n, channels, size, seed)
    k = torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float32) / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(x, [6, 6, 6, 6], mode="circular").reshape(n * channels, 1, size + 12, size + 12)
    x = F.conv2d(F.conv2d(x, k.reshape(1, 1, 1, -1)), k.reshape(1, 1, -1, 1)).reshape(n, channels, size, size)
    return x / x.abs().amax(dim=(1, 2, 3), keepdim=True)


def _blob(n: int, size: int, sx: float, sy: float, cx: float | None = None, cy: float | None = None) -> torch.Tensor:
    """n copies of an axis-aligned Gaussian blob (values in [0, 1]) on a black [-1] background."""
    c = (size - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    cx = c if cx is None else cx
    cy = c if cy is None else cy
    img = torch.exp(-0.5 * (((xs - cx) / sx) ** 2 + ((ys - cy) / sy) ** 2))
    return (img * 2 - 1).expand(n, 1, size, size).clone()


def _moments(images: torch.Tensor, radius: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mass, centroid [n, 2] (x, y) and covariance [n, 2, 2] of (image + 1) per image.

    `radius` counts only the disc around the centre: reflect padding puts mirrored copies of
    a blob 31 px away, and a rotation brings the image corners within reach of them.
    """
    m = (images[:, 0] + 1).clamp(min=0)
    size = m.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=m.dtype), torch.arange(size, dtype=m.dtype), indexing="ij")
    if radius is not None:
        c = (size - 1) / 2
        m = m * (((xs - c) ** 2 + (ys - c) ** 2) <= radius**2)
    mass = m.sum(dim=(1, 2))
    mx = (m * xs).sum(dim=(1, 2)) / mass
    my = (m * ys).sum(dim=(1, 2)) / mass
    dx, dy = xs - mx[:, None, None], ys - my[:, None, None]
    cov = torch.stack([
        torch.stack([(m * dx * dx).sum((1, 2)), (m * dx * dy).sum((1, 2))], -1),
        torch.stack([(m * dx * dy).sum((1, 2)), (m * dy * dy).sum((1, 2))], -1),
    ], -2) / mass[:, None, None]
    return mass, torch.stack([mx, my], -1), cov


# ---- p = 0, RNG use, presets --------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_p_zero_is_the_identity_bit_for_bit(preset: str, channels: int) -> None:
    x = _images(8, channels, 16)
    pipe = make_augment_pipe(preset, 0.0)
    y = pipe(x)
    assert torch.equal(y, x) and y.dtype == x.dtype
    # The same draws happen at any p, so the RNG stream (and a resumed run) does not depend on p.
    torch.manual_seed(3)
    pipe(x)
    after_p0 = torch.get_rng_state()
    torch.manual_seed(3)
    pipe.p.fill_(0.7)
    assert not torch.equal(pipe(x), x)
    assert torch.equal(torch.get_rng_state(), after_p0)


def test_presets_match_nvidias_augpipe_specs() -> None:
    blit, geom = {"xflip", "rotate90", "xint"}, {"scale", "rotate", "aniso", "xfrac"}
    color = {"brightness", "contrast", "lumaflip", "hue", "saturation"}
    expected = {
        "blit": blit, "geom": geom, "color": color, "filter": {"imgfilter"}, "noise": {"noise"}, "cutout": {"cutout"},
        "bg": blit | geom, "bgc": blit | geom | color, "bgcf": blit | geom | color | {"imgfilter"},
        "bgcfn": blit | geom | color | {"imgfilter", "noise"}, "bgcfnc": blit | geom | color | {"imgfilter", "noise", "cutout"},
    }
    assert {k: set(v) for k, v in PRESETS.items()} == expected
    pipe = make_augment_pipe("bgc", 0.25)
    assert pipe.p.item() == 0.25 and pipe.xflip == 1 and pipe.imgfilter == 0 and pipe.cutout == 0
    # NVIDIA's parameter values (stylegan2-ada-pytorch AugmentPipe defaults).
    assert (pipe.xint_max, pipe.scale_std, pipe.rotate_max, pipe.aniso_std, pipe.xfrac_std) == (0.125, 0.2, 1, 0.2, 0.125)
    assert (pipe.brightness_std, pipe.contrast_std, pipe.hue_max, pipe.saturation_std) == (0.2, 0.5, 1, 1)
    assert (pipe.imgfilter_bands, pipe.imgfilter_std, pipe.noise_std, pipe.cutout_size) == ([1, 1, 1, 1], 1, 0.1, 0.5)


def test_the_cli_offers_exactly_the_presets() -> None:
    from mad_cli.models.stylegan2.configs import AUGPIPE_NAMES

    assert AUGPIPE_NAMES == tuple(PRESETS)


def test_state_dict_uses_nvidias_buffer_names_and_loads_their_p() -> None:
    pipe = make_augment_pipe("bgc")
    state = pipe.state_dict()
    assert set(state) == {"p", "Hz_geom", "Hz_fbank"}
    assert state["Hz_geom"].shape == (12,) and state["Hz_fbank"].shape == (4, 43)
    theirs = {k: v.clone() for k, v in state.items()}
    theirs["p"] = torch.tensor(0.3125)
    other = make_augment_pipe("bgc")
    other.load_state_dict(theirs)
    assert other.p.item() == 0.3125


def test_wavelet_filters_are_orthonormal_and_the_bank_is_a_partition_of_unity() -> None:
    for taps in (SYM2, SYM6):
        h = np.asarray(taps)
        assert h.sum() == pytest.approx(math.sqrt(2), abs=1e-12)
        for shift in range(0, h.size // 2):
            dot = float(np.dot(h[2 * shift :], h[: h.size - 2 * shift]))
            assert dot == pytest.approx(1.0 if shift == 0 else 0.0, abs=1e-12)
    bank = imgfilter_bank()
    assert bank.shape == (4, 43)
    impulse = np.zeros(43)
    impulse[21] = 1
    np.testing.assert_allclose(bank.sum(axis=0), impulse, atol=1e-12)
    np.testing.assert_allclose(bank, bank[:, ::-1], atol=1e-15)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1 or 3"):
        _pipe(xflip=1)(torch.zeros(2, 4, 8, 8))
    with pytest.raises(MadError, match="--augpipe nope"):
        make_augment_pipe("nope")


# ---- blitting ----------------------------------------------------------------------------------------


# Flips and quarter turns go through the same 2x resampler as every geometric transform
# (as in NVIDIA's pipe, which ours matches to 1e-5 with the same random draws). The sym6
# round trip is exact for even shifts of the 2x grid, but a mirror image lands on odd ones,
# so a flipped image comes out slightly low-passed: on band-limited images the result is the
# flip to within 0.06 (the other candidates are ≥ 0.8 away); on white noise up to 0.3.
_BLIT_TOL = 0.08


def test_xflip_flips_some_images_and_leaves_the_others() -> None:
    x = _smooth(32)
    y = _pipe(xflip=1)(x)
    flipped = [(y[i] - x[i].flip(-1)).abs().max() < _BLIT_TOL for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 4 <= sum(flipped) <= 28


def test_rotate90_rotates_by_multiples_of_90_degrees() -> None:
    x = _smooth(32)
    y = _pipe(rotate90=1)(x)
    seen = set()
    for i in range(32):
        ks = [k for k in range(4) if (y[i] - torch.rot90(x[i], k, dims=(1, 2))).abs().max() < _BLIT_TOL]
        assert len(ks) == 1, i
        assert ks != [0] or torch.equal(y[i], x[i])  # no turn: untouched, bit for bit
        seen.add(ks[0])
    assert seen == {0, 1, 2, 3}


def test_xint_translates_by_whole_pixels_within_xint_max() -> None:
    size = 32
    x = _images(24, size=size)
    y = _pipe(xint=1)(x)
    limit = round(0.125 * size)
    moved = 0
    for i in range(24):
        found = None
        for dy in range(-limit, limit + 1):
            for dx in range(-limit, limit + 1):
                a = y[i][:, limit : size - limit, limit : size - limit]
                b = x[i][:, limit - dy : size - limit - dy, limit - dx : size - limit - dx]
                if (a - b).abs().max() < 1e-4:
                    found = (dx, dy)
        assert found is not None, f"image {i} is not an integer translation"
        moved += found != (0, 0)
    assert moved >= 12


# ---- general geometry: shapes kept, mass moved as the transform says --------------------------------


def test_xfrac_moves_the_centroid_and_keeps_the_shape() -> None:
    x = _blob(64, 32, 2.5, 2.5)
    y = _pipe(xfrac=1)(x)
    assert y.shape == x.shape
    _, c0, cov0 = _moments(x)
    mass, c1, cov1 = _moments(y)
    shift = c1 - c0
    assert shift.abs().max() > 2  # fractional translations, std 0.125 · 32 = 4 px
    inside = (shift.abs() < 6).all(dim=1)  # blobs that stayed clear of the border
    assert inside.sum() >= 30
    assert shift[inside].std().item() == pytest.approx(4.0, rel=0.35)
    torch.testing.assert_close(cov1[inside], cov0[inside], atol=0.15, rtol=0.05)
    fractional = (shift[inside] - shift[inside].round()).abs().max()
    assert fractional > 0.1


def test_scale_changes_the_size_isotropically_about_the_centre() -> None:
    x = _blob(64, 32, 3.0, 3.0)
    y = _pipe(scale=1)(x)
    assert y.shape == x.shape
    _, c0, cov0 = _moments(x)
    _, c1, cov1 = _moments(y)
    torch.testing.assert_close(c1, c0, atol=0.05, rtol=0)  # scaling about the image centre
    ratio = (cov1[:, 0, 0] / cov0[:, 0, 0]).sqrt()  # = s
    torch.testing.assert_close(cov1[:, 0, 0], cov1[:, 1, 1], rtol=0.02, atol=0.02)
    assert cov1[:, 0, 1].abs().max() < 0.05
    log2s = ratio.log2()
    assert log2s.std().item() == pytest.approx(0.2, rel=0.3)  # scale_std = 0.2 (log2)


def test_rotate_turns_an_elongated_blob_and_keeps_its_extent() -> None:
    x = _blob(48, 32, 4.0, 1.5)
    y = _pipe(rotate=1)(x)
    assert y.shape == x.shape
    _, c0, cov0 = _moments(x, radius=14)
    _, c1, cov1 = _moments(y, radius=14)
    # About the centre, up to the resampler's phase: sym6 is not symmetric, so at arbitrary
    # angles the round trip shifts by a fraction of a pixel (as in NVIDIA's pipe).
    torch.testing.assert_close(c1, c0, atol=0.2, rtol=0)
    ev0, ev1 = torch.linalg.eigvalsh(cov0), torch.linalg.eigvalsh(cov1)
    torch.testing.assert_close(ev1, ev0, rtol=0.05, atol=0.05)
    angle = 0.5 * torch.atan2(2 * cov1[:, 0, 1], cov1[:, 0, 0] - cov1[:, 1, 1])  # principal axis
    assert (angle.abs() > math.radians(30)).sum() >= 10


def test_aniso_stretches_one_axis_and_squeezes_the_other() -> None:
    x = _blob(48, 32, 2.0, 2.0)  # small enough that stretched tails stay clear of the border
    y = _pipe(aniso=1)(x)
    _, c0, cov0 = _moments(x)
    _, c1, cov1 = _moments(y)
    torch.testing.assert_close(c1, c0, atol=0.05, rtol=0)
    area0 = torch.linalg.det(cov0).sqrt()
    area1 = torch.linalg.det(cov1).sqrt()
    torch.testing.assert_close(area1, area0, rtol=0.04, atol=0)  # s · 1/s: area kept
    aspect = (cov1[:, 0, 0] / cov1[:, 1, 1]).sqrt().log2() / 2  # = log2 s
    assert aspect.std().item() == pytest.approx(0.2, rel=0.35)
    assert cov1[:, 0, 1].abs().max() < 0.05  # axis-aligned without rotation


# ---- colour -----------------------------------------------------------------------------------------------


def test_brightness_shifts_every_pixel_of_an_image_by_one_amount() -> None:
    x = _images(256, size=8)
    y = _pipe(brightness=1)(x)
    diff = y - x
    per_image = diff.mean(dim=(1, 2, 3))
    assert (diff - per_image[:, None, None, None]).abs().max() < 1e-5
    assert per_image.std().item() == pytest.approx(0.2, rel=0.15)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)) + per_image)


@pytest.mark.parametrize("channels", [1, 3])
def test_contrast_scales_deviations_from_mid_grey(channels: int) -> None:
    x = _images(256, channels, 8)
    y = _pipe(contrast=1)(x)
    k = (y * x).sum(dim=(1, 2, 3)) / x.square().sum(dim=(1, 2, 3))  # least-squares scale
    torch.testing.assert_close(y, x * k[:, None, None, None], atol=1e-5, rtol=1e-5)
    assert (k > 0).all()
    assert k.log2().std().item() == pytest.approx(0.5, rel=0.15)


def test_lumaflip_reflects_rgb_across_the_luma_axis() -> None:
    x = _images(32, 3, 8)
    y = _pipe(lumaflip=1)(x)
    luma = x.sum(dim=1, keepdim=True)
    reflected = x - 2 / 3 * luma  # x − 2 (x·v) v with v = (1, 1, 1)/√3
    flipped = [(y[i] - reflected[i]).abs().max() < 1e-5 for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 4 <= sum(flipped) <= 28
    i = flipped.index(True)
    torch.testing.assert_close(y[i].sum(dim=0), -x[i].sum(dim=0))  # luma negated
    torch.testing.assert_close(y[i] - y[i].mean(0), x[i] - x[i].mean(0))  # chroma kept


def test_hue_rotates_chroma_about_the_luma_axis() -> None:
    x = _images(32, 3, 8)
    y = _pipe(hue=1)(x)
    luma_x, luma_y = x.mean(dim=1), y.mean(dim=1)
    torch.testing.assert_close(luma_y, luma_x, atol=1e-5, rtol=0)
    chroma_x, chroma_y = x - luma_x[:, None], y - luma_y[:, None]
    torch.testing.assert_close(chroma_y.norm(dim=1), chroma_x.norm(dim=1), atol=1e-5, rtol=1e-5)
    # A rotation: the angle between chroma vectors is the same for every pixel of an image.
    cos = (chroma_x * chroma_y).sum(1) / (chroma_x.norm(dim=1) * chroma_y.norm(dim=1))
    assert (cos - cos.mean(dim=(1, 2), keepdim=True)).abs().max() < 1e-3
    assert (cos.mean(dim=(1, 2)) < 0.5).sum() >= 8  # uniform angles: many turn more than 60°


def test_saturation_scales_chroma_and_keeps_luma() -> None:
    x = _images(64, 3, 8)
    y = _pipe(saturation=1)(x)
    luma_x, luma_y = x.mean(dim=1), y.mean(dim=1)
    torch.testing.assert_close(luma_y, luma_x, atol=1e-5, rtol=0)
    chroma_x, chroma_y = x - luma_x[:, None], y - luma_y[:, None]
    s = (chroma_x * chroma_y).sum(dim=(1, 2, 3)) / chroma_x.square().sum(dim=(1, 2, 3))
    torch.testing.assert_close(chroma_y, chroma_x * s[:, None, None, None], atol=1e-5, rtol=1e-5)
    assert s.log2().std().item() == pytest.approx(1.0, rel=0.25)  # saturation_std = 1 (log2)


def test_colour_transforms_on_grey_follow_the_luma_axis() -> None:
    x = _images(32, 1, 8)
    # Hue and saturation leave (g, g, g) unchanged: not even drawn for grey images.
    state = torch.get_rng_state()
    assert torch.equal(_pipe(hue=1, saturation=1)(x), x)
    assert torch.equal(torch.get_rng_state(), state)
    y = _pipe(lumaflip=1)(x)  # the reflection of (g, g, g) is (−g, −g, −g): a negative
    negated = [torch.equal(y[i], -x[i]) or (y[i] + x[i]).abs().max() < 1e-6 for i in range(32)]
    kept = [torch.equal(y[i], x[i]) for i in range(32)]
    assert all(a or b for a, b in zip(negated, kept)) and 4 <= sum(negated) <= 28
    y = _pipe(brightness=1)(x)
    shift = (y - x).mean(dim=(1, 2, 3))
    assert (y - x - shift[:, None, None, None]).abs().max() < 1e-5 and shift.abs().max() > 0.1


# ---- filtering and corruptions --------------------------------------------------------------------------


def test_imgfilter_with_unit_gains_is_the_identity_and_bands_reshape_the_spectrum() -> None:
    x = _images(4, 3, 16)
    torch.testing.assert_close(_pipe(imgfilter=1, imgfilter_std=0)(x), x, atol=1e-5, rtol=0)
    # Only the finest band: a flat image keeps its shape (every pixel scaled alike)...
    flat = torch.full([64, 1, 16, 16], 0.5)
    y = _pipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 1])(flat)
    assert (y - y.mean(dim=(2, 3), keepdim=True)).abs().max() < 1e-5
    # ...while pixel noise (mostly fine detail) gets louder or quieter by the band's gain.
    noise = torch.randn([64, 1, 16, 16], generator=torch.Generator().manual_seed(1))
    y = _pipe(imgfilter=1, imgfilter_bands=[0, 0, 0, 1])(noise)
    ratio = y.std(dim=(1, 2, 3)) / noise.std(dim=(1, 2, 3))
    assert ratio.max() > 1.5 and ratio.min() < 0.75


def test_noise_adds_gaussian_noise_of_the_configured_std() -> None:
    x = _images(256, 3, 16)
    y = _pipe(noise=1)(x)
    residual = y - x
    sigma = residual.std(dim=(1, 2, 3))
    assert residual.mean(dim=(1, 2, 3)).abs().max() < 0.05
    # σ = |N(0, 0.1²)| per image: E[σ] = 0.1 · sqrt(2/π).
    assert sigma.mean().item() == pytest.approx(0.1 * math.sqrt(2 / math.pi), rel=0.12)
    assert _pipe(noise=1, noise_std=0.3)(x).sub(x).std(dim=(1, 2, 3)).mean().item() == pytest.approx(0.3 * math.sqrt(2 / math.pi), rel=0.12)


def test_cutout_zeroes_one_square_of_half_the_image_size() -> None:
    size = 32
    x = torch.rand([32, 3, size, size], generator=torch.Generator().manual_seed(2)) * 0.9 + 0.1  # no zeros
    y = _pipe(cutout=1)(x)
    full = 0
    for i in range(32):
        zero = (y[i] == 0).all(dim=0)
        assert torch.equal(y[i][:, ~zero], x[i][:, ~zero])
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert len(rows) > 0, "p = 1: every image gets a cutout (unless its centre puts it all outside)"
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), "the zeroed region is one rectangle"
        assert len(rows) <= size // 2 and len(cols) <= size // 2
        full += len(rows) == size // 2 and len(cols) == size // 2
    assert full >= 2  # squares that lie entirely inside are exactly 16 × 16


# ---- second-order gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("force_fallback", [False, True], ids=["native-or-fallback", "fallback"])
def test_grid_sample_has_a_double_backward_wrt_the_input(force_fallback: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn([2, 3, 5, 6], dtype=torch.float64, generator=g, requires_grad=True)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.15, 1.1, 0.05]], [[1.2, -0.3, -0.2], [0.25, 0.8, 0.1]]], dtype=torch.float64)
    grid = F.affine_grid(theta, [2, 3, 7, 5], align_corners=False)

    def sample(img: torch.Tensor) -> torch.Tensor:
        return grid_sample(img, grid, force_fallback=force_fallback)

    assert torch.equal(sample(x), F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    assert torch.autograd.gradcheck(sample, (x,))
    assert torch.autograd.gradgradcheck(sample, (x,))


def test_the_fallback_refuses_second_order_gradients_wrt_the_grid() -> None:
    x = torch.randn([1, 1, 4, 4], dtype=torch.float64, requires_grad=True)
    grid = (torch.rand([1, 3, 3, 2], dtype=torch.float64) * 2 - 1).requires_grad_()
    (gx,) = torch.autograd.grad(grid_sample(x, grid, force_fallback=True).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="with respect to the grid"):
        torch.autograd.grad(gx.square().sum(), [x, grid], allow_unused=True)


def test_r1_through_the_geometric_pipe_has_exact_second_order_gradients() -> None:
    pipe = make_augment_pipe("bgc", 1.0).double()
    x = torch.randn([1, 1, 8, 8], dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)

    def augmented(img: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(11)  # the same transform on every evaluation
            return pipe(img)

    assert not torch.equal(augmented(x), x)
    assert torch.autograd.gradgradcheck(augmented, (x,), eps=1e-6, atol=1e-5)
    # The R1 pattern: gradient w.r.t. the real image, then backprop through its square.
    w = torch.randn(64, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    logits = (augmented(x).flatten(1).tanh() @ w).sum()
    (grad,) = torch.autograd.grad(logits, x, create_graph=True)
    grad.square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# ---- the controller -----------------------------------------------------------------------------------------


def _run(ctrl: AdaController, sign: float, minibatches: int, per_batch: int = 8) -> list[float]:
    ps = []
    for _ in range(minibatches):
        ctrl.accumulate(torch.full([per_batch, 1], sign))
        ctrl.step()
        ps.append(ctrl.pipe.p.item())
    return ps


def test_p_rises_when_d_overfits_and_falls_when_it_does_not() -> None:
    pipe = make_augment_pipe("bgc", 0.0)
    ctrl = AdaController(pipe, batch_size=32, target=0.6)
    step = 32 * 4 / 500_000
    ps = _run(ctrl, +1.0, 12)  # D says "real" with full confidence: overfitting
    assert ps[:3] == [0.0, 0.0, 0.0] and ps[3] == pytest.approx(step) and ps[11] == pytest.approx(3 * step)
    assert ctrl.tick_stats() == {"augment_p": pytest.approx(3 * step), "ada_rt": 1.0}
    ps = _run(ctrl, -1.0, 8)  # r_t = −1 < target: p goes back down
    assert ps[-1] == pytest.approx(step, abs=1e-9)
    ps = _run(ctrl, -1.0, 40)
    assert ps[-1] == 0.0 and min(ps) == 0.0  # clamped at 0
    # Mixed signs: r_t = 4/8 = 0.5 < 0.6 → down; 6/8 = 0.75 > 0.6 → up.
    for signs, expected in (([1, 1, 1, -1], 0.5), ([1, 1, 1, 1], 0.75)):
        pipe.p.fill_(0.5)
        ctrl.accumulate(torch.tensor(signs, dtype=torch.float32))
        ctrl.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))
        for _ in range(4):
            ctrl.step()
        assert ctrl.tick_stats()["ada_rt"] == expected
        assert pipe.p.item() == pytest.approx(0.5 + (step if expected > 0.6 else -step))


def test_p_can_go_from_0_to_1_in_500_kimg_and_is_clamped_at_1() -> None:
    pipe = make_augment_pipe("bgc", 0.0)
    ctrl = AdaController(pipe, batch_size=64, target=0.6, interval=4, kimg=500)
    minibatches = 0
    while pipe.p.item() < 1.0:
        ctrl.accumulate(torch.ones(2))
        ctrl.step()
        minibatches += 1
    assert minibatches * 64 / 1000 == pytest.approx(500, rel=0.002)
    _run(ctrl, +1.0, 8)
    assert pipe.p.item() == 1.0


def test_an_interval_without_real_logits_leaves_p_alone() -> None:
    pipe = make_augment_pipe("bgc", 0.25)
    ctrl = AdaController(pipe, batch_size=8)
    for _ in range(8):
        ctrl.step()
    assert pipe.p.item() == 0.25 and ctrl.tick_stats()["ada_rt"] is None


def test_reduce_combines_the_statistics_of_all_processes() -> None:
    """Rank 0 sees D overfit, the other rank (three times the logits) does not: the sum decides."""
    pipe = make_augment_pipe("bgc", 0.5)
    ctrl = AdaController(pipe, batch_size=8)
    other_rank = torch.tensor([-12.0, 12.0], dtype=torch.float64)  # sum of signs, count

    def all_reduce(stats: torch.Tensor) -> None:
        stats += other_rank

    for _ in range(4):
        ctrl.accumulate(torch.ones(1))
        ctrl.step(all_reduce)
    assert ctrl.tick_stats()["ada_rt"] == pytest.approx((4 - 12) / 16)
    assert pipe.p.item() < 0.5


def test_save_and_restore_continue_bit_identically() -> None:
    """Pipe + controller + RNG state through a weights_only snapshot: the rest of the run is identical."""

    def fake_d(images: torch.Tensor) -> torch.Tensor:  # a "discriminator" that is fairly sure
        return images.mean(dim=(1, 2, 3)) + 0.3

    def minibatch(pipe: AugmentPipe, ctrl: AdaController, reals: torch.Tensor) -> torch.Tensor:
        out = pipe(reals)
        ctrl.accumulate(fake_d(out))  # Dmain
        ctrl.accumulate(fake_d(pipe(reals)))  # Dreg
        ctrl.step()
        return out

    reals = _images(8, 1, 16)
    torch.manual_seed(0)
    pipe = make_augment_pipe("bgcfnc", 0.0)
    ctrl = AdaController(pipe, batch_size=8, target=0.6, kimg=0.05)  # fast, so p moves within the test
    for _ in range(6):
        minibatch(pipe, ctrl, reals)
    buf = io.BytesIO()
    torch.save({"augment_pipe": pipe.state_dict(), "ada": ctrl.state_dict(), "rng": torch.get_rng_state()}, buf)
    reference = [minibatch(pipe, ctrl, reals) for _ in range(9)]
    reference_p = pipe.p.item()
    reference_state = ctrl.state_dict()
    assert reference_p > 0

    buf.seek(0)
    snap = torch.load(buf, weights_only=True)
    pipe2 = make_augment_pipe("bgcfnc", 0.0)
    pipe2.load_state_dict(snap["augment_pipe"])
    ctrl2 = AdaController(pipe2, batch_size=8, target=0.6, kimg=0.05)
    ctrl2.load_state_dict(snap["ada"])
    assert ctrl2.batches == 6 and ctrl2.state_dict()["count"] == 2 * 2 * 8  # mid-interval sums restored
    torch.manual_seed(123)  # anything: the restored RNG state must win
    torch.set_rng_state(snap["rng"])
    resumed = [minibatch(pipe2, ctrl2, reals) for _ in range(9)]
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))
    assert pipe2.p.item() == reference_p and ctrl2.state_dict() == reference_state


# ---- flags ---------------------------------------------------------------------------------------------------


def test_flags_resolve_like_nvidias_and_bad_values_name_the_flag() -> None:
    assert resolve_augment_config() == {"aug": "ada", "augpipe": "bgc", "p": 0.0, "target": 0.6, "ada_kimg": 500.0, "ada_interval": 4}
    assert resolve_augment_config("ada", "bgcfnc", target=0.7)["target"] == 0.7
    assert resolve_augment_config("fixed", p=0.25) == {"aug": "fixed", "augpipe": "bgc", "p": 0.25}
    assert resolve_augment_config("noaug") == {"aug": "noaug"}
    for kwargs, message in [
        (dict(augpipe="bgcx"), "--augpipe bgcx: unknown pipeline"),
        (dict(aug="fixed", p=1.5), r"--p 1.5: must be between 0 and 1"),
        (dict(aug="fixed", p=float("nan")), r"--p nan: must be between 0 and 1"),
        (dict(aug="fixed"), "--aug fixed: needs --p"),
        (dict(target=-0.1), r"--target -0.1: must be between 0 and 1"),
        (dict(aug="ada", p=0.3), "--p: applies to --aug fixed only"),
        (dict(aug="fixed", p=0.3, target=0.5), "--target: applies to --aug ada only"),
        (dict(aug="noaug", augpipe="bgc"), "--augpipe: does not apply with --aug noaug"),
        (dict(aug="sometimes"), "--aug sometimes: unknown mode"),
    ]:
        with pytest.raises(MadError, match=message):
            resolve_augment_config(**kwargs)


def test_build_augment_returns_the_pipe_and_controller_each_mode_needs() -> None:
    assert build_augment({"aug": "noaug"}, batch_size=32) == (None, None)
    pipe, ctrl = build_augment(resolve_augment_config("fixed", "blit", p=0.4), batch_size=32)
    assert ctrl is None and pipe.p.item() == pytest.approx(0.4) and pipe.xflip == 1 and pipe.scale == 0
    pipe, ctrl = build_augment(resolve_augment_config("ada", target=0.5), batch_size=32)
    assert pipe.p.item() == 0 and ctrl.target == 0.5 and ctrl.step_size == pytest.approx(32 * 4 / 500_000)


# ---- GPU --------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pipe_matches_cpu_and_has_second_order_gradients() -> None:
    x = _images(8, 3, 32)
    pipe = make_augment_pipe("bgcfnc", 0.0)
    assert torch.equal(pipe.cuda()(x.cuda()).cpu(), x)
    pipe.p.fill_(1.0)
    y = pipe(x.cuda())
    assert y.shape == x.shape and torch.isfinite(y).all()
    xd = torch.randn([1, 1, 6, 6], dtype=torch.float64, device="cuda", requires_grad=True)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.15, 1.1, 0.05]]], dtype=torch.float64, device="cuda")
    grid = F.affine_grid(theta, [1, 1, 5, 7], align_corners=False)
    for fallback in (False, True):  # torch 2.11 has no native double backward: the fallback is what runs there
        assert torch.autograd.gradgradcheck(lambda img: grid_sample(img, grid, force_fallback=fallback), (xd,))
