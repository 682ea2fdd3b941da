"""`mad filter`: choose what the next generation trains on, by people's labels or by scores.

The thesis behind this toolkit asked whether people who weed out bad generated images slow
model collapse; the MAD paper models such curation as sampling bias. Both kinds of curation
become one step of a shell loop here: rules run in the order given, each one sees only the
images the rules before it kept, and every image gets one row in `decisions.csv` saying
which rule decided and with what score, so a generation's curation can be audited later.

Rules (`--by`, repeatable, applied in order) are the entries of RULE_TABLE: each entry
holds everything about one rule (which cut-offs it takes and their default, whether a
higher score is better, whether it needs features or `--ref`, its score function and its
help text), and the parser, the runner and `mad filter --help` all read it from there, so a
new rule is one new entry. `--keep F` / `--threshold T` apply to every rule that takes them
and has no own value; `--by NAME:keep=F`, `NAME:threshold=T`, `realism:ref=DIR` and
`NAME:features=SPACE` set one rule's own. Several `--by labels:` files are one majority
vote, placed where the first of them is.

Output is all-or-nothing and has one owner, `outputs.OutputFolder`, as for every command:
OUT is locked (a second filter into it stops with one line), built in a hidden staging
folder inside it and published only after every image is decided and written,
decisions.csv and filter.json last; a killed run leaves only that hidden folder, which the
next run removes. --force replaces what mad wrote there before and keeps every other file
(with a warning when they are images). SRC is only ever read.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mad_cli import __version__
from mad_cli.errors import MadError
from mad_cli.imagedir import (
    LINK_MODES,
    atomic_write_text,
    folder_channels,
    iter_images,
    list_images,
    place_file,
    read_tags,
)
from mad_cli.output import log, progress, warn
from mad_cli.outputs import OutputFolder
from mad_cli.review.labels import (
    BAD,
    GOOD,
    LabelFile,
    merge_label_files,
    read_label_file,
)

if TYPE_CHECKING:  # pragma: no cover - torch is imported only by the rules that need it
    from mad_cli.features import Extractor

TIES = ("keep", "drop")
DECISIONS_NAME = "decisions.csv"
SUMMARY_NAME = "filter.json"
# Realism (Kynkäänniemi et al. 2019): k-th neighbour radii on squared distances, and only
# the real points with radii up to this percentile may vouch for a sample.
REALISM_K = 3
REALISM_RADIUS_PERCENTILE = 50.0
# Artifacts: frequencies at or above this (cycles/pixel) count as "high".
ARTIFACT_HF_CUTOFF = 0.25
ARTIFACT_HF_WEIGHT_DB = 10.0
# Dedup without a network: images compared as THUMB_SIDE² RGB thumbnails (see pixel_thumbnails).
THUMB_SIDE = 32
PIXEL_SPACE = "pixels"
PIXEL_DEDUP_THRESHOLD = 0.98  # see pixel_thumbnails for the measurements behind it


@dataclass
class Rule:
    """One `--by` rule after parsing, with the cut-off it will use."""

    name: str
    text: str
    files: list[Path] = field(default_factory=list)
    keep: float | None = None
    threshold: float | None = None
    ref: Path | None = None
    features: str | None = None  # its own feature space (features=NAME), else --features


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


def realism_scores(real: np.ndarray, samples: np.ndarray, k: int = REALISM_K, radius_percentile: float = REALISM_RADIUS_PERCENTILE, batch: int = 1024) -> np.ndarray:
    """Kynkäänniemi et al.'s realism score of each sample against real features.

    Each real point's radius is the squared distance to its k-th nearest real neighbour;
    real points whose radius is above the `radius_percentile` are ignored (their balls are
    the outliers that make everything look real). A sample's score is the largest
    radius / squared distance over the remaining real points: >= 1 means it lies inside at
    least one real neighbourhood. Radii and distances come from `mad_cli.neighbours`, the
    kernels `mad metrics` draws its precision/recall balls with.
    """
    if len(real) <= k:
        raise MadError(f"--ref: realism needs more than {k} real images, got {len(real)}")
    from mad_cli import neighbours  # torch-heavy: only the feature rules pay for it

    real_t = neighbours.as_float64(real)
    samples_t = neighbours.as_float64(samples)
    radii = neighbours.knn_sq_radii(real_t, k)
    cutoff = float(np.percentile(radii.numpy(), radius_percentile))
    usable = radii <= cutoff
    radii_used, real_used = radii[usable], real_t[usable]
    real_sq = neighbours.squared_norms(real_used)
    out = np.empty(len(samples_t))
    for start in range(0, len(samples_t), batch):
        chunk = samples_t[start : start + batch]
        d = neighbours.sq_distances(chunk, real_used, neighbours.squared_norms(chunk), real_sq)
        out[start : start + batch] = (radii_used[None, :] / (d + 1e-12)).max(dim=1).values.numpy()
    return out


def _greedy_dedup(n: int, similarities: Callable[[int, int], np.ndarray], threshold: float, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Greedy near-duplicate removal in input order: (kept mask, similarity to the nearest earlier kept image).

    `similarities(start, stop)` gives the rows start..stop against columns 0..stop. An image
    is dropped when its similarity to any earlier *kept* image is above `threshold`, so of a
    group of copies exactly the first survives. Similarities come a block of rows at a time
    (one matrix product each); only the choice of which earlier images are kept is sequential.
    """
    kept = np.zeros(n, dtype=bool)
    best = np.full(n, np.nan)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = similarities(start, stop)
        for i in range(start, stop):
            earlier = kept[:i]
            if earlier.any():
                best[i] = float(sims[i - start, :i][earlier].max())
                if best[i] > threshold:
                    continue
            kept[i] = True
    return kept, best


def dedup_mask(features: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Feature-space dedup: cosine similarity of features; the first image (nothing earlier) has NaN."""
    f = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    unit = f / np.where(norms > 0, norms, 1.0)
    return _greedy_dedup(len(unit), lambda a, b: unit[a:b] @ unit[:b].T, threshold)


def pixel_similarity(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None, b_sq: np.ndarray | None = None) -> np.ndarray:
    """1 − (RMS difference in grey levels) / 255 between rows of thumbnails: 1 identical, 0 black vs white.

    `a_sq`/`b_sq`: the rows' squared norms, when the caller has them already.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a_sq = (a * a).sum(1) if a_sq is None else a_sq
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    sq = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return 1.0 - np.sqrt(np.maximum(sq, 0.0) / a.shape[1]) / 255.0


def pixel_dedup_mask(thumbs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-space dedup of thumbnails (see pixel_thumbnails) by `pixel_similarity`."""
    t = np.asarray(thumbs, dtype=np.float64)
    sq = (t * t).sum(1)
    return _greedy_dedup(len(t), lambda a, b: pixel_similarity(t[a:b], t[:b], sq[a:b], sq[:b]), threshold)


def pixel_thumbnails(paths: Sequence[Path], on_each: Callable[[], None] | None = None) -> np.ndarray:
    """Each image as a THUMB_SIDE² RGB thumbnail (PIL's antialiased bicubic), flattened to float32.

    Why this is dedup's default space: it needs no weights (so it works offline on any
    folder, where feature-space dedup needs Inception for colour images), and the question
    the default answers is "is this a copy?", for which pixels are the right witness. At
    32² a thumbnail keeps the shape of a digit or a face while averaging away what
    re-encoding changes: on the 1,797 scikit-learn digits (at 32 px), JPEG re-encoding at
    quality 75 moves a thumbnail by at most 2.7 grey levels RMS and ±3 levels of noise by
    1.9, while the two closest *different* digits are 8.3 apart. The default threshold
    PIXEL_DEDUP_THRESHOLD (0.98, i.e. 5.1 levels) sits between. Grey images count as RGB
    with equal channels; images of any size or shape are squeezed to the same square.
    """
    out = np.zeros((len(paths), THUMB_SIDE * THUMB_SIDE * 3), dtype=np.float32)
    for i, (_p, arr) in enumerate(iter_images(paths, channels=3, workers=2)):
        img = Image.fromarray(arr)
        if img.size != (THUMB_SIDE, THUMB_SIDE):
            img = img.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BICUBIC)
        out[i] = np.asarray(img, dtype=np.float32).reshape(-1)
        if on_each:
            on_each()
    return out


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
# Features (mad_cli.features, the metrics side) for realism and feature-space dedup.


def default_feature_space(paths: Sequence[Path]) -> str:
    """`digits` for grey folders (the bundled net was trained on them), else Inception; grey
    or colour by the project's one channel rule (`imagedir.folder_channels`)."""
    return "digits" if folder_channels(paths) == 1 else "inception"


@dataclass
class FeatureSettings:
    """--features, --features-weights and --device as given (the device is resolved only if a network runs)."""

    name: str = "auto"
    weights: Path | None = None
    device: str = "cpu"


@dataclass
class FilterResult:
    """What happened to every image (in SRC order) and the summary row."""

    files: list[str]
    kept: np.ndarray
    deciding_rule: list[str]
    scores: dict[str, list[float | None]]
    summary: dict[str, Any]


class RunContext:
    """What the rules of one run share: SRC, the settings, the summary, and the extractors built so far.

    Extractors are built on first use and kept for the run, one per feature space, so
    realism's two folders and a later dedup in the same space share one network (and its
    weights are read and hashed once).
    """

    def __init__(self, src: Path, paths: list[Path], ties: str, features: FeatureSettings):
        self.src, self.paths, self.ties, self.settings = src, paths, ties, features
        self.rels = [p.relative_to(src).as_posix() for p in paths]
        self.summary: dict[str, Any] = {"src": str(src), "total": len(paths)}
        self._extractors: dict[str, Extractor] = {}
        self._device: str | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            from mad_cli.devices import (
                resolve_device,  # torch: only when a rule runs a network
            )

            self._device = str(resolve_device(self.settings.device))
        return self._device

    def feature_space(self, rule: Rule, default: str) -> str:
        """The rule's own features=, else --features unless auto, else `default` ("auto": by SRC's images)."""
        name = rule.features or (self.settings.name if self.settings.name != "auto" else default)
        if name == "auto":
            name = default_feature_space(self.paths)
        return name

    def extractor(self, name: str) -> Extractor:
        """The run's extractor for a feature space; --features-weights belongs to --features (or to auto's choice)."""
        if name not in self._extractors:
            from mad_cli import features as feats

            mine = self.settings.name in (name, "auto")
            self._extractors[name] = feats.get_extractor(name, weights=self.settings.weights if mine else None, device=self.device)
        return self._extractors[name]

    def features(self, folder: Path, paths: Sequence[Path], space: str) -> np.ndarray:
        """Features of `paths` (images of `folder`) through the metrics side's extractor and cache."""
        from mad_cli import features as feats

        extractor = self.extractor(space)
        with progress(len(paths), f"features {extractor.name}") as bar:
            values = np.asarray(feats.folder_features(folder, extractor, paths=list(paths), on_batch=bar.advance), dtype=np.float64)
        if values.shape[0] != len(paths):
            raise MadError(f"{folder}: got features for {values.shape[0]} images, expected {len(paths)}")
        return values


# ---------------------------------------------------------------------------------------
# The rules. Each score function gets the run, the rule and the indices (into SRC's images)
# still alive, and returns (scores, kept mask); a mask of None means "select by the rule's
# keep/threshold" in the direction the table gives.

Outcome = tuple[np.ndarray, "np.ndarray | None"]


def _score_labels(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    keep_all, score_all, counts = _labels_decisions(rule, ctx.rels, ctx.src, ctx.ties)
    ctx.summary.update(counts)
    return score_all[idx], keep_all[idx]


def _score_provenance(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    synthetic = np.array([read_tags(ctx.paths[i]).get("origin", "").strip().lower() == "synthetic" for i in idx])
    return synthetic.astype(np.float64), ~synthetic


def _score_artifacts(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    with progress(len(idx), "artifacts") as bar:
        results = artifact_scores([ctx.paths[i] for i in idx], on_each=bar.advance)
    return np.array([r.score for r in results]), None


def _score_realism(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    assert rule.ref is not None
    ref_paths = list_images(rule.ref)
    if len(ref_paths) <= REALISM_K:
        raise MadError(f"--ref {rule.ref}: realism needs more than {REALISM_K} real images, found {len(ref_paths)}")
    space = ctx.feature_space(rule, "auto")
    real = ctx.features(rule.ref, ref_paths, space)
    mine = ctx.features(ctx.src, [ctx.paths[i] for i in idx], space)
    ctx.summary["realism_ref"] = str(rule.ref)
    return realism_scores(real, mine), None


def _score_dedup(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    assert rule.threshold is not None
    sub_paths = [ctx.paths[i] for i in idx]
    space = ctx.feature_space(rule, PIXEL_SPACE)
    if space == PIXEL_SPACE:
        with progress(len(sub_paths), "thumbnails") as bar:
            thumbs = pixel_thumbnails(sub_paths, on_each=bar.advance)
        keep, sims = pixel_dedup_mask(thumbs, rule.threshold)
    else:
        keep, sims = dedup_mask(ctx.features(ctx.src, sub_paths, space), rule.threshold)
    ctx.summary["dedup_space"] = space
    return sims, keep


def _score_classifier(ctx: RunContext, rule: Rule, idx: np.ndarray) -> Outcome:
    from mad_cli import features as feats

    probs = np.asarray(feats.digits_probabilities([ctx.paths[i] for i in idx], device=ctx.device))
    return probs.max(axis=1), None


@dataclass(frozen=True)
class RuleSpec:
    """Everything about one `--by` rule; RULE_TABLE holds one per rule.

    `takes_keep`/`takes_threshold`: which cut-offs it understands; `default_threshold` is
    used when the user gives neither (None: the user must give one, e.g. artifacts);
    `feature_threshold` replaces it when the rule measures in a network's feature space
    (dedup: pixels and features need different cut-offs). `higher_is_better` orients
    `select`. `needs_features`: always measures in a feature space; `takes_features`:
    accepts `features=NAME`. `needs_ref`: needs `--ref REAL` (or `ref=`). `takes_files`: the
    text after ':' is a comma list of CSV files or globs, and every use of the rule merges
    into one at the place of the first. `threshold_help`: what T means, for --help.
    """

    name: str
    help: str
    score: Callable[[RunContext, Rule, np.ndarray], Outcome] = field(repr=False)
    takes_keep: bool = False
    takes_threshold: bool = False
    default_threshold: float | None = None
    feature_threshold: float | None = None
    higher_is_better: bool = True
    needs_features: bool = False
    takes_features: bool = False
    needs_ref: bool = False
    takes_files: bool = False
    threshold_help: str = ""

    @property
    def spelled(self) -> str:
        return f"{self.name}:FILE.csv[,...]" if self.takes_files else self.name

    @property
    def settings(self) -> tuple[str, ...]:
        """The key=value settings `--by NAME:...` accepts."""
        keys = [k for k, ok in (("keep", self.takes_keep), ("threshold", self.takes_threshold),
                                ("ref", self.needs_ref), ("features", self.takes_features)) if ok]
        return tuple(keys)


RULE_TABLE: dict[str, RuleSpec] = {spec.name: spec for spec in (
    RuleSpec("labels", "people's good/bad/skip decisions; several files are one majority vote, ties per --ties", _score_labels,
             takes_files=True),
    RuleSpec("provenance", "drops images whose PNG tags say origin=synthetic", _score_provenance),
    RuleSpec("realism", "Kynkäänniemi et al.'s realism score against --ref REAL in a feature space; keeps the most realistic",
             _score_realism, takes_keep=True, takes_threshold=True, default_threshold=1.0, needs_features=True,
             takes_features=True, needs_ref=True, threshold_help="realism score >= T"),
    RuleSpec("artifacts", "frequency-domain cross-hatching score; keeps the weakest peaks", _score_artifacts,
             takes_keep=True, takes_threshold=True, higher_is_better=False, threshold_help="artifacts score <= T"),
    RuleSpec("dedup", "drops copies of an earlier kept image: 32² pixel thumbnails (offline), or features=NAME",
             _score_dedup, takes_threshold=True, default_threshold=PIXEL_DEDUP_THRESHOLD, feature_threshold=0.95,
             higher_is_better=False, takes_features=True,
             threshold_help="dedup similarity > T drops (1 - RMS/255 of thumbnails, or cosine of features)"),
    RuleSpec("classifier", "keeps images the bundled digits net classifies with confidence", _score_classifier,
             takes_keep=True, takes_threshold=True, default_threshold=0.9, threshold_help="classifier confidence >= T"),
)}


def rules_help() -> str:
    """--by's help, from the table."""
    names = " | ".join(spec.spelled for spec in RULE_TABLE.values())
    return f"{names}, optionally RULE:keep=F or RULE:threshold=T; repeatable, applied in order."


def keep_help() -> str:
    names = [spec.name for spec in RULE_TABLE.values() if spec.takes_keep]
    return f"Keep this best fraction, in (0, 1], for {', '.join(names[:-1])} and {names[-1]}." if len(names) > 1 else f"Keep this best fraction, in (0, 1], for {names[0]}."


def threshold_help() -> str:
    parts = []
    for spec in RULE_TABLE.values():
        if not spec.takes_threshold:
            continue
        default = f"{spec.default_threshold:g}" if spec.default_threshold is not None else ""
        if default and spec.feature_threshold is not None:
            default += f"; {spec.feature_threshold:g} in a feature space"
        parts.append(spec.threshold_help + (f" (default {default})" if default else ""))
    return "Cut-off instead of --keep: " + ", ".join(parts) + "."


def rules_summary() -> str:
    """One line per rule, for `mad filter --help`'s description."""
    return "\n".join(f"{spec.spelled}: {spec.help}" for spec in RULE_TABLE.values())


# ---------------------------------------------------------------------------------------
# Parsing --by


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


def _rule_settings(rule: Rule, spec: RuleSpec, params: str) -> None:
    """`keep=`, `threshold=`, `ref=`, `features=` after the ':' of one --by."""
    allowed = spec.settings
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            expected = " or ".join(f"{k}=" for k in allowed) or "nothing"
            raise MadError(f"--by {rule.text}: expected key=value after ':' ({expected})")
        if key not in allowed:
            if key == "keep" and spec.takes_threshold:
                raise MadError(f"--by {rule.text}: {spec.name} takes threshold=, not keep=")
            if key == "threshold":
                raise MadError(f"--by {rule.text}: {spec.name} takes no threshold")
            raise MadError(f"--by {rule.text}: rule {spec.name} has no setting {key!r}")
        try:
            if key == "keep":
                rule.keep = _check_keep(float(value), f"--by {rule.text}: keep")
            elif key == "threshold":
                rule.threshold = _check_threshold(float(value), f"--by {rule.text}: threshold")
            elif key == "ref":
                rule.ref = Path(value)
            else:
                rule.features = value.strip() or None
        except ValueError:
            raise MadError(f"--by {rule.text}: {key}={value!r} is not a number") from None


def parse_rules(specs: Sequence[str], *, keep: float | None = None, threshold: float | None = None, ref: Path | None = None,
                features: str = "auto", allow_empty: bool = False) -> list[Rule]:
    """Turn `--by` strings into rules; every mistake is a MadError naming the flag value.

    `features` is --features: with it set, a rule that may measure in a feature space
    (dedup) does, and takes that space's default threshold.
    """
    if keep is not None and threshold is not None:
        raise MadError("--keep and --threshold: give one of them, not both")
    if keep is not None:
        _check_keep(keep, "--keep")
    if threshold is not None:
        _check_threshold(threshold, "--threshold")
    if not specs and not allow_empty:
        raise MadError("--by: give at least one rule (" + ", ".join(RULE_TABLE) + ") or use --review")
    rules: list[Rule] = []
    merged: dict[str, Rule] = {}
    for text in specs:
        name, _, params = text.partition(":")
        name = name.strip().lower()
        spec = RULE_TABLE.get(name)
        if spec is None:
            raise MadError(f"--by {text}: unknown rule {name!r} (expected one of {', '.join(RULE_TABLE)})")
        if spec.takes_files:
            files = _expand_label_files(params.split(","), text)
            if name in merged:
                merged[name].files.extend(files)
                merged[name].text += " " + text
            else:
                merged[name] = Rule(name, text, files=files)
                rules.append(merged[name])
            continue
        rule = Rule(name, text)
        _rule_settings(rule, spec, params)
        if rule.keep is not None and rule.threshold is not None:
            raise MadError(f"--by {text}: give keep= or threshold=, not both")
        if rule.keep is None and rule.threshold is None:
            in_features = rule.features not in (None, PIXEL_SPACE) or (rule.features is None and features not in ("auto", PIXEL_SPACE))
            default = spec.feature_threshold if in_features and spec.feature_threshold is not None else spec.default_threshold
            if keep is not None and spec.takes_keep:
                rule.keep = keep
            elif threshold is not None and spec.takes_threshold:
                rule.threshold = threshold
            elif default is not None:
                rule.threshold = default
            elif spec.takes_keep or spec.takes_threshold:
                raise MadError(f"--by {text}: {name} has no natural cut-off; add --keep FRACTION or --threshold T")
        if spec.needs_ref:
            rule.ref = rule.ref or ref
            if rule.ref is None:
                raise MadError(f"--by {text}: {name} needs a folder of real images: add --ref REAL")
        rules.append(rule)
    return rules


# ---------------------------------------------------------------------------------------
# Running the rules over a folder


def _labels_decisions(rule: Rule, rels: list[str], src: Path, ties: str) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    known = set(rels)
    files: list[LabelFile] = [read_label_file(p, src, known=known) for p in rule.files]
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


def output_folders(src: Path, out: Path, rejected: Path | None, force: bool, rules: Sequence[Rule] = ()) -> tuple[OutputFolder, OutputFolder | None]:
    """OUT (and --rejected) as `outputs.OutputFolder`s, checked before any expensive work
    (and before a person reviews 400 images): outside SRC and every --ref, separate from
    each other, empty unless --force (which replaces what an earlier mad run wrote there and
    keeps every other file)."""
    inputs = [src, *{r.ref for r in rules if r.ref is not None}]
    owner = OutputFolder(out, command="filter", flag="OUT", sources=inputs, force=force)
    owner.precheck()
    rejected_owner = None
    if rejected is not None:
        r, o = rejected.resolve(), out.resolve()
        if r == o or o in r.parents or r in o.parents:
            raise MadError(f"--rejected {rejected}: must be a separate folder from OUT {out}")
        rejected_owner = OutputFolder(rejected, command="filter", flag="--rejected", sources=inputs, force=force)
        rejected_owner.precheck()
    return owner, rejected_owner


def check_outputs(src: Path, out: Path, rejected: Path | None, force: bool, rules: Sequence[Rule] = ()) -> None:
    """Refuse an unusable OUT or --rejected at once, creating nothing."""
    output_folders(src, out, rejected, force, rules)


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
    ctx = RunContext(src, paths, ties, features or FeatureSettings())
    n = len(paths)
    alive = np.ones(n, dtype=bool)
    deciding = [""] * n
    scores: dict[str, list[float | None]] = {}
    uses: dict[str, int] = {}
    for rule in rules:
        spec = RULE_TABLE[rule.name]
        uses[rule.name] = uses.get(rule.name, 0) + 1
        column = rule.name if uses[rule.name] == 1 else f"{rule.name}{uses[rule.name]}"  # a rule used twice
        idx = np.flatnonzero(alive)
        col: list[float | None] = [None] * n
        if len(idx):
            score_sub, keep_sub = spec.score(ctx, rule, idx)
            if keep_sub is None:
                keep_sub = select(score_sub, keep=rule.keep, threshold=rule.threshold, higher_is_better=spec.higher_is_better)
        else:
            score_sub, keep_sub = np.zeros(0), np.zeros(0, dtype=bool)
        for j, i in enumerate(idx):
            value = float(score_sub[j])
            col[i] = value if math.isfinite(value) else None
            deciding[i] = column
            if not keep_sub[j]:
                alive[i] = False
        scores[column] = col
        ctx.summary[f"dropped:{column}"] = int(len(idx) - int(np.sum(keep_sub)))
    kept = int(alive.sum())
    ctx.summary.update({"kept": kept, "rejected": n - kept, "kept_fraction": kept / n})
    return FilterResult(ctx.rels, alive, deciding, scores, ctx.summary)


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


def _write_folder(owner: OutputFolder, files: Sequence[tuple[Path, str]], extras: dict[str, str], link: str) -> None:
    """Stage the chosen files and the index in `owner` (published when its block ends)."""
    with progress(len(files), f"writing {owner.path.name}") as bar:
        for source, rel in files:
            place_file(source, owner.stage(rel), link)
            bar.advance()
    for name, text in extras.items():  # the index last: a folder with decisions.csv is complete
        atomic_write_text(owner.stage(name), text, fsync=False)


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
    first byte is written. OUT (and --rejected) are locked while the rules run and written
    through `outputs.OutputFolder`: staged inside, then published, so OUT appears complete or
    not at all (--rejected is published first, OUT last), and --force replaces only what
    mad wrote there before.
    """
    src_p, out_p = Path(src), Path(out)
    rejected_p = Path(rejected) if rejected is not None else None
    if link not in LINK_MODES:
        raise MadError(f"--link {link}: expected one of {', '.join(LINK_MODES)}")
    if not src_p.is_dir():
        raise MadError(f"{src_p}: folder does not exist" if not src_p.exists() else f"{src_p}: not a folder")
    owner, rejected_owner = output_folders(src_p, out_p, rejected_p, force, rules)
    with owner, (rejected_owner if rejected_owner is not None else contextlib.nullcontext()):
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
        _write_folder(owner, [(src_p / rel, rel) for i, rel in enumerate(result.files) if result.kept[i]], extras, link)
        if rejected_owner is not None:
            _write_folder(rejected_owner, [(src_p / rel, rel) for i, rel in enumerate(result.files) if not result.kept[i]], extras, link)
    # Leaving the block published --rejected (the inner owner), then OUT.
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
    check_outputs(src_p, out_p, Path(rejected) if rejected is not None else None, force, rules)

    def finish(labels_file: Path) -> dict[str, Any]:
        chain = [Rule("labels", f"labels:{labels_file}", files=[labels_file]), *rules]
        return filter_folder(src_p, out_p, chain, rejected=rejected, link=link, ties=ties, features=features, force=force)

    session = ReviewSession(src_p, reviewer or default_reviewer(), examples=examples, finish=finish, out=out_p, ties=ties)
    return serve_review(session, port=port, open_browser=open_browser)
