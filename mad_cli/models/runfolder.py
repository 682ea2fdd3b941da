"""The run folder every backend trains into: one layout, one resume rule, one owner.

    RUN/config.json        the resolved config (model, preset, data facts, hyper-parameters)
    RUN/log.jsonl          one JSON object per tick
    RUN/snapshot-NNNNNN.pt snapshots, named by thousands of images shown (kimg)
    RUN/latest.pt          a hard link to the newest complete snapshot
    RUN/fakes-NNNNNN.png   a grid of samples at each snapshot, RUN/reals.png the data

Why shared: a loop script treats every model alike (`mad train DATA --out RUN --resume
latest`, then `mad sample RUN`), so every model must mean the same by these files and
flags. `--resume latest` continues RUN from latest.pt (or starts it when there is none),
`--resume SNAPSHOT` starts a new run initialised from another run's weights (fine-tuning,
as the thesis did each generation), no `--resume` starts a new run in a new or empty
folder. While a run writes, it holds RUN's lock (`mad_cli.outputs`): a second `mad train`
into the same RUN stops with one line instead of interleaving snapshots and log lines.
Only rank 0 of a torchrun group writes; every file is written atomically and latest.pt is
replaced only by a complete snapshot, so a kill at any moment loses at most the work since
the last snapshot.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_write_text, place_file, write_png
from mad_cli.models.dist import Dist
from mad_cli.outputs import OutputFolder, check_outside

CONFIG_NAME = "config.json"
LOG_NAME = "log.jsonl"
LATEST_NAME = "latest.pt"
#: The facts about the data that a continued run compares with its stored config.
DATA_FACTS = ("num_images", "resolution", "channels", "data_num_classes", "data_fingerprint")


def snapshot_name(nimg: int) -> str:
    """snapshot-{kimg:06d}.pt; a fractional kimg appends the remaining images (.512)."""
    kimg, rest = divmod(int(nimg), 1000)
    return f"snapshot-{kimg:06d}.pt" if rest == 0 else f"snapshot-{kimg:06d}.{rest:03d}.pt"


def fakes_name(nimg: int) -> str:
    return snapshot_name(nimg).replace("snapshot-", "fakes-").replace(".pt", ".png")


def resolve_resume(out: Path, resume: str | None) -> tuple[str, Path | None]:
    """('fresh', None), ('continue', RUN/latest.pt) or ('init', SNAPSHOT)."""
    if resume is None:
        return "fresh", None
    if resume == "latest":
        latest = out / LATEST_NAME
        return ("continue", latest) if latest.exists() else ("fresh", None)
    p = Path(resume)
    if not p.exists():
        raise MadError(f"--resume {resume}: snapshot not found (use a snapshot file, or `latest` to continue RUN)")
    if p.is_dir():
        p = p / LATEST_NAME
        if not p.exists():
            raise MadError(f"--resume {resume}: folder has no {LATEST_NAME}")
    if p.resolve().parent == out.resolve():
        raise MadError(f"--resume {resume}: is inside RUN {out}; to continue RUN use --resume latest")
    return "init", p


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: written as null rather than as a bare NaN no parser accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


class RunFolder:
    """Owns RUN for one `mad train`: lock, refusal rules, config, log, snapshots, grids.

    Use as a context manager around the whole run. Every process of a torchrun group
    creates one; only rank 0 (`dist.writer`) touches the disk.
    """

    def __init__(self, out: str | os.PathLike[str], dist: Dist, *, data: str | os.PathLike[str], resume: str | None):
        self.path = Path(out)
        self.dist = dist
        self.data = Path(data)
        self.resume = resume
        check_outside(self.path, [self.data], "--out")  # before any work: cheap and always fatal
        self.mode, self.resume_path = resolve_resume(self.path, resume)
        self._owner: OutputFolder | None = None

    # -- opening --------------------------------------------------------------------------

    def _has_run(self) -> bool:
        return (self.path / LATEST_NAME).exists()

    def _restartable(self) -> bool:
        """Ours, killed before its first snapshot: nothing to resume, so it may start over."""
        return (self.path / CONFIG_NAME).exists() and not any(self.path.glob("snapshot-*.pt"))

    def _foreign(self) -> list[str]:
        """Visible entries other than our lock: a folder of something else."""
        return sorted(e.name for e in os.scandir(self.path) if not e.name.startswith("."))

    def _check_mode(self) -> None:
        if self.mode == "continue":
            return
        if self._has_run():
            raise MadError(f"--out {self.path}: holds a training run; continue it with --resume latest or choose another folder")
        if self._restartable() and (self.mode == "init" or self.resume == "latest"):
            return
        foreign = self._foreign()
        if foreign:
            raise MadError(f"--out {self.path}: folder is not empty (it holds {foreign[0]}); choose a new or empty folder for the run")

    def __enter__(self) -> "RunFolder":
        error = ""
        if self.dist.writer:
            try:
                self._owner = OutputFolder(self.path, command="train", flag="--out", sources=[self.data]).__enter__()
                try:
                    self._check_mode()
                except BaseException as exc:
                    self._owner.__exit__(type(exc), exc, None)
                    self._owner = None
                    raise
            except MadError as exc:
                error = str(exc)
        self.dist.agree(not error, f"--out {self.path}: rank 0 could not prepare the run folder")
        if error:
            raise MadError(error)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._owner is not None:
            self._owner.__exit__(exc_type, exc, tb)
            self._owner = None

    # -- config and log -------------------------------------------------------------------

    def check_same_data(self, stored: dict[str, Any], now: dict[str, Any]) -> None:
        """A continued run on other data is allowed (a loop may refresh its folder) but said."""
        if not self.dist.writer:
            return
        changed = [k for k in (("data",) + DATA_FACTS) if k in stored and stored.get(k) != now.get(k)]
        if changed:
            from mad_cli.output import warn

            what = ", ".join(f"{k} {stored.get(k)!r} → {now.get(k)!r}" for k in changed[:3])
            warn(f"--resume latest: {self.data} is not the data {self.path} was trained on so far ({what}); continuing on the new data")

    def warn_ignored(self, stored: dict[str, Any], given: dict[str, Any]) -> None:
        """Flags a continued run does not apply, by flag. Loop scripts pass the same flags
        on every re-run, so only a flag asking for something other than the stored value
        (and not None: not given) deserves a warning."""
        ignored = [flag for flag, value in given.items() if value is not None and value != stored.get(flag)]
        if ignored and self.dist.writer:
            from mad_cli.output import warn

            warn(f"{', '.join(ignored)} ignored: a continued run keeps the config stored in {self.resume_path}")

    def write_config(self, config: dict[str, Any]) -> None:
        if self.dist.writer:
            atomic_write_text(self.path / CONFIG_NAME, json.dumps(_json_safe(config), indent=2) + "\n")

    def start_log(self, upto_nimg: int | None) -> None:
        """A continued run keeps the complete records up to its snapshot; a new one starts empty."""
        if not self.dist.writer:
            return
        path = self.path / LOG_NAME
        kept: list[str] = []
        if upto_nimg is not None and path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from the kill
                nimg = rec.get("nimg", 0) if isinstance(rec, dict) else None
                if isinstance(nimg, int) and not isinstance(nimg, bool) and nimg <= upto_nimg:
                    kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def log(self, row: dict[str, Any]) -> None:
        if self.dist.writer:
            with open(self.path / LOG_NAME, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(_json_safe(row)) + "\n")
                fh.flush()

    # -- snapshots and pictures -----------------------------------------------------------

    def save_snapshot(self, snap: dict[str, Any], nimg: int) -> Path:
        """Write snapshot-NNNNNN.pt atomically, then point latest.pt at it."""
        from mad_cli.models.snapshot import save_snapshot

        path = self.path / snapshot_name(nimg)
        if self.dist.writer:
            save_snapshot(path, snap)
            place_file(path, self.path / LATEST_NAME, link="hardlink")
        return path

    def save_fitted(self, fmt: str, config: dict[str, Any], model: dict[str, Any], n_images: int) -> Path:
        """A closed-form model's whole run (the Gaussian, the GMM): config, its one snapshot
        at kimg 0 and a fresh log. No timings go into the snapshot, so the same data gives
        the same file and hence the same generator id."""
        snap = {"format": fmt, "version": 1, "config": config, "model": model, "progress": {"kimg": 0.0, "n_images": n_images}}
        self.write_config(config)
        path = self.save_snapshot(snap, 0)
        self.start_log(None)
        return path

    def write_image(self, name: str, image: np.ndarray) -> None:
        if self.dist.writer:
            write_png(self.path / name, image)

    @property
    def latest(self) -> Path:
        return self.path / LATEST_NAME
