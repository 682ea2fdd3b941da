"""bias_act: the reference against independent numpy formulas, first and second order
gradients, bad input, and (on a GPU) CUDA against reference."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from stylegan2_ops import ACTIVATIONS, bias_act

CUDA = torch.cuda.is_available()
SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


# Written from the textbook definitions, not from torch, so the reference is checked against something else.
NUMPY_ACTS = {
    "linear": lambda v, a: v,
    "relu": lambda v, a: np.maximum(v, 0),
    "lrelu": lambda v, a: np.where(v > 0, v, a * v),
    "tanh": lambda v, a: np.tanh(v),
    "sigmoid": lambda v, a: _sigmoid(v),
    "elu": lambda v, a: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
    "selu": lambda v, a: SELU_SCALE * np.where(v > 0, v, SELU_ALPHA * np.expm1(np.minimum(v, 0))),
    "softplus": lambda v, a: np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20)))),
    "swish": lambda v, a: v * _sigmoid(v),
}
DEFAULT_GAIN = {"relu": math.sqrt(2), "lrelu": math.sqrt(2), "swish": math.sqrt(2)}


@pytest.fixture(autouse=True)
def _no_global_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAD_OPS", raising=False)


def test_every_activation_is_covered() -> None:
    assert set(ACTIVATIONS) == set(NUMPY_ACTS)


@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_reference_matches_numpy_definitions(act: str, dim: int) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{act}{dim}".encode()))
    x = rng.standard_normal((3, 4, 5)) * 3
    b = rng.standard_normal(x.shape[dim])
    shape = [1] * x.ndim
    shape[dim] = -1
    s = x + b.reshape(shape)
    want = NUMPY_ACTS[act](s, 0.2) * DEFAULT_GAIN.get(act, 1.0)
    got = bias_act(torch.from_numpy(x), torch.from_numpy(b), dim=dim, act=act, impl="ref").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # Explicit alpha, gain and clamp.
    want = np.clip(NUMPY_ACTS[act](s, 0.1) * 0.7, -0.9, 0.9)
    got = bias_act(torch.from_numpy(x), torch.from_numpy(b), dim=dim, act=act, alpha=0.1, gain=0.7, clamp=0.9,
                   impl="ref").numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_no_bias_and_dtype_kept() -> None:
    x = torch.randn(2, 3, dtype=torch.float32)
    torch.testing.assert_close(bias_act(x, act="lrelu", impl="ref"), torch.where(x > 0, x, 0.2 * x) * math.sqrt(2))
    out = bias_act(x, torch.ones(3, dtype=torch.float64), impl="ref")
    assert out.dtype == torch.float32  # the bias follows x's dtype
    torch.testing.assert_close(out, x + 1)
    assert torch.equal(bias_act(x, impl="ref"), x)
    assert bias_act(torch.zeros(2, 0, 3), torch.zeros(0), act="tanh", impl="ref").shape == (2, 0, 3)


@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
def test_gradcheck_and_gradgradcheck(act: str) -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 2, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for clamp in (None, 1.0):
        fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="ref")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))


BAD_INPUTS = [
    (lambda: bias_act(torch.zeros(2, 3), act="gelu"), "act"),
    (lambda: bias_act(torch.zeros(2, 3), torch.zeros(4)), "b"),
    (lambda: bias_act(torch.zeros(2, 3), torch.zeros(3, 1)), "b"),
    (lambda: bias_act(torch.zeros(2, 3), torch.zeros(3), dim=2), "dim"),
    (lambda: bias_act(torch.zeros(()), torch.zeros(1)), "x"),
    (lambda: bias_act([1.0, 2.0]), "x"),
    (lambda: bias_act(torch.zeros(2, 3, dtype=torch.int32)), "x"),
    (lambda: bias_act(torch.zeros(2, 3), clamp=-1), "clamp"),
    (lambda: bias_act(torch.zeros(2, 3), gain="big"), "gain"),
    (lambda: bias_act(torch.zeros(2, 3), alpha="x"), "alpha"),
    (lambda: bias_act(torch.zeros(2, 3), torch.zeros(3), dim=1.0), "dim"),
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


def test_impl_argument() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="^impl:"):
        bias_act(x, impl="fast")
    with pytest.raises(ValueError, match="^impl:"):
        bias_act(x, impl="cuda")  # cuda never silently runs the reference
    assert bias_act(x, act="relu", impl="auto").shape == x.shape


# ---- CUDA against the reference (GPU only) --------------------------------------------------------


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    wide = torch.zeros(*x.shape[:-1], x.shape[-1] * 2, dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    return {"contiguous": x, "channels_last": x.contiguous(memory_format=torch.channels_last),
            "strided": wide[..., ::2]}


def _away_from_kinks(x: torch.Tensor, b: torch.Tensor, act: str, clamp: float | None) -> torch.Tensor:
    """Move inputs off relu's kink and off the clamp boundary, where float16 rounding would
    legitimately flip a gradient between 0 and 1 and make the comparison meaningless."""
    for _ in range(20):
        s = x.double() + b.double()[None, :, None, None]
        y = bias_act(s, act=act, impl="ref")
        bad = s.abs() < 0.05
        if clamp is not None:
            bad |= (y.abs() - clamp).abs() < 0.05
        if not bad.any():
            break
        x = torch.where(bad, x + 0.2, x)
    return x


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_cuda_matches_reference(act: str, dtype: torch.dtype, layout: str, clamp: float | None) -> None:
    torch.manual_seed(1)
    b = torch.randn(6, device="cuda")
    x = _away_from_kinks(torch.randn(4, 6, 5, 7, device="cuda") * 3, b, act, clamp)
    x, b = x.to(dtype).double(), b.to(dtype).double()  # the reference sees the same rounded inputs
    xt = _layouts(x.to(dtype))[layout].requires_grad_()
    bt = b.to(dtype).requires_grad_()
    got = bias_act(xt, bt, act=act, clamp=clamp, impl="cuda")
    want = bias_act(x.requires_grad_(), b.requires_grad_(), act=act, clamp=clamp, impl="ref")
    assert got.dtype == dtype and got.shape == want.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    scale = want.abs().max().clamp_min(1e-6)
    assert (got.double() - want).abs().max() / scale <= tol
    # First- and second-order gradients against the reference (R1-style: grad of a grad norm).
    results = []
    for impl, xx, bb in (("cuda", xt, bt), ("ref", x.detach().requires_grad_(), b.detach().requires_grad_())):
        y = bias_act(xx, bb, act=act, clamp=clamp, impl=impl)
        gx, gb = torch.autograd.grad((y.float() * torch.cos(y.float())).sum(), [xx, bb], create_graph=True)
        ggx, ggb = torch.autograd.grad((gx.float() ** 2).sum() + (gb.float() ** 2).sum(), [xx, bb],
                                       allow_unused=True)
        results.append([t if t is not None else torch.zeros_like(r) for t, r in ((gx, xx), (gb, bb), (ggx, xx),
                                                                              (ggb, bb))])
    gtol = 1e-4 if dtype == torch.float32 else 3e-2
    for c, r in zip(*results):
        scale = r.double().abs().max().clamp_min(1e-3)
        assert (c.double() - r.double()).abs().max() / scale <= gtol


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
def test_cuda_gradcheck_and_gradgradcheck(act: str) -> None:
    torch.manual_seed(0)
    x = (torch.randn(3, 4, 2, 3, dtype=torch.float64, device="cuda") * 2).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, device="cuda", requires_grad=True)
    for clamp in (None, 1.0):
        fn = lambda x, b: bias_act(x, b, act=act, gain=1.3, clamp=clamp, impl="cuda")  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape,dim", [((8, 16), 1), ((5, 3, 4), 0), ((5, 3, 4), 2), ((2, 3, 4, 5), -1)])
@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_cuda_bias_along_other_dims(shape: tuple[int, ...], dim: int, act: str) -> None:
    """The kernel finds the bias through x's stride along `dim`: fully connected layers
    ([N, C], dim=1) and biases along non-channel axes go through that same index math."""
    torch.manual_seed(2)
    x = (torch.randn(shape, dtype=torch.float64, device="cuda") * 2).requires_grad_()
    b = torch.randn(shape[dim], dtype=torch.float64, device="cuda", requires_grad=True)
    want = bias_act(x, b, dim=dim, act=act, clamp=1.5, impl="ref")
    torch.testing.assert_close(bias_act(x, b, dim=dim, act=act, clamp=1.5, impl="cuda"), want)
    fn = lambda x, b: bias_act(x, b, dim=dim, act=act, clamp=1.5, impl="cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---- the CUDA path's autograd wiring, on CPU ------------------------------------------------------
# The kernel's contract (csrc/bias_act.cu, modes 0/1/2) written with torch ops. It lets the
# autograd Functions around the kernel -- what they save, which mode computes which gradient --
# be gradchecked on any machine. The kernel itself is only compared on a GPU (tests above).


class TorchModelOfBiasActKernel:
    @staticmethod
    def bias_act(x, b, xref, yref, dy, mode, dim, act_index, alpha, gain, clamp):
        name = next(n for n, a in ACTIVATIONS.items() if a.cuda_index == act_index)
        func = ACTIVATIONS[name].func
        shape = [1] * x.ndim
        if b.numel():
            shape[dim] = -1
        bias = b.reshape(shape) if b.numel() else 0
        with torch.no_grad():
            if mode == 0:
                out = func(x + bias, alpha) * gain
                return out.clamp(-clamp, clamp) if clamp >= 0 else out
        with torch.enable_grad():
            if xref.numel():
                s = (xref + bias).detach().requires_grad_()
                (d,) = torch.autograd.grad(func(s, alpha).sum(), s, create_graph=True)
                if mode == 2:
                    (d,) = torch.autograd.grad(d.sum(), s, allow_unused=True)
                    d = torch.zeros_like(s) if d is None else d * dy
            else:
                assert mode == 1 and name in ("linear", "relu", "lrelu")
                d = torch.where(yref > 0, 1.0, alpha if name == "lrelu" else 0.0) if name != "linear" else 1.0
        out = (x * d * gain).detach()
        if clamp >= 0:  # y was rounded to x's dtype, so the kernel compares with the clamp rounded alike
            clamp_y = torch.tensor(clamp, dtype=torch.float64).to(x.dtype).item()
            out = torch.where(yref.abs() < clamp_y, out, torch.zeros_like(out))
        return out.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and not x.is_contiguous() else out


@pytest.mark.parametrize("act", sorted(NUMPY_ACTS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_autograd_functions_with_a_torch_model_of_the_kernel(act: str, layout: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from stylegan2_ops import dispatch

    monkeypatch.setattr(dispatch, "plugin_for",
                        lambda impl, x, name: TorchModelOfBiasActKernel if impl == "cuda" else None)
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 2, 2, dtype=torch.float64) * 2)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # A negative gain or lrelu slope makes sign(y) lie about which side of the kink x was on.
    for clamp, gain, alpha in ((None, None, None), (1.0, 1.3, None), (None, -0.5, None), (1.0, None, -0.3)):
        fn = lambda x, b: bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="cuda")  # noqa: E731
        torch.testing.assert_close(fn(x, b), bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp,
                                                      impl="ref"))
        assert torch.autograd.gradcheck(fn, (x, b))
        assert torch.autograd.gradgradcheck(fn, (x, b))


def test_mad_ops_cuda_on_cpu_tensors_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAD_OPS", "cuda")
    with pytest.raises(ValueError, match="^MAD_OPS:"):
        bias_act(torch.zeros(2, 3), act="relu", impl="auto")
    monkeypatch.setenv("MAD_OPS", "ref")
    assert torch.equal(bias_act(torch.ones(2, 3), act="relu", gain=1, impl="cuda"), torch.ones(2, 3))
