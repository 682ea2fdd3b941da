"""`mad train`: fit any registered model to an image folder, leaving a run folder.

The models are the rows of `mad_cli.models.BACKENDS`; this function only turns keyword
options into the chosen model's checked options dataclass and calls its trainer, so the
CLI and Python callers share every check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mad_cli import flags
from mad_cli.errors import MadError
from mad_cli.models import RunRequest, get_backend, options_from


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "stylegan2",
    seed: int = 0,
    resume: str | None = None,
    device: str = "auto",
    dry_run: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Train `model` on `data` into the run folder `out`; returns the model's summary row.

    `options` are the model's own options by name (cfg="tiny", kimg=8, guidance=...); one
    the model does not take is an error naming its flag. `resume` is "latest" (continue
    RUN, or start it) or a snapshot to fine-tune from.
    """
    backend = get_backend(model)
    opts = options_from(backend.train_options, options, context=f"--model {model}", kind="train")
    _check_same_model(Path(out), model, resume)
    run = RunRequest(out=Path(out), resume=resume, seed=flags.seed(seed) or 0, device=device, dry_run=dry_run)
    result = backend.train(data, run, opts)
    return {"model": model, **result}


def _check_same_model(out: Path, model: str, resume: str | None) -> None:
    """`--resume latest` continues RUN only with the model that trained it (a Gaussian refit
    into a StyleGAN2 run would replace its latest.pt); read from config.json, without loading weights."""
    if resume != "latest" or not (out / "latest.pt").exists():
        return
    try:
        there = json.loads((out / "config.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):  # no readable config: ask the snapshot itself
        from mad_cli.models import BY_FORMAT
        from mad_cli.models.snapshot import load_snapshot

        backend = BY_FORMAT.get(load_snapshot(out / "latest.pt").get("format"))
        there = backend.name if backend is not None else None
    if isinstance(there, str) and there != model:
        raise MadError(f"--resume latest: {out} holds a {there} run, not {model}; continue it with --model {there}, or choose another --out")
