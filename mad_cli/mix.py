"""Compose the training folder of the next generation from real and synthetic sources.

The three loops of Alemohammad et al. (2023) differ only in what goes into each
generation's training set: only the last samples (fully synthetic), the same real data
plus samples (synthetic augmentation), or real data never seen before plus samples
(fresh data). `mix` builds that folder from source folders so a loop is a shell script.

Source specs: `SRC`, `SRC:COUNT` or `SRC:FRACTION`. The spec is split at its LAST ':'
only when what follows is a number: digits are a count (`data:500`), a number with a
'.' or an exponent is a fraction of --total (`data:0.5`, `data:1.0`, `data:5e-1`).
Anything else after a ':' belongs to the path (`C:\\x`, `run:a`). A folder whose own name
ends in ':NUMBER' is written with a trailing slash (`run:1/`). No count means every image
of the source.

Drawing: each source walks its images in a permutation seeded by (--seed, position of
the source: --real sources first, then --synthetic, each in command-line order) and takes
the first COUNT that are allowed: not drawn already by an earlier source (so overlapping
sources never put one file in twice), and for real sources not listed in any
--exclude-manifest (by resolved source path or sha256: fresh-data loops never reuse a
real image). Walking lazily means only the images actually met are hashed, so the
counts `skipped_excluded`/`skipped_already_drawn` in mix.json are the skipped images met
on the way, not the size of the whole excluded set (that is known only when the pool
runs dry, and then the error message gives it).

Output: files are named `{index:06d}-{real|syn}{k}-{stem}{ext}` (index over the whole
folder, so names never collide, and the extension is kept). Every file is decoded once
to check it (a broken file is an error naming it), hashed, and copied or linked; nothing
is held in memory beyond one file. manifest.csv (path, source, origin, generation,
sha256, tag_origin) and mix.json (arguments and counts) are written last. The folder is
staged and published by `outputs.OutputFolder`: an interrupted run leaves `--out` as it
was, re-running the same command redoes it, a second mix into the same folder at the same
time is refused, and `--force` replaces only what mad wrote there (see outputs.py).
Sources are only ever read. `--link hardlink` shares the file with the source: editing
the output in place would then edit the source, which no mad command does.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mad_cli import __version__, flags
from mad_cli.errors import MadError
from mad_cli.imagedir import (
    LINK_MODES,
    ORIGINS,
    TAG_PREFIX,
    atomic_open,
    atomic_write_text,
    decode_errors,
    open_image,
    place_file,
    require_images,
    sha256_file,
)
from mad_cli.models.labels import LABEL_TAG, LABELS_CSV, label_table, parse_label
from mad_cli.output import progress, warn
from mad_cli.outputs import OutputFolder

MANIFEST_COLUMNS = ("path", "source", "origin", "generation", "sha256", "tag_origin", "label")
_COUNT_RE = re.compile(r"[+-]?\d+")
_FRACTION_RE = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+|\.\d+[eE][+-]?\d+)")
_SHORT_ORIGIN = {"real": "real", "synthetic": "syn"}


@dataclass
class SourceSpec:
    """One --real/--synthetic argument after parsing."""

    origin: str
    text: str
    path: Path
    count: int | None = None
    fraction: float | None = None
    tag: str = ""

    @property
    def flag(self) -> str:
        return f"--{self.origin} {self.text}"


@dataclass
class _Drawn:
    spec: SourceSpec
    files: list[Path] = field(default_factory=list)
    available: int = 0
    skipped_excluded: int = 0
    skipped_drawn: int = 0
    tag_mismatch: int = 0


def parse_source(text: str, origin: str) -> SourceSpec:
    """Split `SRC[:COUNT|:FRACTION]` at the last ':' when a number follows it (see module doc)."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}")
    if not text:
        raise MadError(f"--{origin}: empty source")
    head, sep, tail = text.rpartition(":")
    if sep and head:
        if _COUNT_RE.fullmatch(tail):
            count = int(tail)
            if count < 0:
                raise MadError(f"--{origin} {text}: count {count} must not be negative")
            if count == 0:  # as --total 0 is: a source that gives nothing is a mistake, not a mix
                raise MadError(f"--{origin} {text}: count 0 draws nothing; give at least 1, or leave the source out")
            flags.count(count, f"--{origin} {text}: count")
            return SourceSpec(origin, text, Path(head), count=count)
        if _FRACTION_RE.fullmatch(tail):
            frac = float(tail)
            if not (0.0 < frac <= 1.0) or not math.isfinite(frac):
                raise MadError(f"--{origin} {text}: fraction {tail} is outside (0, 1]")
            return SourceSpec(origin, text, Path(head), fraction=frac)
    return SourceSpec(origin, text, Path(text))


def fraction_counts(fractions: list[float], total: int) -> list[int]:
    """Counts for fractions of `total` by largest remainder, so 1/3+1/3+1/3 of 1000 is 1000."""
    raw = [f * total for f in fractions]
    counts = [math.floor(r) for r in raw]
    target = round(sum(raw))
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: max(0, target - sum(counts))]:
        counts[i] += 1
    return counts


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def read_exclusions(manifests: list[str | os.PathLike[str]]) -> tuple[set[str], set[str]]:
    """Resolved source paths and sha256 values of every row of the given manifest.csv files.

    A manifest is what keeps a fresh-data loop fresh, so nothing about it is guessed: a
    file without rows, or a row without a source or a well-formed sha256, is an error naming
    the line (it would silently exclude nothing). Rows whose source file is gone still
    exclude by sha256 (a moved real folder), and are counted in a warning.
    """
    paths: set[str] = set()
    hashes: set[str] = set()
    for m in manifests:
        mp = Path(m)
        if not mp.is_file():
            raise MadError(f"--exclude-manifest {mp}: file does not exist")
        rows = missing = 0
        try:
            with open(mp, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or "source" not in reader.fieldnames or "sha256" not in reader.fieldnames:
                    raise MadError(f"--exclude-manifest {mp}: not a mix manifest (needs columns source and sha256)")
                for row in reader:
                    line = reader.line_num
                    if not any((v or "").strip() for k, v in row.items() if k is not None):
                        continue  # a blank line
                    src = (row.get("source") or "").strip()
                    digest = (row.get("sha256") or "").strip().lower()
                    if not src:
                        raise MadError(f"--exclude-manifest {mp} line {line}: no source path")
                    if not _SHA256_RE.fullmatch(digest):
                        raise MadError(f"--exclude-manifest {mp} line {line}: sha256 {digest[:70]!r} is not a sha256 digest (64 hex digits)")
                    sp = Path(src)
                    resolved = (sp if sp.is_absolute() else mp.parent / sp).resolve()
                    paths.add(str(resolved))
                    hashes.add(digest)
                    rows += 1
                    missing += not resolved.exists()
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise MadError(f"--exclude-manifest {mp}: cannot read ({exc})") from None
        if not rows:
            raise MadError(f"--exclude-manifest {mp}: has no rows, so it would exclude nothing")
        if missing:
            warn(f"--exclude-manifest {mp}: {missing} of its {rows} source files no longer exist there; they are still excluded by content (sha256)")
    return paths, hashes


def _inspect(path: Path) -> tuple[tuple[int, int], dict[str, str]]:
    """Decode fully (so a truncated file is caught here, not in training) and read mad: tags."""
    with open_image(path) as img:
        try:
            img.load()
            text = dict(getattr(img, "text", None) or {})
        except decode_errors as exc:
            raise MadError(f"{path}: cannot decode image ({exc})") from None
        return img.size, {k[len(TAG_PREFIX):]: v for k, v in text.items() if k.startswith(TAG_PREFIX)}


def _copy_hashing(src: Path, dst: Path, chunk: int = 1 << 20) -> str:
    """Copy in one streaming pass that also hashes, atomically."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, atomic_open(dst, "wb", fsync=False) as fout:
        while block := fin.read(chunk):
            h.update(block)
            fout.write(block)
    return h.hexdigest()


def _draw(spec: SourceSpec, count: int | None, rng: np.random.Generator, used: set[str], excluded_paths: set[str], excluded_hashes: set[str], hashes: dict[str, str]) -> _Drawn:
    files = require_images(spec.path)
    result = _Drawn(spec, available=len(files))
    exclude = spec.origin == "real"
    for i in rng.permutation(len(files)):
        if count is not None and len(result.files) == count:
            break
        p = files[int(i)]
        key = str(p.resolve())
        if key in used:
            result.skipped_drawn += 1
            continue
        if exclude and key in excluded_paths:
            result.skipped_excluded += 1
            continue
        if exclude and excluded_hashes:
            digest = hashes.get(key) or sha256_file(p)
            hashes[key] = digest
            if digest in excluded_hashes:
                result.skipped_excluded += 1
                continue
        result.files.append(p)
        used.add(key)
    if count is not None and len(result.files) < count:
        left = len(result.files)
        why = []
        if result.skipped_excluded:
            why.append(f"{result.skipped_excluded} excluded by --exclude-manifest")
        if result.skipped_drawn:
            why.append(f"{result.skipped_drawn} already drawn by an earlier source")
        detail = f" of {len(files)} ({', '.join(why)})" if why else ""
        raise MadError(f"{spec.flag}: asked for {count} images but only {left} are left{detail}")
    # Keep the source's own order in the output: readable manifests, same draw.
    order = {p: n for n, p in enumerate(files)}
    result.files.sort(key=order.__getitem__)
    return result


@dataclass
class _SourceLabels:
    """How one source folder labels its images, by the label contract (models.labels)."""

    table: dict[str, int] | None = None  # labels.csv / dataset.json
    table_name: str | None = None
    use_tags: bool = True  # mad:label tags count (not for a mix without labels.csv)

    @classmethod
    def of(cls, spec: SourceSpec) -> "_SourceLabels":
        try:
            table, name = label_table(spec.path)
        except MadError as exc:  # labels only ride along in a mix: a foreign labels.csv must not stop it
            warn(f"{spec.flag}: its labels are ignored ({exc})")
            return cls(use_tags=False)
        return cls(table, name, use_tags=table is None and not (spec.path / "mix.json").is_file())

    def label(self, src: Path, root: Path, tags: dict[str, str]) -> int | None:
        if self.table is not None:
            rel = src.relative_to(root).as_posix()
            if rel not in self.table:
                raise MadError(f"{src}: has no label in {root / str(self.table_name)}; label every image of the source or none")
            return self.table[rel]
        raw = tags.get(LABEL_TAG) if self.use_tags else None
        return None if raw is None else parse_label(raw, f"{src}: its {TAG_PREFIX}{LABEL_TAG} tag")


def mix(
    out: str | os.PathLike[str],
    real: list[str] | None = None,
    synthetic: list[str] | None = None,
    total: int | None = None,
    seed: int = 0,
    link: str = "copy",
    exclude_manifests: list[str | os.PathLike[str]] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build `out` from the sources; returns mix.json's content (arguments, per-source counts)."""
    real, synthetic, exclude_manifests = list(real or []), list(synthetic or []), list(exclude_manifests or [])
    if link not in LINK_MODES:
        raise MadError(f"--link {link}: expected one of {', '.join(LINK_MODES)}")
    total = flags.count(total, "--total")
    seed = flags.seed(seed)
    assert seed is not None
    specs = [parse_source(t, "real") for t in real] + [parse_source(t, "synthetic") for t in synthetic]
    if not specs:
        raise MadError("no sources: give at least one --real or --synthetic folder")
    per_origin: Counter[str] = Counter()
    for spec in specs:
        spec.tag = f"{_SHORT_ORIGIN[spec.origin]}{per_origin[spec.origin]}"
        per_origin[spec.origin] += 1
        if spec.fraction is not None and total is None:
            raise MadError(f"{spec.flag}: a fraction needs --total (the size of the folder it is a fraction of)")
    counts: list[int | None] = [s.count for s in specs]
    frac_idx = [i for i, s in enumerate(specs) if s.fraction is not None]
    if frac_idx and total is not None:
        for i, c in zip(frac_idx, fraction_counts([specs[i].fraction or 0.0 for i in frac_idx], total)):
            if c == 0:
                raise MadError(f"{specs[i].flag}: is 0 of --total {total} images; give a larger fraction, or leave the source out")
            counts[i] = c
    if total is not None and all(c is not None for c in counts) and sum(c or 0 for c in counts) != total:
        raise MadError(f"--total {total}: the sources add up to {sum(c or 0 for c in counts)} images; make counts and fractions add up to --total")

    owner = OutputFolder(out, command="mix", flag="--out", sources=[s.path for s in specs], force=force)
    owner.precheck()  # before reading every source: a bad --out is found at once
    excluded_paths, excluded_hashes = read_exclusions(exclude_manifests)
    used: set[str] = set()
    hashes: dict[str, str] = {}
    drawn = [
        _draw(spec, counts[pos], np.random.default_rng([seed, pos]), used, excluded_paths, excluded_hashes, hashes)
        for pos, spec in enumerate(specs)
    ]
    n_total = sum(len(d.files) for d in drawn)
    if total is not None and n_total != total:
        raise MadError(f"--total {total}: the sources add up to {n_total} images; make counts and fractions add up to --total")

    sizes: Counter[str] = Counter()
    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    index = 0
    labels: list[tuple[str, int | None]] = []
    with owner as staged, progress(n_total, "mix") as bar:
        for d in drawn:
            source_labels = _SourceLabels.of(d.spec)
            for src in d.files:
                name = f"{index:06d}-{d.spec.tag}-{src.stem}{src.suffix}"
                (w, h), tags = _inspect(src)
                sizes[f"{w}x{h}"] += 1
                dst = staged.stage(name)
                key = str(src.resolve())
                if link == "copy":
                    digest = _copy_hashing(src, dst)
                else:
                    digest = hashes.get(key) or sha256_file(src)
                    place_file(src, dst, link)
                tag_origin = tags.get("origin", "")
                if tag_origin and tag_origin != d.spec.origin:
                    d.tag_mismatch += 1
                label = source_labels.label(src, d.spec.path, tags)
                labels.append((name, label))
                writer.writerow([name, key, d.spec.origin, tags.get("generation", ""), digest, tag_origin, "" if label is None else label])
                index += 1
                bar.advance()
            if d.tag_mismatch:
                if d.spec.origin == "real":
                    warn(f"{d.spec.flag}: {d.tag_mismatch} of {len(d.files)} drawn images are tagged origin=synthetic; "
                         "they go in as real, which is the synthetic-data leak a fresh or augmented loop must avoid")
                else:
                    warn(f"{d.spec.flag}: {d.tag_mismatch} of {len(d.files)} drawn images are tagged origin=real; they go in as synthetic")
        info: dict[str, Any] = {
            "mad_version": __version__,
            "arguments": {
                "out": str(Path(out)),
                "real": real,
                "synthetic": synthetic,
                "total": total,
                "seed": seed,
                "link": link,
                "exclude_manifests": [str(m) for m in exclude_manifests],
                "force": force,
            },
            "count": n_total,
            "sizes": dict(sorted(sizes.items())),
            "mixed_sizes": len(sizes) > 1,
            "sources": [
                {
                    "spec": d.spec.text,
                    "origin": d.spec.origin,
                    "path": str(d.spec.path.resolve()),
                    "tag": d.spec.tag,
                    "requested": counts[pos],
                    "available": d.available,
                    "drawn": len(d.files),
                    "skipped_excluded": d.skipped_excluded,
                    "skipped_already_drawn": d.skipped_drawn,
                    "tag_mismatch": d.tag_mismatch,
                }
                for pos, d in enumerate(drawn)
            ],
            "excluded": {"manifests": len(exclude_manifests), "paths": len(excluded_paths), "sha256": len(excluded_hashes)},
        }
        n_labelled = sum(label is not None for _, label in labels)
        if n_labelled == len(labels):
            # Every image has a class: the next generation trains class-conditionally too.
            table_csv = io.StringIO()
            csv.writer(table_csv, lineterminator="\n").writerows([("file", "label"), *labels])
            atomic_write_text(staged.stage(LABELS_CSV), table_csv.getvalue(), fsync=False)
        elif n_labelled:
            warn(f"--out {out}: only {n_labelled} of {len(labels)} drawn images have a label; the folder gets no {LABELS_CSV} "
                 "(a conditional model cannot train on it; mix only labelled sources to keep the labels)")
        info["labelled"] = n_labelled
        atomic_write_text(staged.stage("manifest.csv"), manifest.getvalue(), fsync=False)
        atomic_write_text(staged.stage("mix.json"), json.dumps(info, indent=2) + "\n", fsync=False)
    return info
