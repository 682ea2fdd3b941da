"""`mad train --model gaussian`: fit the Gaussian to a folder and leave a run folder.

The fit is closed-form and deterministic, so "training" is one step that writes the same
files as every other backend (config.json, log.jsonl, snapshot-000000.pt, latest.pt,
fakes-000000.png) and a loop script treats it like any model. `--resume latest` refits
(the same data gives the same snapshot, byte for byte); `--resume SNAPSHOT` has nothing
to fine-tune and is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


from mad_cli.devices import resolve_device
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid, to_uint8
from mad_cli.models import RunRequest
from mad_cli.models.data import ImageData, flat_unit_range, scan_folder
from mad_cli.models.dist import single_process
from mad_cli.models.gaussian.model import DEFAULT_MAX_FULL_DIM, PIXEL_RANGE, fit_gaussian, sample_gaussian
from mad_cli.models.gaussian.options import GaussianTrainOptions
from mad_cli.models.runfolder import RunFolder, fakes_name

GRID_IMAGES = 64


def train(data: Path, run: RunRequest, options: GaussianTrainOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    # The fit is a few seconds of CPU linear algebra and runs there on any machine, but a
    # bad or unavailable --device must still fail as it does for the other models.
    resolve_device(run.device)
    folder = RunFolder(run.out, single_process("gaussian"), data=data, resume=run.resume)
    if folder.mode == "init":
        raise MadError(f"--resume {run.resume}: the Gaussian is fitted in closed form, there is nothing to fine-tune (use --resume latest, or leave --resume out)")
    info = scan_folder(data, square_pow2=False, labels=False, model="the Gaussian")
    if len(info.paths) < 2:
        raise MadError(f"{data}: a Gaussian needs at least 2 images to estimate a covariance, found {len(info.paths)}")
    dim = info.height * info.width * info.channels
    mode = "full" if dim <= DEFAULT_MAX_FULL_DIM else "lowrank"
    config: dict[str, Any] = {
        "model": "gaussian",
        "cfg": None,
        **info.describe(),
        "n_images": len(info.paths),
        "height": info.height,
        "width": info.width,
        "dim": dim,
        "pixel_range": list(PIXEL_RANGE),
        "mode": mode,
        "max_full_dim": DEFAULT_MAX_FULL_DIM,
        "estimator": "unbiased covariance (ddof=1)",
        "seed": run.seed,
    }
    if run.dry_run:
        return {"config": config, "run": str(run.out), "mode": mode, "n_images": len(info.paths), "dim": dim}

    with folder:
        images = ImageData(info)
        try:
            x = flat_unit_range(images)
        finally:
            images.close()
        model = fit_gaussian(x, max_full_dim=DEFAULT_MAX_FULL_DIM, seed=run.seed)
        del x
        config["rank"] = int(model["scales"].numel())
        snapshot = folder.save_fitted("mad.gaussian", config, model, len(info.paths))
        seconds = time.perf_counter() - t0
        folder.log({"kimg": 0.0, "nimg": 0, "n_images": len(info.paths), "dim": dim, "mode": mode, "rank": config["rank"], "seconds": round(seconds, 4)})
        shape = (GRID_IMAGES, info.height, info.width, info.channels)
        folder.write_image(fakes_name(0), image_grid(to_uint8(sample_gaussian(model, range(GRID_IMAGES))).reshape(shape).numpy()))
    return {
        "run": str(run.out),
        "snapshot": str(snapshot),
        "latest": str(folder.latest),
        "model": "gaussian",
        "mode": mode,
        "rank": config["rank"],
        "n_images": len(info.paths),
        "dim": dim,
        "seconds": round(time.perf_counter() - t0, 3),
    }
