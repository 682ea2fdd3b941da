"""The one owner of output folders and files: a lock, the files it owns, leftover temp
files, and the rule that an output never lies inside an input.

Every command that writes goes through here: `dataset`, `mix` and `filter` (whole folders,
staged), `sample` and `train` (folders filled file by file), the review log (`FolderLock`
per reviewer) and the `--plot`/`--grid` figures (`check_file_target`).

Why a lock: two commands writing into one folder at the same time (two `mad sample` runs
with different ψ, two `mad train` runs into one RUN) each see a consistent folder when
they start and then interleave their files; both exit 0 and the folder silently mixes two
experiments. An exclusive `flock` on a hidden file inside the folder makes the second
writer stop with one line instead. The kernel drops the lock when its process dies, even
by SIGKILL, so a killed run never leaves a stale lock behind, and the next run can resume.
The lock file is removed when the command ends (a killed run leaves an unlocked one, which
the next run takes over).

Why the temp-file sweep: every file we write goes through a hidden temp name and a rename
(`imagedir.atomic_open`, `place_file`), and whole-folder outputs are built in a hidden
`.mad-staging` folder. A killed writer leaves such files; readers never list hidden files,
but they cost disk. Whoever holds the lock knows that no other mad command is writing
there, so every such temp file is a leftover and can go.

Which files are ours (what `--force` may replace): whole-folder outputs are staged, so at
the moment of publishing we know every file name exactly; we record them in a hidden
ledger, `.mad-owned.json` (command, mad version, the relative paths). `--force` then means
the same for every command: files the ledger lists are replaced (or removed, when the new
run does not write them again), and nothing else is ever deleted or overwritten; other
files stay, and images among them are reported, since they will be part of the folder for
every later step. A ledger, not a recogniser of each command's index files, because it is
exact (a user's own `labels.csv` or a copied `manifest.csv` can never make us delete
anything), the same for every command, and costs one small file. A folder written before
ledgers existed simply counts as someone else's: `--force` keeps its files, and a new file
whose name is taken by one of them is refused rather than overwritten. `sample` and `train`
fill their folders file by file and recognise their own files by content (seed-named PNGs
tagged by mad; a run's config and snapshots), so they lock and sweep here but keep their
own content rules: `train` never deletes a file, and `sample --force` only replaces samples
mad wrote with other settings, so that the folder never mixes two.

The ledger is written twice while publishing: first listing old and new files and marked
incomplete, then, after every file is in place, only the new ones. A run killed between the
two leaves a folder holding only files the ledger lists, and the next run takes it over
without `--force`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from mad_cli.errors import MadError
from mad_cli.imagedir import is_image_file, is_within

LOCK_NAME = ".mad-lock"
STAGING_NAME = ".mad-staging"
LEDGER_NAME = ".mad-owned.json"
#: Hidden names our writers use for files not yet complete: `.NAME.<random or pid>.tmp`
#: (atomic_open, place_file) and the writability probe.
_LEFTOVER = re.compile(r"^\..+\.tmp$|^\.mad-write-test\..+$")

__all__ = [
    "LEDGER_NAME", "LOCK_NAME", "STAGING_NAME", "FolderLock", "OutputFolder",
    "check_file_target", "check_outside", "is_within", "remove_leftovers",
]


def check_outside(target: Path, sources: Iterable[str | os.PathLike[str]], flag: str) -> None:
    """An output may neither lie inside an input (it would modify it) nor contain one."""
    for src in sources:
        s = Path(src)
        if is_within(target, s):
            raise MadError(f"{flag} {target}: is inside input folder {s}; choose a folder outside it")
        if is_within(s, target):
            raise MadError(f"{flag} {target}: contains input folder {s}; choose another folder")


def check_file_target(path: str | os.PathLike[str], *, flag: str, inputs: Iterable[tuple[str | os.PathLike[str], str]] = (), suffix: str = ".png") -> Path:
    """A figure we will write (`--plot`, `--grid`): checked before any work, never inside an input.

    `inputs` are (folder, why) pairs: a PNG inside an image folder would be read as an image
    by the next command (`mad colorhist SRC --plot SRC/plot.png`, then `mad mix --real SRC`).
    The file itself is written later with `imagedir.atomic_open`, so it is complete or absent.
    """
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise MadError(f"{flag} {target}: must end in {suffix}")
    for folder, why in inputs:
        if is_within(target.parent, Path(folder)):
            raise MadError(f"{flag} {target}: is inside {why} {folder}, where it would be taken for an image; put it elsewhere")
    if target.is_dir():
        raise MadError(f"{flag} {target}: is a folder; give a file name ending in {suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MadError(f"{flag} {target}: {target.parent} is not a folder (a file is in the way)") from None
    except OSError as exc:
        raise MadError(f"{flag} {target}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise MadError(f"{flag} {target}: folder {target.parent} is not writable")
    return target


def remove_leftovers(folder: Path) -> int:
    """Delete our temp files and staging folder left in `folder` by a killed run; returns how many.

    Only call this while holding the folder's lock: then nothing of ours is in flight.
    """
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.name == STAGING_NAME and entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        elif _LEFTOVER.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------------
# The lock

#: Locks taken with `per_process=True`, by lock file: [file, holders]. See FolderLock.
_PROCESS_LOCKS: dict[str, list[Any]] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class FolderLock:
    """Exclusive, non-blocking lock on `folder` (its file `name`) for the lifetime of one command.

    The lock file holds a line saying who holds it, so the refusal can name them. With
    `per_process=True` the lock excludes other processes only: several holders inside one
    process share it (the review log, whose writers in one process already serialise on
    their own thread lock and catch up with each other's records).
    """

    def __init__(self, folder: Path, *, command: str, flag: str, name: str = LOCK_NAME, target: Path | None = None,
                 advice: str = "wait for it to finish or choose another folder", per_process: bool = False):
        self.folder, self.command, self.flag = Path(folder), command, flag
        self.name, self.target, self.advice, self.per_process = name, target or Path(folder), advice, per_process
        self._fh: IO[str] | None = None
        self._shared: weakref.finalize | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def acquire(self) -> "FolderLock":
        if self.per_process:
            key = os.path.abspath(self.path)
            with _PROCESS_LOCKS_GUARD:
                entry = _PROCESS_LOCKS.get(key)
                if entry is None:
                    entry = [self._take(), 0]
                    _PROCESS_LOCKS[key] = entry
                entry[1] += 1
            # Released by `release`, or when this object is dropped without it.
            self._shared = weakref.finalize(self, _release_shared, key, self.path)
            return self
        self._fh = self._take()
        return self

    def _take(self) -> IO[str]:
        path = self.path
        while True:
            try:
                fh = open(path, "a+", encoding="utf-8")
            except OSError as exc:
                raise MadError(f"{self.flag} {self.folder}: cannot write there ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                fh.seek(0)
                holder = " ".join(fh.read().split())[:120] or "another process"
                fh.close()
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise MadError(f"{self.flag} {self.target}: another mad command is writing there ({holder}); {self.advice}") from None
                raise
            # The holder before us may have removed the file between our open and our
            # flock: then we locked a file nobody else will ever see. Try again.
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(f"`mad {self.command}`, pid {os.getpid()}\n")
        fh.flush()
        return fh

    def release(self) -> None:
        """Remove the lock file, then unlock: whoever opened it meanwhile sees it is gone."""
        if self._shared is not None:
            self._shared()  # runs _release_shared once, and never again at collection
            self._shared = None
            return
        if self._fh is not None:
            _unlock(self._fh, self.path)
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


def _unlock(fh: IO[str], path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    fh.close()


def _release_shared(key: str, path: Path) -> None:
    with _PROCESS_LOCKS_GUARD:
        entry = _PROCESS_LOCKS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _PROCESS_LOCKS[key]
    _unlock(entry[0], path)


# ---------------------------------------------------------------------------------------
# The ledger of files we wrote


def read_ledger(folder: Path) -> tuple[set[str], bool]:
    """(relative paths an earlier mad run wrote into `folder`, whether that run finished publishing).

    A missing or damaged ledger owns nothing: we can then only keep, never delete. Entries
    that would leave the folder are ignored, since a ledger is data and data must never
    make us delete a file elsewhere.
    """
    try:
        data = json.loads((folder / LEDGER_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return set(), True
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return set(), True
    owned = set()
    for entry in data["files"]:
        if not isinstance(entry, str) or not entry:
            continue
        rel = Path(entry)
        if rel.is_absolute() or ".." in rel.parts or any(part.startswith(".") for part in rel.parts):
            continue
        owned.add(rel.as_posix())
    return owned, data.get("complete") is not False


def _write_ledger(folder: Path, command: str, files: Iterable[str], complete: bool) -> None:
    from mad_cli import __version__
    from mad_cli.imagedir import atomic_write_text

    record = {"command": command, "mad_version": __version__, "complete": complete, "files": sorted(set(files))}
    atomic_write_text(folder / LEDGER_NAME, json.dumps(record, indent=0) + "\n")


def _visible_files(folder: Path) -> Iterator[str]:
    """Relative paths of the non-hidden files (and links) below `folder`, not following links."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        base = Path(dirpath).relative_to(folder)
        for name in [*filenames, *links]:
            if not name.startswith("."):
                yield (base / name).as_posix()


# ---------------------------------------------------------------------------------------
# The folder


class OutputFolder:
    """Create (or reopen) an output folder, lock it, sweep our leftovers from it; optionally
    build it as a whole (`stage`, then `commit`).

    `force=None`: the command keeps its own rules about what the folder may already hold
    (sample, train). `force=False/True`: a whole-folder output (dataset, mix, filter): the
    folder must be empty (hidden files aside), or hold only files of an interrupted publish
    of ours, unless `force`; with `force` what we wrote before is replaced and nothing else
    is touched.

    Use as a context manager around all writing. Leaving it without an error commits what
    was staged; leaving it with one discards the staging folder, releases the lock, and
    removes the folder again if this run created it and it is still empty, so a failed run
    leaves nothing that looks like a result. An OSError that names no file (a full disk
    while copying) is given this folder's name, so its one-line message says where.
    """

    def __init__(self, path: str | os.PathLike[str], *, command: str, flag: str, sources: Iterable[str | os.PathLike[str]] = (),
                 force: bool | None = None):
        self.path = Path(path)
        self.command, self.flag = command, flag
        self.sources = list(sources)
        self.force = force
        self.created = False
        self.leftovers_removed = 0
        self._lock: FolderLock | None = None
        self._staged: list[str] = []
        self._committed = False

    @property
    def stage_dir(self) -> Path:
        return self.path / STAGING_NAME

    # -- checks ------------------------------------------------------------------------

    def precheck(self) -> None:
        """Everything that can be refused before the folder is created or locked.

        Commands call it before expensive work (a person reviewing 400 images, a feature
        extraction); `__enter__` checks again under the lock.
        """
        check_outside(self.path, self.sources, self.flag)
        if self.path.exists() and not self.path.is_dir():
            raise MadError(f"{self.flag} {self.path}: exists and is not a folder")
        for parent in self.path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise MadError(f"{self.flag} {self.path}: a file is in the way of this folder ({parent})")
                break
        if self.path.is_dir() and (self.path / LOCK_NAME).exists():
            # Someone may be writing there now: say so, rather than "not empty" about their files.
            FolderLock(self.path, command=self.command, flag=self.flag).acquire().release()
        if self.force is not None and self.path.is_dir():
            self._check_contents()

    def _check_contents(self) -> None:
        try:
            visible = [e.name for e in os.scandir(self.path) if not e.name.startswith(".")]
        except OSError as exc:
            raise MadError(f"{self.flag} {self.path}: cannot read the folder ({exc.strerror or exc})") from None
        if not visible or self.force:
            return
        owned, complete = read_ledger(self.path)
        if not complete and set(_visible_files(self.path)) <= owned:
            return  # an interrupted publish of ours: redo it
        raise MadError(
            f"{self.flag} {self.path}: folder is not empty (use --force to write into it: what mad wrote there before is "
            "replaced, every other file is kept)"
        )

    # -- entering and leaving ----------------------------------------------------------

    def __enter__(self) -> "OutputFolder":
        check_outside(self.path, self.sources, self.flag)
        if self.path.exists() and not self.path.is_dir():
            raise MadError(f"{self.flag} {self.path}: exists and is not a folder")
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.path, prefix=".mad-write-test.", delete=True)
            probe.close()
        except (FileExistsError, NotADirectoryError):
            raise MadError(f"{self.flag} {self.path}: a file is in the way of this folder") from None
        except OSError as exc:
            self._remove_if_created()
            raise MadError(f"{self.flag} {self.path}: cannot write there ({exc.strerror or exc})") from None
        try:
            self._lock = FolderLock(self.path, command=self.command, flag=self.flag).acquire()
            self.leftovers_removed = remove_leftovers(self.path)
            if self.force is not None:
                self._check_contents()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None and self._staged and not self._committed:
            try:
                self.commit()
            except BaseException as error:
                self._fail(error)
                raise
        if exc is not None:
            self._fail(exc)
        self._release()

    def _fail(self, exc: BaseException) -> None:
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(self.path)
        self._release()
        self._remove_if_created()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _remove_if_created(self) -> None:
        if self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only succeeds when empty: never removes anything

    # -- whole-folder outputs ----------------------------------------------------------

    def stage(self, name: str) -> Path:
        """Register an output file by its path relative to the folder; returns where to write it now.

        Write staged files with `fsync=False` (imagedir's atomic writers): the commit syncs once.
        """
        if self._lock is None:
            raise RuntimeError("stage() outside the `with OutputFolder(...)` block")
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or any(part.startswith(".") for part in rel.parts):
            raise ValueError(f"output name must be relative, visible and inside the folder: {name!r}")
        self._staged.append(rel.as_posix())
        target = self.stage_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> None:
        """Publish the staged files: check, sync, replace what we wrote before, move in, record."""
        new = list(dict.fromkeys(self._staged))
        owned, _ = read_ledger(self.path)
        for rel in new:
            staged = self.stage_dir / rel
            if not staged.exists() and not staged.is_symlink():
                raise MadError(f"{staged}: expected output file was not written")
            self._check_free(rel, owned)
        # Staged files were written without per-file fsync; one sync makes them durable
        # before they become visible, so a crash cannot publish an empty or torn file.
        os.sync()
        _write_ledger(self.path, self.command, owned | set(new), complete=False)
        for rel in sorted(owned - set(new)):
            self._remove_owned(rel)
        for rel in new:
            final = self.path / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.stage_dir / rel, final)
        _write_ledger(self.path, self.command, new, complete=True)
        shutil.rmtree(self.stage_dir, ignore_errors=True)
        self._committed = True
        new_set = set(new)
        foreign = sum(1 for rel in _visible_files(self.path) if rel not in new_set and is_image_file(Path(rel)))
        if foreign:
            from mad_cli.output import warn

            warn(f"{self.flag} {self.path}: {foreign} image(s) not written by this run were already there and stay part of the folder")

    def _check_free(self, rel: str, owned: set[str]) -> None:
        """A name we publish must be free or ours, and every folder on its way a real folder inside."""
        final = self.path / rel
        parts = Path(rel).parts
        for depth in range(1, len(parts)):
            step = self.path.joinpath(*parts[:depth])
            if step.is_symlink() or (step.exists() and not step.is_dir()):
                raise MadError(f"{self.flag} {self.path}: {step.relative_to(self.path).as_posix()} is in the way of {rel} "
                               "and was not written by mad; move it away")
        if (final.exists() or final.is_symlink()) and rel not in owned:
            raise MadError(f"{self.flag} {self.path}: {rel} is already there and was not written by mad "
                           "(--force never replaces such files); move it away")

    def _remove_owned(self, rel: str) -> None:
        """Delete one file of an earlier run of ours, and the folders that leaves empty."""
        final = self.path / rel
        if not is_within(final.parent, self.path):
            return  # a folder on its way became a link out of OUT: not ours to touch
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            final.unlink()
        parent = final.parent
        root = self.path.resolve()
        while parent.resolve() != root and is_within(parent, self.path):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
