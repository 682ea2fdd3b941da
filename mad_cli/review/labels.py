"""People's good/bad/skip decisions as CSV files: the review page writes them, `--by labels:` reads them.

One format for both sides means a review session and a later `mad filter --by labels:...`
can never disagree. The file is an append-only log (`file,label,time`): a later record for
the same file overrides an earlier one and `undo` clears it, so the review page never has
to rewrite the file and a crash can cost at most the record being written. Hand-made files
with just `file,label` rows are the same format with fewer columns.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mad_cli.errors import MadError
from mad_cli.output import warn

GOOD, BAD, SKIP, UNDO = "good", "bad", "skip", "undo"
DECISIONS = (GOOD, BAD, SKIP)
# Words people use in hand-made files; everything maps onto the three decisions.
_SYNONYMS = {
    "good": GOOD, "keep": GOOD, "yes": GOOD, "1": GOOD, "g": GOOD,
    "bad": BAD, "drop": BAD, "reject": BAD, "no": BAD, "0": BAD, "b": BAD,
    "skip": SKIP, "s": SKIP, "unsure": SKIP,
    "undo": UNDO,
}
HEADER = ("file", "label", "time")
_REVIEWER_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def normalise_label(raw: str) -> str | None:
    """The canonical label for a cell, or None when the word means nothing to us."""
    return _SYNONYMS.get(raw.strip().lower())


def check_reviewer(name: str) -> str:
    """Reviewer names become file names, so only a safe alphabet is allowed."""
    if not _REVIEWER_RE.match(name or "") or name in (".", ".."):
        raise MadError(f"--reviewer {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def review_dir(src: Path) -> Path:
    """`SRC-review`, next to SRC and never inside it, so reviewing never modifies SRC."""
    resolved = Path(src).resolve()
    return resolved.parent / f"{resolved.name}-review"


def labels_path(src: Path, reviewer: str) -> Path:
    return review_dir(src) / f"labels-{check_reviewer(reviewer)}.csv"


@dataclass
class LabelFile:
    """The replayed state of one labels file: each file's latest decision, in decision order."""

    path: Path
    labels: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # files in the order their live decision was made
    torn_tail: bool = False

    def apply(self, file: str, label: str) -> None:
        if label == UNDO:
            self.labels.pop(file, None)
            if file in self.history:
                self.history.remove(file)
            return
        if file in self.labels and file in self.history:
            self.history.remove(file)
        self.labels[file] = label
        self.history.append(file)


def _rel_key(raw: str, src_root: Path | None) -> str:
    """Files are named relative to SRC with '/' separators; absolute paths inside SRC are accepted."""
    text = raw.strip().replace("\\", "/")
    if src_root is not None and os.path.isabs(text):
        try:
            return Path(text).resolve().relative_to(src_root.resolve()).as_posix()
        except ValueError:
            return text
    while text.startswith("./"):
        text = text[2:]
    return text


def read_label_file(path: Path, src_root: Path | None = None, *, tolerate_torn_tail: bool = True) -> LabelFile:
    """Parse and replay a labels CSV; a bad row is a MadError naming the file and line.

    A last line without its newline that does not parse is what a power cut in the middle of
    an append leaves behind: it is dropped with a warning instead of failing the whole file.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise MadError(f"{p}: labels file not found") from None
    except OSError as exc:
        raise MadError(f"{p}: cannot read labels file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MadError(f"{p} line {line}: not UTF-8 text") from None
    result = LabelFile(p)
    lines = text.splitlines(keepends=True)
    if not lines:
        raise MadError(f"{p} line 1: empty file (expected a header 'file,label')")
    header = next(csv.reader([lines[0]]))
    cols = [h.strip().lower() for h in header]
    if "file" not in cols or "label" not in cols:
        raise MadError(f"{p} line 1: expected a header with columns 'file' and 'label', got {','.join(header)!r}")
    fi, li = cols.index("file"), cols.index("label")
    last = len(lines)
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        # Only review logs (with their time column) are appended to by a process that can die.
        torn = lineno == last and not line.endswith(("\n", "\r")) and "time" in cols
        try:
            row = next(csv.reader([line]))
            if len(row) < max(fi, li) + 1:
                raise MadError(f"{p} line {lineno}: expected {len(cols)} comma-separated fields, got {len(row)}")
            file = _rel_key(row[fi], src_root)
            label = normalise_label(row[li])
            if not file:
                raise MadError(f"{p} line {lineno}: empty file name")
            if label is None:
                raise MadError(f"{p} line {lineno}: unknown label {row[li]!r} (expected good, bad, skip or undo)")
        except (MadError, csv.Error) as exc:
            if torn and tolerate_torn_tail:
                warn(f"{p} line {lineno}: ignoring an incomplete last record (interrupted write)")
                result.torn_tail = True
                break
            if isinstance(exc, csv.Error):
                raise MadError(f"{p} line {lineno}: malformed CSV ({exc})") from None
            raise
        result.apply(file, label)
    return result


class LabelLog:
    """Append-only, fsynced decision log of one reviewer (safe to call from several threads).

    Each record is flushed and fsynced before the call returns, so an answer the page has
    seen acknowledged survives a killed server or a power cut.
    """

    def __init__(self, path: Path, src_root: Path | None = None):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MadError(f"{self.path.parent}: cannot create the review folder ({exc.strerror or exc})") from None
        if self.path.exists():
            self.state = read_label_file(self.path, src_root)
            self._drop_torn_tail()
        else:
            self.state = LabelFile(self.path)
            self._create()

    def _create(self) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(HEADER)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process created it between our check and now
            self.state = read_label_file(self.path)
            return
        except OSError as exc:
            raise MadError(f"{self.path}: cannot create labels file ({exc.strerror or exc})") from None
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.path.parent)

    def _drop_torn_tail(self) -> None:
        """Cut a half-written last record so that the next append starts on a line of its own."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)
                fh.flush()
                os.fsync(fh.fileno())

    def append(self, file: str, label: str) -> None:
        if label not in (*DECISIONS, UNDO):
            raise MadError(f"unknown label {label!r} (expected good, bad, skip or undo)")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow((file, label, time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        with self._lock:
            with open(self.path, "a", encoding="utf-8", newline="") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            self.state.apply(file, label)

    def undo_last(self) -> str | None:
        """Undo this reviewer's most recent live decision; returns its file (None if nothing to undo)."""
        with self._lock:
            if not self.state.history:
                return None
            file = self.state.history[-1]
        self.append(file, UNDO)
        return file


def _fsync_dir(folder: Path) -> None:
    """Make a new directory entry durable (the file's own fsync does not cover its name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class MergedLabels:
    """Majority decisions over several reviewers' files, with counts for the summary."""

    decisions: dict[str, str]  # file -> good | bad | tie (only files with at least one record)
    good_votes: dict[str, int]
    bad_votes: dict[str, int]
    missing: list[str]  # files named in a labels file that are not images of SRC


def merge_label_files(files: list[LabelFile], known: set[str]) -> MergedLabels:
    """One vote per reviewer and file (their latest); skip is no vote; more good than bad keeps.

    Equal good and bad votes, or only skips, is a tie that the caller settles with `--ties`.
    """
    good: dict[str, int] = {}
    bad: dict[str, int] = {}
    named: set[str] = set()
    for lf in files:
        for file, label in lf.labels.items():
            named.add(file)
            if label == GOOD:
                good[file] = good.get(file, 0) + 1
            elif label == BAD:
                bad[file] = bad.get(file, 0) + 1
    missing = sorted(f for f in named if f not in known)
    decisions: dict[str, str] = {}
    for file in named:
        if file not in known:
            continue
        g, b = good.get(file, 0), bad.get(file, 0)
        decisions[file] = GOOD if g > b else BAD if b > g else "tie"
    return MergedLabels(decisions, good, bad, missing)
