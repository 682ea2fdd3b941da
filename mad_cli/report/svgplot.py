"""Charts as small SVG documents for the page, written directly (no plotting library).

Why not matplotlib here: its SVG backend took ~0.25 s per panel on our 2-core machine, and a
page has a dozen panels; writing the few primitives a chart needs (polylines, markers, a
band, stairs, ticks, a legend) takes milliseconds, and the text stays text. The print
figure, where matplotlib's typesetting matters, is drawn by `figure.py` from the same Chart.
"""

from __future__ import annotations

import math
from html import escape

from mad_cli.report.charts import Band, Chart, HLine, Line, Stairs

WIDTH = 400
PLOT_HEIGHT = 262  # without the legend, which goes below the axes so it never hides a curve
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 34, 40
CHAR_W = 6.1  # mean glyph width of 11 px sans-serif, for laying out the legend
DASH = {"dashed": "5 3", "dotted": "1.5 2.5", "dashdot": "6 2.5 1.5 2.5"}


def nice_step(span: float, target: int = 5) -> float:
    """1, 2, 2.5 or 5 times a power of ten, giving about `target` intervals over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _decimals(step: float) -> int:
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    return d + 1 if abs(step / 10 ** -d - round(step / 10 ** -d)) > 1e-6 else d


def _tick_label(v: float, step: float) -> str:
    if abs(v) >= 1e5 or (abs(v) < 1e-3 and v != 0):
        return f"{v:.2g}"
    return f"{v:.{_decimals(step)}f}"


def _ranges(chart: Chart) -> tuple[float, float, float, float]:
    xs: list[float] = []
    ys: list[float] = []
    for it in chart.items:
        if isinstance(it, Line):
            xs += it.xs
            errs = it.yerr or [0.0] * len(it.ys)
            ys += [y + e for y, e in zip(it.ys, errs)] + [y - e for y, e in zip(it.ys, errs)]
        elif isinstance(it, Band):
            xs += it.xs or []
            ys += it.lo + it.hi
        elif isinstance(it, HLine):
            ys.append(it.y)
        elif isinstance(it, Stairs):
            xs += [it.edges[0], it.edges[-1]]
            ys += it.values
    if not xs:
        xs = [0.0, 1.0]
    if not ys:
        ys = [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    if chart.integer_x:
        pad = 0.5 if x1 == x0 else 0.3
        x0, x1 = x0 - pad, x1 + pad
    elif x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    y0, y1 = min(ys), max(ys)
    if chart.y_from_zero:
        y0 = min(0.0, y0)
    if y1 - y0 <= 1e-12 * max(1.0, abs(y1)):
        y0, y1 = (y0 - 0.5, y1 + 0.5) if y0 != 0 else (0.0, 1.0)
    step = nice_step(y1 - y0)
    y0 = math.floor(y0 / step + 1e-9) * step
    y1 = math.ceil(y1 / step - 1e-9) * step
    return x0, x1, y0, y1


def render(chart: Chart) -> bytes:
    x0, x1, y0, y1 = _ranges(chart)
    pw, ph = WIDTH - LEFT - RIGHT, PLOT_HEIGHT - TOP - BOTTOM

    def X(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    out: list[str] = []
    # Axes, grid and ticks.
    ystep = nice_step(y1 - y0)
    n = round((y1 - y0) / ystep)
    for i in range(n + 1):
        v = y0 + i * ystep
        y = Y(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#e3e6ea" stroke-width="1"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 3.5:.1f}" text-anchor="end" fill="#444">{_tick_label(v, ystep)}</text>')
    if chart.integer_x:
        lo, hi = math.ceil(x0), math.floor(x1)
        xstep = max(1, int(nice_step(hi - lo, 8))) if hi > lo else 1
        xticks = [float(v) for v in range(lo, hi + 1) if (v - lo) % xstep == 0]
    else:
        xstep = nice_step(x1 - x0, 5)
        start = math.ceil(x0 / xstep - 1e-9) * xstep
        xticks = [start + i * xstep for i in range(int((x1 - start) / xstep + 1e-9) + 1)]
    for v in xticks:
        x = X(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP + ph}" x2="{x:.1f}" y2="{TOP + ph + 4}" stroke="#444"/>')
        label = str(int(v)) if chart.integer_x else _tick_label(v, xstep)
        out.append(f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle" fill="#444">{label}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888" stroke-width="1"/>')
    out.append(f'<text x="{LEFT + pw / 2:.1f}" y="{PLOT_HEIGHT - 8}" text-anchor="middle" fill="#222">{escape(chart.xlabel)}</text>')
    if chart.ylabel:
        out.append(f'<text transform="translate(14 {TOP + ph / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#222">{escape(chart.ylabel)}</text>')
    out.append(f'<text x="{WIDTH / 2:.1f}" y="20" text-anchor="middle" font-size="13" font-weight="bold" fill="#111">{escape(chart.title)}</text>')

    # Data: bands first (behind), then stairs and reference lines, then the curves.
    body: list[str] = []
    for it in chart.items:
        if isinstance(it, Band):
            if it.xs is None:
                top, bot = Y(min(it.hi[0], y1)), Y(max(it.lo[0], y0))
                body.append(f'<rect x="{LEFT}" y="{top:.1f}" width="{pw}" height="{max(0.0, bot - top):.1f}" fill="{it.colour}" fill-opacity="0.14"/>')
            else:
                pts = [(X(x), Y(h)) for x, h in zip(it.xs, it.hi)] + [(X(x), Y(lo)) for x, lo in reversed(list(zip(it.xs, it.lo)))]
                body.append(f'<polygon points="{_pts(pts)}" fill="{it.colour}" fill-opacity="0.14"/>')
    for it in chart.items:
        if isinstance(it, Stairs):
            d = f"M{X(it.edges[0]):.1f},{Y(it.values[0]):.1f}"
            for i, v in enumerate(it.values):
                if i:
                    d += f" V{Y(v):.1f}"
                d += f" H{X(it.edges[i + 1]):.1f}"
            dash = f' stroke-dasharray="{DASH["dashed"]}"' if it.dashed else ""
            body.append(f'<path d="{d}" fill="none" stroke="{it.colour}" stroke-width="1.5"{dash}/>')
        elif isinstance(it, HLine):
            y = Y(it.y)
            body.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="{it.colour}" stroke-width="1.3" stroke-dasharray="{DASH[it.style]}"/>')
    for it in chart.items:
        if isinstance(it, Line) and it.xs:
            pts = [(X(x), Y(y)) for x, y in zip(it.xs, it.ys)]
            if it.yerr:
                for (px, _), y, e in zip(pts, it.ys, it.yerr):
                    a, b = Y(y - e), Y(y + e)
                    body.append(f'<path d="M{px:.1f},{a:.1f} V{b:.1f} M{px - 3:.1f},{a:.1f} h6 M{px - 3:.1f},{b:.1f} h6" stroke="{it.colour}" stroke-width="1"/>')
            dash = f' stroke-dasharray="{DASH["dashed"]}"' if it.dashed else ""
            body.append(f'<polyline points="{_pts(pts)}" fill="none" stroke="{it.colour}" stroke-width="1.8"{dash}/>')
            body += [_marker(it.marker, px, py, it.colour) for px, py in pts if it.marker]
    out += body

    legend, height = _legend(chart)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">'
            f'<rect width="{WIDTH}" height="{height}" fill="#ffffff"/>')
    return (head + "".join(out) + "".join(legend) + "</svg>").encode("utf-8")


def _pts(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _marker(kind: str | None, x: float, y: float, colour: str) -> str:
    if kind == "s":
        return f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.2" fill="{colour}"/>'


def _legend(chart: Chart) -> tuple[list[str], int]:
    """Entries below the axes, wrapped into rows; returns the elements and the SVG's total height."""
    seen: set[str] = set()
    entries = []
    for it in chart.items:
        if it.label and it.label not in seen:
            seen.add(it.label)
            entries.append(it)
    out: list[str] = []
    x, y = LEFT, PLOT_HEIGHT + 6
    for it in entries:
        w = 26 + len(it.label or "") * CHAR_W + 14
        if x + w > WIDTH - 4 and x > LEFT:
            x, y = LEFT, y + 16
        cy = y + 4
        if isinstance(it, Band):
            out.append(f'<rect x="{x}" y="{cy - 5}" width="20" height="10" fill="{it.colour}" fill-opacity="0.25"/>')
        else:
            style = "dashed" if getattr(it, "dashed", False) else it.style if isinstance(it, HLine) else None
            dash = f' stroke-dasharray="{DASH[style]}"' if style else ""
            out.append(f'<line x1="{x}" y1="{cy}" x2="{x + 20}" y2="{cy}" stroke="{it.colour}" stroke-width="1.8"{dash}/>')
            if isinstance(it, Line) and it.marker:
                out.append(_marker(it.marker, x + 10, cy, it.colour))
        out.append(f'<text x="{x + 26}" y="{cy + 4}" fill="#222">{escape(it.label or "")}</text>')
        x += w
    return out, (y + 16 if entries else PLOT_HEIGHT) + 4
