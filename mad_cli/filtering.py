"""`mad filter`: choose what the next generation trains on, by people's labels or by scores.

The thesis behind this toolkit asked whether people who weed out bad generated images slow
model collapse; the MAD paper models such curation as sampling bias. Both kinds of curation
become one step of a shell loop here: rules run in the order given, each one sees only the
images the rules before it kept, and every image gets one row in `decisions.csv` saying
which rule decided and with what score, so a generation's curation can be audited later.

Rules (`--by`, repeatable, applied in order):
  labels:A.csv[,B.csv]  people's good/bad/skip decisions; all labels files of a run (from one
                        or several `--by labels:` flags, globs allowed) are merged into one
                        majority vote; ties and unlabelled images follow `--ties`.
  provenance            drops images whose PNG tags say origin=synthetic.
  realism               Kynkäänniemi et al.'s realism score against `--ref REAL`; keeps the
                        most realistic (default threshold 1.0: inside some real k-NN ball).
  artifacts             frequency-domain cross-hatching score; keeps the weakest peaks
                        (needs --keep or --threshold: there is no natural cut-off).
  dedup                 drops an image whose feature cosine similarity to an earlier kept
                        image is above the threshold (default 0.95); the first one stays.
  classifier            keeps images the bundled digits net classifies with confidence
                        at or above the threshold (default 0.9).
`--keep F` / `--threshold T` apply to every rule that takes them and has no own value;
`--by NAME:keep=F` or `--by NAME:threshold=T` sets one rule's own.

Output is all-or-nothing: OUT is built in a hidden folder next to it (`.OUT.mad-tmp-*`) and
renamed into place only after every image is decided and written, decisions.csv and
filter.json last; a killed run leaves only that hidden folder, which the next run removes.
--force replaces an earlier `mad filter` output as a whole (never a folder of other files).
SRC is only ever read.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mad_cli import __version__
from mad_cli.errors import MadError
from mad_cli.imagedir import LINK_MODES, atomic_write_text, iter_images, list_images, place_file, read_image, read_tags
from mad_cli.output import log, progress, warn
from mad_cli.review.labels import BAD, GOOD, LabelFile, merge_label_files, read_label_file

RULES = ("labels", "provenance", "realism", "artifacts", "dedup", "classifier")
TIES = ("keep", "drop")
DECISIONS_NAME = "decisions.csv"
SUMMARY_NAME = "filter.json"
# Which cut-offs each rule understands, and its default when the user gives none.
_TAKES_KEEP = {"realism", "artifacts", "classifier"}
_TAKES_THRESHOLD = {"realism", "artifacts", "classifier", "dedup"}
_DEFAULT_THRESHOLD = {"realism": 1.0, "dedup": 0.95, "classifier": 0.9}
# Realism (Kynkäänniemi et al. 2019): k-th neighbour radii on squared distances, and only
# the real points with radii up to this percentile may vouch for a sample.
REALISM_K = 3
REALISM_RADIUS_PERCENTILE = 50.0
# Artifacts: frequencies at or above this (cycles/pixel) count as "high".
ARTIFACT_HF_CUTOFF = 0.25
ARTIFACT_HF_WEIGHT_DB = 10.0


@dataclass
class Rule:
    """One `--by` rule after parsing, with the cut-off it will use."""

    name: str
    text: str
    files: list[Path] = field(default_factory=list)
    keep: float | None = None
    threshold: float | None = None
    ref: Path | None = None


def _check_keep(value: float, flag: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise MadError(f"{flag} {value}: must be a fraction in (0, 1]")
    return float(value)


def _check_threshold(value: float, flag: str) -> float:
    if not math.isfinite(value):
        raise MadError(f"{flag} {value}: must be a finite number")
    return float(value)


def _expand_label_files(items: Sequence[str], spec: str) -> list[Path]:
    files: list[Path] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item))
            if not matches:
                raise MadError(f"--by {spec}: no labels file matches {item!r}")
            files.extend(Path(m) for m in matches)
        else:
            files.append(Path(item))
    if not files:
        raise MadError(f"--by {spec}: name at least one labels CSV, e.g. --by labels:labels.csv")
    return files


def parse_rules(specs: Sequence[str], *, keep: float | None = None, threshold: float | None = None, ref: Path | None = None, allow_empty: bool = False) -> list[Rule]:
    """Turn `--by` strings into rules; every mistake is a MadError naming the flag value.

    All `labels:` specs become a single rule at the place of the first one, because several
    reviewers' files are one majority vote, not a chain of vetoes.
    """
    if keep is not None and threshold is not None:
        raise MadError("--keep and --threshold: give one of them, not both")
    if keep is not None:
        _check_keep(keep, "--keep")
    if threshold is not None:
        _check_threshold(threshold, "--threshold")
    if not specs and not allow_empty:
        raise MadError("--by: give at least one rule (" + ", ".join(RULES) + ") or use --review")
    rules: list[Rule] = []
    labels_rule: Rule | None = None
    for spec in specs:
        name, _, params = spec.partition(":")
        name = name.strip().lower()
        if name not in RULES:
            raise MadError(f"--by {spec}: unknown rule {name!r} (expected one of {', '.join(RULES)})")
        if name == "labels":
            files = _expand_label_files(params.split(","), spec)
            if labels_rule is None:
                labels_rule = Rule("labels", spec, files=files)
                rules.append(labels_rule)
            else:
                labels_rule.files.extend(files)
                labels_rule.text += " " + spec
            continue
        rule = Rule(name, spec)
        for item in filter(None, (p.strip() for p in params.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip().lower()
            if not eq:
                raise MadError(f"--by {spec}: expected key=value after ':' (keep=, threshold= or ref=)")
            try:
                if key == "keep":
                    rule.keep = _check_keep(float(value), f"--by {spec}: keep")
                elif key == "threshold":
                    rule.threshold = _check_threshold(float(value), f"--by {spec}: threshold")
                elif key == "ref" and name == "realism":
                    rule.ref = Path(value)
                else:
                    raise MadError(f"--by {spec}: rule {name} has no setting {key!r}")
            except ValueError:
                raise MadError(f"--by {spec}: {key}={value!r} is not a number") from None
        if rule.keep is not None and rule.threshold is not None:
            raise MadError(f"--by {spec}: give keep= or threshold=, not both")
        if rule.keep is not None and name not in _TAKES_KEEP:
            raise MadError(f"--by {spec}: {name} takes threshold=, not keep=")
        if rule.threshold is not None and name not in _TAKES_THRESHOLD:
            raise MadError(f"--by {spec}: {name} takes no threshold")
        if rule.keep is None and rule.threshold is None:
            if keep is not None and name in _TAKES_KEEP:
                rule.keep = keep
            elif threshold is not None and name in _TAKES_THRESHOLD:
                rule.threshold = threshold
            elif name in _DEFAULT_THRESHOLD:
                rule.threshold = _DEFAULT_THRESHOLD[name]
            elif name == "artifacts":
                raise MadError(f"--by {spec}: artifacts has no natural cut-off; add --keep FRACTION or --threshold T")
        if name == "realism":
            rule.ref = rule.ref or ref
            if rule.ref is None:
                raise MadError(f"--by {spec}: realism needs a folder of real images: add --ref REAL")
        rules.append(rule)
    return rules


# ---------------------------------------------------------------------------------------
# Scores: plain functions on arrays, usable (and tested) without folders.


def select(scores: np.ndarray, *, keep: float | None, threshold: float | None, higher_is_better: bool) -> np.ndarray:
    """Boolean mask of kept entries: the best `keep` fraction (at least one), or a threshold.

    Ties in score are broken by position, so the result never depends on sort stability;
    NaN scores (nothing to judge) rank last and never pass a threshold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    if keep is not None:
        count = min(n, max(1, math.ceil(keep * n - 1e-9)))
        key = np.where(np.isnan(scores), np.inf, -scores if higher_is_better else scores)
        order = np.lexsort((np.arange(n), key))
        mask[order[:count]] = True
        return mask
    if threshold is None:
        raise ValueError("select needs keep or threshold")
    with np.errstate(invalid="ignore"):
        mask = scores >= threshold if higher_is_better else scores <= threshold
    return mask & ~np.isnan(scores)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances in float64, clipped at 0 against rounding."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def realism_scores(real: np.ndarray, samples: np.ndarray, k: int = REALISM_K, radius_percentile: float = REALISM_RADIUS_PERCENTILE, batch: int = 1024) -> np.ndarray:
    """Kynkäänniemi et al.'s realism score of each sample against real features.

    Each real point's radius is the squared distance to its k-th nearest real neighbour;
    real points whose radius is above the `radius_percentile` are ignored (their balls are
    the outliers that make everything look real). A sample's score is the largest
    radius / squared distance over the remaining real points: >= 1 means it lies inside at
    least one real neighbourhood.
    """
    real = np.asarray(real, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    if len(real) <= k:
        raise MadError(f"--ref: realism needs more than {k} real images, got {len(real)}")
    from mad_cli.metrics import knn_sq_radii  # torch-heavy: only the feature rules pay for it

    radii = knn_sq_radii(real, k).numpy()  # the same neighbourhoods as `mad metrics` precision/recall
    cutoff = np.percentile(radii, radius_percentile)
    usable = radii <= cutoff
    radii_used = radii[usable]
    real_used = real[usable]
    out = np.empty(len(samples))
    for start in range(0, len(samples), batch):
        d = _squared_distances(samples[start : start + batch], real_used)
        out[start : start + batch] = np.max(radii_used[None, :] / (d + 1e-12), axis=1)
    return out


def dedup_mask(features: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal in input order: (kept mask, similarity to nearest earlier kept).

    An image is dropped when its cosine similarity to any earlier *kept* image is above
    `threshold`, so of a group of copies exactly the first survives. The similarity of the
    first image (nothing earlier) is NaN.
    """
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    unit = f / np.where(norms > 0, norms, 1.0)
    n = len(unit)
    kept = np.zeros(n, dtype=bool)
    best = np.full(n, np.nan)
    kept_vecs: list[np.ndarray] = []
    for i in range(n):
        if kept_vecs:
            sims = np.stack(kept_vecs) @ unit[i]
            best[i] = float(sims.max())
            if best[i] > threshold:
                continue
        kept[i] = True
        kept_vecs.append(unit[i])
    return kept, best


@dataclass
class ArtifactScore:
    score: float  # what the rule ranks by: peak_db + ARTIFACT_HF_WEIGHT_DB * hf_ratio
    peak_db: float  # strongest high-frequency peak above the median of its radial ring, in dB
    hf_ratio: float  # share of the (non-DC) spectral energy at or above ARTIFACT_HF_CUTOFF


class _SpectrumGeometry:
    """Window and ring masks for one image size, computed once and reused for every image."""

    def __init__(self, h: int, w: int, hf_cutoff: float):
        self.window = np.outer(np.hanning(h) if h > 1 else np.ones(1), np.hanning(w) if w > 1 else np.ones(1))
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.fftfreq(w)[None, :]
        radius = np.sqrt(fy * fy + fx * fx)
        self.nonzero = radius > 0
        self.high = radius >= hf_cutoff
        ring = np.rint(radius * max(h, w)).astype(np.int64)
        self.rings = [np.flatnonzero(self.high & (ring == r)) for r in np.unique(ring[self.high])]
        self.rings = [idx for idx in self.rings if len(idx)]


def artifact_score(image: np.ndarray, hf_cutoff: float = ARTIFACT_HF_CUTOFF, _geometry: _SpectrumGeometry | None = None) -> ArtifactScore:
    """How strongly an image shows periodic high-frequency patterns (StyleGAN's cross-hatching).

    The windowed power spectrum of the luminance is compared, ring by ring (equal radial
    frequency), with the ring's median: natural images fall off smoothly with frequency, so
    a point far above its ring is a periodic pattern such as a checkerboard or a ±45° hatch.
    The largest such excess at high frequency (in dB), plus a weighted share of high-frequency
    energy that catches broadband grain without one clear peak, is the score.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114]) if img.shape[2] >= 3 else img[..., 0]
    h, w = img.shape
    geo = _geometry or _SpectrumGeometry(h, w, hf_cutoff)
    centred = (img - img.mean()) * geo.window
    power = np.abs(np.fft.fft2(centred)) ** 2
    total = float(power[geo.nonzero].sum())
    if total <= 1e-9 or not geo.rings:  # a flat image has no pattern at all
        return ArtifactScore(0.0, 0.0, 0.0)
    log_power = 10.0 * np.log10(power + total * 1e-12).ravel()
    peak = 0.0
    for idx in geo.rings:
        values = log_power[idx]
        peak = max(peak, float(values.max() - np.median(values)))
    hf_ratio = float(power[geo.high].sum()) / total
    return ArtifactScore(peak + ARTIFACT_HF_WEIGHT_DB * hf_ratio, peak, hf_ratio)


def artifact_scores(paths: Sequence[Path], on_each: Callable[[], None] | None = None) -> list[ArtifactScore]:
    geometries: dict[tuple[int, int], _SpectrumGeometry] = {}
    out: list[ArtifactScore] = []
    for _, img in iter_images(paths, workers=2):
        key = img.shape[:2]
        if key not in geometries:
            geometries[key] = _SpectrumGeometry(key[0], key[1], ARTIFACT_HF_CUTOFF)
        out.append(artifact_score(img, _geometry=geometries[key]))
        if on_each:
            on_each()
    return out


# ---------------------------------------------------------------------------------------
# Features (mad_cli.features, the metrics side) for realism, dedup and classifier.


def default_feature_space(paths: Sequence[Path]) -> str:
    """`digits` for greyscale folders (the bundled net was trained on them), else Inception."""
    first = read_image(paths[0])
    return "digits" if first.ndim == 2 else "inception"


@dataclass
class FeatureSettings:
    name: str = "auto"
    weights: Path | None = None
    device: str = "cpu"


def _features(folder: Path, paths: Sequence[Path], settings: FeatureSettings, space_of: Sequence[Path]) -> np.ndarray:
    """Features of `paths` (images of `folder`) through the metrics side's extractor and cache.

    `space_of` picks the automatic feature space, so SRC and --ref always share one.
    """
    from mad_cli import features as feats

    name = settings.name if settings.name != "auto" else default_feature_space(space_of)
    extractor = feats.get_extractor(name, weights=settings.weights, device=settings.device)
    with progress(len(paths), f"features {extractor.name}") as bar:
        values = np.asarray(feats.folder_features(folder, extractor, paths=list(paths), on_batch=bar.advance), dtype=np.float64)
    if values.shape[0] != len(paths):
        raise MadError(f"{folder}: got features for {values.shape[0]} images, expected {len(paths)}")
    return values


# ---------------------------------------------------------------------------------------
# Running the rules over a folder


@dataclass
class FilterResult:
    """What happened to every image (in SRC order) and the summary row."""

    files: list[str]
    kept: np.ndarray
    deciding_rule: list[str]
    scores: dict[str, list[float | None]]
    summary: dict[str, Any]


def _labels_decisions(rule: Rule, rels: list[str], src: Path, ties: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    files: list[LabelFile] = [read_label_file(p, src) for p in rule.files]
    known = set(rels)
    merged = merge_label_files(files, known)
    if merged.missing:
        shown = ", ".join(merged.missing[:3]) + (" ..." if len(merged.missing) > 3 else "")
        warn(f"--by {rule.text}: {len(merged.missing)} labelled file(s) are not images in {src} and were ignored ({shown})")
    keep = np.zeros(len(rels), dtype=bool)
    score = np.full(len(rels), np.nan)
    unlabelled = ties_count = 0
    for i, rel in enumerate(rels):
        decision = merged.decisions.get(rel)
        g, b = merged.good_votes.get(rel, 0), merged.bad_votes.get(rel, 0)
        if g + b:
            score[i] = g / (g + b)
        if decision == GOOD:
            keep[i] = True
        elif decision == BAD:
            keep[i] = False
        else:
            if decision is None:
                unlabelled += 1
            else:
                ties_count += 1
            keep[i] = ties == "keep"
    counts = {"labels_files": len(files), "labels_missing": len(merged.missing), "labels_unlabelled": unlabelled, "labels_ties": ties_count}
    return keep, score, counts


def _is_previous_filter_output(folder: Path) -> bool:
    """True when `folder` is what an earlier `mad filter` wrote (its filter.json says so)."""
    try:
        data = json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and data.get("command") == "filter" and "mad_version" in data


def _precheck_output(folder: Path, src: Path, flag: str, force: bool) -> None:
    """Refuse a bad OUT before any expensive work (and before a person reviews 400 images).

    --force replaces only an earlier `mad filter` output: the whole folder is swapped for the
    new one, so a folder holding anything else must never be accepted.
    """
    target = folder.resolve()
    source = src.resolve()
    if target == source or source in target.parents:
        raise MadError(f"{flag} {folder}: is inside source folder {src}; choose a folder outside it")
    if target in source.parents:
        raise MadError(f"{flag} {folder}: contains source folder {src}; choose another folder")
    if folder.exists() and not folder.is_dir():
        raise MadError(f"{flag} {folder}: exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise MadError(f"{flag} {folder}: folder is not empty (use --force to replace an earlier mad filter output)")
        if not _is_previous_filter_output(folder):
            raise MadError(f"{flag} {folder}: --force replaces only an earlier mad filter output, and this folder holds other files")


def check_outputs(src: Path, out: Path, rejected: Path | None, force: bool) -> None:
    _precheck_output(out, src, "OUT", force)
    if rejected is not None:
        _precheck_output(rejected, src, "--rejected", force)
        r, o = rejected.resolve(), out.resolve()
        if r == o or o in r.parents or r in o.parents:
            raise MadError(f"--rejected {rejected}: must be a separate folder from OUT {out}")


def run_rules(
    src: Path,
    rules: Sequence[Rule],
    *,
    ties: str = "keep",
    features: FeatureSettings | None = None,
) -> FilterResult:
    """Decide every image of SRC; reads only, writes nothing."""
    if ties not in TIES:
        raise MadError(f"--ties {ties}: expected keep or drop")
    src = Path(src)
    paths = list_images(src)
    if not paths:
        raise MadError(f"{src}: no images found")
    features = features or FeatureSettings()
    rels = [p.relative_to(src).as_posix() for p in paths]
    n = len(paths)
    alive = np.ones(n, dtype=bool)
    deciding = [""] * n
    scores: dict[str, list[float | None]] = {}
    summary: dict[str, Any] = {"src": str(src), "total": n}
    uses: dict[str, int] = {}
    for rule in rules:
        uses[rule.name] = uses.get(rule.name, 0) + 1
        column = rule.name if uses[rule.name] == 1 else f"{rule.name}{uses[rule.name]}"  # a rule used twice
        idx = np.flatnonzero(alive)
        sub_paths = [paths[i] for i in idx]
        col: list[float | None] = [None] * n
        keep_sub, score_sub = _apply_rule(rule, src, paths, idx, sub_paths, rels, ties, features, summary)
        for j, i in enumerate(idx):
            value = float(score_sub[j])
            col[i] = value if math.isfinite(value) else None
            deciding[i] = column
            if not keep_sub[j]:
                alive[i] = False
        scores[column] = col
        summary[f"dropped:{column}"] = int(len(idx) - int(keep_sub.sum()))
    kept = int(alive.sum())
    summary.update({"kept": kept, "rejected": n - kept, "kept_fraction": kept / n})
    return FilterResult(rels, alive, deciding, scores, summary)


def _apply_rule(rule: Rule, src: Path, paths: list[Path], idx: np.ndarray, sub_paths: list[Path], rels: list[str],
                ties: str, features: FeatureSettings, summary: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    m = len(idx)
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    if rule.name == "labels":
        keep_all, score_all, counts = _labels_decisions(rule, rels, src, ties)
        summary.update(counts)
        return keep_all[idx], score_all[idx]
    if rule.name == "provenance":
        synthetic = np.array([read_tags(p).get("origin", "").strip().lower() == "synthetic" for p in sub_paths])
        return ~synthetic, synthetic.astype(np.float64)
    if rule.name == "artifacts":
        with progress(m, "artifacts") as bar:
            results = artifact_scores(sub_paths, on_each=bar.advance)
        s = np.array([r.score for r in results])
        return select(s, keep=rule.keep, threshold=rule.threshold, higher_is_better=False), s
    if rule.name == "realism":
        assert rule.ref is not None
        ref_paths = list_images(rule.ref)
        if len(ref_paths) <= REALISM_K:
            raise MadError(f"--ref {rule.ref}: realism needs more than {REALISM_K} real images, found {len(ref_paths)}")
        real = _features(rule.ref, ref_paths, features, space_of=paths)
        mine = _features(src, sub_paths, features, space_of=paths)
        s = realism_scores(real, mine)
        summary["realism_ref"] = str(rule.ref)
        return select(s, keep=rule.keep, threshold=rule.threshold, higher_is_better=True), s
    if rule.name == "dedup":
        mine = _features(src, sub_paths, features, space_of=paths)
        assert rule.threshold is not None
        keep, sims = dedup_mask(mine, rule.threshold)
        return keep, sims
    if rule.name == "classifier":
        from mad_cli import features as feats

        probs = np.asarray(feats.digits_probabilities(sub_paths, device=features.device))
        s = probs.max(axis=1)
        return select(s, keep=rule.keep, threshold=rule.threshold, higher_is_better=True), s
    raise MadError(f"--by {rule.text}: unknown rule")


def decisions_csv(result: FilterResult) -> str:
    """file, kept, rule, score (of the deciding rule: the one that dropped it, else the last), then every rule's score."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = list(result.scores)
    writer.writerow(["file", "kept", "rule", "score", *cols])

    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.6g}"

    for i, rel in enumerate(result.files):
        rule = result.deciding_rule[i]
        score = result.scores[rule][i] if rule else None
        writer.writerow([rel, int(bool(result.kept[i])), rule, fmt(score), *(fmt(result.scores[c][i]) for c in cols)])
    return buf.getvalue()


def _build_folder(target: Path, files: Sequence[tuple[Path, str]], extras: dict[str, str], link: str) -> Path:
    """Write everything into a hidden sibling of `target`; the caller renames it into place."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{target.name}.mad-tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.mad-tmp-", dir=parent))
    except OSError as exc:
        raise MadError(f"{target}: cannot write there ({exc.strerror or exc})") from None
    try:
        with progress(len(files), f"writing {target.name}") as bar:
            for source, rel in files:
                place_file(source, tmp / rel, link)
                bar.advance()
        for name, text in extras.items():  # the index last: a folder with decisions.csv is complete
            atomic_write_text(tmp / name, text)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MadError(f"{target}: writing failed ({exc.strerror or exc}); nothing was written") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the finished folder at `target` by rename; an earlier output is moved aside first."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if target.exists():
        old = target.parent / f".{target.name}.mad-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def filter_folder(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    rules: Sequence[Rule],
    *,
    rejected: str | os.PathLike[str] | None = None,
    link: str = "copy",
    ties: str = "keep",
    features: FeatureSettings | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Apply `rules` to SRC and write the kept images (and optionally the rejected) plus decisions.csv.

    Everything that can fail on user input (flags, labels files, features) fails before the
    first byte is written. The output is built in a hidden folder next to OUT and renamed
    into place, so OUT appears complete or not at all (--rejected is renamed first, OUT last).
    """
    src_p, out_p = Path(src), Path(out)
    rejected_p = Path(rejected) if rejected is not None else None
    if link not in LINK_MODES:
        raise MadError(f"--link {link}: expected one of {', '.join(LINK_MODES)}")
    if not src_p.is_dir():
        raise MadError(f"{src_p}: folder does not exist" if not src_p.exists() else f"{src_p}: not a folder")
    check_outputs(src_p, out_p, rejected_p, force)
    result = run_rules(src_p, rules, ties=ties, features=features)
    table = decisions_csv(result)
    summary: dict[str, Any] = {"src": str(src_p), "out": str(out_p), "rules": " ".join(r.text for r in rules)}
    for key in ("kept", "total", "rejected", "kept_fraction"):
        summary[key] = result.summary[key]
    summary.update((k, v) for k, v in result.summary.items() if k not in summary)
    if rejected_p is not None:
        summary["rejected_dir"] = str(rejected_p)
    record = json.dumps({"mad_version": __version__, "command": "filter", "link": link, "ties": ties, **summary}, indent=2) + "\n"
    extras = {SUMMARY_NAME: record, DECISIONS_NAME: table}
    kept_files = [(src_p / rel, rel) for i, rel in enumerate(result.files) if result.kept[i]]
    tmp_out = _build_folder(out_p, kept_files, extras, link)
    tmp_rej = None
    try:
        if rejected_p is not None:
            dropped = [(src_p / rel, rel) for i, rel in enumerate(result.files) if not result.kept[i]]
            tmp_rej = _build_folder(rejected_p, dropped, extras, link)
            _swap_in(tmp_rej, rejected_p)
            tmp_rej = None
        _swap_in(tmp_out, out_p)
    except BaseException:
        for tmp in (tmp_out, tmp_rej):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"mad filter: kept {summary['kept']} of {summary['total']} images -> {out_p}")
    return summary


def review_and_filter(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    rules: Sequence[Rule] = (),
    *,
    reviewer: str | None = None,
    port: int = 8765,
    open_browser: bool = False,
    examples: Path | None = None,
    rejected: str | os.PathLike[str] | None = None,
    link: str = "copy",
    ties: str = "keep",
    features: FeatureSettings | None = None,
    force: bool = False,
) -> dict[str, Any] | None:
    """Serve the review page; when the reviewer presses finish, filter by their labels (then `rules`).

    OUT is checked before the page opens, so nobody labels 400 images only to learn that
    the output folder was unusable. Returns the summary, or None if the server stopped
    without a finish (the labels are on disk either way).
    """
    from mad_cli.review.server import ReviewSession, default_reviewer, serve_review

    src_p, out_p = Path(src), Path(out)
    if link not in LINK_MODES:
        raise MadError(f"--link {link}: expected one of {', '.join(LINK_MODES)}")
    if ties not in TIES:
        raise MadError(f"--ties {ties}: expected keep or drop")
    if not src_p.is_dir():
        raise MadError(f"{src_p}: folder does not exist" if not src_p.exists() else f"{src_p}: not a folder")
    check_outputs(src_p, out_p, Path(rejected) if rejected is not None else None, force)

    def finish(labels_file: Path) -> dict[str, Any]:
        chain = [Rule("labels", f"labels:{labels_file}", files=[labels_file]), *rules]
        return filter_folder(src_p, out_p, chain, rejected=rejected, link=link, ties=ties, features=features, force=force)

    session = ReviewSession(src_p, reviewer or default_reviewer(), examples=examples, finish=finish, out=out_p, ties=ties)
    return serve_review(session, port=port, open_browser=open_browser)
