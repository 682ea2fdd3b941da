"""`python -m mad_cli ...` from the repository root, for the benchmarks that drive the CLI
as a user would (the learning curves); imported, never run alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mad(*args: str, threads: int | None = None) -> str:
    """Run one `mad` command and return its stdout; exit with its stderr's tail if it fails.

    `threads` pins torch's thread count in the child (OMP_NUM_THREADS / MKL_NUM_THREADS).
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MAD_DEBUG", None)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-m", "mad_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mad {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return done.stdout
