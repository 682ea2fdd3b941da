"""The print figure (`--png`): metric and colour-drift panels, then one sample strip per generation.

matplotlib with the Agg backend, at 300 dpi and 7.16 in wide (a two-column paper's text
width). Axes are placed by hand instead of by a layout engine: constrained layout measured
every tick label of every strip row and took seconds for a 10-generation loop.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from mad_cli.report.charts import Band, Chart, Groups, HLine, Line, Stairs
from mad_cli.report.strips import Strips, strip_image

PRINT_DPI = 300
WIDTH_IN = 7.16
_RC = {"font.size": 6.5, "axes.titlesize": 6.8, "axes.labelsize": 6.5, "xtick.labelsize": 6, "ytick.labelsize": 6, "legend.fontsize": 5.3,
       "axes.linewidth": 0.6, "lines.linewidth": 1.1, "lines.markersize": 3}
_LS = {"dotted": ":", "dashdot": "-."}


def draw(ax: Any, chart: Chart, legend: bool = True) -> None:
    """Draw one Chart on matplotlib axes (the same content as the page's SVG panel)."""
    from matplotlib.ticker import MaxNLocator

    for it in chart.items:
        if isinstance(it, Band):
            if it.xs is None:
                ax.axhspan(it.lo[0], it.hi[0], color=it.colour, alpha=0.14, linewidth=0, label=it.label)
            else:
                ax.fill_between(it.xs, it.lo, it.hi, color=it.colour, alpha=0.14, linewidth=0, label=it.label)
        elif isinstance(it, HLine):
            ax.axhline(it.y, color=it.colour, linestyle=_LS[it.style], linewidth=0.9, label=it.label)
        elif isinstance(it, Stairs):
            ax.stairs(it.values, it.edges, color=it.colour, linestyle="--" if it.dashed else "-", linewidth=0.9, label=it.label)
        elif isinstance(it, Line):
            style = {"color": it.colour, "linestyle": "--" if it.dashed else "-", "marker": it.marker or "", "label": it.label}
            if it.yerr:
                ax.errorbar(it.xs, it.ys, yerr=it.yerr, capsize=1.5, elinewidth=0.6, **style)
            else:
                ax.plot(it.xs, it.ys, **style)
    ax.set_title(chart.title)
    ax.set_xlabel(chart.xlabel, labelpad=1)
    if chart.integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if chart.y_from_zero:
        ax.set_ylim(bottom=0)
    ax.tick_params(length=2, pad=1.5)
    ax.grid(True, alpha=0.25, linewidth=0.4)
    if legend:
        ax.legend(loc="best", frameon=False, handlelength=1.8)


def strip_mosaic(groups: Groups, strips: Strips, gap: int = 4) -> tuple[np.ndarray, list[tuple[str, int, float]]]:
    """Every strip (loop × generation) stacked into one image, rows scaled to one height.

    One image on one axes instead of an axes per generation: matplotlib's cost is per axes
    (ticks, spines), and a 10-generation loop would otherwise spend seconds on empty axes.
    Returns the image and, per row, (loop, generation, centre row in pixels).
    """
    from PIL import Image

    rows = [(name, o["generation"], strip_image(strips.thumbs.get((name, o["generation"]), []))) for name, (_, objs, _) in groups.items() for o in objs]
    height = max(16, min(im.shape[0] for _, _, im in rows)) if rows else 16
    scaled = []
    for name, t, im in rows:
        if im.shape[0] != height:
            w = max(1, round(im.shape[1] * height / im.shape[0]))
            im = np.asarray(Image.fromarray(im).resize((w, height), Image.Resampling.NEAREST if im.shape[0] < height else Image.Resampling.LANCZOS))
        scaled.append((name, t, im))
    width = max((im.shape[1] for _, _, im in scaled), default=16)
    mosaic = np.full((len(scaled) * (height + gap) - gap if scaled else height, width, 3), 255, np.uint8)
    centres = []
    for i, (name, t, im) in enumerate(scaled):
        y = i * (height + gap)
        mosaic[y:y + height, :im.shape[1]] = im
        centres.append((name, t, y + height / 2))
    return mosaic, centres


def render(charts: list[Chart], groups: Groups, strips: Strips) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    ncols = max(1, min(3, len(charts)))
    prows = math.ceil(len(charts) / ncols) if charts else 0
    mosaic, centres = strip_mosaic(groups, strips)
    row_px = (mosaic.shape[0] + 4) / max(1, len(centres))
    label_in = 0.75
    # Inches per pixel: the full width if that keeps a row at most 0.6 in high, else narrower.
    scale = min((WIDTH_IN - label_in - 0.05) / mosaic.shape[1], 0.6 / row_px)
    strips_h = mosaic.shape[0] * scale
    panel_h = 2.0
    height = prows * panel_h + strips_h + 0.15
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, height))
        cell_w = WIDTH_IN / ncols
        left, right, top, bottom = 0.42, 0.08, 0.2, 0.3
        for i, chart in enumerate(charts):
            r, c = divmod(i, ncols)
            x = c * cell_w + left
            y = height - (r + 1) * panel_h + bottom
            ax = fig.add_axes((x / WIDTH_IN, y / height, (cell_w - left - right) / WIDTH_IN, (panel_h - top - bottom) / height))
            draw(ax, chart, legend=True)
        if centres:
            y0 = 0.05
            ax = fig.add_axes((label_in / WIDTH_IN, y0 / height, mosaic.shape[1] * scale / WIDTH_IN, strips_h / height))
            ax.imshow(mosaic, interpolation="nearest", aspect="auto")
            ax.axis("off")
            single = len(groups) == 1
            for name, t, centre in centres:
                fig.text((label_in - 0.06) / WIDTH_IN, (y0 + strips_h - centre * scale) / height, f"gen {t}" if single else f"{name}\ngen {t}",
                         ha="right", va="center", color=groups[name][0], fontsize=6.5)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=PRINT_DPI, pil_kwargs={"compress_level": 1})
    return buf.getvalue()
