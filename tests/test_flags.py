"""Shared flag types: NaN, inf, negative, huge and wrong-typed values give one line naming the flag."""

from __future__ import annotations

import math

import pytest

from mad_cli import flags
from mad_cli.errors import MadError


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "nan", "abc", True])
@pytest.mark.parametrize("check", [flags.positive, flags.non_negative, flags.fraction])
def test_numbers_must_be_finite(check, value) -> None:
    with pytest.raises(MadError, match=r"^--x "):
        check(value, "--x")


@pytest.mark.parametrize("value", [-1, 2**32, 2**64, 1.5, float("nan"), "7e99"])
def test_seed_range(value) -> None:
    with pytest.raises(MadError, match=r"^--seed "):
        flags.seed(value)


def test_valid_values_are_normalised() -> None:
    assert flags.seed(0) == 0 and flags.seed(2**32 - 1) == 2**32 - 1 and flags.seed(7.0) == 7
    assert flags.positive("2.5", "--x") == 2.5 and flags.non_negative(0, "--x") == 0.0
    assert flags.fraction(1, "--f") == 1.0 and flags.fraction(0, "--f", zero_ok=True) == 0.0
    assert flags.count(3, "--n") == 3 and flags.batch(64) == 64
    assert flags.choice("a", "--c", ["a", "b"]) == "a"
    assert all(check(None, "--x") is None for check in (flags.positive, flags.non_negative, flags.fraction, flags.count, flags.batch))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: flags.count(0, "--n"), "--n 0: must be at least 1"),
        (lambda: flags.count(99999999999, "--n"), "--n 99999999999: must be at most 100,000,000"),
        (lambda: flags.batch(1_000_000_000), "--batch 1000000000: must be at most 65,536"),
        (lambda: flags.positive(0, "--kimg"), "--kimg 0: must be greater than 0"),
        (lambda: flags.positive(1e9, "--kimg", high=1e6), "--kimg 1000000000.0: must be at most 1e+06"),
        (lambda: flags.fraction(0, "--keep"), "--keep 0: must be in (0, 1]"),
        (lambda: flags.fraction(1.5, "--p", zero_ok=True), "--p 1.5: must be in [0, 1]"),
        (lambda: flags.choice("x", "--aug", ["ada", "noaug"]), "--aug x: expected one of ada, noaug"),
        (lambda: flags.bounded(flags.count, low=0)(-2, "--class"), "--class -2: must be at least 0"),
    ],
)
def test_messages_name_the_flag_in_one_line(call, message: str) -> None:
    with pytest.raises(MadError) as err:
        call()
    assert str(err.value) == message and "\n" not in str(err.value)


def test_bounded_keeps_a_readable_name() -> None:
    check = flags.bounded(flags.positive, high=10.0)
    assert "positive" in check.__name__ and math.isclose(check(3, "--x"), 3.0)
