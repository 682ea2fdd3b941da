"""Shared flag types: every numeric flag of every command is checked by one of these.

Why one place: NaN, inf, negative and absurdly large values arrive through the same
handful of kinds of flag (a seed, a count, a positive number, a fraction). Checked here,
each gives the same one-line error naming the flag, before any folder is created or any
memory is allocated — a `--kimg nan` must not pass `--dry-run` and then fail half way
through a run, and `--n 99999999999` must not reach an allocator.

Each checker takes the value and the flag as the user typed it and returns the value
normalised (an int for counts, a float for numbers); `None` means "not given" and is
passed through, so options dataclasses can keep None for "the preset's default".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from mad_cli.errors import MadError

T = TypeVar("T")

#: Seeds feed numpy's RandomState, which takes [0, 2**32).
MAX_SEED = 2**32 - 1
#: The most images any one command is asked to make or read: far above any real dataset
#: (FFHQ has 70k, ImageNet 1.3 M), far below what would exhaust memory in bookkeeping.
MAX_COUNT = 100_000_000
#: Batch sizes: above this nothing fits on any accelerator anyway.
MAX_BATCH = 65_536


def _number(value: Any, flag: str) -> float:
    if isinstance(value, bool):
        raise MadError(f"{flag} {value}: expected a number")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MadError(f"{flag} {value}: expected a number") from None
    if not math.isfinite(x):
        raise MadError(f"{flag} {value}: must be a finite number")
    return x


def _integer(value: Any, flag: str) -> int:
    if isinstance(value, bool):
        raise MadError(f"{flag} {value}: expected an integer")
    if isinstance(value, int):
        return value
    x = _number(value, flag)
    if x != int(x):
        raise MadError(f"{flag} {value}: expected an integer")
    return int(x)


def seed(value: Any, flag: str = "--seed") -> int | None:
    """A seed in [0, 2**32)."""
    if value is None:
        return None
    s = _integer(value, flag)
    if not 0 <= s <= MAX_SEED:
        raise MadError(f"{flag} {value}: must be an integer from 0 to 2**32-1")
    return s


def count(value: Any, flag: str, *, low: int = 1, high: int = MAX_COUNT) -> int | None:
    """An integer count in [low, high]."""
    if value is None:
        return None
    c = _integer(value, flag)
    if c < low:
        raise MadError(f"{flag} {value}: must be at least {low}")
    if c > high:
        raise MadError(f"{flag} {value}: must be at most {high:,}")
    return c


def batch(value: Any, flag: str = "--batch") -> int | None:
    """A batch size: a count with an upper bound that no accelerator exceeds."""
    return count(value, flag, low=1, high=MAX_BATCH)


def positive(value: Any, flag: str, *, high: float = math.inf) -> float | None:
    """A finite number > 0 (and at most `high`)."""
    if value is None:
        return None
    x = _number(value, flag)
    if x <= 0:
        raise MadError(f"{flag} {value}: must be greater than 0")
    if x > high:
        raise MadError(f"{flag} {value}: must be at most {high:g}")
    return x


def non_negative(value: Any, flag: str, *, high: float = math.inf) -> float | None:
    """A finite number >= 0 (and at most `high`)."""
    if value is None:
        return None
    x = _number(value, flag)
    if x < 0:
        raise MadError(f"{flag} {value}: must not be negative")
    if x > high:
        raise MadError(f"{flag} {value}: must be at most {high:g}")
    return x


def fraction(value: Any, flag: str, *, zero_ok: bool = False) -> float | None:
    """A share in (0, 1], or [0, 1] with `zero_ok`."""
    if value is None:
        return None
    x = _number(value, flag)
    if not ((0 <= x) if zero_ok else (0 < x)) or x > 1:
        raise MadError(f"{flag} {value}: must be in {'[0' if zero_ok else '(0'}, 1]")
    return x


def choice(value: Any, flag: str, choices: Iterable[str]) -> str | None:
    """One of a fixed set of names."""
    if value is None:
        return None
    options = list(choices)
    if value not in options:
        raise MadError(f"{flag} {value}: expected one of {', '.join(options)}")
    return str(value)


def bounded(check: Callable[..., T], **bounds: Any) -> Callable[[Any, str], T]:
    """`check` with fixed keyword bounds, for tables of options: bounded(count, high=10_000)."""

    def run(value: Any, flag: str) -> T:
        return check(value, flag, **bounds)

    run.__name__ = f"{check.__name__}({', '.join(f'{k}={v}' for k, v in bounds.items())})"
    return run
