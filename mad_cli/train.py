"""`mad train`: fit a generative model to an image folder and leave snapshots in RUN.

Two models share one command so that a loop script switches between them with one flag:
StyleGAN2 (the real experiment, `mad_cli.models.stylegan2.training`) and a Gaussian on
pixels (the MAD paper's theory in seconds, `mad_cli.models.gaussian`). Both leave
RUN/latest.pt, which `mad sample` reads.
"""

from __future__ import annotations

import os
from typing import Any

from mad_cli.errors import MadError

MODELS = ("stylegan2", "gaussian")


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str = "stylegan2",
    cfg: str | None = None,
    kimg: float | None = None,
    batch: int | None = None,
    batch_gpu: int | None = None,
    gamma: float | None = None,
    mirror: bool = False,
    seed: int = 0,
    resume: str | None = None,
    snap_every: float | None = None,
    device: str = "auto",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Dispatch to the chosen model's trainer; returns its summary dict."""
    if model == "gaussian":
        stylegan_only = {
            "--cfg": cfg, "--kimg": kimg, "--batch": batch, "--batch-gpu": batch_gpu, "--gamma": gamma,
            "--resume": resume, "--snap-every": snap_every, "--mirror": mirror or None, "--dry-run": dry_run or None,
        }
        given = [flag for flag, value in stylegan_only.items() if value is not None]
        if given:
            raise MadError(f"{given[0]}: only applies to --model stylegan2 (the Gaussian is fitted in closed form)")
        from mad_cli.devices import resolve_device
        from mad_cli.models.gaussian import fit_gaussian_folder

        # The fit is a few seconds of CPU linear algebra and runs there on any machine, but a
        # bad or unavailable --device must still fail as it does for StyleGAN2, not be ignored.
        resolve_device(device)
        return fit_gaussian_folder(data, out, seed=seed)
    if model != "stylegan2":
        raise MadError(f"--model {model}: expected one of {', '.join(MODELS)}")
    from mad_cli.models.stylegan2.training import train_stylegan2

    return train_stylegan2(
        data, out, cfg=cfg, kimg=kimg, batch=batch, batch_gpu=batch_gpu, gamma=gamma, mirror=mirror, seed=seed,
        resume=resume, snap_every=snap_every, device=device, dry_run=dry_run,
    )
