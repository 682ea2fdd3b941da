"""Model snapshots: one file per trained model that loads without running any code.

A snapshot is `torch.save` of a plain dict holding only tensors and JSON-like values
(numbers, strings, None, lists, tuples, dicts). That restriction is what lets us load
every snapshot with `torch.load(weights_only=True)`: a snapshot handed around between
people (or downloaded) can never execute code on the machine that opens it.

Two formats exist, told apart by `snap["format"]`:

* ``mad.stylegan2`` — ``{"format", "version", "config": {"G_kwargs", "D_kwargs", ...},
  "G", "D", "G_ema": state_dicts, "optim": {...}, "progress": {"kimg": ...}}``
* ``mad.gaussian`` — ``{"format", "version", "config": {...}, "model": {tensors},
  "progress": {...}}``

NVIDIA's stylegan2-ada-pytorch / stylegan3 network pickles are read too, by a restricted
unpickler (`mad_cli.models.stylegan2.nvidia_pkl`) that returns the same dict shape as a
``mad.stylegan2`` snapshot holding only ``G_ema``.

The snapshot id (first 16 hex of the file's sha256) is what generated images carry as
their `generator` provenance tag, so identical weights always give the same id.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_open, sha256_file

#: Formats we write and the newest version of each we understand.
FORMAT_VERSIONS: dict[str, int] = {"mad.stylegan2": 1, "mad.gaussian": 1}

_SCALARS = (type(None), bool, int, float, str, bytes)


def _check_value(value: Any, where: str) -> None:
    """Refuse anything `torch.load(weights_only=True)` would not give back (objects, arrays, ...).

    Catching it at save time names the offending key; finding out at load time would make
    a finished training run unloadable.
    """
    if isinstance(value, torch.Tensor):
        if type(value) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"snapshot value {where}: tensor subclass {type(value).__name__} cannot be saved")
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"snapshot key {where}[{key!r}]: keys must be str or int")
            _check_value(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"snapshot value {where}: {type(value).__module__}.{type(value).__name__} is not a tensor or "
        "JSON-like value (convert numpy arrays with torch.from_numpy, objects to dicts)"
    )


def _plain_dict(value: Any) -> Any:
    """Copy containers into plain dict/list/tuple (OrderedDict and friends pickle as their class)."""
    if isinstance(value, torch.nn.Parameter):
        return value.detach()
    if isinstance(value, dict):
        return {k: _plain_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dict(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_dict(v) for v in value)
    return value


def save_snapshot(path: str | os.PathLike[str], snap: dict[str, Any]) -> Path:
    """Write `snap` atomically (temp file + rename), so a killed run never leaves half a snapshot.

    Raises TypeError (a programming error, not a user error) if `snap` holds anything other
    than tensors and JSON-like values, or lacks a known `format`/`version`.
    """
    if not isinstance(snap, dict):
        raise TypeError(f"snapshot must be a dict, got {type(snap).__name__}")
    fmt = snap.get("format")
    if fmt not in FORMAT_VERSIONS:
        raise TypeError(f"snapshot format must be one of {sorted(FORMAT_VERSIONS)}, got {fmt!r}")
    if not isinstance(snap.get("version"), int):
        raise TypeError("snapshot needs an integer 'version'")
    _check_value(snap, "snap")
    target = Path(path)
    data = _plain_dict(snap)
    with atomic_open(target, "wb") as fh:
        torch.save(data, fh)
    return target


def snapshot_id(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the file's sha256: the `generator` tag of every image it makes."""
    p = Path(path)
    try:
        return sha256_file(p)[:16]
    except FileNotFoundError:
        raise MadError(f"{p}: snapshot not found") from None
    except IsADirectoryError:
        raise MadError(f"{p}: is a folder, not a snapshot file") from None
    except OSError as exc:
        raise MadError(f"{p}: cannot read snapshot ({exc.strerror or exc})") from None


def _looks_like_plain_pickle(p: Path) -> bool:
    """NVIDIA pickles are plain pickle streams (start with the PROTO opcode), not torch zip files."""
    with open(p, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def load_snapshot(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load one of our snapshots (or an NVIDIA network pickle) without executing code from it.

    Every failure a user can cause — missing, truncated, corrupted, foreign or too-new
    file — becomes a one-line MadError naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise MadError(f"{p}: snapshot not found")
    if p.is_dir():
        raise MadError(f"{p}: is a folder, not a snapshot file (for a training run use {p / 'latest.pt'})")
    try:
        is_zip = zipfile.is_zipfile(p)
        plain_pickle = not is_zip and _looks_like_plain_pickle(p)
    except OSError as exc:
        raise MadError(f"{p}: cannot read snapshot ({exc.strerror or exc})") from None

    # Route by content, not name: a renamed .pt still loads, any plain pickle meets the safe importer.
    if plain_pickle or (p.suffix.lower() == ".pkl" and not is_zip):
        from mad_cli.models.stylegan2.nvidia_pkl import load_nvidia_pkl

        snap = load_nvidia_pkl(p)
        if map_location is not None:
            snap = _move(snap, map_location)
        return snap

    if not is_zip:
        raise MadError(f"{p}: not a mad snapshot (not a torch zip file; truncated or a different format?)")
    _verify_checksums(p)
    try:
        snap = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message opens with advice to retry with weights_only=False (code execution):
        # never pass that on; name only what the file asked for.
        wanted = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        what = f"it asks for {wanted.group(1)}; " if wanted else ""
        raise MadError(f"{p}: refusing to load: the file holds objects other than tensors and plain values ({what}nothing in it was run)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise MadError(f"{p}: corrupted or truncated snapshot ({msg})") from None
    return check_snapshot(snap, p)


def _verify_checksums(p: Path) -> None:
    """Check every record's CRC32: torch's reader does not, so flipped bytes would load as wrong weights."""
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise MadError(f"{p}: corrupted or truncated snapshot ({exc})") from None
    if bad is not None:
        raise MadError(f"{p}: corrupted snapshot (checksum mismatch in record {bad})")


def check_snapshot(snap: Any, p: Path | str) -> dict[str, Any]:
    """Check the header of a loaded snapshot dict: a known format at a version we understand."""
    if not isinstance(snap, dict) or "format" not in snap:
        raise MadError(f"{p}: not a mad snapshot (no 'format' field; expected a file written by `mad train`)")
    fmt = snap.get("format")
    if fmt not in FORMAT_VERSIONS:
        raise MadError(f"{p}: unknown snapshot format {fmt!r} (expected one of {', '.join(sorted(FORMAT_VERSIONS))})")
    version = snap.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MadError(f"{p}: snapshot has no valid 'version'")
    if version > FORMAT_VERSIONS[fmt]:
        raise MadError(f"{p}: {fmt} version {version} is newer than this mad understands (≤ {FORMAT_VERSIONS[fmt]}); upgrade mad")
    if version < 1:
        raise MadError(f"{p}: {fmt} version {version} is not valid")
    return snap


def _move(value: Any, map_location: Any) -> Any:
    """map_location for the NVIDIA importer, which always builds CPU tensors."""
    if isinstance(value, torch.Tensor):
        return value.to(map_location)
    if isinstance(value, dict):
        return {k: _move(v, map_location) for k, v in value.items()}
    if isinstance(value, list):
        return [_move(v, map_location) for v in value]
    return value

