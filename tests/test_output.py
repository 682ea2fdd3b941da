"""Output conventions: results on stdout (JSON lines, NaN as null), everything else on stderr."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from mad_cli.output import Results, json_line, log, progress, to_jsonable, warn

REPO = Path(__file__).resolve().parents[1]


def test_nan_and_inf_become_null_and_numbers_become_plain() -> None:
    row = {
        "nan": float("nan"),
        "inf": math.inf,
        "np_nan": np.float32("nan"),
        "np_int": np.int64(7),
        "array": np.array([1.5, np.nan]),
        "tensor": torch.tensor([2.0, float("-inf")]),
        "nested": {"x": (np.float64("nan"), 3)},
        "text": "a",
    }
    line = json_line(row)
    assert "\n" not in line and "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {
        "nan": None, "inf": None, "np_nan": None, "np_int": 7, "array": [1.5, None],
        "tensor": [2.0, None], "nested": {"x": [None, 3]}, "text": "a",
    }
    assert to_jsonable(np.float32(0.5)) == 0.5 and type(to_jsonable(np.int32(3))) is int


def test_json_rows_are_written_one_per_line_at_once(capsys) -> None:
    with Results(True, title="t", columns=["a"]) as results:
        results.row({"a": 1, "b": float("nan")})
        # Flushed before the block ends: a long loop's consumer sees rows as they come.
        assert capsys.readouterr().out == '{"a": 1, "b": null}\n'
        results.row({"a": 2})
    captured = capsys.readouterr()
    assert captured.out == '{"a": 2}\n' and captured.err == ""


def test_table_goes_to_stdout_at_the_end(capsys) -> None:
    with Results(False, title="numbers", columns=["a", "c"]) as results:
        results.row({"a": 1.23456789, "b": "hidden", "c": None})
        assert capsys.readouterr().out == ""
    captured = capsys.readouterr()
    assert "numbers" in captured.out and "1.235" in captured.out and "hidden" not in captured.out
    assert captured.err == ""


def test_logs_warnings_and_progress_never_reach_stdout(capsys) -> None:
    log("reading folder")
    warn("something odd")
    with progress(10, "work", fields=("loss",)) as bar:  # stderr is not a terminal under pytest
        bar.advance(3)
        bar.update(loss=0.5)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == ["reading folder", "mad: warning: something odd"]


def test_piped_run_has_only_json_on_stdout(tmp_path: Path, make_images) -> None:
    """A real subprocess with pipes: a warning (skipped bad file) goes to stderr, results stay parseable."""
    make_images(tmp_path / "a", 3, size=8)
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    env = {k: v for k, v in os.environ.items() if k != "MAD_DEBUG"}
    res = subprocess.run(
        [sys.executable, "-m", "mad_cli", "colorhist", str(tmp_path / "a"), "--skip-bad", "--json", "--workers", "0"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["n_images"] == 3 and rows[0]["tv_vs_prev_pct"] is None
    assert "broken.png" in res.stderr and "broken.png" not in res.stdout
