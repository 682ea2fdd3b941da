"""The report's numbers as plain objects: one per generation per loop (what `--json` prints).

The page and the figure draw from these objects and nothing else, so a script asserting on
`--json` checks exactly what a reader sees. Reference folders (the colour reference, a
real-vs-real baseline row of `mad metrics`) get objects of their own with generation null.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mad_cli.report.loop import Loop
from mad_cli.report.rows import OTHER_METRICS, is_fd_key, metric_keys
from mad_cli.report.strips import Strips, tags_seen

# `mad metrics --metrics` name of each plotted metric, for "run this to get it" notes.
_METRICS_FLAG = {"kid_mean": "kid", "precision": "pr", "recall": "pr", "density": "dc", "coverage": "dc"}


@dataclass
class Plan:
    """What is drawn: the metrics every loop has, colour drift if every loop has it, and why not."""

    metrics: list[str]
    colour: bool
    notes: list[str] = field(default_factory=list)


def _loop_metrics(loop: Loop) -> list[str]:
    keys: dict[str, None] = {}
    for g in loop.generations:
        if g.metrics:
            for k in metric_keys(g.metrics):
                if g.metrics.get(k) is not None:
                    keys[k] = None
    return list(keys)


def _order(keys: set[str]) -> list[str]:
    return sorted(k for k in keys if is_fd_key(k)) + [k for k in OTHER_METRICS if k in keys]


def plan(loops: list[Loop]) -> Plan:
    """Plot what all loops have; say, per loop, what is missing and which command would add it."""
    per_loop = {lp.name: set(_loop_metrics(lp)) for lp in loops}
    every = set.intersection(*per_loop.values()) if per_loop else set()
    union = set().union(*per_loop.values()) if per_loop else set()
    notes = []
    for key in _order(union - every):
        have = [n for n, ks in per_loop.items() if key in ks]
        lack = [n for n, ks in per_loop.items() if key not in ks]
        if is_fd_key(key):
            how = "measured in another feature space (--features) or without fid in --metrics"
        else:
            how = f"add {_METRICS_FLAG[key]} to `mad metrics --metrics`"
        notes.append(f"{key} is not plotted: {_names(lack)} {'has' if len(lack) == 1 else 'have'} none, only {_names(have)} ({how})")
    spaces = {lp.name: lp.colour_ref.get("space") if lp.colour_ref else next((g.colour.get("space") for g in lp.generations if g.colour), None) for lp in loops}
    has_colour = {n: any(g.colour for g in lp.generations) for n, lp in zip(spaces, loops)}
    colour = all(has_colour.values()) and len(set(spaces.values())) == 1
    if any(has_colour.values()) and not colour:
        if not all(has_colour.values()):
            lack = [n for n, ok in has_colour.items() if not ok]
            notes.append(f"colour drift is not plotted: {', '.join(lack)} have no colorhist.jsonl rows")
        else:
            notes.append("colour drift is not plotted: the loops were measured in different colour spaces (" + ", ".join(f"{n}: {s}" for n, s in spaces.items()) + ")")
    reals = {g.metrics.get("real") for lp in loops for g in lp.generations if g.metrics and g.metrics.get("real")}
    if len(loops) > 1 and len({_base(r) for r in reals}) > 1:
        notes.append("the loops' metrics were measured against different real folders: " + ", ".join(sorted(reals)))
    return Plan(_order(every), colour, notes)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _base(path: str) -> str:
    """Real folders of two loops are the 'same' when they have the same name (real-test of each run)."""
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _single(values: list[str], cast: type = float) -> Any:
    """One tag value as a number; several as a list (mixed ψ in one folder); none as None."""
    out = []
    for v in values:
        try:
            out.append(cast(v))
        except ValueError:
            out.append(v)
    return None if not out else out[0] if len(out) == 1 else out


def generation_objects(loops: list[Loop], strips: Strips) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for lp in loops:
        noise = lp.colour_ref or {}
        for g in lp.generations:
            thumbs = strips.thumbs.get((lp.name, g.t), [])
            tags = tags_seen(thumbs)
            obj: dict[str, Any] = {
                "loop": lp.name,
                "loop_path": str(lp.path),
                "generation": g.t,
                "samples": f"gen{g.t}/samples",
                "n_samples": len(g.files),
                "trained_on": g.train.get("sources"),
                "n_train": g.train.get("n_train"),
                "n_real": g.train.get("n_real"),
                "n_synthetic": g.train.get("n_synthetic"),
                "synthetic_from": g.train.get("synthetic_from"),
                "model": g.run.get("model"),
                "preset": g.run.get("preset"),
                "kimg": g.run.get("kimg"),
                "psi": _single(tags.get("psi", [])),
                "guidance": _single(tags.get("guidance", [])),
                "steps": _single(tags.get("steps", []), int),
                "tags": tags,
                "metrics": g.metrics,
                "colour": _colour(g.colour, noise) if g.colour else None,
                "strip": [t.name for t in thumbs],
                "strip_labels": [t.tags.get("label") for t in thumbs] if any("label" in t.tags for t in thumbs) else None,
                "filter": {k: v for k, v in g.filter.items() if not k.startswith("artifacts")} if g.filter else None,
                "artifacts_mean": g.filter.get("artifacts_mean") if g.filter else None,
                "artifacts_n": g.filter.get("artifacts_n") if g.filter else None,
                "review": g.review or None,
            }
            objects.append(obj)
        for label, ref in lp.references.items():
            objects.append({
                "loop": lp.name,
                "loop_path": str(lp.path),
                "generation": None,
                "folder": label,
                "metrics": ref.get("metrics"),
                "colour": _colour(ref["colour"], noise) if ref.get("colour") else None,
            })
    return objects


def _colour(row: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """A generation's colour numbers, with its loop's noise floor copied in (it lives on the reference row)."""
    out = {k: v for k, v in row.items() if k not in ("folder", "ref")}
    out["noise_tv_pct"] = ref.get("noise_tv_pct")
    out["noise_emd_mean_pct"] = ref.get("noise_emd_mean_pct")
    return out


def table_row(obj: dict[str, Any], plotted: list[str]) -> dict[str, Any]:
    """The terminal table's row: the headline numbers of one generation."""
    m = obj.get("metrics") or {}
    c = obj.get("colour") or {}
    row: dict[str, Any] = {"loop": obj["loop"], "generation": obj["generation"] if obj["generation"] is not None else obj.get("folder")}
    row["samples"] = obj.get("n_samples")
    for key in plotted:
        row[key] = m.get(key)
    row["TV % ref"] = c.get("tv_vs_ref_pct")
    previous = obj["generation"] is not None and c.get("prev") == f"gen{obj['generation'] - 1}"
    row["TV % prev"] = c.get("tv_vs_prev_pct") if previous else None  # gen0's "previous" folder was the reference
    row["kept"] = (obj.get("filter") or {}).get("kept")
    return row
