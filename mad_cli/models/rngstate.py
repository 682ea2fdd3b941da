"""Capture and restore every global RNG, so a resumed run continues bit for bit.

The training loops re-seed the global RNG from (seed, step, phase, round) before each
chunk of work, so in principle nothing depends on the state carried between steps; the
states are saved anyway, because a library call that draws outside those chunks would
otherwise break exact resume without anyone noticing. Stored as tensors and plain values
so that snapshots still load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy's legacy global and Python's `random`."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def restore(state: dict[str, Any]) -> None:
    """Inverse of `capture` (CUDA states beyond the visible devices are ignored)."""
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"][: torch.cuda.device_count()]])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def round_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of `parts` (e.g. seed, step, phase, round)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))
