"""Shared fixtures: small image folders made in tmp_path, and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mad_cli.cli import app
from mad_cli.imagedir import write_png


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep feature caches of tests out of the user's ~/.cache."""
    monkeypatch.setenv("MAD_FEATURE_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


@pytest.fixture
def one_thread():
    """Deterministic, contention-proof CPU training runs (the thread count subprocesses use too)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_images():
    """make_images(folder, n, size=16, channels=3, seed=0, tags=None) -> list of paths."""

    def _make(folder: Path, n: int, size: int = 16, channels: int = 3, seed: int = 0, tags: dict[str, Any] | None = None, prefix: str = "img") -> list[Path]:
        rng = np.random.default_rng(seed)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            shape = (size, size) if channels == 1 else (size, size, 3)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            p = folder / f"{prefix}{i:04d}.png"
            write_png(p, arr, tags)
            paths.append(p)
        return paths

    return _make


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str, exception: BaseException | None):
        self.exit_code, self.stdout, self.stderr, self.exception = exit_code, stdout, stderr, exception

    def json_rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def run_cli():
    """run_cli('mix', '--out', ...) -> CliResult with separate stdout and stderr."""

    def _run(*args: str) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
        try:
            stderr = result.stderr
        except ValueError:
            stderr = ""
        return CliResult(result.exit_code, result.stdout, stderr, result.exception)

    return _run
