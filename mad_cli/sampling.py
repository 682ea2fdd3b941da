"""`mad sample`: write N images from a model snapshot, with sampling bias ψ, resumably.

Why it looks like this:

* Image i comes from seed i alone (its own RNG), so a folder of samples is a pure function
  of (snapshot, seeds, ψ, noise mode): re-running, changing `--batch`, or resuming after a
  kill gives byte-identical files. StyleGAN2 latents follow NVIDIA's `gen_images.py`
  convention, z = np.random.RandomState(seed).randn(z_dim), so an imported NVIDIA pickle
  gives the same images for the same seeds as NVIDIA's own script. The Gaussian model
  draws its normals from a per-image ``torch.Generator().manual_seed(seed)``.
* Every PNG is written atomically and tagged (origin=synthetic, generator=<snapshot id>,
  psi, seed, generation, noise_mode), so an existing `seed000123.png` is a finished image:
  re-running completes only the missing ones. A folder holding anything else — other
  files, or samples of another snapshot / ψ — is refused unless `--force`, since mixing
  them would silently corrupt a loop's training data.
* PNG encoding (zlib, mostly outside the GIL) runs on a pool of writer threads fed through
  a bounded queue, so it overlaps the next batch's generation without unbounded memory.
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
import torch

from mad_cli.devices import resolve_device
from mad_cli.errors import MadError
from mad_cli.imagedir import is_within, prepare_output_dir, provenance_tags, read_image, read_tags, write_png
from mad_cli.models.snapshot import load_snapshot, snapshot_id

NOISE_MODES = ("const", "random", "none")
GRID_MAX = 64
DEFAULT_WRITERS = min(32, max(16, 2 * (os.cpu_count() or 1)))
MAX_SEED = 2**32 - 1  # np.random.RandomState accepts seeds in [0, 2**32)
_SAMPLE_NAME = re.compile(r"^seed(\d{6,})\.png$")


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
        if hi > MAX_SEED:
            raise MadError(f"--seeds {spec}: seeds must be below 2**32")
        if hi - lo > 10_000_000:
            raise MadError(f"--seeds {spec}: range {part} is too large")
        for s in range(lo, hi + 1):
            if s not in seen:
                seen.add(s)
                seeds.append(s)
    return seeds


def format_psi(psi: float) -> str:
    """How ψ is written into tags (and compared on resume): shortest exact float repr."""
    return repr(float(psi))


def resolve_snapshot_path(path: str | os.PathLike[str]) -> Path:
    """A training run folder stands for its latest.pt (so `mad sample RUN OUT` works)."""
    p = Path(path)
    if p.is_dir() and (p / "latest.pt").is_file():
        return p / "latest.pt"
    return p


# ---------------------------------------------------------------------------------------
# Samplers: seeds → uint8 images (N × H × W × C, on the CPU)


class GaussianSampler:
    """Draws from a ``mad.gaussian`` snapshot: x = μ + ψ·(deviation), see mad_cli.models.gaussian."""

    kind = "gaussian"

    def __init__(self, snap: dict[str, Any], device: torch.device, psi: float, path: Path):
        from mad_cli.models import gaussian

        self._g = gaussian
        model = snap.get("model")
        needed = ("mean", "components", "scales", "residual_std")
        if not isinstance(model, dict) or not all(isinstance(model.get(k), torch.Tensor) for k in needed):
            raise MadError(f"{path}: gaussian snapshot lacks its model tensors ({', '.join(needed)})")
        self.model = {k: model[k] for k in needed}
        self.shape = gaussian.image_shape(snap.get("config") or {})
        if math.prod(self.shape) != self.model["mean"].numel():
            raise MadError(f"{path}: gaussian snapshot's image shape does not match its mean vector")
        self.device = device
        self.psi = psi
        self.extra_tags: dict[str, str] = {}
        self.step_multiple = 1

    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        x = self._g.sample_gaussian(self.model, list(seeds), psi=self.psi, device=self.device)
        return self._g.to_uint8(x).reshape(len(seeds), *self.shape).cpu().numpy()


def load_generator(snap: dict[str, Any], device: torch.device | str = "cpu", path: Path | str = "snapshot") -> torch.nn.Module:
    """Build `Generator(**config["G_kwargs"])` and load G_ema (or G) into it, ready for inference."""
    from mad_cli.models.stylegan2.networks import Generator

    config = snap.get("config") or {}
    kwargs = config.get("G_kwargs")
    if not isinstance(kwargs, dict):
        raise MadError(f"{path}: StyleGAN2 snapshot has no config.G_kwargs")
    state = snap.get("G_ema") if isinstance(snap.get("G_ema"), dict) else snap.get("G")
    if not isinstance(state, dict):
        raise MadError(f"{path}: StyleGAN2 snapshot has no G_ema weights")
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise MadError(f"{path}: cannot build the generator from its G_kwargs ({exc})") from None
    ours = G.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MadError(f"{path}: generator weights do not fit the architecture in G_kwargs ({detail})")
    bad_shape = [k for k, v in ours.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad_shape:
        k = bad_shape[0]
        raise MadError(f"{path}: weight {k} has shape {list(state[k].shape)}, the architecture wants {list(ours[k].shape)}")
    G.load_state_dict(state)
    return G.eval().requires_grad_(False).to(device)


def stylegan2_latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """z for each seed exactly as NVIDIA's gen_images.py draws it: RandomState(seed).randn(z_dim)."""
    return torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds])).to(torch.float32)


#: The generator always runs on chunks of exactly this many latents (padded at the tail).
#: Float kernels sum in a different order for different batch shapes, which flips a rounded
#: pixel now and then; with one fixed shape an image depends on its seed only — not on
#: --batch, on its position in the chunk, or on which seeds a resumed run still needs.
COMPUTE_BATCH = {"cpu": 16, "cuda": 32}


def compute_batch(device: torch.device) -> int:
    return COMPUTE_BATCH.get(device.type, COMPUTE_BATCH["cpu"])


class StyleGAN2Sampler:
    """Draws from G_ema with the truncation trick w = w_avg + ψ (w − w_avg) (ψ = the paper's bias)."""

    kind = "stylegan2"

    def __init__(self, snap: dict[str, Any], device: torch.device, psi: float, psi_cutoff: int | None, noise_mode: str, path: Path):
        self.G = load_generator(snap, device, path)
        if getattr(self.G, "c_dim", 0):
            raise MadError(f"{path}: conditional generator (c_dim={self.G.c_dim}); class-conditional sampling is not supported")
        self.device, self.psi, self.psi_cutoff, self.noise_mode = device, psi, psi_cutoff, noise_mode
        self.chunk = compute_batch(device)
        self.step_multiple = 1 if noise_mode == "random" else self.chunk
        self.shape = (int(self.G.img_resolution), int(self.G.img_resolution), int(self.G.img_channels))
        self.extra_tags = {"noise_mode": noise_mode}
        if psi_cutoff is not None:
            self.extra_tags["psi_cutoff"] = str(psi_cutoff)

    def _forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.G(z, None, truncation_psi=self.psi, truncation_cutoff=self.psi_cutoff, noise_mode=self.noise_mode)

    @torch.inference_mode()
    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        z = stylegan2_latents(seeds, int(self.G.z_dim)).to(self.device)
        parts = []
        if self.noise_mode == "random":
            # Noise is drawn inside the network from the global RNG: seed it per image and
            # run one image per forward, so the noise belongs to the seed alone.
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                for i, s in enumerate(seeds):
                    torch.manual_seed(int(s))
                    parts.append(self._forward(z[i : i + 1]))
        else:
            for start in range(0, len(seeds), self.chunk):
                part = z[start : start + self.chunk]
                k = part.shape[0]
                if k < self.chunk:
                    part = torch.cat([part, part[-1:].expand(self.chunk - k, -1)])
                parts.append(self._forward(part)[:k])
        img = torch.cat(parts)
        from mad_cli.models.gaussian import to_uint8

        return to_uint8(img.to(torch.float32)).permute(0, 2, 3, 1).cpu().numpy()


def build_sampler(snap: dict[str, Any], path: Path, device: torch.device, psi: float, psi_cutoff: int | None, noise_mode: str) -> GaussianSampler | StyleGAN2Sampler:
    fmt = snap.get("format")
    if fmt == "mad.gaussian":
        if psi_cutoff is not None:
            raise MadError("--psi-cutoff: applies to StyleGAN2 snapshots only (this one is a Gaussian)")
        return GaussianSampler(snap, device, psi, path)
    if fmt == "mad.stylegan2":
        return StyleGAN2Sampler(snap, device, psi, psi_cutoff, noise_mode, path)
    raise MadError(f"{path}: cannot sample from snapshot format {fmt!r}")


# ---------------------------------------------------------------------------------------
# Output folder, writers, contact sheet


def _existing_samples(out: Path, expected: dict[str, str], force: bool) -> set[int]:
    """Seeds already finished in `out` (our files are atomic: present = complete).

    Anything in `out` that is not a sample of this snapshot with these settings stops the
    run (unless `force`, which regenerates every requested seed and leaves others alone).
    """
    if not out.exists():
        return set()
    if not out.is_dir():
        raise MadError(f"OUT {out}: exists and is not a folder")
    done: set[int] = set()
    for entry in sorted(os.scandir(out), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue  # our temp files of a killed run, never complete images
        m = _SAMPLE_NAME.match(entry.name)
        problem = None
        if not m or not entry.is_file():
            problem = "it is not a sample written by `mad sample`"
        else:
            try:
                tags = read_tags(entry.path)
            except MadError:
                tags = {}
            for key, want in expected.items():
                have = tags.get(key)
                if have != want:
                    problem = f"its {key} tag is {have!r}, this run's is {want!r}"
                    break
            if problem is None and tags.get("seed") != str(int(m.group(1))):
                problem = "its seed tag does not match its name"
        if problem is not None:
            if force:
                return set()
            raise MadError(f"OUT {out}: holds {entry.name} and {problem}; choose an empty folder or use --force")
        done.add(int(m.group(1)))  # type: ignore[union-attr]
    return done


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


def contact_sheet(images: np.ndarray) -> np.ndarray:
    """Tile N × H × W × C uint8 images into one near-square image (row-major, black filler)."""
    n, h, w, c = images.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        sheet[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    return sheet[:, :, 0] if c == 1 else sheet


def write_contact_sheet(path: str | os.PathLike[str], images: np.ndarray, tags: dict[str, Any] | None = None) -> Path:
    """The grid people look at to see diversity vanish generation by generation."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise MadError(f"--grid {target}: must end in .png")
    write_png(target, contact_sheet(np.asarray(images)), tags)
    return target


# ---------------------------------------------------------------------------------------
# The command


def sample_snapshot(
    snapshot: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    n: int | None = None,
    seeds: Sequence[int] | str | None = None,
    psi: float = 1.0,
    psi_cutoff: int | None = None,
    batch: int = 32,
    noise_mode: str = "const",
    generation: int | None = None,
    grid: str | os.PathLike[str] | None = None,
    device: str = "auto",
    force: bool = False,
    writers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write `seed{seed:06d}.png` for every requested seed that OUT does not hold yet.

    Seeds are 0..n−1, or `seeds` ('0-999', '1,5,7-9' or a list). `batch` is the number of
    images per step (rounded up to whole compute chunks, see COMPUTE_BATCH); it never
    changes an image. `on_progress(done, total)`
    is called after each batch (skipped files count as done). Returns a summary dict
    (generator id, counts written/skipped, seconds, images per second, grid path).
    """
    t0 = time.perf_counter()
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else (list(seeds) if seeds is not None else None)
    if n is not None and n < 1:
        raise MadError(f"--n {n}: must be at least 1")
    if seed_list is None:
        if n is None:
            raise MadError("--n: how many images? (or give --seeds)")
        seed_list = list(range(n))
    elif n is not None and n != len(seed_list):
        raise MadError(f"--n {n} conflicts with --seeds ({len(seed_list)} seeds); give one of them")
    if not seed_list:
        raise MadError("--seeds: no seeds given")
    if any((not isinstance(s, (int, np.integer))) or s < 0 or s > MAX_SEED for s in seed_list):
        raise MadError("--seeds: seeds must be integers in [0, 2**32)")
    if not math.isfinite(psi) or psi < 0:
        raise MadError(f"--psi {psi}: must be a finite number >= 0 (1 = no truncation)")
    if psi_cutoff is not None and psi_cutoff < 0:
        raise MadError(f"--psi-cutoff {psi_cutoff}: must be >= 0")
    if batch < 1:
        raise MadError(f"--batch {batch}: must be at least 1")
    if noise_mode not in NOISE_MODES:
        raise MadError(f"--noise-mode {noise_mode}: expected one of {', '.join(NOISE_MODES)}")
    if generation is not None and generation < 0:
        raise MadError(f"--generation {generation}: must be >= 0")

    out_p = Path(out)
    grid_p = Path(grid) if grid is not None else None
    if grid_p is not None:
        if grid_p.suffix.lower() != ".png":
            raise MadError(f"--grid {grid_p}: must end in .png")
        if is_within(grid_p.parent, out_p):
            raise MadError(f"--grid {grid_p}: is inside OUT {out_p}, where it would be taken for a training image; put it elsewhere")
    dev = resolve_device(device)
    snap_path = resolve_snapshot_path(snapshot)
    snap = load_snapshot(snap_path, map_location="cpu")
    gen_id = snapshot_id(snap_path)
    sampler = build_sampler(snap, snap_path, dev, psi, psi_cutoff, noise_mode)
    del snap

    base_tags = provenance_tags("synthetic", generator=gen_id, psi=format_psi(psi), generation=generation)  # type: ignore[arg-type]
    expected = {**base_tags, **sampler.extra_tags}
    if generation is None:
        expected["generation"] = None  # type: ignore[assignment]
    done = _existing_samples(out_p, expected, force)
    if grid_p is not None:
        _check_grid_target(grid_p)  # before generating: a bad --grid must not cost the whole run
    out_p = prepare_output_dir(out_p, force=True, flag="OUT")
    if force:
        done = set()
    todo = [s for s in seed_list if s not in done]

    grid_seeds = seed_list[:GRID_MAX] if grid_p is not None else []
    grid_wanted = set(grid_seeds)
    grid_images: dict[int, np.ndarray] = {}
    # Writers mostly wait on zlib and fsync (both outside the GIL), so use more than the cores.
    n_writers = writers if writers is not None else DEFAULT_WRITERS
    pool = _WriterPool(n_writers, max_pending=max(2 * batch, 2 * sampler.step_multiple, 4 * n_writers))
    ok = False
    finished = len(seed_list) - len(todo)
    if on_progress is not None:
        on_progress(finished, len(seed_list))
    try:
        # Steps are whole compute chunks, so that only the very last one is padded.
        step = math.ceil(batch / sampler.step_multiple) * sampler.step_multiple
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            images = sampler.generate(chunk)
            for s, img in zip(chunk, images):
                tags = {**base_tags, "seed": str(s), **sampler.extra_tags}
                pool.submit(out_p / sample_name(s), img, tags)
                if s in grid_wanted:
                    grid_images[s] = img
            finished += len(chunk)
            if on_progress is not None:
                on_progress(finished, len(seed_list))
        ok = True
    finally:
        pool.close(wait=ok)
    seconds = time.perf_counter() - t0

    if grid_p is not None:
        tiles = [grid_images[s] if s in grid_images else _read_sample(out_p / sample_name(s), sampler.shape) for s in grid_seeds]
        write_contact_sheet(grid_p, np.stack(tiles), tags={**base_tags, **sampler.extra_tags})
    return {
        "out": str(out_p),
        "snapshot": str(snap_path),
        "model": sampler.kind,
        "generator": gen_id,
        "psi": float(psi),
        "generation": generation,
        "requested": len(seed_list),
        "written": len(todo),
        "skipped": len(seed_list) - len(todo),
        "seconds": round(seconds, 3),
        "images_per_s": round(len(todo) / seconds, 2) if todo and seconds > 0 else None,
        "device": str(dev),
        "grid": str(grid_p) if grid_p is not None else None,
    }


def _check_grid_target(grid: Path) -> None:
    """The contact sheet is written last; a place we cannot write to is a user error found first."""
    if grid.is_dir():
        raise MadError(f"--grid {grid}: is a folder; give a file name ending in .png")
    try:
        grid.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MadError(f"--grid {grid}: {grid.parent} is not a folder (a file is in the way)") from None
    except OSError as exc:
        raise MadError(f"--grid {grid}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(grid.parent, os.W_OK | os.X_OK):
        raise MadError(f"--grid {grid}: folder {grid.parent} is not writable")


def _read_sample(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    img = read_image(path, channels=shape[2])
    return img.reshape(shape)
