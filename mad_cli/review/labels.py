"""People's good/bad/skip decisions as CSV files: the review page writes them, `--by labels:` reads them.

One format for both sides means a review session and a later `mad filter --by labels:...`
can never disagree. The file is an append-only log (`file,label,time`): a later record for
the same file overrides an earlier one and `undo` clears it, so the review page never has
to rewrite the file and a crash can cost at most the record being written. Hand-made files
with just `file,label` rows are the same format with fewer columns.

It is real CSV in both directions: a file name may hold commas, quotes, line breaks
(`\\n`, `\\r`) or U+2028, and is quoted on writing and read back by a CSV reader, never by
splitting lines, so a name is one field however many physical lines it spans.
"""

from __future__ import annotations

import codecs
import csv
import errno
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mad_cli.errors import MadError
from mad_cli.output import warn

if TYPE_CHECKING:  # pragma: no cover
    from mad_cli.outputs import FolderLock

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
# The longest record an interrupted append can leave behind: a path (PATH_MAX is 4096
# bytes) plus label and time. A longer unfinished record is not a torn write but a broken
# file (e.g. a stray quote that swallowed the rest), and is reported, never dropped.
MAX_TORN_CHARS = 8192

# Listener of a LabelFile: (file, label before, label after), None meaning "no live decision".
Listener = Callable[[str, "str | None", "str | None"], None]


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


def csv_record(fields: tuple[str, ...] | list[str]) -> str:
    """One CSV record ending in '\\n', quoted wherever a reader could misread it.

    Python's writer quotes only the characters of its own line terminator, so with '\\n' a
    bare '\\r' inside a name would be written unquoted and split the record for every reader
    in universal-newline mode (ours included); such a record is written fully quoted.
    """
    buf = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in f for f in fields) else csv.QUOTE_MINIMAL
    csv.writer(buf, lineterminator="\n", quoting=quoting).writerow(fields)
    return buf.getvalue()


@dataclass
class LabelFile:
    """The replayed state of one labels file: each file's latest decision, in decision order.

    `end_bytes` is where the last accepted record ends in the file (so a log knows where to
    cut a torn tail, and a follower where to continue reading); `terminated` says whether
    that record has its line break.
    """

    path: Path
    labels: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # files in the order their live decision was made
    torn_tail: bool = False
    columns: list[str] | None = None
    end_bytes: int = 0
    end_line: int = 0
    terminated: bool = True
    listener: Listener | None = field(default=None, repr=False)

    @property
    def is_log(self) -> bool:
        """Only review logs (with their time column) are appended to by a process that can die."""
        return self.columns is not None and "time" in self.columns

    def apply(self, file: str, label: str) -> None:
        before = self.labels.get(file)
        if label == UNDO:
            self.labels.pop(file, None)
            if file in self.history:
                self.history.remove(file)
        else:
            if file in self.labels and file in self.history:
                self.history.remove(file)
            self.labels[file] = label
            self.history.append(file)
        if self.listener is not None:
            self.listener(file, before, self.labels.get(file))


def _rel_key(raw: str, src_root: Path | None, known: set[str] | None = None) -> str:
    """Files are named relative to SRC with '/' separators; absolute paths inside SRC are accepted.

    A name that is exactly an image of SRC is taken as it is: file names may start with a
    space or hold a backslash, and only hand-made spellings need tidying.
    """
    if known is not None and raw in known:
        return raw
    text = raw.strip().replace("\\", "/")
    if src_root is not None and os.path.isabs(text):
        try:
            return Path(text).resolve().relative_to(src_root.resolve()).as_posix()
        except ValueError:
            return text
    while text.startswith("./"):
        text = text[2:]
    return text


@dataclass
class _Record:
    line: int  # the physical line the record starts on (1-based)
    row: list[str]
    start: int  # characters of the text before the record
    end: int  # characters of the text through the end of the record
    end_line: int
    terminated: bool  # ended by a line break (False: it ran into the end of the text)


class _CsvError(Exception):
    def __init__(self, line: int, message: str, at_end: bool, start: int):
        super().__init__(message)
        self.line, self.message, self.at_end, self.start = line, message, at_end, start


def _records(text: str, first_line: int = 1) -> Iterator[_Record]:
    """CSV records with where they start and end; the reader sees lines split by universal newlines only."""
    consumed = 0
    exhausted = False

    def lines() -> Iterator[str]:
        nonlocal consumed, exhausted
        for line in io.StringIO(text, newline=""):
            consumed += len(line)
            yield line
        exhausted = True  # runs when the reader asks past the last line

    reader = csv.reader(lines())
    done_lines = 0
    start = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _CsvError(first_line + done_lines, str(exc), exhausted, start) from None
        line = first_line + done_lines
        done_lines = reader.line_num
        # Ended by its own line break: a last line without one, or a quoted field still open
        # at the end of the text (the reader then asks past the last line), is unfinished.
        terminated = not exhausted and consumed > 0 and text[consumed - 1] in "\r\n"
        yield _Record(line, row, start, consumed, first_line + done_lines - 1, terminated)
        start = consumed


def _decision(result: LabelFile, rec: _Record, src_root: Path | None, known: set[str] | None) -> tuple[str, str]:
    cols = result.columns or []
    fi, li = cols.index("file"), cols.index("label")
    p, row = result.path, rec.row
    if len(row) < max(fi, li) + 1:
        raise MadError(f"{p} line {rec.line}: expected {len(cols)} comma-separated fields, got {len(row)}")
    file = _rel_key(row[fi], src_root, known)
    label = normalise_label(row[li])
    if not file:
        raise MadError(f"{p} line {rec.line}: empty file name")
    if label is None:
        raise MadError(f"{p} line {rec.line}: unknown label {row[li]!r} (expected good, bad, skip or undo)")
    return file, label


def _replay(result: LabelFile, text: str, *, base_bytes: int, src_root: Path | None, known: set[str] | None,
            complete_only: bool, tolerate_torn_tail: bool) -> None:
    """Apply the records of `text` (which starts at byte `base_bytes` of the file) to `result`.

    `complete_only` (a follower of a file someone is appending to): stop before a record
    without its line break, which may be a write still in progress. Otherwise an unfinished
    last record that does not parse is what a kill in the middle of an append leaves
    behind: it is dropped with a warning instead of failing the whole file.
    """
    p = result.path
    end_char, terminated, end_line = 0, True, result.end_line

    def torn(line: int, start: int) -> bool:
        if not (tolerate_torn_tail and result.is_log and len(text) - start <= MAX_TORN_CHARS):
            return False
        warn(f"{p} line {line}: ignoring an incomplete last record (interrupted write)")
        result.torn_tail = True
        return True

    try:
        for rec in _records(text, result.end_line + 1):
            if complete_only and not rec.terminated:
                break
            if not rec.row or (len(rec.row) == 1 and not rec.row[0].strip()):  # a blank line
                if rec.terminated:
                    end_char, end_line = rec.end, rec.end_line
                continue
            if result.columns is None:
                header = rec.row
                cols = [h.strip().lower() for h in header]
                if "file" not in cols or "label" not in cols:
                    raise MadError(f"{p} line {rec.line}: expected a header with columns 'file' and 'label', got {','.join(header)!r}")
                result.columns = cols
            else:
                try:
                    file, label = _decision(result, rec, src_root, known)
                except MadError:
                    if not rec.terminated and torn(rec.line, rec.start):
                        break
                    raise
                result.apply(file, label)
            end_char, terminated, end_line = rec.end, rec.terminated, rec.end_line
    except _CsvError as exc:
        if exc.at_end and complete_only:
            pass  # the rest of that record has not been written yet
        elif not (exc.at_end and result.columns is not None and torn(exc.line, exc.start)):
            raise MadError(f"{p} line {exc.line}: malformed CSV ({exc.message})") from None
    result.end_bytes = base_bytes + len(text[:end_char].encode("utf-8"))
    result.end_line = end_line
    result.terminated = terminated


def _decode(raw: bytes, p: Path, first_line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw[: exc.start].count(b"\n")
        raise MadError(f"{p} line {line}: not UTF-8 text") from None


def read_label_file(path: Path, src_root: Path | None = None, *, known: set[str] | None = None,
                    tolerate_torn_tail: bool = True) -> LabelFile:
    """Parse and replay a labels CSV; a bad record is a MadError naming the file and line.

    `known` (the images of SRC) lets names that are exactly an image be taken verbatim.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise MadError(f"{p}: labels file not found") from None
    except OSError as exc:
        raise MadError(f"{p}: cannot read labels file ({exc.strerror or exc})") from None
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    text = _decode(raw[bom:], p, 1)
    result = LabelFile(p)
    _replay(result, text, base_bytes=bom, src_root=src_root, known=known, complete_only=False, tolerate_torn_tail=tolerate_torn_tail)
    if result.columns is None:
        raise MadError(f"{p} line 1: empty file (expected a header 'file,label')")
    return result


class LabelFollower:
    """Another reviewer's log as it grows: replayed once, then only the bytes appended since.

    Why: progress shows every reviewer's count after each decision, and re-reading a
    colleague's whole log (hundreds of KB after a day of work) on every key press made
    labelling crawl. A log is append-only, so its size says how far we have read; a file
    that shrank, was replaced or changed in place (mtime moved, size equal) is read afresh.
    A record still being written (no line break yet) is left for the next refresh.
    """

    def __init__(self, path: Path, src_root: Path | None = None, known: set[str] | None = None, listener: Listener | None = None):
        self.path = Path(path)
        self.src_root, self.known, self.listener = src_root, known, listener
        self.state: LabelFile | None = None
        self._identity: tuple[int, int] | None = None
        self._mtime_ns = 0
        self._broken: tuple[int, int, int] | None = None  # a damaged file is not re-read until it changes

    def _forget(self) -> None:
        if self.state is not None and self.listener is not None:
            for file, label in list(self.state.labels.items()):
                self.listener(file, label, None)
        self.state = None

    def refresh(self) -> LabelFile | None:
        """Bring the replay up to date; None while the file is unreadable or malformed."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._forget()
            return None
        identity = (st.st_dev, st.st_ino)
        if self._broken == (st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        state = self.state
        if state is not None and (identity != self._identity or st.st_size < state.end_bytes
                                  or (st.st_size == state.end_bytes and st.st_mtime_ns != self._mtime_ns)):
            self._forget()
            state = None
        if state is not None and st.st_size == state.end_bytes:
            return state
        try:
            state = self._read(state, identity)
        except (MadError, OSError):
            self._forget()
            self._broken = (st.st_ino, st.st_size, st.st_mtime_ns)
            return None
        self._mtime_ns = st.st_mtime_ns
        return state

    def _read(self, state: LabelFile | None, identity: tuple[int, int]) -> LabelFile:
        if state is None:
            state = LabelFile(self.path, listener=self.listener)
            self.state, self._identity, self._broken = state, identity, None
        with open(self.path, "rb") as fh:
            fh.seek(state.end_bytes)
            new = fh.read()
        cut = new.rfind(b"\n") + 1  # a line break never sits inside a UTF-8 sequence
        if cut == 0:
            return state
        chunk, base = new[:cut], state.end_bytes
        if base == 0 and chunk.startswith(codecs.BOM_UTF8):
            chunk, base = chunk[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
            state.end_bytes = base
        text = _decode(chunk, self.path, state.end_line + 1)
        _replay(state, text, base_bytes=base, src_root=self.src_root, known=self.known, complete_only=True, tolerate_torn_tail=False)
        return state


class LabelWriteError(MadError):
    """A decision that could not be made durable (disk full, read-only, ...); nothing was recorded."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.errno = code


def _write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (a short write is legal on a nearly full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class LabelLog:
    """Append-only, fsynced decision log of one reviewer (safe to call from several threads).

    Each record is flushed and fsynced before the call returns, so an answer the page has
    seen acknowledged survives a killed server or a power cut. A write that fails (a full
    disk) raises LabelWriteError after cutting off whatever part of the record reached the
    file, and every append first checks that the file still ends where the last good record
    ended, cutting a torn tail left by an earlier failure, so a record is never glued onto
    half of another.
    """

    def __init__(self, path: Path, src_root: Path | None = None, known: set[str] | None = None):
        self.path = Path(path)
        self.src_root, self.known = src_root, known
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MadError(f"{self.path.parent}: cannot create the review folder ({exc.strerror or exc})") from None
        # One writer per reviewer file (mad_cli.outputs): a second review server for the same
        # reviewer would repair and append to the file under the first one's feet.
        self._owner = _reviewer_lock(self.path)
        header = csv_record(HEADER).encode("utf-8")
        try:
            existing = self.path.read_bytes() if self.path.exists() else None
        except OSError as exc:
            raise MadError(f"{self.path}: cannot read labels file ({exc.strerror or exc})") from None
        if existing is not None and len(existing) < len(header) and header.startswith(existing):
            # Killed while writing the header: nothing was ever recorded, start over.
            self.path.unlink(missing_ok=True)
            existing = None
        if existing is not None:
            self.state = read_label_file(self.path, src_root, known=known)
            self._repair()
        else:
            self.state = LabelFile(self.path, columns=list(HEADER), end_bytes=len(header), end_line=1)
            self._create(header)

    def _create(self, header: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:  # another process created it between our check and now
            self.state = read_label_file(self.path, self.src_root, known=self.known)
            self._repair()
            return
        except OSError as exc:
            raise MadError(f"{self.path}: cannot create labels file ({exc.strerror or exc})") from None
        try:
            _write_all(fd, header)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise MadError(f"{self.path}: cannot create labels file ({exc.strerror or exc})") from None
        os.close(fd)
        _fsync_dir(self.path.parent)

    def _repair(self) -> None:
        """Cut a torn tail and end the last record with a line break, so the next append starts clean."""
        state = self.state
        try:
            size = self.path.stat().st_size
            if size == state.end_bytes and state.terminated:
                return
            with open(self.path, "r+b") as fh:
                fh.truncate(state.end_bytes)
                if not state.terminated:
                    fh.seek(state.end_bytes)
                    fh.write(b"\n")
                    state.end_bytes += 1
                    state.terminated = True
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise MadError(f"{self.path}: cannot repair the end of the labels file ({exc.strerror or exc})") from None

    def _catch_up(self, fd: int) -> None:
        """The file is longer than what we wrote: keep complete records, cut the torn rest."""
        size = os.fstat(fd).st_size
        if size == self.state.end_bytes:
            return
        if size < self.state.end_bytes:
            raise MadError(f"{self.path}: the labels file was cut short by another program; restart the review to read it again")
        if size > self.state.end_bytes:
            os.lseek(fd, self.state.end_bytes, os.SEEK_SET)
            extra = b""
            while len(extra) < size - self.state.end_bytes:
                chunk = os.read(fd, size - self.state.end_bytes - len(extra))
                if not chunk:
                    break
                extra += chunk
            cut = extra.rfind(b"\n") + 1
            if cut:
                text = _decode(extra[:cut], self.path, self.state.end_line + 1)
                _replay(self.state, text, base_bytes=self.state.end_bytes, src_root=self.src_root, known=self.known,
                        complete_only=True, tolerate_torn_tail=False)
        os.ftruncate(fd, self.state.end_bytes)

    def append(self, file: str, label: str) -> None:
        if label not in (*DECISIONS, UNDO):
            raise MadError(f"unknown label {label!r} (expected good, bad, skip or undo)")
        record = csv_record((file, label, time.strftime("%Y-%m-%dT%H:%M:%S%z"))).encode("utf-8")
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR)
            except OSError as exc:
                raise LabelWriteError(f"{self.path}: decision not saved ({exc.strerror or exc})", exc.errno) from None
            try:
                self._catch_up(fd)
                os.lseek(fd, self.state.end_bytes, os.SEEK_SET)
                _write_all(fd, record)
                os.fsync(fd)
            except OSError as exc:
                try:  # take back whatever part of the record got in: it was never acknowledged
                    os.ftruncate(fd, self.state.end_bytes)
                except OSError:
                    pass  # the next append cuts it (see _catch_up)
                advice = " (free some space, then answer again)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise LabelWriteError(f"{self.path}: decision not saved: {exc.strerror or exc}{advice}", exc.errno) from None
            finally:
                os.close(fd)
            self.state.end_bytes += len(record)
            self.state.end_line += record.count(b"\n")  # line breaks inside quoted names count as lines too
            self.state.apply(file, label)

    def close(self) -> None:
        """Let another review server record this reviewer's decisions (also done when the log is dropped)."""
        self._owner.release()

    def undo_last(self) -> str | None:
        """Undo this reviewer's most recent live decision; returns its file (None if nothing to undo)."""
        with self._lock:
            if not self.state.history:
                return None
            file = self.state.history[-1]
        self.append(file, UNDO)
        return file


def _reviewer_lock(path: Path) -> "FolderLock":
    """The lock on one reviewer's file: other processes are refused; in this process writers share it."""
    from mad_cli.outputs import FolderLock

    reviewer = path.stem[len("labels-"):] if path.stem.startswith("labels-") else path.stem
    return FolderLock(
        path.parent, command="filter --review", flag=f"--reviewer {reviewer}", name=f".{path.name}.lock", target=path,
        advice="one review page per reviewer: use that page, or stop its server first", per_process=True,
    ).acquire()


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
