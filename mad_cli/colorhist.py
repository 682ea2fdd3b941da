"""Colour statistics of image folders and how far they drift from a reference folder.

Model collapse often shows first as a colour shift (generations get greyer, warmer or
lose saturation), so this gives a cheap, model-free number per generation: the change of
the colour distribution in %. Two complementary distances are reported because they fail
differently:

* total variation (TV) of the joint `bins`³ histogram: the share of pixel mass that has
  to move to another colour bin (0 % identical, 100 % disjoint). It sees any change of
  the joint colour distribution but is blind to *how far* colours moved.
* the 1-D Wasserstein distance (EMD) per channel, normalised by the channel's range (a
  shift across the whole range is 100 %). It measures how far mass moved, so a pure
  brightness shift of s levels gives exactly s/255·100 % in RGB. It is computed from
  fine per-channel histograms (256 levels for 8-bit channels) independent of `bins`, so
  that coarse joint bins never blur it. Hue is an angle: its EMD is the circular one,
  normalised by its maximum (half a turn) so that red 0.95 vs 0.05 is close, not far.

A split-half noise floor of the reference (two halves of its images, a fixed seeded
split) tells a user whether a drift is larger than what sampling alone would give. It
compares two samples of half the size, so it is a conservative (slightly high) floor.
TV in particular grows with bins³ / pixels: compare drifts with the floor, not with 0.

Grey images are read as RGB with three equal channels, so grey and colour folders are
comparable (in HSV their hue is 0 and saturation 0; in Lab a = b = 0).

Colour spaces and ranges: rgb levels 0..255 (joint bins 256/bins levels wide); hsv with
h in turns [0, 1) (0 = red, circular), s and v in [0, 1] (v = max(r, g, b)/255 is binned
like an 8-bit channel); lab = CIELAB from sRGB with the D65 white, L 0..100 and a, b
-128..127 (values outside go to the end bins; sRGB colours never leave them).

One row per folder (JSON keys): folder, space, bins, is_ref, ref, n_images, n_skipped,
n_pixels, sizes {"WxH": count}, mixed_sizes, mean/std per channel (hue: circular mean and
circular std in turns), tv_vs_ref_pct, emd_vs_ref_pct per channel, emd_vs_ref_mean_pct,
the same three *_vs_prev_* (null for the first folder), hue_emd_vs_ref_pct and
hue_emd_vs_prev_pct (hsv only), noise_tv_pct, noise_emd_pct, noise_emd_mean_pct (the
reference row only; null elsewhere), hist (per-channel marginals at `bins` resolution,
shares of pixels) with hist_range (outer bin edges). The joint histogram (bins³ counts,
up to 262,144 numbers) is left out unless `full=True` / `--full`: then joint_shape
[bins, bins, bins] and joint, flattened in C order (first channel slowest).

Everything streams: pixels are accumulated into histograms and running sums batch by
batch, so memory does not grow with the folder size. Only the reference's and the
previous folder's accumulators (and the small marginals for a plot) are kept.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mad_cli import flags
from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_open, iter_images, require_images
from mad_cli.outputs import check_file_target

SPACES = ("rgb", "hsv", "lab")
MIN_BINS, MAX_BINS = 2, 64  # 64³ = 262,144 counts per histogram; more only costs memory.
MAX_WORKERS = 256  # far above any core count; each worker holds two joint histograms

# Pixels per vectorised batch: large enough that numpy's per-call overhead vanishes,
# small enough (~ 8 64×64 images) that temporaries are reused from the heap instead of
# being mapped and page-faulted afresh on every batch (that costs more than the maths).
_BATCH_PIXELS = 1 << 15


@dataclass(frozen=True)
class Channel:
    """One coordinate of a colour space and how it is binned.

    `lo`..`hi` is the documented range. A `levels` channel arrives as the 8-bit levels
    0..255 standing for lo..hi (RGB, and HSV's v = max(r, g, b)/255): it is binned with
    integer arithmetic, its joint bins hold 256/bins levels each (like an RGB histogram
    with edges 0, 16, 32, ... for 16 bins) and its fine histogram is exact, one bin per
    level. Other channels are floats: joint bins split lo..hi evenly (outside values go
    to the end bins); the fine histogram has `fine` points on the grid lo..hi, or, for a
    circular channel, `fine` equal arcs of one turn.
    """

    name: str
    lo: float
    hi: float
    fine: int
    circular: bool = False
    levels: bool = False

    @property
    def span(self) -> float:
        return self.hi - self.lo

    @property
    def joint_range(self) -> tuple[float, float]:
        """Outer edges of the joint bins (for 8-bit levels: up to level 256)."""
        return self.lo, self.lo + self.span * 256.0 / 255.0 if self.levels else self.hi


# RGB: levels 0..255. HSV: h a fraction of a turn in [0, 1) (0 = red), circular; s and
# v in [0, 1]. Lab: CIELAB from sRGB, D65 white; L 0..100, a and b -128..127.
_SPACE_CHANNELS: dict[str, tuple[Channel, ...]] = {
    "rgb": tuple(Channel(n, 0.0, 255.0, 256, levels=True) for n in "rgb"),
    "hsv": (Channel("h", 0.0, 1.0, 1024, circular=True), Channel("s", 0.0, 1.0, 1024), Channel("v", 0.0, 1.0, 256, levels=True)),
    "lab": (Channel("L", 0.0, 100.0, 1001), Channel("a", -128.0, 127.0, 1021), Channel("b", -128.0, 127.0, 1021)),
}


def channels_of(space: str) -> tuple[Channel, ...]:
    check_space(space)
    return _SPACE_CHANNELS[space]


def check_space(space: str) -> None:
    if space not in SPACES:
        raise MadError(f"--space {space}: expected one of {', '.join(SPACES)}")


def check_bins(bins: int) -> None:
    flags.count(bins, "--bins", low=MIN_BINS, high=MAX_BINS)


# ---------------------------------------------------------------------------------------
# Colour conversions, vectorised. Internally pixels travel as three 1-D "planes" (one
# contiguous array per channel) in float32: twice as fast as N×3 float64 and far more
# precise than the histogram resolution. The public N×3 functions default to float64.


def _rgb_planes(rgb: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(rgb[:, k]) for k in range(3)]


def _hsv_planes(rgb: np.ndarray, dtype: Any = np.float32) -> list[np.ndarray]:
    """h (turns, [0, 1)) and s as floats, v as the uint8 level max(r, g, b)."""
    r8, g8, b8 = _rgb_planes(rgb)
    mx8 = np.maximum(np.maximum(r8, g8), b8)
    mn8 = np.minimum(np.minimum(r8, g8), b8)
    r, g, b = (x.astype(dtype) for x in (r8, g8, b8))
    mx = mx8.astype(dtype)
    d = mx - mn8.astype(dtype)
    inv_d = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    # Grey pixels (d = 0) get inv_d = 0 and so hue 0 (red) by convention.
    h6 = np.where(mx8 == r8, (g - b) * inv_d, np.where(mx8 == g8, (b - r) * inv_d + 2.0, (r - g) * inv_d + 4.0))
    h = h6 * (1.0 / 6.0)
    h += h < 0
    h[h >= 1.0] = 0.0  # float rounding of a hair below 0 must not leave the circle
    s = np.divide(d, mx, out=np.zeros_like(d), where=mx > 0)
    return [h, s, mx8]


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """N×3 uint8 → N×3 float64 (h in [0, 1) as a fraction of a turn, s and v in [0, 1]).

    Grey pixels (max == min) get hue 0 and saturation 0 by convention; black gets s = 0.
    """
    h, s, v8 = _hsv_planes(np.asarray(rgb, dtype=np.uint8).reshape(-1, 3), np.float64)
    return np.stack([h, s, v8 / 255.0], axis=1)


# sRGB (IEC 61966-2-1) decoding of the 256 levels, once: the transfer curve is exact.
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_SRGB_TO_LINEAR = np.where(_LEVELS <= 0.04045, _LEVELS / 12.92, ((_LEVELS + 0.055) / 1.055) ** 2.4)
# Linear sRGB → XYZ (D65), rows scaled by the D65 white so that white maps to (1, 1, 1).
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_RGB_TO_XYZ_N = _RGB_TO_XYZ / _RGB_TO_XYZ.sum(axis=1)[:, None]
_LAB_EPS = (6.0 / 29.0) ** 3
_LAB_KAPPA = 1.0 / (3.0 * (6.0 / 29.0) ** 2)


def _lab_planes(rgb: np.ndarray, dtype: Any = np.float32) -> list[np.ndarray]:
    lut = _SRGB_TO_LINEAR.astype(dtype)
    lin = [lut[p] for p in _rgb_planes(rgb)]
    f = []
    for row in _RGB_TO_XYZ_N.astype(dtype):
        t = row[0] * lin[0] + row[1] * lin[1] + row[2] * lin[2]
        f.append(np.where(t > _LAB_EPS, np.cbrt(t), t * dtype(_LAB_KAPPA) + dtype(4.0 / 29.0)))
    return [116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])]


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """N×3 uint8 sRGB → N×3 float64 CIELAB (D65): white is L=100, a=b=0; black L=0."""
    return np.stack(_lab_planes(np.asarray(rgb, dtype=np.uint8).reshape(-1, 3), np.float64), axis=1)


def planes(rgb: np.ndarray, space: str) -> list[np.ndarray]:
    """N×3 uint8 RGB pixels → the three channel planes of `space` (levels stay uint8)."""
    if space == "rgb":
        return _rgb_planes(rgb)
    if space == "hsv":
        return _hsv_planes(rgb)
    if space == "lab":
        return _lab_planes(rgb)
    check_space(space)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------
# Binning


def joint_index(values: np.ndarray, channel: Channel, bins: int) -> np.ndarray:
    """Joint-histogram bin (0..bins-1) of each value of one channel."""
    if channel.levels:
        return (values.astype(np.intp) * bins) >> 8  # = floor(level * bins / 256)
    if channel.circular:
        idx = (values * bins).astype(np.intp)  # values >= 0: truncation is floor
        idx[idx >= bins] -= bins
        return idx
    idx = np.floor((values - channel.lo) * (bins / channel.span)).astype(np.intp)
    return np.clip(idx, 0, bins - 1, out=idx)


def fine_index(values: np.ndarray, channel: Channel) -> np.ndarray:
    """Fine-histogram bin of each value: its level, nearest grid point, or arc of the circle."""
    if channel.levels:
        return values.astype(np.intp)
    if channel.circular:
        idx = (values * channel.fine).astype(np.intp)
        idx[idx >= channel.fine] -= channel.fine
        return idx
    idx = np.rint((values - channel.lo) * ((channel.fine - 1) / channel.span)).astype(np.intp)
    return np.clip(idx, 0, channel.fine - 1, out=idx)


def fine_centers(channel: Channel) -> np.ndarray:
    """The value each fine bin stands for."""
    if channel.circular:
        return (np.arange(channel.fine) + 0.5) / channel.fine * channel.span + channel.lo
    return np.linspace(channel.lo, channel.hi, channel.fine)


# ---------------------------------------------------------------------------------------
# Accumulation


@dataclass
class Accumulator:
    """Histograms and running sums of all pixels seen so far in one colour space.

    Mergeable, so that halves, chunks from worker processes and whole folders combine.
    Level channels take mean and std from their exact fine histogram, the circular hue
    from its fine histogram too; other float channels keep float64 sums of x and x².
    """

    space: str
    bins: int
    joint: np.ndarray = field(init=False)
    fine: list[np.ndarray] = field(init=False)
    sums: np.ndarray = field(init=False)
    n_pixels: int = 0
    n_images: int = 0
    sizes: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        chans = channels_of(self.space)
        self.joint = np.zeros(self.bins**3, dtype=np.int64)
        self.fine = [np.zeros(c.fine, dtype=np.int64) for c in chans]
        self.sums = np.zeros((3, 2), dtype=np.float64)

    def add_pixels(self, rgb: np.ndarray) -> None:
        """Fold N×3 uint8 RGB pixels into the histograms and sums."""
        if len(rgb) == 0:
            return
        chans = channels_of(self.space)
        vals = planes(rgb, self.space)
        b = self.bins
        idx = joint_index(vals[0], chans[0], b) * (b * b)
        idx += joint_index(vals[1], chans[1], b) * b
        idx += joint_index(vals[2], chans[2], b)
        self.joint += np.bincount(idx, minlength=b**3)
        for k, c in enumerate(chans):
            v = vals[k]
            self.fine[k] += np.bincount(fine_index(v, c), minlength=c.fine)
            if not (c.levels or c.circular):
                # Pairwise float32 reductions into float64 totals; no BLAS (np.dot spins
                # up threads that fight the decode workers for the cores).
                self.sums[k, 0] += float(v.sum(dtype=np.float64))
                self.sums[k, 1] += float(np.square(v).sum(dtype=np.float64))
        self.n_pixels += len(rgb)

    def add_image(self, image: np.ndarray) -> None:
        """Count one decoded H×W×3 image (its pixels are added separately, in batches)."""
        self.n_images += 1
        self.sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1

    def merge(self, other: "Accumulator") -> None:
        self.joint += other.joint
        for mine, theirs in zip(self.fine, other.fine):
            mine += theirs
        self.sums += other.sums
        self.n_pixels += other.n_pixels
        self.n_images += other.n_images
        self.sizes.update(other.sizes)

    def combined(self, other: "Accumulator") -> "Accumulator":
        out = Accumulator(self.space, self.bins)
        out.merge(self)
        out.merge(other)
        return out

    # --- statistics -------------------------------------------------------------------

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of all pixels.

        For a circular channel (hue) these are the circular mean in [0, 1) and the
        circular standard deviation sqrt(-2 ln R) in turns, since an arithmetic mean of
        angles is meaningless (0.95 and 0.05 average to red, not to cyan).
        """
        means, stds = [], []
        n = self.n_pixels
        for k, c in enumerate(channels_of(self.space)):
            if n == 0:
                means.append(float("nan"))
                stds.append(float("nan"))
            elif c.levels:
                lv = np.arange(256, dtype=np.float64)
                m = float(self.fine[k] @ lv) / n
                var = float(self.fine[k] @ (lv - m) ** 2) / n
                scale = c.span / 255.0
                means.append(c.lo + m * scale)
                stds.append(math.sqrt(var) * scale)
            elif c.circular:
                # From the fine histogram (arcs of 1/1024 turn): cos/sin per pixel would
                # cost more than everything else, for a precision nobody can see.
                angle = fine_centers(c) * (2.0 * math.pi)
                cs = float(self.fine[k] @ np.cos(angle)) / n
                sn = float(self.fine[k] @ np.sin(angle)) / n
                R = min(1.0, math.hypot(cs, sn))
                means.append((math.atan2(sn, cs) / (2.0 * math.pi)) % 1.0)
                stds.append(math.sqrt(-2.0 * math.log(R)) / (2.0 * math.pi) if R > 0 else float("inf"))
            else:
                m = self.sums[k, 0] / n
                means.append(m)
                stds.append(math.sqrt(max(0.0, self.sums[k, 1] / n - m * m)))
        return means, stds

    def marginals(self) -> list[np.ndarray]:
        """Per-channel histograms at the joint resolution, as fractions of the pixels."""
        b = self.bins
        cube = self.joint.reshape(b, b, b).astype(np.float64)
        total = cube.sum()
        if total == 0:
            return [np.zeros(b) for _ in range(3)]
        return [cube.sum(axis=(1, 2)) / total, cube.sum(axis=(0, 2)) / total, cube.sum(axis=(0, 1)) / total]


# ---------------------------------------------------------------------------------------
# Distances


def tv_distance_pct(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Total variation in %: half the L1 distance of the normalised histograms."""
    ps, qs = p_counts.sum(), q_counts.sum()
    if ps == 0 or qs == 0:
        return float("nan")
    return float(0.5 * np.abs(p_counts / ps - q_counts / qs).sum() * 100.0)


def emd_linear_pct(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """1-D Wasserstein-1 on an evenly spaced grid, in % of the grid's range.

    W1 = ∫|F_p − F_q|; on a grid of n points with spacing range/(n−1) the normalised
    value is Σ|F_p − F_q| / (n − 1): a shift by k grid steps gives exactly k/(n−1).
    """
    ps, qs = p_counts.sum(), q_counts.sum()
    if ps == 0 or qs == 0:
        return float("nan")
    diff = np.cumsum(p_counts / ps - q_counts / qs)[:-1]
    return float(np.abs(diff).sum() / (len(p_counts) - 1) * 100.0)


def emd_circular_pct(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Wasserstein-1 on the circle (n equal arcs of one turn), in % of its maximum.

    On a circle the transport may go either way round; the optimum subtracts the median
    of the CDF difference (Rabin, Delon & Gousseau 2011): W1 = min_c Σ|F_p − F_q − c|/n.
    The largest possible value is half a turn (all mass moved to the opposite side).
    """
    ps, qs = p_counts.sum(), q_counts.sum()
    if ps == 0 or qs == 0:
        return float("nan")
    n = len(p_counts)
    diff = np.cumsum(p_counts / ps - q_counts / qs)
    w1 = np.abs(diff - np.median(diff)).sum() / n
    return float(w1 / 0.5 * 100.0)


def emd_pct(p: Accumulator, q: Accumulator) -> list[float]:
    """Per-channel normalised EMD in % between two accumulators of the same space."""
    out = []
    for k, c in enumerate(channels_of(p.space)):
        fn = emd_circular_pct if c.circular else emd_linear_pct
        out.append(fn(p.fine[k], q.fine[k]))
    return out


# ---------------------------------------------------------------------------------------
# Reading folders


def _image_pixels(image: np.ndarray) -> np.ndarray:
    """H×W or H×W×3 uint8 → N×3 pixels; grey becomes three equal channels."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image.reshape(-1, 3)


class _HalfBuffers:
    """Collects pixels per half (0 or 1) and flushes them in batches."""

    def __init__(self, halves: tuple[Accumulator, Accumulator]):
        self.halves = halves
        self.parts: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self.sizes = [0, 0]

    def add(self, half: int, image: np.ndarray) -> None:
        px = _image_pixels(image)
        self.halves[half].add_image(image)
        self.parts[half].append(px)
        self.sizes[half] += len(px)
        if self.sizes[half] >= _BATCH_PIXELS:
            self.flush(half)

    def flush(self, half: int) -> None:
        if self.parts[half]:
            self.halves[half].add_pixels(np.concatenate(self.parts[half]))
            self.parts[half].clear()
            self.sizes[half] = 0

    def close(self) -> None:
        self.flush(0)
        self.flush(1)


def _tune_worker_malloc() -> None:
    """Pool initializer: keep freed batch temporaries on the worker's heap.

    glibc returns large freed blocks to the OS at once, so every batch would map and
    page-fault its temporaries afresh; in a VM that costs more than the arithmetic
    (measured: HSV/Lab batches 2-3× slower). Only our own worker processes are tuned.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: correct, only slower


def _accumulate_chunk(
    items: Sequence[tuple[int, str]], space: str, bins: int, skip_bad: bool
) -> tuple[Accumulator, Accumulator, list[tuple[str, str]]]:
    """Worker task: decode and accumulate a chunk of (half, path); returns both halves.

    Runs in a worker process, so skipped files come back as (path, message) instead of
    being reported here.
    """
    halves = (Accumulator(space, bins), Accumulator(space, bins))
    skipped: list[tuple[str, str]] = []
    buffers = _HalfBuffers(halves)
    paths = [Path(p) for _, p in items]
    half_of = {p: half for p, (half, _) in zip(paths, items)}
    for path, image in iter_images(paths, channels=3, skip_bad=skip_bad, on_skip=lambda p, exc: skipped.append((str(p), str(exc)))):
        buffers.add(half_of[path], image)
    buffers.close()
    return halves[0], halves[1], skipped


class WorkerPool:
    """Worker processes for decoding and histogramming, started on first use.

    Processes, not threads: for small PNGs the per-image cost is mostly Python (PIL's
    open/load) under the GIL, so a thread pool measured slower than one thread. "fork"
    is used where available because it starts in milliseconds (no re-import).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_tune_worker_malloc)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


@dataclass
class FolderStats:
    """Both halves of one folder (see `split_halves`) and its skip count."""

    folder: str
    halves: tuple[Accumulator, Accumulator]
    n_skipped: int = 0

    @property
    def total(self) -> Accumulator:
        return self.halves[0].combined(self.halves[1])


def _chunk_size(n_images: int, workers: int) -> int:
    """About four tasks per worker (load balance), within 32..1024 images per task.

    Each task returns two joint histograms (2 MB each at 64 bins), so tasks must not be tiny.
    """
    return max(32, min(1024, math.ceil(n_images / (4 * workers))))


SPLIT_SEED = 0


def split_halves(n_images: int) -> np.ndarray:
    """Half (0 or 1) of each image position for the split-half noise floor.

    A seeded random permutation rather than even/odd positions: folders whose sorted
    names interleave two sources (0001_real, 0001_syn, ...) would otherwise split into
    those sources and fake a large noise floor. Fixed seed: the same folder always
    splits the same way. Halves differ in size by at most one image.
    """
    halves = np.zeros(n_images, dtype=np.int8)
    halves[np.random.default_rng(SPLIT_SEED).permutation(n_images)[: n_images // 2]] = 1
    return halves


def folder_stats(
    folder: str | os.PathLike[str],
    *,
    space: str = "rgb",
    bins: int = 16,
    skip_bad: bool = False,
    pool: WorkerPool | None = None,
    paths: Sequence[Path] | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
    on_images: Callable[[int], None] | None = None,
) -> FolderStats:
    """Stream one folder into per-half accumulators (halves from `split_halves`).

    With a `pool`, chunks of images are decoded and histogrammed in worker processes;
    tiny folders stay in this process, where starting workers would cost more.
    """
    check_space(space)
    check_bins(bins)
    if paths is None:
        paths = require_images(folder)
    half_of = split_halves(len(paths))
    halves = (Accumulator(space, bins), Accumulator(space, bins))
    n_skipped = 0

    def skip(p: Path, msg: str) -> None:
        nonlocal n_skipped
        n_skipped += 1
        if on_skip is not None:
            on_skip(p, msg)

    if pool is not None and pool.workers > 0 and len(paths) >= 64:
        size = _chunk_size(len(paths), pool.workers)
        items = [(int(h), str(p)) for h, p in zip(half_of, paths)]
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        executor = pool.get()
        futures: list[Future[Any]] = [executor.submit(_accumulate_chunk, ch, space, bins, skip_bad) for ch in chunks]
        try:
            for fut, ch in zip(futures, chunks):
                even, odd, skipped = fut.result()
                halves[0].merge(even)
                halves[1].merge(odd)
                for p, msg in skipped:
                    skip(Path(p), msg)
                if on_images is not None:
                    on_images(len(ch))
        finally:
            for fut in futures:
                fut.cancel()
    else:
        position = {p: i for i, p in enumerate(paths)}
        buffers = _HalfBuffers(halves)
        reported = 0
        for k, (path, image) in enumerate(iter_images(paths, channels=3, skip_bad=skip_bad, on_skip=lambda p, exc: skip(p, str(exc)))):
            buffers.add(int(half_of[position[path]]), image)
            if on_images is not None and k - reported >= 63:
                on_images(k + 1 - reported)
                reported = k + 1
        buffers.close()
        if on_images is not None and len(paths) > reported:
            on_images(len(paths) - reported)
    if halves[0].n_images + halves[1].n_images == 0:
        raise MadError(f"{folder}: none of its {len(paths)} images could be decoded")
    return FolderStats(str(folder), halves, n_skipped)


# ---------------------------------------------------------------------------------------
# Rows


def _per_channel(names: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


def _mean_of(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def _drift(a: Accumulator, ref: Accumulator | None, names: Sequence[str], suffix: str, space: str) -> dict[str, Any]:
    """TV and EMD fields of `a` against `ref` (None → nulls, e.g. the first folder has no previous)."""
    if ref is None:
        tv, emd = float("nan"), [float("nan")] * 3
    else:
        tv, emd = tv_distance_pct(a.joint, ref.joint), emd_pct(a, ref)
    row: dict[str, Any] = {
        f"tv_vs_{suffix}_pct": tv,
        f"emd_vs_{suffix}_pct": _per_channel(names, emd),
        f"emd_vs_{suffix}_mean_pct": _mean_of(emd),
    }
    if space == "hsv":
        row[f"hue_emd_vs_{suffix}_pct"] = emd[0]
    return row


def make_row(
    stats: FolderStats,
    *,
    ref: FolderStats,
    prev: FolderStats | None,
    is_ref: bool,
    full: bool = False,
) -> dict[str, Any]:
    """The result row of one folder (JSON-ready apart from NaN, which output turns to null)."""
    acc = stats.total
    space, bins = acc.space, acc.bins
    chans = channels_of(space)
    names = [c.name for c in chans]
    means, stds = acc.mean_std()
    ref_acc = ref.total
    row: dict[str, Any] = {
        "folder": stats.folder,
        "space": space,
        "bins": bins,
        "is_ref": is_ref,
        "ref": ref.folder,
        "n_images": acc.n_images,
        "n_skipped": stats.n_skipped,
        "n_pixels": acc.n_pixels,
        "sizes": dict(sorted(acc.sizes.items())),
        "mixed_sizes": len(acc.sizes) > 1,
        "mean": _per_channel(names, means),
        "std": _per_channel(names, stds),
    }
    row.update(_drift(acc, ref_acc, names, "ref", space))
    row.update(_drift(acc, prev.total if prev is not None else None, names, "prev", space))
    if is_ref:
        noise_tv = tv_distance_pct(stats.halves[0].joint, stats.halves[1].joint)
        noise_emd = emd_pct(stats.halves[0], stats.halves[1])
    else:
        noise_tv, noise_emd = float("nan"), [float("nan")] * 3
    row["noise_tv_pct"] = noise_tv
    row["noise_emd_pct"] = _per_channel(names, noise_emd)
    row["noise_emd_mean_pct"] = _mean_of(noise_emd)
    row["hist_range"] = {c.name: list(c.joint_range) for c in chans}
    row["hist"] = {n: m.tolist() for n, m in zip(names, acc.marginals())}
    if full:
        row["joint_shape"] = [bins, bins, bins]
        row["joint"] = acc.joint.tolist()
    return row


TABLE_COLUMNS = (
    "folder",
    "images",
    "sizes",
    "mean",
    "TV % ref",
    "EMD % ref",
    "TV % prev",
    "EMD % prev",
    "noise TV %",
    "noise EMD %",
)


def table_row(row: dict[str, Any]) -> dict[str, Any]:
    """A compact, human-readable version of a result row for the terminal table."""

    def chans(d: dict[str, float], fmt: str) -> str:
        return " ".join(f"{k}={'-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)}" for k, v in d.items())

    def num(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 3)

    fmt = ".3g" if row["space"] != "rgb" else ".1f"
    return {
        "folder": row["folder"] + (" (ref)" if row["is_ref"] else ""),
        "images": row["n_images"] if not row["n_skipped"] else f"{row['n_images']} (+{row['n_skipped']} bad)",
        "sizes": ", ".join(f"{v}× {k}" for k, v in row["sizes"].items()),
        "mean": chans(row["mean"], fmt),
        "TV % ref": num(row["tv_vs_ref_pct"]),
        "EMD % ref": num(row["emd_vs_ref_mean_pct"]),
        "TV % prev": num(row["tv_vs_prev_pct"]),
        "EMD % prev": num(row["emd_vs_prev_mean_pct"]),
        "noise TV %": num(row["noise_tv_pct"]),
        "noise EMD %": num(row["noise_emd_mean_pct"]),
    }


# ---------------------------------------------------------------------------------------
# The command


def _same_folder(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return str(a) == str(b)


def _check_plot_path(plot: str | os.PathLike[str], folders: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """The plot is a PNG: inside a measured folder it would be read as an image by the next step."""
    return check_file_target(plot, flag="--plot", inputs=[(f, "measured folder") for f in folders])


def default_workers() -> int:
    """Worker processes for the CLI: one per core, none on a single core (no gain there)."""
    n = os.cpu_count() or 1
    return 0 if n <= 1 else min(n, 8)


def iter_colorhist(
    folders: Sequence[str | os.PathLike[str]],
    *,
    space: str = "rgb",
    bins: int = 16,
    ref: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    workers: int = 0,
    full: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one result row per folder as soon as it is measured.

    The reference (`ref`, default the first folder) is measured first. A `ref` that is
    not among `folders` gets its own row, first. "prev" is the previous of `folders`
    (the first has none). `workers` > 0 uses that many worker processes. Every folder
    is listed before any is read, so a missing or empty one fails at once; `on_total`
    then gets the number of images to read, `on_images` the progress.
    """
    check_space(space)
    check_bins(bins)
    flags.count(workers, "--workers", low=0, high=MAX_WORKERS)
    if not folders:
        raise MadError("no folders given")
    ref_in_list = ref is None or any(_same_folder(ref, f) for f in folders)
    ref_folder = folders[0] if ref is None else ref
    listing = {str(f): require_images(f) for f in ([] if ref_in_list else [ref_folder]) + list(folders)}
    if on_total is not None:
        measured = [ref_folder, *(f for f in folders if not _same_folder(f, ref_folder))]
        on_total(sum(len(listing[str(f)]) for f in measured))

    with WorkerPool(workers) as pool:

        def measure(folder: str | os.PathLike[str]) -> FolderStats:
            return folder_stats(
                folder, space=space, bins=bins, skip_bad=skip_bad, pool=pool, paths=listing[str(folder)], on_skip=on_skip, on_images=on_images
            )

        ref_stats = measure(ref_folder)
        if not ref_in_list:
            yield make_row(ref_stats, ref=ref_stats, prev=None, is_ref=True, full=full)
        prev: FolderStats | None = None
        for f in folders:
            is_ref = ref_in_list and _same_folder(f, ref_folder)
            stats = ref_stats if is_ref else measure(f)
            stats = FolderStats(str(f), stats.halves, stats.n_skipped)
            yield make_row(stats, ref=ref_stats, prev=prev, is_ref=is_ref, full=full)
            prev = stats


def colorhist(
    folders: Sequence[str | os.PathLike[str]],
    space: str = "rgb",
    bins: int = 16,
    ref: str | os.PathLike[str] | None = None,
    plot: str | os.PathLike[str] | None = None,
    *,
    skip_bad: bool = False,
    workers: int = 0,
    full: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
    on_images: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every folder, optionally write the plot, and return all rows.

    `on_row` sees each row as soon as it is ready (the CLI streams JSON lines that way).
    """
    check_space(space)
    check_bins(bins)
    plot_path = _check_plot_path(plot, [*folders, *([ref] if ref is not None else [])]) if plot is not None else None
    rows = []
    for row in iter_colorhist(folders, space=space, bins=bins, ref=ref, skip_bad=skip_bad, workers=workers, full=full, on_skip=on_skip, on_images=on_images, on_total=on_total):
        rows.append(row)
        if on_row is not None:
            on_row(row)
    if plot_path is not None:
        write_plot(rows, plot_path)
    return rows


# ---------------------------------------------------------------------------------------
# Plot


def _short_label(folder: str) -> str:
    """The last two path parts: gen3/samples and gen4/samples must not both read 'samples'."""
    parts = Path(folder).parts
    return "/".join(parts[-2:]) if parts else str(folder)


def write_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """One PNG: per-channel marginals of every folder overlaid, and drift vs ref as bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    if not rows:
        raise MadError("nothing to plot")
    space = rows[0]["space"]
    chans = channels_of(space)
    fig = Figure(figsize=(4.2 * 4, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    cmap = matplotlib.colormaps["viridis"]
    colors = [cmap(i / max(1, len(rows) - 1)) for i in range(len(rows))]
    labels = [_short_label(r["folder"]) for r in rows]
    for k, c in enumerate(chans):
        ax = axes[k]
        for row, color, label in zip(rows, colors, labels):
            hist = np.asarray(row["hist"][c.name], dtype=np.float64)
            edges = np.linspace(*c.joint_range, len(hist) + 1)
            ax.stairs(hist, edges, color=color, label=label, linewidth=1.4)
        ax.set_title(f"{space} channel {c.name}")
        ax.set_xlabel(f"{c.name} ({c.lo:g}..{c.hi:g})")
        ax.set_ylabel("share of pixels")
    axes[0].legend(fontsize="small")
    ax = axes[3]
    x = np.arange(len(rows))
    tv = [r["tv_vs_ref_pct"] for r in rows]
    emd = [r["emd_vs_ref_mean_pct"] for r in rows]
    ax.bar(x - 0.2, tv, width=0.4, label="TV % vs ref")
    ax.bar(x + 0.2, emd, width=0.4, label="mean EMD % vs ref")
    noise = next((r for r in rows if r["is_ref"]), None)
    if noise is not None and not math.isnan(noise["noise_tv_pct"]):
        ax.axhline(noise["noise_tv_pct"], color="C0", linestyle=":", label="noise floor TV %")
        ax.axhline(noise["noise_emd_mean_pct"], color="C1", linestyle=":", label="noise floor EMD %")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize="small")
    ax.set_ylabel("%")
    ax.set_title("drift vs reference")
    ax.legend(fontsize="small")
    try:
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)
    except OSError as exc:
        raise MadError(f"--plot {path}: cannot write it ({exc.strerror or exc})") from None
