"""`mad merge BASE OTHER --out SNAPSHOT --weight W`: θ = θ_BASE + W·(θ_OTHER − θ_BASE).

Why: Neon (Alemohammad et al. 2025) turns self-consumption into a remedy. Fine-tune a model
θ_r briefly on its own (biased) samples to get θ_s, which has moved towards the modes, then
step the other way: θ_neon = θ_r − w·(θ_s − θ_r), i.e. `mad merge θ_r θ_s --weight −w`.
W = 0.5 averages two models, W = 1 returns OTHER; any finite W is allowed.

How, for every backend in `mad_cli.models.BACKENDS`: its row names its `MergeSpec` (in a
`merge_spec` module of its package), which says

* which snapshot keys are networks (state dicts) to merge tensor by tensor: every floating
  tensor, buffers such as StyleGAN2's `w_avg` included, by the formula above (computed in
  float64, exact at W = 0 and W = 1); integer tensors cannot be interpolated and must be
  equal in both snapshots;
* which config entries are the architecture, and the label set, that must agree;
* for models whose parameters live in a factored form (the Gaussian's covariance, the
  GMM's mixture), a function doing the merge in the parameters' own terms and refusing a
  result that is no longer a distribution (a covariance that is not positive
  semi-definite, a negative mixture weight).

The result is a snapshot for sampling and a starting point for fine-tuning (`mad train
--resume MERGED.pt`): optimiser states, training progress, RNG states and training-time
controllers (StyleGAN2's path-length mean and ADA state) are dropped. It keeps BASE's
config and records `merge: {base, other, weight, base_generator, other_generator}`; being
a new file, it has its own generator id (the sha256 of the file, `snapshot_id`), so the
provenance tags of its samples never claim to come from BASE or OTHER.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mad_cli.errors import MadError

#: Custom merge: (base snapshot, other snapshot, W, Names) → (entries to store, config updates).
ModelMerge = Callable[[dict[str, Any], dict[str, Any], float, "Names"], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class Names:
    """How messages name the two inputs and the weight."""

    base: str
    other: str
    weight: float

    @property
    def flag(self) -> str:
        return f"--weight {self.weight:g}"


@dataclass(frozen=True)
class MergeSpec:
    """How one backend's snapshots merge (see the module docstring)."""

    #: Snapshot keys holding state dicts (name → tensor) merged tensor by tensor.
    networks: tuple[str, ...]
    #: The config entries that must be equal in both (by name, for the refusal message).
    architecture: Callable[[dict[str, Any]], dict[str, Any]]
    #: The number of classes (0: unconditional): two label sets must be the same.
    classes: Callable[[dict[str, Any]], int]
    #: Merges the parameters that are not plain state dicts (stored under their keys).
    model: ModelMerge | None = None


def lerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """a + W (b − a), in float64, returned in a's dtype.

    Exactly a at W = 0 and exactly b at W = 1 (computed as (1 − W) a + W b, which is exact
    there, whereas a + (b − a) can miss b by a rounding), so merging at the ends reproduces
    an input's samples byte for byte.
    """
    if weight == 0:
        return a.detach().clone()
    if weight == 1:
        return b.detach().clone().to(a.dtype)
    return ((1.0 - weight) * a.detach().to(torch.float64) + weight * b.detach().to(torch.float64)).to(a.dtype)


def merge_state(key: str, base: dict[str, Any], other: dict[str, Any], names: Names) -> dict[str, torch.Tensor]:
    """Merge two state dicts of one architecture; a differing name, shape or integer buffer is refused."""
    missing = [k for k in base if k not in other] or [k for k in other if k not in base]
    if missing:
        which = "OTHER" if missing[0] in base else "BASE"
        raise MadError(f"BASE {names.base} and OTHER {names.other} have different networks: {key}.{missing[0]} is missing from {which}")
    out: dict[str, torch.Tensor] = {}
    for name, a in base.items():
        b = other[name]
        where = f"{key}.{name}"
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise MadError(f"BASE {names.base} or OTHER {names.other}: {where} is not a tensor")
        if a.shape != b.shape:
            raise MadError(f"BASE {names.base} and OTHER {names.other} differ in shape: {where} is {list(a.shape)} in BASE, {list(b.shape)} in OTHER")
        if a.dtype != b.dtype:
            raise MadError(f"BASE {names.base} and OTHER {names.other} differ in precision: {where} is {a.dtype} in BASE, {b.dtype} in OTHER")
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise MadError(f"BASE {names.base} and OTHER {names.other} differ in the integer buffer {where}, which cannot be interpolated")
            out[name] = a.clone()
            continue
        merged = lerp(a, b, names.weight)
        if not bool(torch.isfinite(merged).all()):
            raise MadError(f"{names.flag}: {where} overflows (a weight this large leaves the range of {a.dtype})")
        out[name] = merged
    return out


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first place two JSON-like values differ, as (path, value in a, value in b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if found is not None:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else (path, a, b)


def _json(value: Any) -> Any:
    """Tuples and lists alike (a config may hold either after a round trip)."""
    return json.loads(json.dumps(value, default=str))


def get_spec(backend: str) -> MergeSpec:
    from mad_cli.models import get_backend

    return get_backend(backend).merge_spec()


def _check_out(out: Path, inputs: list[Path]) -> None:
    """A new snapshot file: never an input (not even through RUN/latest.pt's hard link), and
    never over another file (a merged snapshot has no optimiser state: over a run's
    latest.pt it would break that run's --resume latest)."""
    from mad_cli.outputs import check_file_target

    check_file_target(out, flag="--out", suffix=".pt")
    for p in inputs:
        same = out.resolve() == p.resolve()
        if not same and out.exists():
            try:
                same = os.path.samefile(out, p)  # a hard link, such as RUN/latest.pt
            except OSError:
                same = False
        if same:
            raise MadError(f"--out {out}: is the input {p}; write the merged snapshot to a new file")
    if out.exists() and not _same_merge(out, inputs):
        raise MadError(f"--out {out}: exists and is not this merge; write the merged snapshot to a new file (or remove that one first)")


def _same_merge(out: Path, inputs: list[Path]) -> bool:
    """`out` is a merge of these very inputs (a re-run of the same step may rewrite it)."""
    from mad_cli.models.snapshot import load_snapshot, snapshot_id

    try:
        record = load_snapshot(out).get("merge")
    except MadError:
        return False
    if not isinstance(record, dict):
        return False
    return [record.get("base_generator"), record.get("other_generator")] == [snapshot_id(p) for p in inputs]


def merge_snapshots(
    base: str | os.PathLike[str], other: str | os.PathLike[str], out: str | os.PathLike[str], *, weight: float,
) -> dict[str, Any]:
    """Write θ_BASE + W·(θ_OTHER − θ_BASE) to `out` (atomically) and return the summary row.

    BASE and OTHER are snapshot files or run folders (their latest.pt). Refuses snapshots of
    different models, architectures, shapes or label sets with one line naming the difference.
    """
    from mad_cli.models import backend_for_snapshot
    from mad_cli.models.snapshot import load_snapshot, save_snapshot, snapshot_id
    from mad_cli.sampling import resolve_snapshot_path

    given = weight
    try:
        weight = float(weight) if not isinstance(weight, bool) else math.nan
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight):
        raise MadError(f"--weight {given}: must be a finite number (0 = BASE, 1 = OTHER, 0.5 = their mean, -1 = Neon with w = 1)")
    base_p, other_p, out_p = resolve_snapshot_path(base), resolve_snapshot_path(other), Path(out)
    _check_out(out_p, [base_p, other_p])
    names = Names(str(base_p), str(other_p), float(weight))
    snap_b = load_snapshot(base_p)
    snap_o = load_snapshot(other_p)
    if snap_b.get("format") != snap_o.get("format"):
        raise MadError(f"BASE {base_p} is a {snap_b.get('format')} snapshot, OTHER {other_p} a {snap_o.get('format')} one; merge two snapshots of one model")
    backend = backend_for_snapshot(snap_b, base_p)
    spec = get_spec(backend.name)
    config_b = snap_b.get("config") if isinstance(snap_b.get("config"), dict) else {}
    config_o = snap_o.get("config") if isinstance(snap_o.get("config"), dict) else {}

    try:
        classes_b, classes_o = spec.classes(config_b), spec.classes(config_o)
        arch_b, arch_o = _json(spec.architecture(config_b)), _json(spec.architecture(config_o))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MadError(f"BASE {base_p} or OTHER {other_p}: malformed {backend.name} config ({exc})") from None
    if classes_b != classes_o:
        def said(c: int) -> str:
            return f"{c} classes" if c else "no classes (unconditional)"
        raise MadError(f"BASE {base_p} and OTHER {other_p} have different label sets: {said(classes_b)} in BASE, {said(classes_o)} in OTHER")
    diff = _first_difference(arch_b, arch_o, "config")
    if diff is not None:
        raise MadError(f"BASE {base_p} and OTHER {other_p} differ in {diff[0]}: {diff[1]!r} in BASE, {diff[2]!r} in OTHER")

    merged: dict[str, Any] = {}
    for key in spec.networks:
        a, b = snap_b.get(key), snap_o.get(key)
        if a is None and b is None:
            continue
        if not isinstance(a, dict) or not isinstance(b, dict):
            which, whose = ("BASE", base_p) if not isinstance(a, dict) else ("OTHER", other_p)
            raise MadError(f"{which} {whose} has no {key} weights but the other snapshot has; merge snapshots with the same networks")
        merged[key] = merge_state(key, a, b, names)
    config = copy.deepcopy(config_b)
    if spec.model is not None:
        entries, updates = spec.model(snap_b, snap_o, float(weight), names)
        merged.update(entries)
        config.update(updates)
    if not merged:
        raise MadError(f"BASE {base_p}: holds none of the {backend.name} weights {', '.join(spec.networks)}")

    record = {
        "base": str(base_p), "other": str(other_p), "weight": float(weight),
        "base_generator": snapshot_id(base_p), "other_generator": snapshot_id(other_p),
    }
    snap = {"format": snap_b["format"], "version": snap_b["version"], "config": config, **merged, "merge": record}
    save_snapshot(out_p, snap)
    tensors = [t for v in merged.values() for t in (v.values() if isinstance(v, dict) else [v]) if isinstance(t, torch.Tensor)]
    return {
        "out": str(out_p),
        "model": backend.name,
        "weight": float(weight),
        "generator": snapshot_id(out_p),
        "base": str(base_p),
        "base_generator": record["base_generator"],
        "other": str(other_p),
        "other_generator": record["other_generator"],
        "merged": ", ".join(merged),
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors)),
    }
