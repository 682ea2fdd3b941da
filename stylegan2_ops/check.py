"""`python -m stylegan2_ops check`: is this machine ready to run the CUDA ops?

Prints what the build will use (torch, CUDA, nvcc, GPUs, architectures, cache),
builds both plugins (or finds them in the cache), and where a GPU is present
compares every CUDA op with the reference. It exists because "training is
slow" is otherwise hard to tell apart from "the kernels silently fell back".
"""

from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

import torch

from . import build


def environment() -> list[tuple[str, str]]:
    home = build.find_cuda_home()
    if torch.cuda.is_available():
        gpus = ", ".join(f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                         for i in range(torch.cuda.device_count()))
    else:
        gpus = "none visible"
    return [
        ("python", platform.python_version()),
        ("torch", f"{torch.__version__} (built with CUDA {torch.version.cuda or 'none'})"),
        ("CUDA_HOME", home or "not found"),
        ("nvcc", build.nvcc_version(home) or "not found"),
        ("GPU", gpus),
        ("architectures", f"{build.arch_list()} ({build.arch_label(build.arch_list())})"),
        ("cache", str(build.cache_dir())),
        ("MAD_OPS", os.environ.get("MAD_OPS", "") or "unset (auto)"),
    ]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12))


@contextmanager
def _exact_float32_convolutions() -> Iterator[None]:
    """cuDNN runs float32 convolutions in TF32 by default (about 1e-3 relative error), and the
    upfirdn2d reference is a convolution: without this the comparison would measure TF32, not
    our kernels, and fail the 1e-5 tolerance on Ampere and newer GPUs."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def compare_cuda_with_reference() -> list[tuple[str, float, float]]:
    """(case, relative error, tolerance) for forward, first and second order gradients, float32."""
    with _exact_float32_convolutions():
        return _compare_cuda_with_reference()


def _compare_cuda_with_reference() -> list[tuple[str, float, float]]:
    from .bias_act import ACTIVATIONS, bias_act
    from .upfirdn2d import setup_filter, upfirdn2d

    torch.manual_seed(0)
    rows: list[tuple[str, float, float]] = []
    x = torch.randn(8, 32, 16, 16, device="cuda") * 2
    b = torch.randn(32, device="cuda")
    for act in ACTIVATIONS:
        outs = {}
        for impl in ("cuda", "ref"):
            xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
            y = bias_act(xx, bb, act=act, clamp=2.5, impl=impl)
            (gx,) = torch.autograd.grad((y * y.cos()).sum(), [xx], create_graph=True)
            (ggx,) = torch.autograd.grad(gx.square().sum(), [xx], allow_unused=True)
            outs[impl] = (y, gx, ggx if ggx is not None else torch.zeros_like(xx))
        for name, c, r in zip(("forward", "grad", "grad2"), outs["cuda"], outs["ref"]):
            rows.append((f"bias_act {act} {name}", _rel_err(c, r) if r.abs().max() > 0 else float(c.abs().max()),
                         1e-5 if name == "forward" else 1e-4))
    f = setup_filter([1, 3, 3, 1], device="cuda")
    for up, down, pad in ((1, 1, 1), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (3, 2, [-1, 2, 0, 1])):
        outs = {}
        for impl in ("cuda", "ref"):
            xx = x.clone().requires_grad_()
            y = upfirdn2d(xx, f, up=up, down=down, padding=pad, impl=impl)
            (gx,) = torch.autograd.grad(y.square().sum(), [xx], create_graph=True)
            (ggx,) = torch.autograd.grad(gx.square().sum(), [xx])
            outs[impl] = (y, gx, ggx)
        for name, c, r in zip(("forward", "grad", "grad2"), outs["cuda"], outs["ref"]):
            rows.append((f"upfirdn2d up={up} down={down} {name}", _rel_err(c, r), 1e-5))
    return rows


def run_check(out: TextIO = sys.stdout, say: Callable[[str], None] | None = None) -> int:
    """Print the report; 0 when everything that can be checked here passed, 1 otherwise."""
    say = say or (lambda s: print(s, file=out, flush=True))
    ok = True
    say("stylegan2_ops check")
    for key, value in environment():
        say(f"  {key:14s} {value}")
    has_gpu = torch.cuda.is_available()
    for plugin in build.PLUGINS:
        t0 = time.monotonic()
        try:
            spec, module = build.build_plugin(plugin, load=has_gpu)
        except build.PluginBuildError as exc:
            say(f"  {plugin:14s} FAILED: {exc.reason}" + (f" (log: {exc.log_path})" if exc.log_path else ""))
            ok = False
            continue
        except ImportError as exc:
            say(f"  {plugin:14s} FAILED to import the built library: {exc}")
            ok = False
            continue
        say(f"  {plugin:14s} ok ({time.monotonic() - t0:.1f} s): {spec.library}")
    if not has_gpu:
        say("  no GPU visible: " + ("compiled only; " if ok else "") + "CUDA-vs-reference comparison skipped")
        return 0 if ok else 1
    if not ok:
        return 1
    build.forget_plugins()
    for case, err, tol in compare_cuda_with_reference():
        passed = err <= tol
        ok &= passed
        say(f"  {'ok  ' if passed else 'FAIL'} {case:36s} rel err {err:.2e} (tolerance {tol:.0e})")
    return 0 if ok else 1
