"""Turn `--device auto|cpu|cuda[:N]` into a torch.device, failing early and clearly."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from mad_cli.errors import MadError


def resolve_device(spec: str = "auto") -> torch.device:
    """Resolve a device flag; `auto` prefers CUDA. Asking for CUDA without one is a user error."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MadError(f"--device {spec}: CUDA was requested but no GPU is visible (use --device cpu)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MadError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible")
        return dev
    raise MadError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")


@contextlib.contextmanager
def cpu_threads(threads: int | None, dev: torch.device) -> Iterator[None]:
    """Train with `threads` torch threads on CPU (the CPU presets: 1), unless OMP_NUM_THREADS says.

    Why: the CPU presets' layers are so small that a second thread mostly waits for the
    first. Measured on our 2-core machine: the tiny StyleGAN2 trained at 16-30 s/kimg with
    one thread and 160-390 with two when shared with other jobs; the tiny ddpm's 40 kimg at
    8² took 169 s with two threads and 134 s with one, on an idle machine. The
    previous count is restored afterwards, so Python callers get their setting back.
    """
    if dev.type != "cpu" or not threads or os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Generators run on chunks of exactly this many images (the last one padded). Float
#: kernels sum in a different order for different batch shapes, which flips a rounded
#: pixel now and then; with one fixed shape an image depends on its seed only — not on
#: --batch, on its position in the chunk, or on which seeds a resumed run still needs.
COMPUTE_BATCH = {"cpu": 16, "cuda": 32}


def compute_batch(device: torch.device) -> int:
    return COMPUTE_BATCH.get(device.type, COMPUTE_BATCH["cpu"])
