"""Image folders: the one data format every subcommand reads and writes.

A folder is its image files (by extension, any case, found recursively) in sorted
relative-path order; anything else in it (manifest.csv, labels.csv, ...) is ignored.
Outputs are PNGs written under a temporary name and renamed, so an interrupted run never
leaves half an image that a later step would happily train on. Provenance travels inside
each PNG as text chunks, so "is this image synthetic?" needs no database.

What comes from outside is bounded before it is trusted, here, so every reader gets it:

* Pixels: an image's width × height is read from its header and refused above
  `max_pixels()` (`MAD_MAX_PIXELS`, default 2**25 ≈ 33.5 MP: an 8K frame or a 30 MP
  photo) before a single pixel is decoded. A 249 KB PNG can declare 16000² pixels and
  would need gigabytes once decoded. Pillow's own bomb check is set to the same limit,
  so readers elsewhere (report strips, training data headers) refuse it too.
* Links: `list_images` never descends into a linked folder (it would list images twice,
  or leave the folder), warning once with a count; a link to a folder that contains it
  (`ln -s . src/loop`) is an error rather than endless nesting. A linked file is an image
  wherever it points (that is what `--link symlink` writes); anything that is not a
  regular file (a pipe or device named `x.png`) is an error, since reading it would hang
  or never end.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from mad_cli.errors import MadError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
TAG_PREFIX = "mad:"
PROVENANCE_KEYS = ("origin", "generator", "psi", "seed", "generation")
ORIGINS = ("real", "synthetic")

MAX_PIXELS_ENV = "MAD_MAX_PIXELS"
#: Largest width × height we decode unless MAD_MAX_PIXELS says otherwise: 8K UHD
#: (7680×4320) and 30 MP photos fit; a decompression bomb (16000² in 249 KB) does not.
DEFAULT_MAX_PIXELS = 1 << 25


def max_pixels() -> int:
    """The pixel limit (width × height) in force: $MAD_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise MadError(f"{MAX_PIXELS_ENV}={raw}: expected a whole number of pixels, e.g. 33554432") from None
    if value < 1:
        raise MadError(f"{MAX_PIXELS_ENV}={raw}: must be at least 1")
    return value


def _sync_pillow_limit(limit: int) -> None:
    """Pillow refuses above 2 × MAX_IMAGE_PIXELS (and only warns above it): half our limit
    makes every reader in the process refuse what we refuse."""
    Image.MAX_IMAGE_PIXELS = max(1, (limit + 1) // 2)


# The warning Pillow gives between its two thresholds is noise: above our limit we refuse.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
with contextlib.suppress(MadError):  # a bad MAD_MAX_PIXELS is reported when an image is read
    _sync_pillow_limit(max_pixels())


def _too_big(p: Path, pixels: str, limit: int) -> MadError:
    return MadError(f"{p}: {pixels} pixels is over the limit of {limit:,} (a decompression bomb? set {MAX_PIXELS_ENV} to allow larger images)")


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """`Image.open` with its size checked against `max_pixels()` before anything is decoded.

    Every failure to open (missing, not an image, too large) is a MadError naming the file.
    Decoding inside the block may still fail; callers catch that (see `decode_errors`).
    """
    p = Path(path)
    limit = max_pixels()
    _sync_pillow_limit(limit)
    try:
        img = Image.open(p)
    except FileNotFoundError:
        raise MadError(f"{p}: file not found") from None
    except Image.DecompressionBombError as exc:  # Pillow's check, from the header too: it names only the count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise _too_big(p, f"{int(found.group(1)):,}" if found else "more than that", limit) from None
    except decode_errors as exc:
        raise MadError(f"{p}: cannot decode image ({exc})") from None
    with img:
        width, height = img.size
        if width * height > limit:
            raise _too_big(p, f"{width}×{height} = {width * height:,}", limit)
        yield img


#: What Pillow raises for a file that is not a (complete, valid) image.
decode_errors = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


#: (folder, count) pairs already warned about in this process: a folder is listed by
#: several steps of one command, and one warning is enough.
_LINK_WARNINGS: set[tuple[str, int]] = set()


def _check_linked_file(p: Path) -> None:
    """A linked image must lead to a regular file: a link to a pipe or device would hang the reader."""
    try:
        mode = os.stat(p).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MadError(f"{p}: symlink loop; remove the link") from None
        return  # dangling or unreadable: the reader names it ("file not found", ...)
    if not stat.S_ISREG(mode):
        raise MadError(f"{p}: not a regular file (a pipe, device or socket named like an image); remove it from the folder")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """All image files below `folder`, sorted by relative path (stable across machines).

    Hidden files (our own temp files start with '.') are skipped so that a half-written
    output of a killed run is never listed. Linked folders are not followed (see the
    module docstring); a link to a folder that contains it is an error. The walk reads
    file types from the directory entries, so plain files cost no extra system call.
    """
    root = Path(folder)
    if not root.exists():
        raise MadError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise MadError(f"{root}: not a folder")
    found: list[tuple[str, Path]] = []
    linked_dirs = 0
    stack = [root]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue  # an unreadable subfolder holds nothing we can read (as os.walk treats it)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            p = here / entry.name
            if entry.is_symlink():
                if entry.is_dir():  # follows the link
                    target = p.resolve()
                    if is_within(here, target):
                        raise MadError(f"{p}: symlink loop (it points to {target}, which contains it); remove the link")
                    linked_dirs += 1
                    continue
                if is_image_file(p):
                    _check_linked_file(p)
                    found.append((p.relative_to(root).as_posix(), p))
            elif entry.is_dir(follow_symlinks=False):
                stack.append(p)
            elif is_image_file(p):
                if not entry.is_file(follow_symlinks=False):
                    raise MadError(f"{p}: not a regular file (a pipe, device or socket named like an image); remove it from the folder")
                found.append((p.relative_to(root).as_posix(), p))
    if linked_dirs and (str(root), linked_dirs) not in _LINK_WARNINGS:
        _LINK_WARNINGS.add((str(root), linked_dirs))
        from mad_cli.output import warn

        warn(f"{root}: {linked_dirs} linked folder(s) inside it are not followed (their images would be listed twice or "
             "come from outside it); link or copy the files instead")
    found.sort(key=lambda item: item[0])
    return [p for _, p in found]


def require_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Like `list_images` but an empty folder is an error (every command needs images)."""
    paths = list_images(folder)
    if not paths:
        raise MadError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def _to_uint8(img: Image.Image) -> Image.Image:
    """Bring any PIL mode to 'L' or 'RGB', scaling high bit depths instead of clipping them."""
    mode = img.mode
    if mode in ("L", "RGB"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit PNGs arrive as 'I;16' or 'I' (32-bit container); both use 0..65535.
        scale = 255.0 / 65535.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")
    if mode in ("LA", "La"):
        return img.convert("L")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


#: PIL modes that hold one channel. The project's one rule: a folder is grey only when every
#: image is; one colour image makes it RGB (its grey images are read as three equal channels).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def folder_channels(paths: Iterable[Path]) -> int:
    """1 when every image is grey, else 3 (from the headers: no pixel is decoded)."""
    for p in paths:
        with open_image(p) as img:
            if img.mode not in GREY_MODES:
                return 3
    return 1


def read_image(path: str | os.PathLike[str], channels: int | None = None) -> np.ndarray:
    """Decode one image to uint8: H×W for grey, H×W×3 for colour.

    `channels=None` keeps grey images grey; 1 or 3 forces that many channels. Any decode
    failure (not an image, truncated file) becomes a MadError naming the file.
    """
    p = Path(path)
    with open_image(p) as img:
        try:
            img.load()
            img = _to_uint8(img)
            if channels == 1 and img.mode != "L":
                img = img.convert("L")
            elif channels == 3 and img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
        except decode_errors as exc:
            raise MadError(f"{p}: cannot decode image ({exc})") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only, without decoding pixels (and within the pixel limit)."""
    with open_image(path) as img:
        return img.size


def iter_images(
    paths: Iterable[Path],
    *,
    channels: int | None = None,
    skip_bad: bool = False,
    workers: int = 0,
    on_skip: Callable[[Path, MadError], None] | None = None,
) -> Iterator[tuple[Path, np.ndarray]]:
    """Decode images in order, streaming: at most a few images per worker are in memory.

    With `skip_bad`, undecodable files are reported through `on_skip` and left out;
    otherwise the first one raises. `workers > 0` decodes in a thread pool (PIL releases
    the GIL while inflating), keeping results in input order.
    """

    def load(p: Path) -> tuple[Path, np.ndarray | MadError]:
        try:
            return p, read_image(p, channels)
        except MadError as exc:
            if not skip_bad:
                raise
            return p, exc

    def emit(p: Path, result: np.ndarray | MadError) -> Iterator[tuple[Path, np.ndarray]]:
        if isinstance(result, MadError):
            if on_skip is not None:
                on_skip(p, result)
            return
        yield p, result

    if workers <= 0:
        for p in paths:
            yield from emit(*load(p))
        return
    window = max(2, workers * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Any] = []
        for p in paths:
            pending.append(pool.submit(load, p))
            if len(pending) >= window:
                yield from emit(*pending.pop(0).result())
        for fut in pending:
            yield from emit(*fut.result())


# ---------------------------------------------------------------------------------------
# Atomic writes


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which would race with
# threads creating files if done per write.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = True, **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a hidden temp file next to `path`; rename it over `path` only if the block succeeds.

    `fsync=False` skips the per-file flush to disk (several ms each on slow disks) for
    files that are published later in one go, e.g. by `outputs.OutputFolder.commit`,
    which syncs once before it moves them into place.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(target)
        raise
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; outputs get the usual permissions (0666 minus umask).
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(target)  # a full disk says where: writes name no file themselves
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    with atomic_open(path, "w", fsync=fsync, encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_png(path: str | os.PathLike[str], array: np.ndarray, tags: dict[str, Any] | None = None, *, fsync: bool = True) -> None:
    """Write uint8 H×W, H×W×1 or H×W×3 as PNG with `mad:` provenance tags, atomically."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"write_png expects H×W or H×W×3, got shape {arr.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in (tags or {}).items():
        if value is None:
            continue
        info.add_text(key if key.startswith(TAG_PREFIX) else TAG_PREFIX + key, str(value))
    img = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    with atomic_open(path, "wb", fsync=fsync) as fh:
        img.save(fh, format="PNG", pnginfo=info, compress_level=6)


def read_tags(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `mad:` provenance tags of an image, without the prefix ({} for non-PNG or untagged)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        return {}
    with open_image(p) as img:  # text chunks after the pixels make Pillow decode them: size first
        try:
            text = getattr(img, "text", None) or {}
        except decode_errors as exc:
            raise MadError(f"{p}: cannot decode image ({exc})") from None
    return {k[len(TAG_PREFIX):]: v for k, v in text.items() if k.startswith(TAG_PREFIX)}


def provenance_tags(
    origin: str,
    *,
    generator: str | None = None,
    psi: float | None = None,
    seed: int | None = None,
    generation: int | None = None,
) -> dict[str, str]:
    """The canonical tag set for an image we write (values as strings, None left out)."""
    if origin not in ORIGINS:
        raise ValueError(f"origin must be one of {ORIGINS}, got {origin!r}")
    raw = {"origin": origin, "generator": generator, "psi": psi, "seed": seed, "generation": generation}
    return {k: str(v) for k, v in raw.items() if v is not None}


# ---------------------------------------------------------------------------------------
# Model output as pictures


def to_uint8(x: Any) -> Any:
    """Model output in [-1, 1] → uint8 of the same shape, with NVIDIA's rounding
    (x·127.5 + 128, clamped, truncated), so our pixels match theirs for the same network.

    Takes and returns a torch tensor (torch is imported only here: listing and tagging
    folders must not pay for it).
    """
    import torch

    return (x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def image_grid(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Tile uint8 N×H×W×C images row by row (near-square when `cols` is None), black filler.

    Grey tiles give an H'×W' picture, colour ones H'×W'×3: what `write_png` takes.
    """
    n, h, w, c = images.shape
    cols = max(1, cols if cols is not None else math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return grid[:, :, 0] if c == 1 else grid


# ---------------------------------------------------------------------------------------
# Files and output folders


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


LINK_MODES = ("copy", "hardlink", "symlink")


def place_file(src: Path, dst: Path, link: str = "copy") -> None:
    """Put `src` at `dst` by copy, hard link or symlink, never leaving a partial `dst`.

    A hard link across filesystems falls back to a copy (the user asked for a cheap
    folder, not for a failure).
    """
    if link not in LINK_MODES:
        raise MadError(f"--link {link}: expected one of {', '.join(LINK_MODES)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        if link == "symlink":
            os.symlink(Path(src).resolve(), tmp)
        elif link == "hardlink":
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:
            exc.filename = str(dst)
        raise


def is_within(child: Path, parent: Path) -> bool:
    """True when `child` is `parent` or lies below it, after resolving links."""
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False
