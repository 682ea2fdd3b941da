"""The review page in a real headless Chromium: keys, buttons, a killed server, resume, finish.

Skipped (with the reason) where Playwright or Debian's chromium is missing or cannot start;
`.ci/run` installs chromium so that CI runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mad_cli.imagedir import write_png

pytestmark = pytest.mark.browser
N_IMAGES = 20


def _digit_like(i: int) -> np.ndarray:
    """A visible 32x32 grey pattern per image, so the screenshot shows something recognisable."""
    yy, xx = np.mgrid[0:32, 0:32]
    ring = np.abs(np.hypot(yy - 16, xx - 16) - (5 + i % 9)) < 2.2
    bar = (np.abs(xx - (8 + i)) < 2) & (yy > 6) & (yy < 26)
    return ((ring | bar) * 230 + 10).astype(np.uint8)


class ReviewProcess:
    """`mad filter SRC OUT --review` as a real process, with its URL parsed from stderr."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.stderr = open(log, "w")
        self.stdout_path = log.with_suffix(".out")
        self.stdout = open(self.stdout_path, "w")
        mad = [sys.executable, "-m", "mad_cli"]
        self.proc = subprocess.Popen([*mad, *args], stdout=self.stdout, stderr=self.stderr, env={**os.environ, "COLUMNS": "200"})
        self.url = self._wait_for_url()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = self.log.read_text()
            m = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=\S+)", text)
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                raise AssertionError(f"review server exited early:\n{text}")
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError("review server printed no URL within 60 s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.stderr.close()
        self.stdout.close()


def _records(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(",")[:2]) for line in path.read_text().splitlines()[1:]]  # type: ignore[misc]


def test_review_session_in_chromium(browser, tmp_path: Path) -> None:
    src = tmp_path / "samples"
    for i in range(N_IMAGES):
        write_png(src / f"img{i:04d}.png", _digit_like(i))
    examples = tmp_path / "examples"
    write_png(examples / "good" / "g0.png", _digit_like(3))
    write_png(examples / "bad" / "b0.png", (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8))
    out = tmp_path / "kept"
    labels = tmp_path / "samples-review" / "labels-alice.csv"
    args = ["filter", str(src), str(out), "--review", "--reviewer", "alice", "--port", "0", "--examples", str(examples)]
    names = [f"img{i:04d}.png" for i in range(N_IMAGES)]

    server = ReviewProcess(args, tmp_path / "server1.log")
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    try:
        page.goto(server.url)
        current = page.locator("#current")

        def expect_file(name: str) -> None:
            page.wait_for_selector(f'#current[data-file="{name}"]', timeout=10000)

        expect_file(names[0])
        # Keys for the first six, buttons for the next four.
        plan = [("g", "good"), ("b", "bad"), ("s", "skip"), ("g", "good"), ("G", "good"), ("b", "bad")]
        for i, (key, _) in enumerate(plan):
            page.keyboard.press(key)
            expect_file(names[i + 1])
        for i, button in enumerate(["#btn-good", "#btn-bad", "#btn-skip", "#btn-good"], start=6):
            page.click(button)
            expect_file(names[i + 1])
        expected = [(names[i], lab) for i, (_, lab) in enumerate(plan)] + [(names[6], "good"), (names[7], "bad"), (names[8], "skip"), (names[9], "good")]
        assert _records(labels) == expected
        assert "10 of 20" in page.inner_text("#count")
        # Undo with the key goes back one image and is logged.
        page.keyboard.press("u")
        expect_file(names[9])
        assert _records(labels)[-1] == (names[9], "undo")
        page.click("#btn-bad")
        expect_file(names[10])
        assert page.locator("#next li").count() == 8  # the strip of upcoming images
        assert page.get_attribute("#btn-good", "aria-label").startswith("Good")
        # Finish with open images asks first and writes nothing yet.
        page.click("#btn-finish")
        assert "10 image(s) have no answer yet and will be kept" in page.inner_text("#message")
        assert not out.exists()
        page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
        if os.environ.get("MAD_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "review.png", Path(os.environ["MAD_SCREENSHOT_DIR"]) / "review.png")

        # The server dies (power cut, kill -9): the page says so and nothing acknowledged is lost.
        server.proc.kill()
        server.close()
        page.keyboard.press("g")
        page.wait_for_selector("#message.error", timeout=10000)
        assert "Not saved" in page.inner_text("#message")
        assert len([r for r in _records(labels) if r[1] != "undo"]) == 11

        # Restart: a new token and port, and the page resumes at the first open image.
        server = ReviewProcess(args, tmp_path / "server2.log")
        page.goto(server.url)
        expect_file(names[10])
        assert "10 of 20" in page.inner_text("#count")
        for i in range(10, N_IMAGES):
            page.keyboard.press("g" if i % 3 else "b")
            if i + 1 < N_IMAGES:
                expect_file(names[i + 1])
        page.wait_for_selector('body[data-state="done"]', timeout=10000)
        assert "20 of 20" in page.inner_text("#count")
        assert current.get_attribute("data-file") == ""

        page.click("#btn-finish")
        page.wait_for_selector('body[data-state="finished"]', timeout=30000)
        assert "kept" in page.inner_text("#message")
        assert server.proc.wait(30) == 0
    finally:
        page.close()
        server.close()

    final: dict[str, str] = {}
    for file, label in _records(labels):
        if label == "undo":
            final.pop(file, None)
        else:
            final[file] = label
    assert len(final) == N_IMAGES
    kept = sorted(f for f, lab in final.items() if lab != "bad")  # skip = no vote = tie, kept by default
    assert sorted(p.name for p in out.glob("*.png")) == kept
    decisions = (out / "decisions.csv").read_text().splitlines()
    assert decisions[0].startswith("file,kept,rule,score") and len(decisions) == N_IMAGES + 1
    assert sorted(p.name for p in src.iterdir()) == names  # SRC untouched
    assert "kept" in server.stdout_path.read_text()
