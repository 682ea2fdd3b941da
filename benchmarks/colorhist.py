"""Throughput of `mad colorhist`: images per second for 64×64 PNGs, per colour space.

Why: the issue asks for >= 1,000 images/s on a 2-core machine, and whether threads or
processes reach it depends on the machine; this prints a table to decide and to report.

    .venv/bin/python benchmarks/colorhist.py [--n 2000] [--size 64] [--workers 0 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mad_cli.colorhist import SPACES, colorhist  # noqa: E402
from mad_cli.imagedir import write_png  # noqa: E402


def make_folder(folder: Path, n: int, size: int, seed: int) -> None:
    """Random-ish images: a random base colour, a gradient and noise (compress like photos, roughly)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0.0, 60.0, size)[:, None, None]
    for i in range(n):
        base = rng.integers(0, 256, size=3)
        arr = base + ramp + rng.normal(0.0, 25.0, size=(size, size, 3))
        write_png(folder / f"img{i:05d}.png", np.clip(arr, 0, 255).astype(np.uint8))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images per folder")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--bins", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="worker process counts to try (0 = in-process)")
    ap.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="mad-colorhist-bench-") as tmp:
        folders = [Path(tmp) / "a", Path(tmp) / "b"]
        t0 = time.perf_counter()
        for k, f in enumerate(folders):
            make_folder(f, args.n // 2, args.size, seed=k)
        print(f"wrote {args.n} {args.size}x{args.size} PNGs in {time.perf_counter() - t0:.1f} s "
              f"(cpus: {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f})", file=sys.stderr)
        # Wall-clock images/s is what a user sees, but other jobs on a shared machine steal
        # cores; CPU seconds (this process + its workers) show the work itself.
        print(f"{'space':<6} {'workers':>7} {'wall s':>7} {'images/s':>9} {'cpu s':>6} {'img/cpu-s':>9}")
        for space in SPACES:
            for workers in args.workers:
                best = (float("inf"), 0.0)
                for _ in range(args.repeat):
                    cpu0 = _cpu_seconds()
                    t = time.perf_counter()
                    rows = colorhist(folders, space=space, bins=args.bins, workers=workers)
                    wall = time.perf_counter() - t
                    best = min(best, (wall, _cpu_seconds() - cpu0))
                n = sum(r["n_images"] for r in rows)
                wall, cpu = best
                print(f"{space:<6} {workers:>7} {wall:>7.2f} {n / wall:>9.0f} {cpu:>6.2f} {n / cpu:>9.0f}", flush=True)
        print(f"load avg after: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
