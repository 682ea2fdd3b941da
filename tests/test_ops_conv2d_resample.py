"""conv2d_resample against plain convolution + explicit resampling; gradients of first and
second order; the finding that stock conv2d/conv_transpose2d double backward suffices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_ops_upfirdn2d import numpy_upfirdn2d

from stylegan2_ops import conv2d_resample, setup_filter

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _no_global_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAD_OPS", raising=False)
    # cuDNN's default TF32 float32 convolutions (~1e-3 relative error) would otherwise decide
    # the 1e-5 comparisons on Ampere and newer GPUs, not our code.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def explicit_conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None, up: int, down: int,
                             padding: int, groups: int, flip_weight: bool, flip_filter: bool) -> np.ndarray:
    """The definition, step by step: upsample+pad with the FIR filter (numpy), a plain
    'valid' conv2d, then FIR-filter and decimate (numpy). No fast paths."""
    fn = None if f is None else f.double().numpy()
    fw = fh = 1 if f is None else f.shape[-1]
    if f is not None and f.ndim == 2:
        fh = f.shape[0]
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    z = numpy_upfirdn2d(x.double().numpy(), fn if up > 1 else None, (up, up), (1, 1), (px0, px1, py0, py1),
                        flip_filter, gain=up * up)
    ww = w.double() if flip_weight else w.double().flip([2, 3])
    z = F.conv2d(torch.from_numpy(z), ww, groups=groups).numpy()
    if down > 1:
        z = numpy_upfirdn2d(z, fn, (1, 1), (down, down), (0, 0, 0, 0), flip_filter)
    return z


FILTERS = {"none": None, "box": [1, 1], "binomial4": [1, 3, 3, 1], "binomial3": [1, 2, 1],
           "separable8": [1, 2, 3, 4, 4, 3, 2, 1]}


@pytest.mark.parametrize("seed", range(40))
def test_matches_plain_conv_and_explicit_resampling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    name = list(FILTERS)[seed % len(FILTERS)]
    f = None if FILTERS[name] is None else setup_filter(FILTERS[name]).double()
    up, down = (int(v) for v in rng.integers(1, 4, size=2))
    k = int(rng.integers(1, 5))
    groups = int(rng.integers(1, 3))
    cin, cout = 2 * groups, 3 * groups
    padding = int(rng.integers(0, 3))
    x = torch.from_numpy(rng.standard_normal((2, cin, 9, 8)))
    w = torch.from_numpy(rng.standard_normal((cout, cin // groups, k, k)))
    flip_weight, flip_filter = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    got = conv2d_resample(x, w, f, up=up, down=down, padding=padding, groups=groups, flip_weight=flip_weight,
                          flip_filter=flip_filter, impl="ref")
    want = explicit_conv2d_resample(x, w, f, up, down, padding, groups, flip_weight, flip_filter)
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_stylegan2_layer_shapes() -> None:
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 8, 16, 16)
    assert conv2d_resample(x, torch.randn(4, 8, 3, 3), f, up=2, padding=1).shape == (2, 4, 32, 32)
    assert conv2d_resample(x, torch.randn(4, 8, 3, 3), f, down=2, padding=1).shape == (2, 4, 8, 8)
    assert conv2d_resample(x, torch.randn(4, 8, 1, 1), f, down=2).shape == (2, 4, 8, 8)  # skip connection
    assert conv2d_resample(x, torch.randn(4, 8, 1, 1), f, up=2).shape == (2, 4, 32, 32)
    assert conv2d_resample(x, torch.randn(4, 8, 3, 3), padding=1).shape == (2, 4, 16, 16)
    # Modulated convolution runs grouped with one group per sample.
    assert conv2d_resample(x.reshape(1, 16, 16, 16), torch.randn(8, 8, 3, 3), f, up=2, padding=1,
                           groups=2).shape == (1, 8, 32, 32)


@pytest.mark.parametrize("up,down,padding,k", [(2, 1, 1, 3), (1, 2, 1, 3), (2, 1, 0, 1), (1, 2, 0, 1),
                                               (1, 1, 1, 3), (2, 2, 1, 3)])
def test_gradcheck_and_gradgradcheck(up: int, down: int, padding: int, k: int) -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1]).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w: conv2d_resample(x, w, f, up=up, down=down, padding=padding, groups=2, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


def test_stock_convolutions_have_exact_double_backward() -> None:
    """Why there is no conv2d_gradfix here: on current torch the double backward of conv2d and
    conv_transpose2d (grouped, strided) is native and exact, and so is grid_sample's (NVIDIA's
    grid_sample_gradfix). If a torch release broke this, this test says so."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(2, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    grid = (torch.rand(1, 2, 2, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=2), (x, w))
    assert torch.autograd.gradgradcheck(lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, groups=2),
                                        (x, wt))
    assert torch.autograd.gradgradcheck(lambda x, g: F.grid_sample(x, g, align_corners=False), (x, grid))


def test_input_gradient_does_not_need_weight_gradient() -> None:
    """NVIDIA's no_weight_gradients() skipped dL/dw during R1; autograd already does that
    when only the input's gradient is requested (w's .grad stays untouched)."""
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, requires_grad=True)
    y = conv2d_resample(x, w, f, down=2, padding=1, impl="ref")
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    gx.square().sum().backward(inputs=[x])
    assert w.grad is None and x.grad is not None


BAD_INPUTS = [
    (lambda: conv2d_resample(torch.zeros(3, 8, 8), torch.zeros(2, 3, 3, 3)), "x"),
    (lambda: conv2d_resample(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3)), "w"),
    (lambda: conv2d_resample(torch.zeros(1, 3, 8, 8), torch.zeros(2, 4, 3, 3)), "w"),
    (lambda: conv2d_resample(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), up=0), "up"),
    (lambda: conv2d_resample(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), down=-2), "down"),
    (lambda: conv2d_resample(torch.zeros(1, 4, 8, 8), torch.zeros(3, 2, 3, 3), groups=2), "groups"),
    (lambda: conv2d_resample(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), f=torch.ones(2, 2, 2), up=2), "f"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_names_the_argument(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    call, arg = BAD_INPUTS[case]
    messages = []
    for impl in ("ref", "cuda", "auto"):
        monkeypatch.setenv("MAD_OPS", impl)
        with pytest.raises(ValueError, match=f"^{arg}:") as err:
            call()
        messages.append(str(err.value))
    assert len(set(messages)) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("up,down,k", [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (1, 1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_reference(up: int, down: int, k: int, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.randn(2, 8, 16, 16, device="cuda")
    w = torch.randn(4, 8, k, k, device="cuda") / (8 * k * k) ** 0.5
    pad = k // 2
    got = conv2d_resample(x.to(dtype).contiguous(memory_format=torch.channels_last), w.to(dtype), f, up=up,
                          down=down, padding=pad, impl="cuda")
    want = conv2d_resample(x.to(dtype).double(), w.to(dtype).double(), f, up=up, down=down, padding=pad,
                           impl="ref")
    tol = 1e-5 if dtype == torch.float32 else 5e-3
    assert (got.double() - want).abs().max() / want.abs().max() <= tol
    # Second order on the GPU: cuDNN's convolution double backward and our upfirdn2d kernel.
    xd = torch.randn(1, 4, 6, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    wd = torch.randn(2, 4, k, k, dtype=torch.float64, device="cuda", requires_grad=True)
    fn = lambda x, w: conv2d_resample(x, w, f, up=up, down=down, padding=pad, impl="cuda")  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (xd, wd))
