"""upfirdn2d and its helpers: the reference against a direct numpy/scipy construction,
gradients of first and second order, bad input, and (on a GPU) CUDA against reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch

from stylegan2_ops import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _no_global_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAD_OPS", raising=False)


def numpy_upfirdn2d(x: np.ndarray, f: np.ndarray | None, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0),
                    flip_filter=False, gain=1.0) -> np.ndarray:
    """Literal upsample -> pad/crop -> FIR -> downsample, one channel at a time."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    if f is None:
        f2 = np.ones((1, 1))
    elif f.ndim == 1:
        f2 = np.outer(f, f)
    else:
        f2 = f
    n, c, h, w = x.shape
    out = None
    for i in range(n):
        for j in range(c):
            z = np.zeros((h * upy, w * upx))
            z[::upy, ::upx] = x[i, j]
            z = np.pad(z, ((max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0))))
            z = z[max(-py0, 0): z.shape[0] - max(-py1, 0), max(-px0, 0): z.shape[1] - max(-px1, 0)]
            op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
            z = op(z, f2, mode="valid") * gain
            z = z[::downy, ::downx]
            if out is None:
                out = np.zeros((n, c) + z.shape)
            out[i, j] = z
    return out


def _random_case(rng: np.random.Generator):
    upx, upy, downx, downy = (int(v) for v in rng.integers(1, 5, size=4))
    separable = bool(rng.integers(0, 2))
    if separable:
        f = rng.standard_normal(int(rng.integers(1, 7)))
        fw = fh = len(f)
    else:
        fh, fw = (int(v) for v in rng.integers(1, 6, size=2))
        f = rng.standard_normal((fh, fw))
    h, w = (int(v) for v in rng.integers(1, 9, size=2))
    while True:
        pad = tuple(int(v) for v in rng.integers(-3, 5, size=4))
        if w * upx + pad[0] + pad[1] >= fw and h * upy + pad[2] + pad[3] >= fh:
            break
    x = rng.standard_normal((int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w))
    return x, f, (upx, upy), (downx, downy), pad, bool(rng.integers(0, 2)), float(rng.uniform(0.5, 2))


@pytest.mark.parametrize("seed", range(40))
def test_reference_matches_direct_construction(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, f, up, down, pad, flip, gain = _random_case(rng)
    expected = numpy_upfirdn2d(x, f, up, down, pad, flip, gain)
    kw = dict(up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=gain, impl="ref")
    got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(f), **kw)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    # The usual float32 filter: gain is folded into the taps at float32 precision.
    got32 = upfirdn2d(torch.from_numpy(x), torch.from_numpy(f).float(), **kw)
    np.testing.assert_allclose(got32.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_rows_match_scipy_upfirdn() -> None:
    """A 1 x k filter with up/down along x only is scipy.signal.upfirdn on every row
    (scipy keeps the full convolution, i.e. padding k-1 before and k-up after)."""
    rng = np.random.default_rng(1)
    h = rng.standard_normal(5)
    x = rng.standard_normal((1, 2, 3, 9))
    for up, down in [(1, 1), (3, 1), (1, 2), (3, 2), (4, 3)]:
        pad = [len(h) - 1, len(h) - up, 0, 0]
        got = upfirdn2d(torch.from_numpy(x), torch.from_numpy(h[None, :]), up=[up, 1], down=[down, 1], padding=pad,
                        impl="ref").numpy()
        want = np.stack([[[scipy.signal.upfirdn(h, row, up, down) for row in ch] for ch in img] for img in x])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_none_filter_is_identity_resampling() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(upfirdn2d(x, None, impl="ref"), x)
    assert torch.equal(upfirdn2d(x, None, down=2, impl="ref"), x[:, :, ::2, ::2])
    up = upfirdn2d(x, None, up=2, impl="ref")
    assert up.shape == (1, 1, 8, 8) and torch.equal(up[:, :, ::2, ::2], x) and up[:, :, 1::2].abs().sum() == 0


def test_setup_filter() -> None:
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f.sum(), torch.tensor(1.0))
    torch.testing.assert_close(f, torch.outer(torch.tensor([1, 3, 3, 1.0]), torch.tensor([1, 3, 3, 1.0])) / 64)
    assert setup_filter(list(range(1, 9))).shape == (8,)  # 8 taps or more: separable
    assert setup_filter([1, 2, 1], separable=True).shape == (3,)
    assert setup_filter(None).shape == (1, 1)
    torch.testing.assert_close(setup_filter([1, 1], gain=4).sum(), torch.tensor(4.0))
    torch.testing.assert_close(setup_filter([1, 2], normalize=False, flip_filter=True),
                               torch.tensor([[4.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="^f:"):
        setup_filter(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="^f:"):
        setup_filter([1, -1])


@pytest.mark.parametrize("taps", [[1, 1], [1, 3, 3, 1], [1, 2, 1], list(range(1, 9))])
@pytest.mark.parametrize("factor", [2, 3])
def test_helpers_keep_sizes(taps: list[int], factor: int) -> None:
    f = setup_filter(taps)
    x = torch.randn(1, 2, 12, 12, dtype=torch.float64)
    assert filter2d(x, f, impl="ref").shape == x.shape
    assert filter2d(x, f, padding=1, impl="ref").shape == (1, 2, 14, 14)
    assert upsample2d(x, f, up=factor, impl="ref").shape == (1, 2, 12 * factor, 12 * factor)
    assert upsample2d(x, f, up=[factor, 1], impl="ref").shape == (1, 2, 12, 12 * factor)
    assert downsample2d(x, f, down=factor, impl="ref").shape == (1, 2, 12 // factor, 12 // factor)
    assert downsample2d(x, f, down=factor, padding=-1, impl="ref").shape == (1, 2, 12 // factor - 1,
                                                                             12 // factor - 1)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_helpers_keep_flat_images_flat(factor: int) -> None:
    """Away from the zero-padded borders: gain up^2 undoes the zero insertion (for a filter
    whose polyphase components all sum to 1/up), and a normalized filter keeps the mean."""
    x = torch.ones(1, 2, 16, 16, dtype=torch.float64)
    f = setup_filter([1] * (2 * factor))
    m = 2 * factor
    up = upsample2d(x, f, up=factor, impl="ref")
    torch.testing.assert_close(up[:, :, m:-m, m:-m], torch.ones_like(up[:, :, m:-m, m:-m]))
    for g in (setup_filter([1, 3, 3, 1]), setup_filter(list(range(1, 9)))):
        down = downsample2d(x, g, down=factor, impl="ref")[:, :, 2:-2, 2:-2]
        torch.testing.assert_close(down, torch.ones_like(down))
        flat = filter2d(x, g, impl="ref")[:, :, 4:-4, 4:-4]
        torch.testing.assert_close(flat, torch.ones_like(flat))
    torch.testing.assert_close(filter2d(x, setup_filter([1, 2, 1]), gain=3, impl="ref")[:, :, 2:-2, 2:-2],
                               3 * torch.ones(1, 2, 12, 12, dtype=torch.float64))


@pytest.mark.parametrize("up,down,pad,separable", [(1, 1, [1, 2, 0, 1], False), (2, 1, [2, 1, 2, 1], False),
                                                    (1, 2, [1, 1, 1, 1], True), (3, 2, [2, -1, 1, 0], True)])
def test_gradcheck_and_gradgradcheck(up: int, down: int, pad: list[int], separable: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, dtype=torch.float64) if separable else torch.randn(3, 2, dtype=torch.float64)
    fn = lambda t: upfirdn2d(t, f, up=up, down=down, padding=pad, gain=1.5, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


BAD_INPUTS = [
    (lambda: upfirdn2d(torch.zeros(2, 3, 4), None), "x"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, 2, 2)), "f"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(0)), "f"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(2, requires_grad=True)), "f"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), None, up=0), "up"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), None, down=-1), "down"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), None, down=[2, 0]), "down"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), None, up=1.5), "up"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), None, padding=[1, 2, 3]), "padding"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4), torch.ones(3, 3), padding=-1), "padding"),
    (lambda: upsample2d(torch.zeros(1, 1, 4, 4), None, up=0), "up"),
    (lambda: downsample2d(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 1), down=2), "f"),
    (lambda: filter2d(torch.zeros(4, 4), torch.ones(3, 3)), "x"),
    (lambda: upfirdn2d(torch.zeros(1, 1, 4, 4, dtype=torch.int64), None), "x"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_names_the_argument(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    call, arg = BAD_INPUTS[case]
    messages = []
    for impl in ("ref", "cuda", "auto"):  # identical whichever implementation would have run
        monkeypatch.setenv("MAD_OPS", impl)
        with pytest.raises(ValueError, match=f"^{arg}:") as err:
            call()
        messages.append(str(err.value))
    assert len(set(messages)) == 1


def test_impl_cuda_refuses_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="^impl:"):
        upfirdn2d(x, None, impl="cuda")
    with pytest.raises(ValueError, match="^impl:"):
        upfirdn2d(x, None, impl="fast")
    monkeypatch.setenv("MAD_OPS", "ref")  # the global switch wins over the argument
    assert upfirdn2d(x, None, impl="cuda").shape == x.shape
    monkeypatch.setenv("MAD_OPS", "gpu")
    with pytest.raises(ValueError, match="^MAD_OPS:"):
        upfirdn2d(x, None)


# ---- CUDA against the reference (GPU only) --------------------------------------------------------

def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2], x.shape[3] * 2, dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": wide[..., ::2]}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("seed", range(24))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_cuda_matches_reference(seed: int, dtype: torch.dtype, layout: str) -> None:
    rng = np.random.default_rng(seed)
    x, f, up, down, pad, flip, gain = _random_case(rng)
    x = torch.from_numpy(x).cuda()
    x = torch.cat([x] * 3, dim=1)  # a few more channels so that channels-last matters
    xt = _layouts(x.to(dtype))[layout]
    ft = torch.from_numpy(f).float().cuda()
    kw = dict(up=list(up), down=list(down), padding=list(pad), flip_filter=flip, gain=gain)
    got = upfirdn2d(xt, ft, impl="cuda", **kw)
    want = upfirdn2d(x.to(dtype).double(), ft, impl="ref", **kw)  # same rounded input
    assert got.dtype == dtype and got.shape == want.shape
    scale = want.abs().max().clamp_min(1e-6)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert ((got.double() - want).abs().max() / scale) <= tol


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("up,down,pad", [(1, 1, [1, 1, 1, 1]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 0, 1, 0]),
                                         (3, 2, [-1, 2, 1, 0])])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_gradients_match_reference(separable: bool, up: int, down: int, pad: list[int], layout: str) -> None:
    torch.manual_seed(0)
    f = (torch.randn(4) if separable else torch.randn(4, 3)).cuda()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device="cuda")
    if layout == "channels_last":  # the backward kernels then read and write channels-last gradients
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    kw = dict(up=up, down=down, padding=pad, gain=1.3)
    fn = lambda t: upfirdn2d(t, f, impl="cuda", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    xr = x.detach().clone().requires_grad_()
    for impl, t in (("cuda", x), ("ref", xr)):
        y = upfirdn2d(t, f, impl=impl, **kw)
        (g,) = torch.autograd.grad((y ** 2).sum(), t, create_graph=True)
        (gg,) = torch.autograd.grad((g ** 2).sum(), t)
        if impl == "cuda":
            gc, ggc = g, gg
    # The CUDA path takes float32 taps and applies the gain separately: agree to float32 precision.
    assert (gc - g).abs().max() / g.abs().max() <= 1e-6
    assert (ggc - gg).abs().max() / gg.abs().max() <= 1e-6


# ---- the CUDA path's autograd wiring, on CPU ------------------------------------------------------
# The kernel's contract (csrc/upfirdn2d.cu) written with the reference. It lets the Function around
# the kernel -- the separable two-pass split and the adjoint padding of the backward -- be
# gradchecked on any machine. The kernel itself is only compared on a GPU (tests above).


class TorchModelOfUpfirdn2dKernel:
    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip, gain):
        from stylegan2_ops.upfirdn2d import _Config, upfirdn2d_ref

        assert f.dtype == torch.float32 and f.ndim == 2 and f.is_contiguous()
        with torch.no_grad():
            return upfirdn2d_ref(x, f, _Config(upx, upy, downx, downy, px0, px1, py0, py1, flip, gain))


@pytest.mark.parametrize("separable", [False, True])
@pytest.mark.parametrize("up,down,pad,flip", [(1, 1, [1, 2, 0, 1], False), (2, 1, [2, 1, 2, 1], True),
                                              (1, 3, [1, 1, 2, 0], False), ([3, 2], [2, 1], [2, -1, 1, 0], True)])
def test_cuda_autograd_function_with_a_torch_model_of_the_kernel(separable: bool, up, down, pad, flip,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan2_ops import dispatch

    monkeypatch.setattr(dispatch, "plugin_for",
                        lambda impl, x, name: TorchModelOfUpfirdn2dKernel if impl == "cuda" else None)
    torch.manual_seed(0)
    f = torch.tensor([1.0, 3.0, 2.0]) if separable else torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 1.0]])
    x = torch.randn(1, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=1.5)
    fn = lambda t: upfirdn2d(t, f, impl="cuda", **kw)  # noqa: E731
    torch.testing.assert_close(fn(x), upfirdn2d(x, f, impl="ref", **kw), rtol=1e-6, atol=1e-6)  # f is float32
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
