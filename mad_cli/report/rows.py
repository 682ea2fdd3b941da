"""Rows of `mad metrics --json` and `mad colorhist --json` as the report reads them.

A jsonl file is appended or rewritten by a shell loop that can be killed: a last line
without its newline that does not parse is what that leaves, so it is skipped (the caller
warns). Anything else malformed is the user's to fix, and the error names the line. Every
number the report uses is type-checked here, so a hand-edited file fails with its line
instead of deep inside a plot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_cli.errors import MadError

# Plotted in this order after the Fréchet distance(s) (fid or fd_<features>).
OTHER_METRICS = ("kid_mean", "precision", "recall", "density", "coverage")
FLOOR_SUFFIX = "_real_split_half"
_METRIC_EXTRAS = ("kid_std", "n_real", "n_gen", "k_pr", "k_dc", "kid_subset_size")
_COLOUR_NUMBERS = ("tv_vs_ref_pct", "tv_vs_prev_pct", "emd_vs_ref_mean_pct", "emd_vs_prev_mean_pct", "noise_tv_pct", "noise_emd_mean_pct", "n_images")
_COLOUR_CHANNEL_DICTS = ("emd_vs_ref_pct", "emd_vs_prev_pct", "noise_emd_pct", "mean", "std")


def is_fd_key(key: str) -> bool:
    """FID in Inception space, fd_<name> in any other (see features.metric_prefix)."""
    return (key == "fid" or key.startswith("fd_")) and not key.endswith(FLOOR_SUFFIX)


def metric_keys(row: dict[str, Any]) -> list[str]:
    """The plottable metrics of one `mad metrics` row, in display order."""
    return sorted(k for k in row if is_fd_key(k)) + [k for k in OTHER_METRICS if k in row]


@dataclass
class JsonlRows:
    rows: list[tuple[int, dict[str, Any]]]  # (line number, object)
    torn: int | None = None  # line number of a skipped torn last line


def read_jsonl(path: Path) -> JsonlRows:
    """One JSON object per line; a torn last line (no newline, does not parse) is skipped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MadError(f"{path} line {line}: not UTF-8 text") from None
    lines = text.splitlines(keepends=True)
    out = JsonlRows([])
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn_candidate = lineno == len(lines) and not line.endswith(("\n", "\r"))
        try:
            obj = json.loads(line)
        except ValueError as exc:
            if torn_candidate:
                out.torn = lineno
                break
            raise MadError(f"{path} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            if torn_candidate:
                out.torn = lineno
                break
            raise MadError(f"{path} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        out.rows.append((lineno, obj))
    return out


def _number(value: Any, where: str, key: str) -> float | None:
    """A JSON number (null and NaN are 'not measured'); anything else is an error naming the line."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MadError(f"{where}: {key} is {json.dumps(value)[:40]}, expected a number or null")
    v = float(value)
    return v if math.isfinite(v) else None


def clean_metrics_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The numbers the report uses from one `mad metrics --json` row, type-checked."""
    out: dict[str, Any] = {}
    for key in metric_keys(row):
        out[key] = _number(row.get(key), where, key)
        floor = key + FLOOR_SUFFIX
        if floor in row:
            out[floor] = _number(row[floor], where, floor)
    for key in _METRIC_EXTRAS:
        if key in row:
            v = _number(row[key], where, key)
            out[key] = int(v) if v is not None and key != "kid_std" and v.is_integer() else v
    for key in ("real", "extractor"):
        if isinstance(row.get(key), str):
            out[key] = row[key]
    return out


def clean_colour_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The numbers the report uses from one `mad colorhist --json` row, type-checked."""
    out: dict[str, Any] = {"is_ref": bool(row.get("is_ref", False))}
    for key in ("space", "folder", "ref"):
        if isinstance(row.get(key), str):
            out[key] = row[key]
    for key in _COLOUR_NUMBERS:
        if key in row:
            v = _number(row[key], where, key)
            out[key] = int(v) if key == "n_images" and v is not None and v.is_integer() else v
    for key in _COLOUR_CHANNEL_DICTS:
        value = row.get(key)
        if isinstance(value, dict):
            out[key] = {str(c): _number(v, where, f"{key}.{c}") for c, v in value.items()}
    hist = row.get("hist")
    if hist is not None:
        if not isinstance(hist, dict) or not all(isinstance(v, list) for v in hist.values()):
            raise MadError(f"{where}: hist is not an object of per-channel lists")
        out["hist"] = {str(c): [_number(x, where, f"hist.{c}") or 0.0 for x in v] for c, v in hist.items()}
        ranges = row.get("hist_range")
        if isinstance(ranges, dict):
            out["hist_range"] = {str(c): [_number(x, where, f"hist_range.{c}") for x in v][:2] for c, v in ranges.items() if isinstance(v, list) and len(v) >= 2}
    return out
