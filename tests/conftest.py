"""Shared fixtures: small image folders made in tmp_path, and a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from mad_cli.cli import app
from mad_cli.imagedir import write_png

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """The environment of `python -m mad_cli` child processes: this checkout importable, one
    torch thread each (several share the cores), and no MAD_DEBUG (errors as users see them)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MAD_DEBUG", None)
    return env


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a TCP port on 127.0.0.1 nobody listens on (for torchrun's rendezvous)."""

    def _free() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return _free


@pytest.fixture
def browser():
    """Debian's headless Chromium through Playwright; skipped with the reason where either is
    missing or it cannot start (`.ci/run` installs chromium so that CI runs these tests)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    executable = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not executable:
        pytest.skip(f"{CHROMIUM} not found (apt-get install chromium)")
    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30000)
        except Exception as exc:  # noqa: BLE001 - any launch failure means "no browser here"
            pytest.skip(f"chromium could not start: {str(exc).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()
