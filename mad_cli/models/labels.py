"""The label contract: how a folder says which class each image is, and which class a
sample of a conditional model gets.

A folder is labelled when it has `labels.csv` (columns `file,label`; what `mad dataset
digits` and `mad mix` write), an NVIDIA-style `dataset.json` (`{"labels": [["path",
label], ...]}`), or `mad:label` tags in its PNGs (what `mad sample` writes for a
conditional model), looked for in that order. A folder `mad mix` wrote is labelled only
by its labels.csv: mix writes one exactly when every image it drew had a label. Labels are integer class indices. A folder
where only some images have a label is an error, because a conditional model would
silently treat the rest as some class. Light (no torch): `mad mix` uses it too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from mad_cli.errors import MadError
from mad_cli.imagedir import TAG_PREFIX

LABELS_CSV = "labels.csv"
NVIDIA_JSON = "dataset.json"
LABEL_TAG = "label"
#: Class indices go up to this: a conditional network has one embedding row per class, so a
#: typo like 1000000000000 must be refused here rather than reach an allocator.
MAX_CLASSES = 100_000
#: The label column's name; `digit` is what `mad dataset digits` wrote before 0.2.
_LABEL_COLUMNS = ("label", "digit")
#: A folder `mad mix` wrote says itself which labels it has (labels.csv or none): the tags
#: of the images it copied from a labelled source must not make a half-labelled folder.
_MIX_SUMMARY = "mix.json"


def parse_label(raw: object, where: str) -> int:
    """A class index in [0, MAX_CLASSES) from a file's text; one error line naming `where`."""
    text = str(raw).strip()
    try:
        value = int(text)
    except ValueError:
        raise MadError(f"{where}: label {text!r} is not an integer class index (0, 1, 2, ...)") from None
    if value < 0:
        raise MadError(f"{where}: label {value} is negative; labels are class indices 0, 1, 2, ...")
    if value >= MAX_CLASSES:
        raise MadError(f"{where}: label {value} is larger than the largest class index mad takes ({MAX_CLASSES - 1:,})")
    return value


def _table_from_csv(path: Path) -> dict[str, int]:
    table: dict[str, int] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            column = next((c for c in _LABEL_COLUMNS if c in (reader.fieldnames or [])), None)
            if not reader.fieldnames or "file" not in reader.fieldnames or column is None:
                raise MadError(f"{path}: expected the columns file,label (found {', '.join(reader.fieldnames or []) or 'none'})")
            for line, row in enumerate(reader, start=2):
                name = (row.get("file") or "").strip()
                if name:
                    table[Path(name).as_posix()] = parse_label(row.get(column), f"{path} line {line}")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MadError(f"{path}: cannot read ({exc})") from None
    return table


def _table_from_nvidia_json(path: Path) -> dict[str, int] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MadError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("labels") is None:
        return None  # ours (mad dataset digits writes a dataset.json of facts) or label-free
    entries = data["labels"]
    if not isinstance(entries, list):
        raise MadError(f"{path}: 'labels' must be a list of [file, label] pairs")
    table: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise MadError(f"{path}: labels[{i}] is not a [file, label] pair")
        if isinstance(entry[1], list):
            raise MadError(f"{path}: labels[{i}] is a vector; only integer class labels are supported")
        table[Path(entry[0]).as_posix()] = parse_label(entry[1], f"{path} labels[{i}]")
    return table


def label_table(root: Path) -> tuple[dict[str, int] | None, str | None]:
    """The folder's label file as {relative path: label}: labels.csv, else an NVIDIA
    dataset.json with labels, else (None, None) (labels may still come from tags)."""
    if (root / LABELS_CSV).is_file():
        return _table_from_csv(root / LABELS_CSV), LABELS_CSV
    if (root / NVIDIA_JSON).is_file() and (table := _table_from_nvidia_json(root / NVIDIA_JSON)) is not None:
        return table, NVIDIA_JSON
    return None, None


def folder_labels(root: Path, paths: list[Path], tags: list[str | None]) -> tuple[np.ndarray | None, str | None]:
    """Every image's label by the folder's contract (see the module docstring), or None.

    `tags` are the images' mad:label tags (None where absent). A folder where only some
    images have a label is an error naming the first without one.
    """
    table, source = label_table(root)
    if table is None and (root / _MIX_SUMMARY).is_file():
        return None, None  # a mix without labels.csv: mix found not every image labelled
    if table is not None:
        rels = [p.relative_to(root).as_posix() for p in paths]
        missing = [r for r in rels if r not in table]
        if missing:
            raise MadError(
                f"{root / missing[0]}: has no label in {root / str(source)} ({len(rels) - len(missing)} of {len(rels)} images labelled); "
                "label every image or none"
            )
        return np.asarray([table[r] for r in rels], dtype=np.int64), source
    if not any(t is not None for t in tags):
        return None, None
    missing = [p for p, t in zip(paths, tags) if t is None]
    if missing:
        raise MadError(
            f"{missing[0]}: has no {TAG_PREFIX}{LABEL_TAG} tag although {len(paths) - len(missing)} of {len(paths)} images have one; "
            "label every image or none"
        )
    return np.asarray([parse_label(t, str(p)) for p, t in zip(paths, tags)], dtype=np.int64), f"{TAG_PREFIX}{LABEL_TAG} tags"


def seed_label(seed: int, num_classes: int, fixed: int | None) -> int:
    """The class of image `seed`: `fixed` when given, else seed mod classes (balanced)."""
    return int(fixed) if fixed is not None else int(seed) % num_classes


def check_class(class_: int | None, num_classes: int, path: Path | str) -> None:
    if class_ is None:
        return
    if not num_classes:
        raise MadError(f"--class {class_}: {path} is an unconditional model (it has no classes)")
    if class_ >= num_classes:
        raise MadError(f"--class {class_}: {path} has classes 0..{num_classes - 1}")
