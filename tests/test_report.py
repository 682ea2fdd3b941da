"""`mad report`: constructed loops whose numbers are known, checked in --json and in the page.

The loops here are written by hand (a few tagged PNGs, hand-made metrics.jsonl and
colorhist.jsonl, mix.json/manifest.csv, a filter output and a reviewer's labels), so every
number the report shows can be compared with the one that was written. The real loops
(the examples, run with the Gaussian) are checked in test_examples.py; the page in a real
browser in test_report_browser.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mad_cli.errors import MadError
from mad_cli.imagedir import write_png
from mad_cli.report import check_png, report
from mad_cli.report.loop import generation_of
from mad_cli.report.rows import read_jsonl

N_SAMPLES = 12
HIST_BINS = 16

# The numbers the hand-made metrics.jsonl holds, per generation.
FD = [12.5, 20.25, 31.0]
FLOOR = 2.75
KID = [0.125, 0.25, 0.5]
PRECISION = [0.75, 0.8, 0.85]
RECALL = [0.5, 0.25, 0.125]
TV_REF = [10.0, 15.5, 21.0]
TV_PREV = [10.0, 6.5, 7.25]
EMD_REF = [2.0, 3.5, 4.5]
EMD_PREV = [2.0, 1.5, 1.25]
NOISE_TV, NOISE_EMD = 0.625, 0.1875


# -- building loops --------------------------------------------------------------------------


def _sample(t: int, seed: int) -> np.ndarray:
    """A recognisable grey 16x16 image per (generation, seed)."""
    yy, xx = np.mgrid[0:16, 0:16]
    return (((xx + seed) % 8 < 4) * (120 + 40 * t) + ((yy + t) % 5 == 0) * 60).astype(np.uint8)


def _hist(shift: int) -> list[float]:
    h = np.ones(HIST_BINS)
    h[shift % HIST_BINS] += 5
    return (h / h.sum()).tolist()


def colour_row(folder: str, *, is_ref: bool = False, tv_ref: float = 0.0, tv_prev: float | None = None, emd_ref: float = 0.0,
               emd_prev: float | None = None, hist_shift: int = 0) -> dict[str, Any]:
    rgb = {c: 0.0 for c in "rgb"}
    return {
        "folder": folder, "space": "rgb", "bins": HIST_BINS, "is_ref": is_ref, "ref": "REF", "n_images": N_SAMPLES,
        "tv_vs_ref_pct": tv_ref, "emd_vs_ref_pct": {c: emd_ref for c in "rgb"}, "emd_vs_ref_mean_pct": emd_ref,
        "tv_vs_prev_pct": tv_prev, "emd_vs_prev_pct": {c: emd_prev for c in "rgb"}, "emd_vs_prev_mean_pct": emd_prev,
        "noise_tv_pct": NOISE_TV if is_ref else None, "noise_emd_pct": {c: NOISE_EMD if is_ref else None for c in "rgb"},
        "noise_emd_mean_pct": NOISE_EMD if is_ref else None, "mean": rgb, "std": rgb,
        "hist_range": {c: [0.0, 256.0] for c in "rgb"}, "hist": {c: _hist(hist_shift) for c in "rgb"},
    }


def metrics_row(gen_folder: str, t: int, *, kid: bool = True, prefix: str = "fd_digits") -> dict[str, Any]:
    row: dict[str, Any] = {"real": "/elsewhere/real-test", "gen": gen_folder, "n_real": 359, "n_gen": N_SAMPLES,
                           prefix: FD[t], f"{prefix}_real_split_half": FLOOR}
    if kid:
        row.update(kid_mean=KID[t], kid_std=0.0, kid_subset_size=N_SAMPLES, kid_subsets=100)
    row.update(precision=PRECISION[t], recall=RECALL[t], k_pr=3, extractor="digits", seed=2020)
    return row


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_loop(root: Path, generations: int = 3, *, kid: bool = True, metrics: bool = True, colour: bool = True,
              psi: float = 0.7, extras: bool = True, moved_from: str | None = None) -> Path:
    """A finished fully-synthetic loop: gen{t}/samples (seed-named, tagged), train/mix.json + manifest.csv,
    run/config.json, metrics.jsonl, colorhist.jsonl; with `extras` a filter output and a reviewer on gen0.

    `moved_from`: write the jsonl paths as if the loop had lived at that folder (a copied loop).
    """
    base = moved_from or str(root)
    for t in range(generations):
        gen = root / f"gen{t}"
        for s in range(N_SAMPLES):
            write_png(gen / "samples" / f"seed{s:06d}.png", _sample(t, s),
                      {"origin": "synthetic", "generator": f"{t:016x}", "psi": repr(psi), "seed": s, "generation": t})
        (gen / "run").mkdir(parents=True)
        (gen / "run" / "config.json").write_text(json.dumps({"cfg": "tiny", "G_kwargs": {}, "total_kimg": 8.0, "data": str(gen / "train")}))
        (gen / "train").mkdir()
        origin, source = ("real", root / "real") if t == 0 else ("synthetic", root / f"gen{t - 1}" / "samples")
        mix = {"sources": [{"spec": f"{source}:{N_SAMPLES}", "origin": origin, "path": str(source), "drawn": N_SAMPLES}], "count": N_SAMPLES}
        (gen / "train" / "mix.json").write_text(json.dumps(mix))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "source", "origin", "generation", "sha256", "tag_origin"])
        for s in range(N_SAMPLES):
            w.writerow([f"{s:06d}.png", f"{source}/x{s}.png", origin, "" if t == 0 else t - 1, "0" * 64, origin])
        (gen / "train" / "manifest.csv").write_text(buf.getvalue())
    if metrics:
        write_jsonl(root / "metrics.jsonl", [metrics_row(f"{base}/gen{t}/samples", t, kid=kid) for t in range(generations)])
    if colour:
        rows = [colour_row(f"{base}/real", is_ref=True)]
        rows += [colour_row(f"{base}/gen{t}/samples", tv_ref=TV_REF[t], tv_prev=TV_PREV[t], emd_ref=EMD_REF[t], emd_prev=EMD_PREV[t], hist_shift=t + 1) for t in range(generations)]
        write_jsonl(root / "colorhist.jsonl", rows)
    if extras:
        kept = root / "gen0" / "kept"
        kept.mkdir()
        scores = [1.5, 2.5, None, 4.0]  # the third was dropped by an earlier rule: no artifacts score
        lines = ["file,kept,rule,score,classifier,artifacts"]
        for s, score in enumerate(scores):
            lines.append(f"seed{s:06d}.png,{int(s != 3)},{'artifacts' if score is not None else 'classifier'},,0.99,{'' if score is None else score}")
        (kept / "decisions.csv").write_text("\n".join(lines) + "\n")
        (kept / "filter.json").write_text(json.dumps({"mad_version": "0.1.0", "command": "filter", "src": str(root / "gen0" / "samples"), "out": str(kept),
                                                      "rules": "classifier artifacts:keep=0.8", "kept": 9, "total": N_SAMPLES, "rejected": 3,
                                                      "dropped:classifier": 1, "dropped:artifacts": 2}))
        review = root / "gen0" / "samples-review"
        review.mkdir()
        (review / "labels-alice.csv").write_text("file,label,time\nseed000000.png,good,t\nseed000001.png,bad,t\nseed000002.png,skip,t\nseed000003.png,good,t\n")
    return root


class _Page(HTMLParser):
    """Cells by (loop, generation, key), panels, strips and every <img> src of a report page."""

    def __init__(self, text: str):
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self.panels: list[str] = []
        self.strips: list[tuple[str, str, int]] = []
        self.srcs: list[str] = []
        self.scripts = 0
        self._cell: tuple[str, str, str] | None = None
        self._strip: list[Any] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and "data-key" in a:
            self._cell = (a["data-loop"] or "", a["data-generation"] or "", a["data-key"] or "")
            self.cells[self._cell] = ""
        if tag == "figure" and a.get("data-panel"):
            self.panels.append(a["data-panel"] or "")
        if tag == "div" and "data-generation" in a and "strip" in (a.get("class") or ""):
            self._strip = [a["data-loop"], a["data-generation"], 0]
            self.strips.append(tuple(self._strip))  # type: ignore[arg-type]
        if tag == "img":
            self.srcs.append(a.get("src") or "")
            if self._strip is not None:
                self._strip[2] += 1
                self.strips[-1] = tuple(self._strip)  # type: ignore[assignment]
        if tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._cell = None
        if tag == "div":
            self._strip = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.cells[self._cell] += data


def _objects(res) -> list[dict[str, Any]]:
    assert res.exit_code == 0, res.stderr
    return res.json_rows()


# -- a constructed loop: the numbers ------------------------------------------------------------


def test_constructed_loop_numbers_in_json_and_in_the_page(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop")
    out = loop / "report.html"  # inside the loop: allowed, a page is not an image
    objs = _objects(run_cli("report", loop, "--out", out, "--json", "--strip", "5"))
    gens = [o for o in objs if o["generation"] is not None]
    assert [o["generation"] for o in gens] == [0, 1, 2]
    for t, o in enumerate(gens):
        m, c = o["metrics"], o["colour"]
        assert (m["fd_digits"], m["fd_digits_real_split_half"], m["kid_mean"], m["precision"], m["recall"]) == (FD[t], FLOOR, KID[t], PRECISION[t], RECALL[t])
        assert (c["tv_vs_ref_pct"], c["emd_vs_ref_mean_pct"], c["noise_tv_pct"], c["noise_emd_mean_pct"]) == (TV_REF[t], EMD_REF[t], NOISE_TV, NOISE_EMD)
        assert c["prev"] == ("real" if t == 0 else f"gen{t - 1}")  # colorhist's previous folder: the reference for gen0
        assert o["n_samples"] == N_SAMPLES and o["psi"] == 0.7
        assert (o["model"], o["preset"], o["kimg"]) == ("stylegan2", "tiny", 8.0)
        assert o["strip"] == [f"seed{s:06d}.png" for s in range(5)]  # the same seeds in every generation
        assert o["tags"]["generation"] == [str(t)] and o["tags"]["origin"] == ["synthetic"]
        assert (o["n_real"], o["n_synthetic"]) == ((N_SAMPLES, 0) if t == 0 else (0, N_SAMPLES))
        assert o["synthetic_from"] == ({} if t == 0 else {str(t - 1): N_SAMPLES})
        assert o["trained_on"] == [{"source": "real" if t == 0 else f"gen{t - 1}/samples", "origin": "real" if t == 0 else "synthetic", "images": N_SAMPLES}]
    g0 = gens[0]
    assert g0["filter"]["kept"] == 9 and g0["filter"]["rejected"] == 3 and g0["filter"]["dropped"] == {"classifier": 1, "artifacts": 2}
    assert g0["artifacts_mean"] == pytest.approx((1.5 + 2.5 + 4.0) / 3) and g0["artifacts_n"] == 3
    assert g0["review"] == {"alice": {"good": 2, "bad": 1, "skip": 1}}
    assert gens[1]["filter"] is None and gens[1]["review"] is None
    refs = [o for o in objs if o["generation"] is None]
    assert [r["folder"] for r in refs] == ["real"] and refs[0]["colour"]["is_ref"]

    page = _Page(out.read_text())
    for t in range(3):
        assert page.cells[("loop", str(t), "fd_digits")] == f"{FD[t]:.4g}"
        assert page.cells[("loop", str(t), "fd_digits_real_split_half")] == f"{FLOOR:.4g}"
        assert page.cells[("loop", str(t), "recall")] == f"{RECALL[t]:.4g}"
        assert page.cells[("loop", str(t), "tv_vs_ref_pct")] == f"{TV_REF[t]:.4g}"
        assert page.cells[("loop", str(t), "n_samples")] == str(N_SAMPLES)
        # vs previous: gen0's "previous" folder in colorhist was the reference, not a generation
        assert page.cells[("loop", str(t), "tv_vs_prev_pct")] == ("–" if t == 0 else f"{TV_PREV[t]:.4g}")
    assert page.cells[("loop", "0", "artifacts_mean")] == f"{(1.5 + 2.5 + 4.0) / 3:.4g}"
    assert page.cells[("loop", "0", "review:alice:bad")] == "1"
    assert page.cells[("loop", "0", "kept")] == "9"
    assert set(page.panels) >= {"fd_digits", "kid_mean", "precision", "recall", "colour_tv", "colour_emd", "hist:loop:r"}
    assert sorted((s[1], s[2]) for s in page.strips) == [("0", 5), ("1", 5), ("2", 5)]
    text = out.read_text()
    assert "ψ = 0.7" in text and "gen0/samples" in text
    # Self-contained: every image inline, nothing to fetch, no script; the browser is told so too.
    assert page.srcs and all(s.startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for s in page.srcs)
    assert page.scripts == 0
    assert "default-src 'none'" in text
    assert not re.search(r"""(src|href)=["'](https?:|//)""", text)
    assert not list(loop.glob(".report.html*"))  # no temp file left behind


def test_table_on_stdout_without_json(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    res = run_cli("report", loop, "--out", tmp_path / "r.html")
    assert res.exit_code == 0, res.stderr
    assert "fd_digits" in res.stdout and "20.25" in res.stdout
    assert "wrote" in res.stderr and "r.html" in res.stderr


def test_png_figure_at_print_resolution(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop")
    png = loop / "report.png"  # the loop folder itself holds no images a command reads
    res = run_cli("report", loop, "--out", tmp_path / "r.html", "--png", png)
    assert res.exit_code == 0, res.stderr
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.size[0] == round(7.16 * 300)
        assert round(im.info["dpi"][0]) == 300
        grey = np.asarray(im.convert("L"))
    assert grey.std() > 10  # something was drawn


def test_json_objects_come_from_the_same_numbers_as_the_library(tmp_path: Path) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    result = report([loop], tmp_path / "r.html", strip=3)
    assert result.plotted == ["fd_digits", "kid_mean", "precision", "recall"]
    assert [o["generation"] for o in result.objects] == [0, 1, 2, None]
    assert result.png is None and not result.notes


def test_only_strip_samples_are_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Speed by design: of a generation's samples only the K strip images are opened."""
    from mad_cli.report import strips

    loop = make_loop(tmp_path / "loop", extras=False)
    opened: list[str] = []
    real = strips.thumbnail
    monkeypatch.setattr(strips, "thumbnail", lambda path, name: (opened.append(str(path)), real(path, name))[1])
    report([loop], tmp_path / "r.html", png=tmp_path / "r.png", strip=4)
    assert len(opened) == 3 * 4


def test_open_shows_the_page_in_the_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    loop = make_loop(tmp_path / "loop", extras=False)
    report([loop], tmp_path / "r.html", open_browser=True)
    assert opened == [(tmp_path / "r.html").resolve().as_uri()]


# -- several loops ------------------------------------------------------------------------------


def test_two_loops_are_overlaid_with_their_names_and_what_is_missing_is_said(tmp_path: Path, run_cli) -> None:
    a = make_loop(tmp_path / "a", extras=False)
    b = make_loop(tmp_path / "b", generations=2, kid=False, extras=False, psi=1.0)
    out = tmp_path / "both.html"
    res = run_cli("report", a, b, "--name", "fully synthetic", "--name", "fresh data", "--out", out, "--json")
    objs = _objects(res)
    assert {(o["loop"], o["generation"]) for o in objs if o["generation"] is not None} == {("fully synthetic", t) for t in range(3)} | {("fresh data", t) for t in range(2)}
    assert "kid_mean is not plotted: fresh data has none, only fully synthetic (add kid to `mad metrics --metrics`)" in res.stderr
    page = _Page(out.read_text())
    assert "kid_mean" not in page.panels and "fd_digits" in page.panels and "recall" in page.panels
    assert page.cells[("fully synthetic", "2", "kid_mean")] == f"{KID[2]:.4g}"  # still in the table
    assert page.cells[("fresh data", "1", "kid_mean")] == "–"
    text = out.read_text()
    assert "#1f77b4" in text and "#ff7f0e" in text  # one colour per loop in the legend
    assert "kid_mean is not plotted" in text and "<code>mad metrics --metrics</code>" in text
    # Strips: one per generation per loop, same seeds across loops.
    assert sorted((s[0], s[1]) for s in page.strips) == sorted([("fully synthetic", str(t)) for t in range(3)] + [("fresh data", str(t)) for t in range(2)])


def test_default_names_are_folder_names_and_stay_distinct(tmp_path: Path) -> None:
    a = make_loop(tmp_path / "x" / "run", extras=False)
    b = make_loop(tmp_path / "y" / "run", extras=False)
    result = report([a, b], tmp_path / "r.html")
    assert sorted({o["loop"] for o in result.objects}) == ["x/run", "y/run"]


@pytest.mark.parametrize("names, message", [
    (["one"], "--name: 1 name(s) for 2 loop(s)"),
    (["same", "same"], "--name same: given for two loops"),
])
def test_bad_names(tmp_path: Path, run_cli, names: list[str], message: str) -> None:
    a = make_loop(tmp_path / "a", extras=False)
    b = make_loop(tmp_path / "b", extras=False)
    args = [x for n in names for x in ("--name", n)]
    res = run_cli("report", a, b, *args, "--out", tmp_path / "r.html")
    assert res.exit_code == 1 and message in res.stderr
    assert not (tmp_path / "r.html").exists()


# -- missing and partial files ------------------------------------------------------------------


def test_missing_metric_files_name_the_command_that_makes_them(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", metrics=False, colour=False, extras=False)
    (loop / "real-test").mkdir()
    out = tmp_path / "r.html"
    res = run_cli("report", loop, "--out", out, "--json")
    objs = _objects(res)
    assert all(o["metrics"] is None and o["colour"] is None for o in objs)
    expected = f"mad metrics {loop / 'real-test'} {loop}/gen{{0..2}}/samples --json > {loop / 'metrics.jsonl'}"
    assert expected in res.stderr
    assert f"mad colorhist REF {loop}/gen{{0..2}}/samples --json > {loop / 'colorhist.jsonl'}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 3  # two notes and the "wrote" line
    text = out.read_text()
    assert "no metrics.jsonl" in text and "mad metrics" in text
    assert len(_Page(text).strips) == 3  # samples are still shown


def test_generation_without_metrics_row_is_named(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    rows = [json.loads(x) for x in (loop / "metrics.jsonl").read_text().splitlines()]
    write_jsonl(loop / "metrics.jsonl", rows[:2])
    res = run_cli("report", loop, "--out", tmp_path / "r.html", "--json")
    objs = _objects(res)
    assert objs[2]["metrics"] is None and objs[1]["metrics"]["fd_digits"] == FD[1]
    assert "metrics.jsonl has no row for gen2" in res.stderr


def test_rows_are_matched_by_generation_folder_even_after_the_loop_moved(tmp_path: Path) -> None:
    loop = make_loop(tmp_path / "here", moved_from="/old/machine/runs/loop", extras=False)
    result = report([loop], tmp_path / "r.html")
    assert [o["metrics"]["fd_digits"] for o in result.objects if o["generation"] is not None] == FD
    assert result.objects[-1]["folder"] == "/old/machine/runs/loop/real"  # the colour reference, outside this loop


def test_generation_of() -> None:
    assert generation_of("/a/gen2/x/gen12/samples") == (12, "samples")
    assert generation_of("runs/gen3") == (3, "")
    assert generation_of("runs/real-test") is None
    assert generation_of("runs/generation4/samples") is None


def test_unfinished_last_generation_is_left_out_with_a_note(tmp_path: Path) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    (loop / "gen3" / "train").mkdir(parents=True)  # the mix for the next generation, not sampled yet
    result = report([loop], tmp_path / "r.html")
    assert max(o["generation"] for o in result.objects if o["generation"] is not None) == 2
    assert any("gen3 has no samples yet" in n for n in result.notes)


def test_reference_rows_of_metrics_are_kept(tmp_path: Path) -> None:
    """demo.sh measures the real train split too: a baseline row that belongs to no generation."""
    loop = make_loop(tmp_path / "loop", extras=False)
    rows = [json.loads(x) for x in (loop / "metrics.jsonl").read_text().splitlines()]
    base = dict(rows[0], gen=str(loop / "real"), fd_digits=0.67)
    write_jsonl(loop / "metrics.jsonl", [base, *rows])
    result = report([loop], tmp_path / "r.html")
    ref = next(o for o in result.objects if o["generation"] is None)
    assert ref["folder"] == "real" and ref["metrics"]["fd_digits"] == 0.67 and ref["colour"]["is_ref"]
    assert "0.67" in (tmp_path / "r.html").read_text()


# -- bad input ------------------------------------------------------------------------------------


def _error(res) -> str:
    assert res.exit_code == 1, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mad: error: "), res.stderr
    return lines[0]


def test_not_a_loop(tmp_path: Path, run_cli, make_images) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a loop folder: expected gen0/samples, gen1/samples" in _error(run_cli("report", empty, "--out", tmp_path / "r.html"))
    make_images(tmp_path / "flat", 3)  # a plain image folder
    assert "not a loop folder" in _error(run_cli("report", tmp_path / "flat", "--out", tmp_path / "r.html"))
    loop = make_loop(tmp_path / "loop", extras=False)
    msg = _error(run_cli("report", loop / "gen1", "--out", tmp_path / "r.html"))
    assert "not a loop folder" in msg and "gen1 is part of a loop" in msg
    assert "folder does not exist" in _error(run_cli("report", tmp_path / "nope", "--out", tmp_path / "r.html"))
    assert "not a folder" in _error(run_cli("report", loop / "metrics.jsonl", "--out", tmp_path / "r.html"))
    assert not (tmp_path / "r.html").exists()


def test_generations_with_a_gap(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    for p in (loop / "gen1" / "samples").iterdir():
        p.unlink()
    msg = _error(run_cli("report", loop, "--out", tmp_path / "r.html"))
    assert "generation 1 is missing between gen0 and gen2" in msg and "has no images" in msg
    import shutil

    shutil.rmtree(loop / "gen1")
    assert "generation 1 is missing" in _error(run_cli("report", loop, "--out", tmp_path / "r.html"))


def test_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    text = (loop / "metrics.jsonl").read_text()
    (loop / "metrics.jsonl").write_text(text + '{"real": "x", "gen": "/r/gen2/samples", "fd_dig')  # killed mid-write
    res = run_cli("report", loop, "--out", tmp_path / "r.html", "--json")
    objs = _objects(res)
    assert objs[2]["metrics"]["fd_digits"] == FD[2]
    assert "metrics.jsonl line 4: incomplete last line skipped" in res.stderr
    # A complete last line without its newline is fine.
    (loop / "metrics.jsonl").write_text(text.rstrip("\n"))
    res = run_cli("report", loop, "--out", tmp_path / "r.html", "--json")
    assert _objects(res)[2]["metrics"]["fd_digits"] == FD[2] and "incomplete" not in res.stderr


@pytest.mark.parametrize("bad, message", [
    ("{not json}\n", "line 2: not valid JSON"),
    ("[1, 2]\n", "line 2: expected a JSON object, got list"),
    ('{"real": "x", "n_gen": 3}\n', "line 2: no 'gen' field naming a folder"),
    ('{"gen": "/r/gen1/samples", "fd_digits": "high"}\n', 'line 2: fd_digits is "high", expected a number or null'),
])
def test_malformed_lines_are_errors_naming_the_line(tmp_path: Path, run_cli, bad: str, message: str) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    lines = (loop / "metrics.jsonl").read_text().splitlines(keepends=True)
    (loop / "metrics.jsonl").write_text(lines[0] + bad + "".join(lines[1:]))
    msg = _error(run_cli("report", loop, "--out", tmp_path / "r.html"))
    assert str(loop / "metrics.jsonl") in msg and message in msg


def test_malformed_colour_file(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    rows = [json.loads(x) for x in (loop / "colorhist.jsonl").read_text().splitlines()]
    rows[2]["hist"] = "flat"
    write_jsonl(loop / "colorhist.jsonl", rows)
    msg = _error(run_cli("report", loop, "--out", tmp_path / "r.html"))
    assert "colorhist.jsonl line 3: hist is not an object" in msg
    rows[2] = colour_row(rows[2]["folder"]) | {"space": "hsv"}
    write_jsonl(loop / "colorhist.jsonl", rows)
    assert "rows in several colour spaces" in _error(run_cli("report", loop, "--out", tmp_path / "r.html"))


def test_jsonl_reader_blank_lines_and_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2}\n{"a": ')
    data = read_jsonl(p)
    assert [r for _, r in data.rows] == [{"a": 1}, {"a": 2}] and data.torn == 4
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(MadError, match="line 2: not valid JSON"):
        read_jsonl(p)


def test_out_must_be_an_html_file(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    assert "--out" in _error(run_cli("report", loop, "--out", tmp_path / "r.png"))
    (tmp_path / "dir.html").mkdir()
    assert "is a folder" in _error(run_cli("report", loop, "--out", tmp_path / "dir.html"))


def test_png_never_goes_into_an_image_folder(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    out = tmp_path / "r.html"
    msg = _error(run_cli("report", loop, "--out", out, "--png", loop / "gen1" / "samples" / "fig.png"))
    assert "inside a samples folder" in msg
    msg = _error(run_cli("report", loop, "--out", out, "--png", loop / "gen2" / "train" / "fig.png"))
    assert "an image folder of the loop" in msg and "gen2/train" in msg
    assert "inside a samples folder" in _error(run_cli("report", loop, "--out", out, "--png", tmp_path / "other" / "samples" / "x" / "fig.png"))
    assert "ending in .png" in _error(run_cli("report", loop, "--out", out, "--png", tmp_path / "fig.svg"))
    assert not out.exists()
    # Where a figure is harmless: the loop folder, a generation's folder (beside grid.png), elsewhere.
    for ok in (loop / "fig.png", loop / "gen1" / "fig.png", tmp_path / "figs" / "fig.png"):
        assert check_png(ok, [loop]) == ok


def test_a_failed_report_leaves_the_earlier_page(tmp_path: Path, run_cli) -> None:
    loop = make_loop(tmp_path / "loop", extras=False)
    out = tmp_path / "r.html"
    assert run_cli("report", loop, "--out", out).exit_code == 0
    before = out.read_bytes()
    (loop / "metrics.jsonl").write_text("{broken\n")
    _error(run_cli("report", loop, "--out", out))
    assert out.read_bytes() == before


def test_sample_names_follow_the_image_folder_rules(tmp_path: Path, make_images) -> None:
    """The report lists samples without Path objects; same files, same order as imagedir.list_images."""
    from mad_cli.imagedir import list_images
    from mad_cli.report.loop import sample_names

    folder = tmp_path / "samples"
    make_images(folder, 3)
    make_images(folder / "sub", 2, prefix="a")
    make_images(folder / ".hidden", 2)
    (folder / "notes.txt").write_text("x")
    (folder / ".img0009.png").write_bytes((folder / "img0000.png").read_bytes())
    (folder / "IMG.PNG").write_bytes((folder / "img0000.png").read_bytes())
    assert sample_names(folder) == [p.relative_to(folder).as_posix() for p in list_images(folder)]
    assert len(sample_names(folder)) == 6


def test_diffusion_tags_guidance_steps_and_labels(tmp_path: Path, run_cli) -> None:
    """The ddpm backend tags mad:guidance, mad:steps and mad:label instead of mad:psi; config.json has model and cfg."""
    loop = make_loop(tmp_path / "loop", generations=2, extras=False)
    for t in range(2):
        gen = loop / f"gen{t}"
        for s in range(N_SAMPLES):
            write_png(gen / "samples" / f"seed{s:06d}.png", _sample(t, s),
                      {"origin": "synthetic", "guidance": "3.0", "steps": "50", "label": str(s % 10), "seed": s, "generation": t})
        (gen / "run" / "config.json").write_text(json.dumps({"model": "ddpm", "cfg": "cifar32"}))
    out = tmp_path / "r.html"
    objs = _objects(run_cli("report", loop, "--out", out, "--png", tmp_path / "r.png", "--json", "--strip", "3"))
    o = objs[1]
    assert (o["psi"], o["guidance"], o["steps"]) == (None, 3.0, 50)
    assert (o["model"], o["preset"]) == ("ddpm", "cifar32")
    assert o["strip_labels"] == ["0", "1", "2"] and o["tags"]["label"] == ["0", "1", "2"]
    text = out.read_text()
    assert "guidance w = 3, 50 steps" in text and 'title="seed000001.png (label 1)"' in text


def test_one_generation_without_metrics_still_draws(tmp_path: Path) -> None:
    loop = make_loop(tmp_path / "loop", generations=1, metrics=False, colour=False, extras=False)
    result = report([loop], tmp_path / "r.html", png=tmp_path / "r.png")
    assert result.plotted == [] and len(result.objects) == 1
    with Image.open(tmp_path / "r.png") as im:
        assert im.size[0] == round(7.16 * 300)
