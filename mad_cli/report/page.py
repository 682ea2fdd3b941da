"""The report as one self-contained HTML page: inline CSS, images and plots as data URIs.

A Content-Security-Policy that allows only `data:` images and inline styles makes "renders
offline, sends nothing anywhere" a property the browser enforces, not just a habit of this
file: the page has no script and cannot load anything from outside itself.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from typing import Any

from mad_cli import __version__
from mad_cli.report.charts import Chart, metric_title
from mad_cli.report.rows import metric_keys
from mad_cli.report.strips import Strips

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #5b6470; --line: #d8dde3; --bg: #ffffff; --soft: #f5f7f9; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1400px; padding: 24px 28px 60px; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
h1 { font-size: 26px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-top: 8px; border-top: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
nav a { margin-right: 14px; color: inherit; }
.muted, figcaption, .meta { color: var(--muted); font-size: 13px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin: 0 6px 0 0; vertical-align: -1px; background: var(--c); }
.loopname { font-weight: 600; margin-right: 18px; white-space: nowrap; }
.notes li { margin: 3px 0; }
.notes code, td code { font-size: 12px; background: var(--soft); padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.panels { display: flex; flex-wrap: wrap; gap: 14px; }
figure.panel { margin: 0; padding: 8px; border: 1px solid var(--line); border-radius: 6px; background: #fff; max-width: 100%; }
figure.panel img { display: block; max-width: 100%; height: auto; }
figure.panel figcaption { max-width: 400px; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px 4px 0; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { font-weight: 600; }
.strips td { padding: 6px 14px 6px 0; }
.strip { display: flex; gap: 3px; flex-wrap: nowrap; }
.strip img { display: block; width: var(--w, 64px); height: auto; image-rendering: pixelated; border-radius: 2px; background: var(--soft); }
.strip.smooth img { image-rendering: auto; }
.genlabel { white-space: nowrap; font-weight: 600; }
.genlabel small { display: block; font-weight: 400; color: var(--muted); }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers as the terminal tables show them (4 significant digits); absent as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.4g}"
    return esc(value)


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


def _cell(value: Any, loop: str, gen: Any, key: str) -> str:
    return f'<td class="num" data-loop="{esc(loop)}" data-generation="{esc(gen)}" data-key="{esc(key)}">{fmt(value)}</td>'


def _bias(o: dict[str, Any]) -> str:
    parts = []
    if o.get("psi") is not None:
        parts.append(f"ψ = {fmt(o['psi'])}")
    if o.get("guidance") is not None:
        parts.append(f"guidance w = {fmt(o['guidance'])}")
    if o.get("steps") is not None:
        parts.append(f"{fmt(o['steps'])} steps")
    return ", ".join(parts) or "–"


def _preset(o: dict[str, Any]) -> str:
    kimg = f"{o['kimg']:g} kimg" if o.get("kimg") is not None else ""
    return ", ".join(x for x in (esc(o["preset"]) if o.get("preset") else "", kimg) if x) or "–"


def _sources(o: dict[str, Any]) -> str:
    items = []
    for s in o.get("trained_on") or []:
        origin = f" ({esc(s['origin'])})" if s.get("origin") else ""
        count = f" ×{fmt(s['images'])}" if s.get("images") is not None else ""
        items.append(f"<code>{esc(s['source'])}</code>{count}{origin}")
    frm = o.get("synthetic_from") or {}
    if len(frm) > 1:  # several generations feed this one (synthetic augmentation): how many from each
        items.append("synthetic by generation: " + ", ".join(f"gen{esc(k)} ×{fmt(v)}" for k, v in frm.items()))
    return "<br>".join(items) or "–"


def _tags(o: dict[str, Any]) -> str:
    tags = o.get("tags") or {}
    shown = []
    for k, values in tags.items():
        text = ", ".join(values[:4]) + (f", … ({len(values)} values)" if len(values) > 4 else "")
        shown.append(f"{esc(k)}={esc(text)}")
    return "<br>".join(shown) or "–"


def _shape(groups: dict[str, list[dict[str, Any]]]) -> str:
    out = ['<section id="shape"><h2>1. The loop</h2>',
           ('<p class="muted">What each generation trained on (from <code>train/mix.json</code> and <code>manifest.csv</code>), '
            "its model (<code>run/config.json</code>), its sampling bias and the provenance tags of the samples shown below.</p>")]
    for name, objs in groups.items():
        out.append(f"<h3>{esc(name)}</h3>")
        out.append('<table class="shape"><tr><th>gen</th><th>trained on</th><th>real</th><th>synthetic</th><th>model</th><th>preset</th>'
                   "<th>sampling bias</th><th>samples</th><th>tags seen</th></tr>")
        for o in objs:
            t = o["generation"]
            out.append(
                f"<tr><td>{t}</td><td>{_sources(o)}</td>{_cell(o.get('n_real'), name, t, 'n_real')}{_cell(o.get('n_synthetic'), name, t, 'n_synthetic')}"
                f"<td>{fmt(o.get('model'))}</td><td>{_preset(o)}</td><td>{_bias(o)}</td>{_cell(o.get('n_samples'), name, t, 'n_samples')}"
                f"<td>{_tags(o)}</td></tr>"
            )
        out.append("</table>")
    out.append("</section>")
    return "\n".join(out)


Panel = tuple[Chart, bytes]  # a chart and its SVG


def _figures(panels: Sequence[Panel]) -> str:
    out = ['<div class="panels">']
    for chart, svg in panels:
        out.append(
            f'<figure class="panel" data-panel="{esc(chart.key)}"><img src="{data_uri("image/svg+xml", svg)}" alt="{esc(chart.title)}">'
            f"<figcaption>{esc(chart.caption)}</figcaption></figure>"
        )
    out.append("</div>")
    return "\n".join(out)


def _metric_keys(objects: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for o in objects:
        for k in metric_keys(o.get("metrics") or {}):
            keys[k] = None
    return list(keys)


def _metrics(all_objs: list[dict[str, Any]], panels: Sequence[Panel], plotted: list[str]) -> str:
    out = ['<section id="metrics"><h2>2. Metrics against generation</h2>']
    mine = [p for p in panels if p[0].key in plotted]
    keys = _metric_keys(all_objs)
    if not keys:
        out.append('<p class="muted">No metrics to show (see the notes above for the command that makes them).</p></section>')
        return "\n".join(out)
    out.append(_figures(mine))
    columns: list[tuple[str, str]] = []
    for k in keys:
        columns.append((k, k))
        if k == "kid_mean":
            columns.append(("kid_std", "kid_std"))
        elif k.startswith(("fd_", "fid")):
            columns.append((k + "_real_split_half", f"{k} real split half"))
    head = "".join(f"<th>{esc(label)}</th>" for _, label in columns)
    out.append(f'<table class="numbers" id="metrics-table"><tr><th>loop</th><th>gen</th><th>n_gen</th><th>n_real</th>{head}</tr>')
    for o in all_objs:
        m = o.get("metrics")
        if not m:
            continue
        gen = o["generation"] if o["generation"] is not None else o.get("folder")
        cells = "".join(_cell(m.get(k), o["loop"], gen, k) for k, _ in columns)
        out.append(f"<tr><td>{esc(o['loop'])}</td><td>{esc(gen)}</td>{_cell(m.get('n_gen'), o['loop'], gen, 'n_gen')}{_cell(m.get('n_real'), o['loop'], gen, 'n_real')}{cells}</tr>")
    out.append("</table>")
    not_plotted = [k for k in keys if k not in plotted]
    if not_plotted:
        out.append(f'<p class="muted">In the table but not plotted (not every loop has them): {esc(", ".join(metric_title(k) for k in not_plotted))}.</p>')
    out.append("</section>")
    return "\n".join(out)


_COLOUR_COLUMNS = (
    ("tv_vs_ref_pct", "TV % vs ref"), ("tv_vs_prev_pct", "TV % vs prev"), ("emd_vs_ref_mean_pct", "EMD % vs ref"),
    ("emd_vs_prev_mean_pct", "EMD % vs prev"), ("noise_tv_pct", "noise TV %"), ("noise_emd_mean_pct", "noise EMD %"),
)


def _colour(all_objs: list[dict[str, Any]], panels: Sequence[Panel]) -> str:
    out = ['<section id="colour"><h2>3. Colour drift</h2>',
           ('<p class="muted">Change of the colour distribution in % (as in the thesis\' fig. 9): total variation of the joint histogram '
            "and the mean per-channel earth mover's distance, against the reference folder and against the previous generation; "
            "below the noise floor (two halves of the reference compared) a change is sampling noise.</p>")]
    rows = [o for o in all_objs if o.get("colour")]
    if not rows:
        out.append('<p class="muted">No colour histograms to show (see the notes above for the command that makes them).</p></section>')
        return "\n".join(out)
    out.append(_figures([p for p in panels if p[0].key.startswith(("colour_", "hist:"))]))
    head = "".join(f"<th>{esc(label)}</th>" for _, label in _COLOUR_COLUMNS)
    out.append(f'<table class="numbers" id="colour-table"><tr><th>loop</th><th>folder</th>{head}</tr>')
    for o in rows:
        c = o["colour"]
        gen = o["generation"] if o["generation"] is not None else o.get("folder")
        label = f"gen {gen}" if o["generation"] is not None else f"{gen} (reference)" if c.get("is_ref") else str(gen)
        previous = o["generation"] is not None and c.get("prev") == f"gen{o['generation'] - 1}"
        cells = "".join(_cell(c.get(k) if previous or "_prev_" not in k else None, o["loop"], gen, k) for k, _ in _COLOUR_COLUMNS)
        out.append(f"<tr><td>{esc(o['loop'])}</td><td>{esc(label)}</td>{cells}</tr>")
    out.append("</table></section>")
    return "\n".join(out)


def _strips(groups: dict[str, list[dict[str, Any]]], strips: Strips) -> str:
    out = ['<section id="samples"><h2>4. Samples</h2>']
    out.append('<p class="muted">' + ("The same seeds in every generation" + (" and every loop" if len(groups) > 1 else "") + ": follow one column down the loop."
               if strips.same_seeds else "The generations share no sample names, so each row shows its own first samples (not the same seeds).") + "</p>")
    names = list(groups)
    ts = sorted({o["generation"] for objs in groups.values() for o in objs})
    out.append('<table class="strips"><tr><th>gen</th>' + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>")
    for t in ts:
        cells = []
        for name in names:
            o = next((x for x in groups[name] if x["generation"] == t), None)
            thumbs = strips.thumbs.get((name, t), [])
            if o is None or not thumbs:
                cells.append("<td>–</td>")
                continue
            width = thumbs[0].pixels.shape[1]
            room = 64 if len(names) == 1 else 48  # several loops side by side must fit a screen
            shown = room if width < room else min(width, room + 32)
            smooth = "" if width < room else " smooth"
            imgs = "".join(
                f'<img src="{data_uri("image/png", th.png)}" alt="{esc(name)} gen {t} {esc(th.name)}" title="{esc(th.name)}'
                + (f" (label {esc(th.tags['label'])})" if "label" in th.tags else "") + '">'
                for th in thumbs
            )
            cells.append(f'<td><div class="strip{smooth}" style="--w: {shown}px" data-loop="{esc(name)}" data-generation="{t}">{imgs}</div></td>')
        extra = ""
        arts = [(n, x.get("artifacts_mean")) for n in names for x in groups[n] if x["generation"] == t and x.get("artifacts_mean") is not None]
        if arts:
            extra = "<small>artifacts score mean: " + ", ".join((f"{esc(n)} " if len(names) > 1 else "") + fmt(v) for n, v in arts) + "</small>"
        out.append(f'<tr><td class="genlabel">gen {t}{extra}</td>{"".join(cells)}</tr>')
    out.append("</table></section>")
    return "\n".join(out)


def _review(groups: dict[str, list[dict[str, Any]]]) -> str:
    rows = [o for objs in groups.values() for o in objs if o.get("filter") or o.get("review")]
    if not rows:
        return ""
    out = ['<section id="review"><h2>5. Filtering and review</h2>',
           ('<p class="muted">What <code>mad filter</code> kept of each generation\'s samples (<code>decisions.csv</code>, <code>filter.json</code>) '
            "and each reviewer's answers (<code>samples-review/labels-NAME.csv</code>).</p>"),
           ('<table class="numbers" id="review-table"><tr><th>loop</th><th>gen</th><th>rules</th><th>kept</th><th>rejected</th><th>dropped by</th>'
            "<th>artifacts score mean</th><th>reviewer</th><th>good</th><th>bad</th><th>skip</th></tr>")]
    for o in rows:
        f = o.get("filter") or {}
        name, t = o["loop"], o["generation"]
        dropped = ", ".join(f"{esc(k)} {fmt(v)}" for k, v in (f.get("dropped") or {}).items()) or "–"
        base = (f"<td>{esc(name)}</td><td>{t}</td><td><code>{esc(f.get('rules') or '–')}</code></td>{_cell(f.get('kept'), name, t, 'kept')}"
                f"{_cell(f.get('rejected'), name, t, 'rejected')}<td>{dropped}</td>{_cell(o.get('artifacts_mean'), name, t, 'artifacts_mean')}")
        reviewers = list((o.get("review") or {}).items()) or [(None, {})]
        for i, (who, counts) in enumerate(reviewers):
            left = base if i == 0 else '<td></td>' * 7
            key = f"review:{who}" if who else "review"
            out.append(f"<tr>{left}<td>{esc(who) if who else '–'}</td>" + "".join(_cell(counts.get(k), name, t, f"{key}:{k}") for k in ("good", "bad", "skip")) + "</tr>")
    out.append("</table></section>")
    return "\n".join(out)


def render(
    loops: list[tuple[str, str, str]],
    objects: list[dict[str, Any]],
    panels: Sequence[Panel],
    plotted: list[str],
    strips: Strips,
    notes: list[str],
) -> str:
    """The whole page. `loops` is (name, path, colour) in command-line order."""
    groups = {name: [o for o in objects if o["loop"] == name and o["generation"] is not None] for name, _, _ in loops}
    legend = " ".join(f'<span class="loopname" data-loop="{esc(n)}"><span class="swatch" style="--c: {c}"></span>{esc(n)}</span>'
                      f'<span class="muted">{esc(p)}</span><br>' for n, p, c in loops)
    note_items = "".join(f"<li>{_note(n)}</li>" for n in notes)
    sections = [
        _shape(groups),
        _metrics(objects, panels, plotted),
        _colour(objects, panels),
        _strips(groups, strips),
        _review(groups),
    ]
    title = "mad report: " + ", ".join(n for n, _, _ in loops)
    nav = " ".join(f'<a href="#{i}">{label}</a>' for i, label in (("shape", "loop"), ("metrics", "metrics"), ("colour", "colour"), ("samples", "samples"), ("review", "review")) if f'id="{i}"' in "".join(sections))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p>{legend}</p>
<p class="meta">Written by <code>mad report</code> (mad {esc(__version__)}) from the files the loop left; nothing here was recomputed.</p>
<nav>{nav}</nav>
</header>
{f'<section id="notes" class="notes"><h2>Notes</h2><ul>{note_items}</ul></section>' if notes else ''}
{chr(10).join(s for s in sections if s)}
</body>
</html>
"""


def _note(text: str) -> str:
    """A note with the command it suggests (after 'with: ', or in `backticks`) set as code."""
    head, sep, command = text.partition("with: ")
    head = re.sub(r"`([^`]+)`", r"<code>\1</code>", esc(head))
    return head + (f"with: <code>{esc(command)}</code>" if sep else "")
