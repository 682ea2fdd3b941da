"""`mad report`: one or several loops on one page — metrics, colour drift and samples across generations.

Every result of the field is a picture (metric curves per generation, colour change in %,
grids of generation 1 against 9); this draws them from what a loop already left, so nobody
writes their own plotting script to look at a loop or to compare two.

The report only reads: it never trains, samples or measures. Where a metrics file is
missing it says which command would make it. Modules:

    loop.py     read one loop folder (generations, mix, run config, filter, review)
    rows.py     metrics.jsonl / colorhist.jsonl rows, type-checked, torn last line skipped
    strips.py   the same seeds in every generation, decoded only for the strips
    summary.py  one object per generation per loop: every number the page shows (`--json`)
    charts.py   what each plot shows, as data: drawn by svgplot.py for the page and
                by figure.py (matplotlib) for the print figure, so the two never disagree
    page.py     the self-contained HTML page
"""

from __future__ import annotations

import os
import webbrowser
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_write_bytes, atomic_write_text, is_within
from mad_cli.output import warn
from mad_cli.report import charts, figure, page, strips, summary, svgplot
from mad_cli.report.loop import GEN_RE, Loop, read_loop

STRIP_DEFAULT = 8
STRIP_MAX = 64


@dataclass
class ReportResult:
    objects: list[dict[str, Any]]  # one per generation per loop, then reference folders (generation None)
    plotted: list[str]  # metric keys drawn as panels
    notes: list[str]
    out: Path
    png: Path | None


def check_out(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    if p.suffix.lower() != ".html":
        raise MadError(f"--out {p}: the report is one HTML page; give a file name ending in .html")
    if p.is_dir():
        raise MadError(f"--out {p}: is a folder; give a file name ending in .html")
    return p


def check_png(png: str | os.PathLike[str], loops: Sequence[str | os.PathLike[str]]) -> Path:
    """A figure must never land where a later `mad mix`/`metrics` would take it for a sample or a training image."""
    p = Path(png)
    if p.suffix.lower() != ".png":
        raise MadError(f"--png {p}: the figure is a PNG; give a file name ending in .png")
    if p.is_dir():
        raise MadError(f"--png {p}: is a folder; give a file name ending in .png")
    parent = p.resolve().parent
    if "samples" in parent.parts:
        raise MadError(f"--png {p}: is inside a samples folder, where it would count as a sample; write it next to the loop's folders instead")
    for loop in loops:
        root = Path(loop).resolve()
        if is_within(parent, root):
            rel = parent.relative_to(root)
            if rel.parts and not (len(rel.parts) == 1 and GEN_RE.fullmatch(rel.parts[0])):
                raise MadError(
                    f"--png {p}: is inside {Path(loop) / rel}, an image folder of the loop (a later mad mix or mad metrics "
                    f"would take the figure for an image); write it to {loop} itself or outside the loop"
                )
    return p


def loop_names(loops: Sequence[str | os.PathLike[str]], names: Sequence[str] | None) -> list[str]:
    """--name per loop, else the folder's name (its parent too when two loops share a name)."""
    resolved = [Path(lp).resolve() for lp in loops]
    for i, r in enumerate(resolved):
        if r in resolved[:i]:
            raise MadError(f"LOOP {loops[i]}: given twice")
    if names:
        if len(names) != len(loops):
            raise MadError(f"--name: {len(names)} name(s) for {len(loops)} loop(s); give one --name per LOOP, in order")
        clean = [n.strip() for n in names]
        if any(not n for n in clean):
            raise MadError("--name: a name cannot be empty")
        dup = next((n for i, n in enumerate(clean) if n in clean[:i]), None)
        if dup:
            raise MadError(f"--name {dup}: given for two loops; each loop needs its own name")
        return clean
    out = [r.name or str(r) for r in resolved]
    if len(set(out)) < len(out):
        out = [f"{r.parent.name}/{r.name}" if out.count(r.name) > 1 else r.name for r in resolved]
    return out


def report(
    loops: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    png: str | os.PathLike[str] | None = None,
    names: Sequence[str] | None = None,
    strip: int = STRIP_DEFAULT,
    open_browser: bool = False,
) -> ReportResult:
    """Read the loops, write the HTML page (and the figure), return the per-generation objects.

    Everything the user can get wrong (flags, paths, a folder that is not a loop, a
    malformed jsonl line) fails before anything is written.
    """
    if not loops:
        raise MadError("LOOP: give at least one loop folder")
    out_p = check_out(out)
    png_p = check_png(png, loops) if png is not None else None
    if not 1 <= strip <= STRIP_MAX:
        raise MadError(f"--strip {strip}: must be between 1 and {STRIP_MAX} samples per generation")
    loop_list = [read_loop(lp, name) for lp, name in zip(loops, loop_names(loops, names))]
    notes = [n for lp in loop_list for n in lp.notes]

    chosen = strips.choose(loop_list, strip)
    if not chosen.same_seeds:
        notes.append("the generations share no sample file names, so the strips do not show the same seeds")
    strips.load(loop_list, chosen)
    objects = summary.generation_objects(loop_list, chosen)
    plan = summary.plan(loop_list)
    notes += plan.notes
    notes += _tag_checks(objects)
    for n in notes:
        warn(n)

    colours = {lp.name: charts.LOOP_COLOURS[i % len(charts.LOOP_COLOURS)] for i, lp in enumerate(loop_list)}
    groups: charts.Groups = {
        lp.name: (
            colours[lp.name],
            [o for o in objects if o["loop"] == lp.name and o["generation"] is not None],
            [o for o in objects if o["loop"] == lp.name and o["generation"] is None],
        )
        for lp in loop_list
    }
    drawn = [charts.metric_chart(groups, key) for key in plan.metrics]
    if plan.colour:
        drawn += [charts.colour_chart(groups, "tv"), charts.colour_chart(groups, "emd")]
    hists = [c for lp in loop_list for c in charts.hist_charts(lp.name, groups[lp.name][1], *_colour_reference(lp))]
    panels = [(c, svgplot.render(c)) for c in drawn + hists]
    html = page.render([(lp.name, str(lp.path), colours[lp.name]) for lp in loop_list], objects, panels, plan.metrics, chosen, notes)
    png_bytes = figure.render(drawn, groups, chosen) if png_p is not None else None
    try:
        atomic_write_text(out_p, html)
    except OSError as exc:
        raise MadError(f"--out {out_p}: cannot write it ({exc.strerror or exc})") from None
    if png_p is not None and png_bytes is not None:
        try:
            atomic_write_bytes(png_p, png_bytes)
        except OSError as exc:
            raise MadError(f"--png {png_p}: cannot write it ({exc.strerror or exc})") from None
    if open_browser:
        webbrowser.open(out_p.resolve().as_uri())
    return ReportResult(objects, plan.metrics, notes, out_p, png_p)


def _colour_reference(loop: Loop) -> tuple[dict[str, Any] | None, str]:
    ref = loop.colour_ref
    if ref is None:
        return None, "reference"
    from mad_cli.report.loop import relative_label

    return ref, f"reference ({relative_label(ref['folder'], loop.path)})" if ref.get("folder") else "reference"


def _tag_checks(objects: list[dict[str, Any]]) -> list[str]:
    """Samples whose generation tag disagrees with their folder: a copied or mislabelled folder."""
    notes = []
    for o in objects:
        if o["generation"] is None:
            continue
        tagged = (o.get("tags") or {}).get("generation")
        if tagged and tagged != [str(o["generation"])]:
            notes.append(f"{o['loop']}: gen{o['generation']}/samples holds samples tagged generation {', '.join(tagged)}")
    return notes
