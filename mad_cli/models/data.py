"""Training data for every backend: an image folder, its pixels, its labels, its order.

One loader for all models, so that one folder means the same thing to each of them:

* **Size.** All images must share one size; backends that grow by factors of two
  (StyleGAN2, the U-Net) also ask for a square power of two (`square_pow2`). Checked
  from the headers, before any pixel is decoded; the first offending file is named.
* **Channels.** One rule for the whole project: the folder is RGB as soon as one image is
  colour (grey images are then repeated into three channels), and grey only when every
  image is grey. A folder mixing both says so on stderr, since a grey first image used
  to decide "grey" for the Gaussian and silently dropped every other image's colour.
* **Labels.** By the label contract of `models.labels` (labels.csv, dataset.json or
  mad:label tags), read only for models that use them.
* **Order.** `DataOrder` is a pure function of (seed, epoch), so resumed and data-parallel
  runs see exactly the samples an uninterrupted single process would.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mad_cli.errors import MadError
from mad_cli.imagedir import GREY_MODES, TAG_PREFIX, open_image, read_image, require_images
from mad_cli.models.labels import LABEL_TAG, folder_labels

MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024
#: Folders whose decoded pixels fit in this many bytes are held in memory; larger ones stream.
CACHE_BYTES = 1 << 30
RESIZE_HINT = "resize the folder first, e.g. `mad dataset digits --resolution 32` for the bundled digits"


@dataclass
class FolderInfo:
    """What training needs to know about an image folder before reading any pixels."""

    folder: Path
    paths: list[Path]
    height: int
    width: int
    channels: int
    #: Per image (same order as `paths`), or None for an unlabelled folder.
    labels: np.ndarray | None = None
    #: Where the labels came from: labels.csv, dataset.json or mad:label tags.
    label_source: str | None = None
    #: How many grey images a colour folder holds (they are repeated into RGB).
    grey_in_rgb: int = 0

    @property
    def resolution(self) -> int:
        return self.width

    @property
    def num_classes(self) -> int:
        """max label + 1 (0 when unlabelled): a filtered folder may lack a class but never
        changes the meaning of the others."""
        return 0 if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1

    def describe(self) -> dict[str, object]:
        """The facts a run's config records, so a resumed run can tell if the data changed."""
        return {
            "data": str(self.folder.resolve()),
            "num_images": len(self.paths),
            "resolution": self.width,
            "channels": self.channels,
            "data_num_classes": self.num_classes,  # not the model's: a fine-tuned model may have more
            "label_source": self.label_source,
            "data_fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> str:
        """16 hex of a hash of every file's relative path and size: cheap (no pixels read),
        and enough to notice that a continued run was pointed at another folder's content."""
        h = hashlib.sha256()
        for p in self.paths:
            h.update(f"{p.relative_to(self.folder).as_posix()}\0{p.stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def _header(p: Path) -> tuple[tuple[int, int], str, str | None]:
    """(size, mode, mad:label tag) from the header; PNG text chunks before the pixels come free."""
    try:
        with open_image(p) as img:  # the pixel limit is checked here too (imagedir)
            raw = img.info.get(TAG_PREFIX + LABEL_TAG)
            return img.size, img.mode, raw if isinstance(raw, str) else None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MadError(f"{p}: cannot decode image ({exc})") from None


def scan_folder(folder: str | os.PathLike[str], *, square_pow2: bool = True, labels: bool = True, model: str = "this model") -> FolderInfo:
    """Check sizes, decide the channel count and (with `labels`) read the labels, from the headers only.

    Models that ignore labels pass labels=False, so a folder's labels can never stop them.
    """
    root = Path(folder)
    paths = require_images(root)
    first: tuple[int, int] | None = None
    n_grey = 0
    tags: list[str | None] = []
    for p in paths:
        (w, h), mode, tag = _header(p)
        if first is None:
            if square_pow2:
                if w != h:
                    raise MadError(f"{p}: image is {w}×{h}, not square; {model} needs square power-of-two images ({RESIZE_HINT})")
                if w & (w - 1) or not MIN_RESOLUTION <= w <= MAX_RESOLUTION:
                    raise MadError(f"{p}: image is {w}×{h}; {model} needs a power-of-two size from {MIN_RESOLUTION} to {MAX_RESOLUTION} ({RESIZE_HINT})")
            first = (w, h)
        elif (w, h) != first:
            raise MadError(f"{p}: image is {w}×{h} but {paths[0].name} is {first[0]}×{first[1]}; all images must have one size ({RESIZE_HINT})")
        n_grey += mode in GREY_MODES
        tags.append(tag)
    assert first is not None
    channels = 1 if n_grey == len(paths) else 3
    grey_in_rgb = n_grey if channels == 3 else 0
    if grey_in_rgb:
        from mad_cli.output import warn

        warn(f"{root}: {grey_in_rgb} grey and {len(paths) - grey_in_rgb} colour images: training on RGB (grey images repeated into 3 channels)")

    label_array, source = folder_labels(root, paths, tags) if labels else (None, None)
    return FolderInfo(root, paths, first[1], first[0], channels, label_array, source, grey_in_rgb)


def check_labels_fit(info: FolderInfo, num_classes: int, where: str) -> None:
    """A model with `num_classes` classes can train on `info` (resume / fine-tune)."""
    if num_classes and info.labels is None:
        raise MadError(f"{info.folder}: has no labels, but {where} is class-conditional ({num_classes} classes); give the folder a labels.csv")
    if not num_classes and info.labels is not None:
        raise MadError(f"{info.folder}: is labelled ({info.label_source}), but {where} is unconditional")
    if num_classes and info.num_classes > num_classes:
        bad = int(np.flatnonzero(info.labels >= num_classes)[0])  # type: ignore[operator]
        raise MadError(f"{info.paths[bad]}: label {int(info.labels[bad])} is outside the {num_classes} classes of {where}")  # type: ignore[index]


class ImageData:
    """Random access to the folder's images as uint8 N×C×H×W; small folders are cached in memory."""

    def __init__(self, info: FolderInfo, cache_bytes: int = CACHE_BYTES, workers: int = 4):
        self.info = info
        self.paths = info.paths
        self.channels = info.channels
        nbytes = len(self.paths) * info.channels * info.height * info.width
        self._cache: torch.Tensor | None = None
        self._pool: ThreadPoolExecutor | None = None
        if nbytes <= cache_bytes:
            self._cache = torch.from_numpy(np.stack([self._load(i) for i in range(len(self.paths))]))
        else:
            self._pool = ThreadPoolExecutor(max_workers=workers)
        self._labels = torch.from_numpy(info.labels) if info.labels is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> np.ndarray:
        arr = read_image(self.paths[i], channels=self.channels)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def get(self, indices: np.ndarray) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[torch.from_numpy(np.asarray(indices, dtype=np.int64))]
        assert self._pool is not None
        return torch.from_numpy(np.stack(list(self._pool.map(self._load, [int(i) for i in indices]))))

    def labels(self, indices: np.ndarray) -> torch.Tensor | None:
        """Class indices of these images (int64), or None for an unlabelled folder."""
        if self._labels is None:
            return None
        return self._labels[torch.from_numpy(np.asarray(indices, dtype=np.int64))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class DataOrder:
    """Which image (and whether mirrored) is the k-th sample of the run, for any k.

    A pure function of (seed, epoch): no state to save, so resuming and data parallelism
    see exactly the order an uninterrupted single process would.
    """

    def __init__(self, n: int, seed: int, mirror: bool):
        self.n, self.seed, self.mirror = n, seed, mirror
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e, 0x5EED])
            perm = rng.permutation(self.n)
            flips = rng.random(self.n) < 0.5 if self.mirror else np.zeros(self.n, dtype=bool)
            if len(self._epochs) > 4:
                self._epochs.pop(min(self._epochs))
            self._epochs[e] = (perm, flips)
        return self._epochs[e]

    def samples(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.empty(count, dtype=np.int64)
        flip = np.empty(count, dtype=bool)
        for j, k in enumerate(range(start, start + count)):
            perm, flips = self._epoch(k // self.n)
            idx[j], flip[j] = perm[k % self.n], flips[k % self.n]
        return idx, flip


def flat_unit_range(images: "ImageData") -> np.ndarray:
    """Every image as one float64 row of H·W·C values in [-1, 1] (StyleGAN2's range, so that
    ψ means the same for the closed-form models, the Gaussian and the GMM, that fit rows)."""
    x = images.get(np.arange(len(images))).permute(0, 2, 3, 1).reshape(len(images), -1).numpy()
    return x.astype(np.float64) / 127.5 - 1.0


def to_float(img: torch.Tensor, flips: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N×C×H×W → float in [-1, 1] on `device`, mirrored where `flips` says."""
    x = img.to(device=device, dtype=torch.float32) / 127.5 - 1
    if flips.any():
        f = torch.from_numpy(flips).to(device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x
