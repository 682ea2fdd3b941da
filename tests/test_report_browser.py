"""The report page in a real headless Chromium, offline: it renders from the file alone.

Skipped (with the reason) where Playwright or Debian's chromium is missing or cannot start,
as test_review_browser.py; `.ci/run` installs chromium so that CI runs it. The screenshot
is kept as a test artefact: in $MAD_TEST_ARTIFACTS when set, else in pytest's tmp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_report import make_loop

from mad_cli.report import report

pytestmark = pytest.mark.browser
STRIP = 6


def test_report_page_renders_offline_in_chromium(browser, tmp_path: Path) -> None:
    a = make_loop(tmp_path / "fully-synthetic")
    b = make_loop(tmp_path / "fresh-data", generations=2, psi=1.0, extras=False)
    out = tmp_path / "report.html"
    result = report([a, b], out, strip=STRIP)
    generations = {name: [o["generation"] for o in result.objects if o["loop"] == name and o["generation"] is not None] for name in ("fully-synthetic", "fresh-data")}
    assert generations == {"fully-synthetic": [0, 1, 2], "fresh-data": [0, 1]}

    context = browser.new_context(offline=True, viewport={"width": 1400, "height": 1000})
    page_url = out.resolve().as_uri()
    requests: list[str] = []
    errors: list[str] = []

    def route(r) -> None:  # the page itself may load; anything else is refused and recorded
        if r.request.url == page_url:
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda req: None if req.url == page_url or req.url.startswith("data:") else requests.append(req.url))
    try:
        page.goto(page_url, wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15000)
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('alt'), e.naturalWidth, e.naturalHeight])")
        assert images and all(w > 0 and h > 0 for _, w, h in images), [i for i in images if not i[1]]

        for key in ("fd_digits", "precision", "recall", "colour_tv", "colour_emd"):
            assert page.locator(f'figure.panel[data-panel="{key}"] img').count() == 1, key
            assert page.locator(f'figure.panel[data-panel="{key}"] img').evaluate("e => e.naturalWidth") >= 300
        assert page.locator('figure.panel[data-panel="kid_mean"]').count() == 1  # both loops have KID here
        for name, ts in generations.items():
            assert page.locator(f'figure.panel[data-panel="hist:{name}:r"]').count() == 1
            for t in ts:
                strip = page.locator(f'.strip[data-loop="{name}"][data-generation="{t}"] img')
                assert strip.count() == STRIP, (name, t)
                assert strip.first.get_attribute("title") == "seed000000.png"
                assert strip.first.bounding_box()["width"] >= 48  # tiny samples are shown enlarged
        assert page.inner_text("#metrics-table").count("fully-synthetic") == 3

        artefacts = Path(os.environ.get("MAD_TEST_ARTIFACTS") or tmp_path)
        artefacts.mkdir(parents=True, exist_ok=True)
        shot = artefacts / "report-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        context.close()
    assert not errors, errors
    assert not requests, requests
