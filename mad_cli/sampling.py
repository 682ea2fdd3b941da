"""`mad sample`: write N images from any backend's snapshot, with its sampling bias, resumably.

Why it looks like this:

* Image i comes from seed i alone (each backend's sampler guarantees it), so a folder of
  samples is a pure function of (snapshot, seeds, settings): re-running, changing
  `--batch`, resuming after a kill or splitting the seeds over a torchrun group gives
  byte-identical files.
* Every PNG is written atomically and tagged (origin=synthetic, generator=<snapshot id>,
  the sampler's settings such as psi or guidance, seed, generation, label for conditional
  models), so an existing `seed000123.png` is a finished image: re-running completes only
  the missing ones. A folder holding anything else — other files, or samples of another
  snapshot or setting — is refused unless `--force`, since mixing them would silently
  corrupt a loop's training data; `--force` replaces our samples of other settings (all of
  them, never leaving a mix) and keeps files mad did not write. A second `mad sample`
  writing into the same OUT at the same time is refused by OUT's lock (`mad_cli.outputs`).
* PNG encoding (zlib, mostly outside the GIL) runs on a pool of writer threads fed through
  a bounded queue, so it overlaps the next batch's generation without unbounded memory.
* Under torchrun (`torchrun --nproc_per_node N -m mad_cli sample …`) rank r draws seeds
  r, r+N, r+2N, … of those still missing; rank 0 holds the lock and writes the grid.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mad_cli import flags
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid, provenance_tags, read_image, read_tags, write_png
from mad_cli.models import backend_for_snapshot, options_from
from mad_cli.outputs import OutputFolder, check_file_target

GRID_MAX = 64
DEFAULT_WRITERS = min(32, max(16, 2 * (os.cpu_count() or 1)))
_SAMPLE_NAME = re.compile(r"^seed(\d{6,})\.png$")
#: The most seeds one --seeds range may name (a typo like 0-9999999999 must not allocate).
MAX_SEEDS = 10_000_000


def sample_name(seed: int) -> str:
    return f"seed{seed:06d}.png"


def parse_seeds(spec: str) -> list[int]:
    """'0-999' or '1,5,7-9' → [1, 5, 7, 8, 9] (inclusive ranges, order kept, duplicates dropped)."""
    seeds: list[int] = []
    seen: set[int] = set()
    text = (spec or "").strip()
    if not text:
        raise MadError("--seeds: empty (expected e.g. 0-999 or 1,5,7-9)")
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise MadError(f"--seeds {spec}: cannot read {part!r} (expected non-negative integers and ranges like 7-9)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise MadError(f"--seeds {spec}: range {part} runs backwards")
        if hi > flags.MAX_SEED:
            raise MadError(f"--seeds {spec}: seeds must be below 2**32")
        if hi - lo >= MAX_SEEDS or len(seeds) + hi - lo >= MAX_SEEDS:
            raise MadError(f"--seeds {spec}: more than {MAX_SEEDS:,} seeds")
        for s in range(lo, hi + 1):
            if s not in seen:
                seen.add(s)
                seeds.append(s)
    return seeds


def resolve_snapshot_path(path: str | os.PathLike[str]) -> Path:
    """A training run folder stands for its latest.pt (so `mad sample RUN OUT` works)."""
    p = Path(path)
    if p.is_dir() and (p / "latest.pt").is_file():
        return p / "latest.pt"
    return p


def _seed_list(n: int | None, seeds: Sequence[int] | str | None) -> list[int]:
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else (list(seeds) if seeds is not None else None)
    flags.count(n, "--n", high=MAX_SEEDS)
    if seed_list is None:
        if n is None:
            raise MadError("--n: how many images? (or give --seeds)")
        return list(range(n))
    if n is not None and n != len(seed_list):
        raise MadError(f"--n {n} conflicts with --seeds ({len(seed_list)} seeds); give one of them")
    if not seed_list:
        raise MadError("--seeds: no seeds given")
    if any((not isinstance(s, (int, np.integer))) or isinstance(s, bool) or not 0 <= s <= flags.MAX_SEED for s in seed_list):
        raise MadError("--seeds: seeds must be integers in [0, 2**32)")
    return [int(s) for s in seed_list]


# ---------------------------------------------------------------------------------------
# Output folder, writers


def _existing_samples(out: Path, tags_of: Callable[[int], dict[str, str]], force: bool) -> tuple[set[int], list[Path]]:
    """(seeds already finished in `out`, our samples of other settings that `force` replaces).

    Our files are atomic: present = complete. Anything in `out` that is not a sample of this
    snapshot with these settings stops the run, unless `force`: then samples mad wrote with
    other settings (seed-named, tagged by mad) are replaced — the requested seeds are
    regenerated and the others removed, so the folder never mixes two settings — and files
    mad did not write stay where they are, with a warning.
    """
    if not out.exists():
        return set(), []
    if not out.is_dir():
        raise MadError(f"OUT {out}: exists and is not a folder")
    done: set[int] = set()
    stale: list[Path] = []
    foreign = 0
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # our lock and temp files of a killed run, never complete images
        m = _SAMPLE_NAME.match(entry.name)
        problem = None
        have: dict[str, str] = {}
        if not m or not entry.is_file():
            problem = "it is not a sample written by `mad sample`"
        else:
            try:
                have = read_tags(entry.path)
            except MadError:
                have = {}
            want = tags_of(int(m.group(1)))
            for key in sorted(set(want) | set(have), key=lambda k: (k not in want, k)):
                if have.get(key) != want.get(key):
                    problem = f"its {key} tag is {have.get(key)!r}, this run's is {want.get(key)!r}"
                    break
        if problem is None:
            done.add(int(m.group(1)))  # type: ignore[union-attr]
        elif not force:
            raise MadError(f"OUT {out}: holds {entry.name} and {problem}; choose an empty folder or use --force")
        elif have.get("origin") == "synthetic" and "generator" in have:
            stale.append(Path(entry.path))
        else:
            foreign += 1
    if foreign:
        from mad_cli.output import warn

        warn(f"OUT {out}: {foreign} file(s) not written by `mad sample` stay there (--force never deletes them)")
    return done, stale


class _WriterPool:
    """Thread pool that PNG-encodes in the background; `submit` blocks when `max_pending` are queued."""

    def __init__(self, workers: int, max_pending: int):
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mad-png")
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._futures: deque[Future[None]] = deque()

    def _write(self, path: Path, image: np.ndarray, tags: dict[str, str]) -> None:
        try:
            write_png(path, image, tags)
        finally:
            self._slots.release()

    def submit(self, path: Path, image: np.ndarray, tags: dict[str, str]) -> None:
        self._slots.acquire()
        self._futures.append(self._pool.submit(self._write, path, image, tags))
        while self._futures and self._futures[0].done():
            self._futures.popleft().result()  # re-raise a failed write early

    def close(self, wait: bool = True) -> None:
        """`wait`: finish every queued write and raise the first failure. Otherwise (the run is
        failing already) drop queued writes, let running ones complete, and raise nothing
        that would hide the original error; every file on disk is complete either way."""
        if not wait:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._futures.clear()
            return
        try:
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


def write_contact_sheet(path: str | os.PathLike[str], images: np.ndarray, tags: dict[str, Any] | None = None) -> Path:
    """The grid people look at to see diversity vanish generation by generation."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise MadError(f"--grid {target}: must end in .png")
    write_png(target, image_grid(np.asarray(images)), tags)
    return target


# ---------------------------------------------------------------------------------------
# The command


def sample_snapshot(
    snapshot: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int | None = None,
    seeds: Sequence[int] | str | None = None,
    batch: int = 32,
    generation: int | None = None,
    grid: str | os.PathLike[str] | None = None,
    device: str = "auto",
    force: bool = False,
    writers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Write `seed{seed:06d}.png` for every requested seed that OUT does not hold yet.

    Seeds are 0..n−1, or `seeds` ('0-999', '1,5,7-9' or a list). `settings` are the
    backend's sample options by name (psi=0.7 for StyleGAN2 and the Gaussian, guidance=1.0
    for ddpm, ...); one the snapshot's model does not take is an error naming its flag.
    `batch` is the number of images per step (rounded up to whole compute chunks); it never
    changes an image. `on_progress(done, total)` is called after each batch (skipped files
    count as done). Returns a summary dict (generator id, settings, counts written/skipped,
    seconds, images per second, grid path).
    """
    from mad_cli.models.dist import init_dist
    from mad_cli.models.snapshot import load_snapshot, snapshot_id

    t0 = time.perf_counter()
    seed_list = _seed_list(n, seeds)
    flags.batch(batch)
    flags.count(generation, "--generation", low=0, high=1_000_000)
    out_p = Path(out)
    grid_p = Path(grid) if grid is not None else None
    dist = init_dist(device)
    if grid_p is not None and dist.writer:
        _check_grid_target(grid_p, out_p)  # before anything is loaded: a bad --grid must not cost the run
    snap_path = resolve_snapshot_path(snapshot)
    for _ in range(3):
        # Hashed before and after loading: a training run replacing latest.pt in between
        # would otherwise tag images of the old weights with the new file's id.
        gen_id = snapshot_id(snap_path)
        snap = load_snapshot(snap_path, map_location="cpu")
        if snapshot_id(snap_path) == gen_id:
            break
    else:
        raise MadError(f"{snap_path}: changed while it was read (is a training run writing it?); try again when it is done")
    backend = backend_for_snapshot(snap, snap_path)
    options = options_from(backend.sample_options, settings, context=f"{backend.name} snapshots", kind="sample")
    sampler = backend.sampler(snap, snap_path, dist.device, options)
    del snap

    base_tags = {**provenance_tags("synthetic", generator=gen_id, generation=generation), **sampler.tags}

    def tags_of(seed: int) -> dict[str, str]:
        return {**base_tags, "seed": str(seed), **sampler.image_tags(seed)}

    owner: OutputFolder | None = None
    error = ""
    if dist.writer:
        try:
            owner = OutputFolder(out_p, command="sample", flag="OUT").__enter__()
        except MadError as exc:
            error = str(exc)
    dist.agree(not error, f"OUT {out_p}: rank 0 could not prepare the output folder")
    if error:
        raise MadError(error)
    try:
        error = ""
        try:
            done, stale = _existing_samples(out_p, tags_of, force)
        except MadError as exc:
            error, done, stale = str(exc), set(), []
        dist.agree(not error, f"OUT {out_p}: holds files another rank refused")
        if error:
            raise MadError(error)
        dist.barrier()  # every rank has listed OUT before any writes into it
        if force:
            done = set()
            if dist.writer:  # our samples of other settings: the requested seeds are rewritten, the rest go
                requested = {sample_name(s) for s in seed_list}
                for path in stale:
                    if path.name not in requested:
                        path.unlink(missing_ok=True)
        todo = [s for s in seed_list if s not in done]
        mine = dist.mine(todo)
        written = _generate(sampler, out_p, mine, tags_of, batch, writers, on_progress, done_before=len(seed_list) - len(todo), total=len(seed_list))
        dist.barrier()  # every rank's files are on disk before the grid reads them
        if grid_p is not None and dist.writer:
            tiles = [_read_sample(out_p / sample_name(s), sampler.shape) for s in seed_list[:GRID_MAX]]
            write_contact_sheet(grid_p, np.stack(tiles), tags=base_tags)
    except BaseException as exc:
        if owner is not None:
            owner.__exit__(type(exc), exc, None)
            owner = None
        raise
    finally:
        if owner is not None:
            owner.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    return {
        "out": str(out_p),
        "snapshot": str(snap_path),
        "model": backend.name,
        "generator": gen_id,
        **sampler.summary,
        "generation": generation,
        "requested": len(seed_list),
        "written": len(todo),
        "skipped": len(seed_list) - len(todo),
        "seconds": round(seconds, 3),
        "images_per_s": round(written * dist.world / seconds, 2) if written and seconds > 0 else None,
        "device": str(dist.device),
        "processes": dist.world,
        "grid": str(grid_p) if grid_p is not None else None,
    }


def _generate(
    sampler: Any,
    out: Path,
    seeds: list[int],
    tags_of: Callable[[int], dict[str, str]],
    batch: int,
    writers: int | None,
    on_progress: Callable[[int, int], None] | None,
    *,
    done_before: int,
    total: int,
) -> int:
    """Generate and write `seeds` (this rank's share); returns how many were written."""
    n_writers = writers if writers is not None else DEFAULT_WRITERS
    pool = _WriterPool(n_writers, max_pending=max(2 * batch, 2 * sampler.step_multiple, 4 * n_writers))
    ok = False
    finished = done_before
    if on_progress is not None:
        on_progress(finished, total)
    try:
        # Steps are whole compute chunks, so that only the very last one is padded.
        step = math.ceil(batch / sampler.step_multiple) * sampler.step_multiple
        for start in range(0, len(seeds), step):
            chunk = seeds[start : start + step]
            images = sampler.generate(chunk)
            for s, img in zip(chunk, images):
                pool.submit(out / sample_name(s), img, tags_of(s))
            finished += len(chunk)
            if on_progress is not None:
                on_progress(finished, total)
        ok = True
    finally:
        pool.close(wait=ok)
    return len(seeds)


def _check_grid_target(grid: Path, out: Path) -> None:
    """The contact sheet is written last (atomically); a place we cannot write to, or one
    inside OUT, is a user error found first (`outputs.check_file_target`, as for every figure)."""
    check_file_target(grid, flag="--grid", inputs=[(out, "OUT")])


def _read_sample(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    img = read_image(path, channels=shape[2])
    return img.reshape(shape)
