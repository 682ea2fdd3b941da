"""What each plot shows, as plain data: built once from the summary objects, drawn twice.

The page draws these charts as SVG (`svgplot`, milliseconds per panel) and the print figure
with matplotlib (`figure`); because both renderers read the same `Chart`, the page and the
figure cannot disagree. Conventions: one colour per loop everywhere; "vs reference" solid,
"vs previous generation" dashed; a noise floor is a band from 0 in the loop's colour for
distances (lower is better), or a dotted line at the real-vs-real value for scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mad_cli.report.rows import FLOOR_SUFFIX, is_fd_key

# matplotlib's tab10: distinguishable, and the colours people expect from plots.
LOOP_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
REFERENCE_COLOUR = "#222222"


@dataclass
class Line:
    xs: list[float]
    ys: list[float]
    colour: str
    label: str | None
    dashed: bool = False
    marker: str | None = "o"  # "o", "s" or None
    yerr: list[float] | None = None


@dataclass
class Band:
    """Shaded from lo to hi; xs None spans the whole x range (a constant floor)."""

    lo: list[float]
    hi: list[float]
    colour: str
    label: str | None
    xs: list[float] | None = None


@dataclass
class HLine:
    y: float
    colour: str
    label: str | None
    style: str = "dotted"  # dotted | dashdot


@dataclass
class Stairs:
    edges: list[float]
    values: list[float]
    colour: str
    label: str | None
    dashed: bool = False


Item = Line | Band | HLine | Stairs


@dataclass
class Chart:
    key: str
    title: str
    items: list[Item] = field(default_factory=list)
    xlabel: str = "generation"
    ylabel: str = ""
    integer_x: bool = True
    y_from_zero: bool = False
    caption: str = ""


Groups = dict[str, tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]  # loop -> (colour, generation objects, reference objects)


def metric_title(key: str) -> str:
    if key == "fid":
        return "FID (Inception)"
    if key.startswith("fd_"):
        return f"Fréchet distance, {key[3:]} features"
    return {"kid_mean": "KID"}.get(key, key)


def lower_is_better(key: str) -> bool:
    return is_fd_key(key) or key == "kid_mean"


def _points(objs: list[dict[str, Any]], section: str, key: str, keep: Any = None) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for o in objs:
        d = o.get(section) or {}
        value = d.get(key)
        if value is not None and (keep is None or keep(o)):
            xs.append(float(o["generation"]))
            ys.append(float(value))
    return xs, ys


def _floor_items(xs: list[float], floors: list[float], colour: str, label: str, band: bool) -> list[Item]:
    if not floors:
        return []
    constant = max(floors) - min(floors) <= 1e-12 * max(1.0, abs(max(floors)))
    if not band:
        return [HLine(floors[-1], colour, label)]
    if constant:
        return [Band([0.0], [floors[0]], colour, label)]
    return [Band([0.0] * len(floors), floors, colour, label, xs)]


def metric_chart(groups: Groups, key: str) -> Chart:
    arrow = " ↓" if lower_is_better(key) else " ↑"
    chart = Chart(key, metric_title(key) + arrow, ylabel=key, y_from_zero=lower_is_better(key))
    single = len(groups) == 1
    floors_seen = False
    for name, (colour, objs, refs) in groups.items():
        fx, floors = _points(objs, "metrics", key + FLOOR_SUFFIX)
        floors_seen |= bool(floors)
        chart.items += _floor_items(fx, floors, colour, "real vs real (split half)" if single else f"{name}: real vs real", lower_is_better(key))
        xs, ys = _points(objs, "metrics", key)
        yerr = None
        if key == "kid_mean":
            _, stds = _points([o for o in objs if (o.get("metrics") or {}).get(key) is not None], "metrics", "kid_std")
            yerr = stds if len(stds) == len(ys) and any(stds) else None
        chart.items.append(Line(xs, ys, colour, name, yerr=yerr))
        for ref in refs:
            value = (ref.get("metrics") or {}).get(key)
            if value is not None:
                chart.items.append(HLine(float(value), colour, ref["folder"] if single else f"{name}: {ref['folder']}", "dashdot"))
    better = "↓ lower is closer to the real data. " if lower_is_better(key) else "↑ higher is better. "
    if floors_seen and lower_is_better(key):
        chart.caption = better + "Shaded: the distance between two random halves of the real folder, what a perfect generator would get at this n; below it a change is noise."
    elif floors_seen:
        chart.caption = better + "Dotted: the real folder's own value (split half)."
    else:
        chart.caption = better + f"No noise floor: metrics.jsonl has no {key}{FLOOR_SUFFIX} (mad metrics records one for the Fréchet distance only)."
    if any(isinstance(i, HLine) and i.style == "dashdot" for i in chart.items):
        chart.caption += " Dash-dotted: a reference folder measured the same way."
    return chart


def _is_previous_generation(o: dict[str, Any]) -> bool:
    """colorhist's "prev" is the previous folder of its command line; it is a previous generation only if it was genT-1."""
    return (o.get("colour") or {}).get("prev") == f"gen{o['generation'] - 1}"


def colour_chart(groups: Groups, which: str) -> Chart:
    ref_key, prev_key, noise_key = {
        "tv": ("tv_vs_ref_pct", "tv_vs_prev_pct", "noise_tv_pct"),
        "emd": ("emd_vs_ref_mean_pct", "emd_vs_prev_mean_pct", "noise_emd_mean_pct"),
    }[which]
    title = "colour change: total variation %" if which == "tv" else "colour change: mean EMD % of the range"
    chart = Chart(f"colour_{which}", title, ylabel="%", y_from_zero=True)
    chart.caption = "Solid: against the reference folder; dashed: against the previous generation; shaded: the reference's split-half noise floor."
    single = len(groups) == 1
    for name, (colour, objs, _) in groups.items():
        nx, noise = _points(objs, "colour", noise_key)
        chart.items += _floor_items(nx, noise, colour, "noise floor (split half)" if single else f"{name}: noise floor", True)
        xs, ys = _points(objs, "colour", ref_key)
        chart.items.append(Line(xs, ys, colour, "vs reference" if single else f"{name} vs reference"))
        xs, ys = _points(objs, "colour", prev_key, keep=_is_previous_generation)
        chart.items.append(Line(xs, ys, colour, "vs previous generation" if single else f"{name} vs previous", dashed=True, marker="s"))
    return chart


def _viridis(f: float) -> str:
    """A few stops of viridis, interpolated: dark (first generation) to yellow (last)."""
    stops = [(0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553), (0.164, 0.471, 0.558),
             (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441), (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144)]
    f = min(1.0, max(0.0, f)) * (len(stops) - 1)
    i = min(int(f), len(stops) - 2)
    a, b = stops[i], stops[i + 1]
    w = f - i
    return "#" + "".join(f"{round(255 * (a[k] + (b[k] - a[k]) * w)):02x}" for k in range(3))


def hist_channels(rows: list[dict[str, Any]]) -> tuple[list[str], bool]:
    """Channel names; grey images (every channel equal in every row) get one chart instead of three."""
    rows = [r for r in rows if r and r.get("hist")]
    if not rows:
        return [], False
    names = list(rows[0]["hist"])
    grey = len(names) == 3 and rows[0].get("space", "rgb") == "rgb" and all(r["hist"].get(c) == r["hist"][names[0]] for r in rows for c in names)
    return (names[:1], True) if grey else (names, False)


def _edges(row: dict[str, Any], channel: str, n: int) -> list[float]:
    """Bin edges of a colorhist marginal from its hist_range (0..n when the row has none)."""
    lo, hi = ((row.get("hist_range") or {}).get(channel) or [0.0, float(n)])[:2]
    lo, hi = (lo if lo is not None else 0.0), (hi if hi is not None else float(n))
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def hist_charts(name: str, objs: list[dict[str, Any]], ref: dict[str, Any] | None, ref_label: str) -> list[Chart]:
    rows = [o for o in objs if (o.get("colour") or {}).get("hist")]
    channels, grey = hist_channels([o["colour"] for o in rows] + ([ref] if ref else []))
    charts = []
    for c in channels:
        space = ((rows[0]["colour"] if rows else ref) or {}).get("space") or "rgb"
        chart = Chart(f"hist:{name}:{c}", f"{name}: " + ("grey level (r = g = b)" if grey else f"{space} channel {c}"),
                      xlabel="grey level" if grey else f"{c}", ylabel="share of pixels", integer_x=False, y_from_zero=True)
        chart.caption = "Dashed black: the reference folder; colours: generations, dark (first) to yellow (last)."

        if ref and ref.get("hist") and c in ref["hist"]:
            h = ref["hist"][c]
            chart.items.append(Stairs(_edges(ref, c, len(h)), list(h), REFERENCE_COLOUR, ref_label, dashed=True))
        for i, o in enumerate(rows):
            h = o["colour"]["hist"].get(c)
            if h:
                chart.items.append(Stairs(_edges(o["colour"], c, len(h)), list(h), _viridis(i / max(1, len(rows) - 1)), f"gen {o['generation']}"))
        charts.append(chart)
    return charts
