"""Image folders: the one data format every subcommand reads and writes.

A folder is its image files (by extension, any case, found recursively) in sorted
relative-path order; anything else in it (manifest.csv, labels.csv, ...) is ignored.
Outputs are PNGs written under a temporary name and renamed, so an interrupted run never
leaves half an image that a later step would happily train on. Provenance travels inside
each PNG as text chunks, so "is this image synthetic?" needs no database.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
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

# Decompression-bomb protection stays on, but at a size real datasets never reach.
Image.MAX_IMAGE_PIXELS = 1 << 28


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """All image files below `folder`, sorted by relative path (stable across machines).

    Hidden files (our own temp files start with '.') are skipped so that a half-written
    output of a killed run is never listed.
    """
    root = Path(folder)
    if not root.exists():
        raise MadError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise MadError(f"{root}: not a folder")
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            p = Path(dirpath) / name
            if is_image_file(p):
                found.append((p.relative_to(root).as_posix(), p))
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


def read_image(path: str | os.PathLike[str], channels: int | None = None) -> np.ndarray:
    """Decode one image to uint8: H×W for grey, H×W×3 for colour.

    `channels=None` keeps grey images grey; 1 or 3 forces that many channels. Any decode
    failure (not an image, truncated file) becomes a MadError naming the file.
    """
    p = Path(path)
    try:
        with Image.open(p) as img:
            img.load()
            img = _to_uint8(img)
            if channels == 1 and img.mode != "L":
                img = img.convert("L")
            elif channels == 3 and img.mode != "RGB":
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise MadError(f"{p}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MadError(f"{p}: cannot decode image ({exc})") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the header only, without decoding pixels."""
    p = Path(path)
    try:
        with Image.open(p) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise MadError(f"{p}: cannot decode image ({exc})") from None


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
    files that are published later in one go, e.g. by `staging.StagedFolder`, which
    syncs once before it moves them into place.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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
    except BaseException:
        tmp.unlink(missing_ok=True)
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
    try:
        with Image.open(p) as img:
            text = getattr(img, "text", None) or {}
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_within(child: Path, parent: Path) -> bool:
    """True when `child` is `parent` or lies below it, after resolving links."""
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def prepare_output_dir(out: str | os.PathLike[str], *, sources: Iterable[str | os.PathLike[str]] = (), force: bool = False, flag: str = "--out") -> Path:
    """Check and create an output folder before any work is done.

    Refuses an output inside (or equal to) a source folder, since writing there would
    modify the source; refuses a non-empty folder unless `force`; checks writability.
    """
    target = Path(out)
    for src in sources:
        if is_within(target, Path(src)):
            raise MadError(f"{flag} {target}: is inside source folder {src}; choose a folder outside it")
        if is_within(Path(src), target) and force:
            raise MadError(f"{flag} {target}: contains source folder {src}; choose another folder")
    if target.exists() and not target.is_dir():
        raise MadError(f"{flag} {target}: exists and is not a folder")
    try:
        if target.exists() and any(target.iterdir()) and not force:
            raise MadError(f"{flag} {target}: folder is not empty (use --force to write into it)")
        target.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=target, prefix=".mad-write-test.", delete=True)
        probe.close()
    except OSError as exc:
        raise MadError(f"{flag} {target}: cannot write there ({exc.strerror or exc})") from None
    return target
