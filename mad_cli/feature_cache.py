"""A cache of folder features keyed by what the features depend on: the images' bytes.

torch-fidelity's own cache is keyed by a user-chosen name and silently returns old features
when a folder changes under that name. A key of names, sizes and mtimes is not enough
either: `cp -p` or `rsync -a` of a different image with the same size keeps the mtime, and
would be served the old image's features. Here the key is a hash of the sha256 of the bytes
of each image used, in order, and of the extractor's identity (its name, the sha256 of its
weights, its dimension and preprocessing rule: `features.Extractor.identity`). Features
are a function of exactly that, so a hit is never stale, whatever the files are called or
however they were copied, and `--n` needs no special case (the first N images are the
images hashed). Hashing reads each file once, far cheaper than decoding and running a
network on it (see benchmarks/metrics.py).

Entries are .npy files written atomically (temp + rename); one that fails to load or has
the wrong shape is deleted with a warning and recomputed, never trusted.

This module knows nothing about extractors beyond their identity string, so it does not
import `mad_cli.features` (which imports it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_open
from mad_cli.output import warn

CACHE_FORMAT = 2  # 1 keyed by names, sizes and mtimes
ENV_VAR = "MAD_FEATURE_CACHE"


def default_cache_dir() -> Path:
    """$MAD_FEATURE_CACHE when set, else ~/.cache/mad/features."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "mad" / "features"


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes; a file that cannot be read is an error naming it."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise MadError(f"{path}: cannot read ({exc.strerror or exc})") from None


class FeatureCache:
    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str] | bool | None) -> FeatureCache | None:
        """None: the default folder; False: no cache; a path: that folder (created when first written)."""
        if cache_dir is False:
            return None
        root = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        if root.exists() and not root.is_dir():
            raise MadError(f"--cache-dir {root}: exists and is not a folder")
        return cls(root)

    def key(self, paths: Sequence[Path], identity: str) -> str:
        """sha256 over the content hashes of the images used (in order) and the extractor's identity."""
        description = {
            "format": CACHE_FORMAT,
            "extractor": identity,
            "files": [content_sha256(Path(p)) for p in paths],
        }
        blob = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str, expected_shape: tuple[int, int]) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
            if arr.shape != expected_shape or arr.dtype != np.float32:
                raise ValueError(f"shape {arr.shape} {arr.dtype}, expected {expected_shape} float32")
            return arr
        except (OSError, ValueError, EOFError) as exc:
            warn(f"{p}: corrupt feature cache entry discarded ({exc})")
            p.unlink(missing_ok=True)
            return None

    def store(self, key: str, features: np.ndarray) -> None:
        p = self.path(key)
        try:
            with atomic_open(p, "wb") as fh:
                np.save(fh, np.ascontiguousarray(features, dtype=np.float32), allow_pickle=False)
        except OSError as exc:
            # A read-only or full cache folder must not fail the metric itself.
            warn(f"{p}: could not write feature cache ({exc.strerror or exc})")
