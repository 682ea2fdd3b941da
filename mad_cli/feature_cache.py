"""A cache of folder features keyed by what the features depend on, never by a name.

torch-fidelity's own cache is keyed by a user-chosen name and silently returns old features
when a folder changes under that name. Here the key is a hash of the folder's content as
seen by the file system (relative names, sizes, mtimes in ns of the images used), the
extractor and the sha256 of its weights, `--n` and the preprocessing. Any edit, addition or
removal changes the key, so a stale entry is simply never found again.

Entries are .npy files written atomically (temp + rename); one that fails to load or has
the wrong shape is deleted with a warning and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_open
from mad_cli.output import warn

if TYPE_CHECKING:
    from mad_cli.features import Extractor

CACHE_FORMAT = 1
ENV_VAR = "MAD_FEATURE_CACHE"


def default_cache_dir() -> Path:
    """$MAD_FEATURE_CACHE when set, else ~/.cache/mad/features."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "mad" / "features"


class FeatureCache:
    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str] | bool | None) -> "FeatureCache | None":
        """None: the default folder; False: no cache; a path: that folder (created when first written)."""
        if cache_dir is False:
            return None
        root = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        if root.exists() and not root.is_dir():
            raise MadError(f"--cache-dir {root}: exists and is not a folder")
        return cls(root)

    def key(self, folder: str | os.PathLike[str], paths: Sequence[Path], extractor: "Extractor", n: int | None) -> str:
        """sha256 over the content description of the images used and everything that shapes their features."""
        from mad_cli.features import preprocessing_rule

        root = Path(folder)
        files = []
        for p in paths:
            st = p.stat()
            files.append([p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p), st.st_size, st.st_mtime_ns])
        description = {
            "format": CACHE_FORMAT,
            "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256,
            "dim": extractor.dim,
            "n": n,
            # The rule, not its outcome: the outcome is a function of the files already keyed
            # above, and computing it would read every image header on every cache hit.
            "preprocessing": preprocessing_rule(extractor),
            "files": files,
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
