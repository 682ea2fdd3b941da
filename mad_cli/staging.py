"""Write a whole output folder so that it is either complete or untouched.

Single files are already atomic (`imagedir.atomic_open`), but a folder of a thousand
images written one by one is not: a run killed half way would leave a folder that looks
like a smaller dataset, and the next `train` would silently use it. So commands that
write a folder (`dataset`, `mix`) write into a hidden `.mad-staging` folder inside the
output (hidden folders are never listed as images) and move the files into place only
after the last one is written, index files (labels.csv, manifest.csv) last.

Re-running after an interruption: a leftover `.mad-staging` is ours and is removed, so
the same command simply runs again (no --force needed when nothing else is there).
With --force on a folder that holds an earlier result, the files that earlier result
listed in its index (manifest.csv `path` next to a mad mix.json, labels.csv `file` next
to a mad dataset.json) and that the new run does not write are removed, so the folder never mixes two runs. Other files are left alone
(we never delete what we did not write) and reported, since an image we do not know
about will be part of the folder for every later step.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from mad_cli.errors import MadError
from mad_cli.imagedir import is_image_file, prepare_output_dir
from mad_cli.output import warn

STAGING_NAME = ".mad-staging"
# Index files a mad command writes: the column naming the files it wrote, and the JSON
# summary written with it. An index counts as ours only when that summary is there and
# carries "mad_version": a user's own labels.csv must never make --force delete images.
INDEXES = {"manifest.csv": ("path", "mix.json"), "labels.csv": ("file", "dataset.json")}


def _leftovers_only(out: Path) -> bool:
    """True when `out` holds nothing but what an interrupted mad run leaves behind."""
    if not out.is_dir():
        return False
    names = [p.name for p in out.iterdir()]
    return bool(names) and all(n == STAGING_NAME or n.startswith(".mad-write-test.") for n in names)


def _written_by_mad(summary: Path) -> bool:
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "mad_version" in data


def previous_outputs(out: Path) -> set[str]:
    """Relative paths of files an earlier mad run wrote into `out`, from its index files.

    Entries that would point outside `out` are ignored: an index is data, and data must
    never make us delete a file elsewhere.
    """
    found: set[str] = set()
    for index_name, (column, summary_name) in INDEXES.items():
        index, summary = out / index_name, out / summary_name
        if not index.is_file() or not _written_by_mad(summary):
            continue
        try:
            with open(index, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    rel = (row.get(column) or "").strip()
                    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
                        continue
                    found.add(Path(rel).as_posix())
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # a damaged index only means we cannot tidy up; it is not an error
        found.update((index_name, summary_name))
    return found


class StagedFolder:
    """Context manager: `add(name)` gives a path to write to; on success all move into `out`.

    Write staged files with `fsync=False` (imagedir's atomic writers): the commit syncs once.

    On any exception the staging folder is removed, and `out` too when this run created
    it and it is still empty, so a failed run leaves nothing behind.
    """

    def __init__(self, out: str | os.PathLike[str], *, sources: Iterable[str | os.PathLike[str]] = (), force: bool = False, flag: str = "--out"):
        self.out = Path(out)
        self._sources = list(sources)
        self._force = force
        self._flag = flag
        self._names: list[str] = []
        self._created = False
        self.stage = self.out / STAGING_NAME

    def __enter__(self) -> "StagedFolder":
        self._created = not self.out.exists()
        leftovers = _leftovers_only(self.out)
        prepare_output_dir(self.out, sources=self._sources, force=self._force or leftovers, flag=self._flag)
        shutil.rmtree(self.stage, ignore_errors=True)
        self.stage.mkdir()
        return self

    def add(self, name: str) -> Path:
        """Register an output file by its path relative to `out`; returns where to write it now."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"output name must be relative and inside the folder: {name!r}")
        self._names.append(rel.as_posix())
        target = self.stage / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _commit(self) -> None:
        new = set(self._names)
        stale = previous_outputs(self.out) - new
        # Files were staged without per-file fsync; one sync makes them durable before
        # they become visible, so a crash cannot publish an empty or torn file.
        os.sync()
        for rel in sorted(stale):
            (self.out / rel).unlink(missing_ok=True)
        for rel in self._names:
            staged = self.stage / rel
            if not staged.exists() and not staged.is_symlink():
                raise MadError(f"{staged}: expected output file was not written")
            final = self.out / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        shutil.rmtree(self.stage, ignore_errors=True)
        foreign = sum(1 for p in self.out.rglob("*") if is_image_file(p) and p.relative_to(self.out).as_posix() not in new and not any(part.startswith(".") for part in p.relative_to(self.out).parts))
        if foreign:
            warn(f"{self._flag} {self.out}: {foreign} image(s) not written by this run were already there and stay part of the folder")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            try:
                self._commit()
                return
            except BaseException:
                self._cleanup()
                raise
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
        if self._created:
            try:
                self.out.rmdir()  # only succeeds when empty: never removes anything of the user's
            except OSError:
                pass
