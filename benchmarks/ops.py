"""Speed and peak memory of stylegan2_ops, reference vs CUDA, at StyleGAN2's shapes.

    .venv/bin/python benchmarks/ops.py            # full shapes on a GPU, --small on CPU
    .venv/bin/python benchmarks/ops.py --small    # tiny shapes, seconds on a laptop CPU
    .venv/bin/python benchmarks/ops.py --json     # one JSON object per row

Shapes: 256x256 StyleGAN2 (config-f channels, batch 32) has 512 channels at 64x64
and 256 at 128x128; 1024x1024 has 64 channels at 512x512 and 32 at 1024x1024
(batch 8 here so one GPU holds the reference's temporaries). On CPU only the
reference runs (there is nothing else); peak memory is measured with CUDA's
allocator statistics and is n/a on CPU. The issue's targets: CUDA >= 3x faster
than reference for bias_act, >= 2x for upfirdn2d, with lower peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stylegan2_ops import bias_act, conv2d_resample, downsample2d, setup_filter, upsample2d  # noqa: E402


def cases(small: bool) -> list[tuple[str, str, tuple[int, ...], Callable[..., torch.Tensor], dict]]:
    """(op, resolution, shape, function(x, impl), extra) for each benchmark row."""
    f = setup_filter([1, 3, 3, 1])

    def shape(*s: int) -> tuple[int, ...]:
        if not small:
            return s
        n, c, h, w = s
        return (1, max(c // 16, 4), max(h // 4, 8), max(w // 4, 8))

    rows = []
    for res, s in (("256", shape(32, 512, 64, 64)), ("256", shape(32, 256, 128, 128)), ("1024", shape(8, 32, 1024, 1024))):
        rows.append(("bias_act lrelu", res, s, lambda x, impl, c=s[1]: bias_act(
            x, torch.zeros(c, device=x.device, dtype=x.dtype), act="lrelu", clamp=256, impl=impl), {}))
    for res, s in (("256", shape(32, 256, 128, 128)), ("1024", shape(8, 64, 512, 512))):
        rows.append(("upsample2d x2", res, s, lambda x, impl: upsample2d(x, f.to(x.device), impl=impl), {}))
        rows.append(("downsample2d x2", res, s, lambda x, impl: downsample2d(x, f.to(x.device), impl=impl), {}))
    for res, s in (("256", shape(32, 256, 64, 64)),):
        c = s[1]
        w = torch.randn(c, c, 3, 3) / (9 * c) ** 0.5
        rows.append(("conv2d_resample up2 3x3", res, s, lambda x, impl, w=w: conv2d_resample(
            x, w.to(x.device, x.dtype), f.to(x.device), up=2, padding=1, impl=impl), {}))
    return rows


def measure(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median milliseconds and peak extra memory (MiB, CUDA only) of fn()."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (and the plugin build, on first use)
    sync()
    peak = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        sync()
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        del out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny shapes (the default on CPU)")
    p.add_argument("--full", action="store_true", help="StyleGAN2's real shapes even on CPU (slow, many GiB)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtypes", default="float32,float16", help="comma list (float16 runs on CUDA only)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--backward", action="store_true", help="time forward + backward instead of forward only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    small = args.small or (device.type == "cpu" and not args.full)
    impls = ["ref", "cuda"] if device.type == "cuda" else ["ref"]
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",") if d]
    if device.type == "cpu":
        dtypes = [d for d in dtypes if d != torch.float16]
    repeats = args.repeats or (20 if device.type == "cuda" else 5)
    header = ("op", "res", "shape", "dtype", "impl", "pass", "median ms", "peak MiB", "speedup")
    if not args.json:
        print(f"stylegan2_ops benchmark on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}"
              f", torch {torch.__version__}{' (small shapes)' if small else ''}")
        print("{:<24} {:>4} {:<20} {:<8} {:<4} {:<7} {:>10} {:>9} {:>7}".format(*header))
    for op, res, shape, fn, _ in cases(small):
        for dtype in dtypes:
            base_ms = None
            for impl in impls:
                x = torch.randn(shape, device=device, dtype=dtype)
                if args.backward:
                    x.requires_grad_()

                    def run(x=x, impl=impl, fn=fn):
                        y = fn(x, impl)
                        y.backward(torch.ones_like(y))
                        return y
                else:
                    def run(x=x, impl=impl, fn=fn):
                        with torch.no_grad():
                            return fn(x, impl)
                ms, peak = measure(run, device, repeats)
                base_ms = ms if impl == "ref" else base_ms
                speedup = (base_ms / ms) if base_ms and impl != "ref" else None
                row = {"op": op, "res": res, "shape": "x".join(map(str, shape)), "dtype": str(dtype).split(".")[-1],
                       "impl": impl, "pass": "fwd+bwd" if args.backward else "fwd", "median_ms": round(ms, 3),
                       "peak_mib": None if peak is None else round(peak, 1),
                       "speedup": None if speedup is None else round(speedup, 2)}
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print("{:<24} {:>4} {:<20} {:<8} {:<4} {:<7} {:>10.3f} {:>9} {:>7}".format(
                        op, res, row["shape"], row["dtype"], impl, row["pass"], ms,
                        "n/a" if peak is None else f"{peak:.1f}", "" if speedup is None else f"{speedup:.2f}x"),
                        flush=True)
                del x
    return 0


if __name__ == "__main__":
    sys.exit(main())
