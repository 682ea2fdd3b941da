"""`mad train --model gmm`: fit the PCA and the mixture(s) to a folder and leave a run folder.

Like the Gaussian, "training" is one deterministic fit that writes what every backend
writes (config.json, log.jsonl, snapshot-000000.pt, latest.pt, fakes-000000.png), so a
loop script treats it like any model:

* no `--resume`: a new fit (PCA, then k-means-started EM seeded by `--seed`);
* `--resume latest`: refits with the run's stored settings (the same data gives the same
  snapshot, byte for byte); flags asking for other settings are ignored, with a warning;
* `--resume SNAPSHOT`: fine-tuning. The snapshot's PCA is kept (it is the coordinate
  system the mixture lives in) and EM starts from its mixture, so component k of the
  result still corresponds to component k of the snapshot: what `mad merge` needs to
  make sense of a Neon-style extrapolation between the two.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.devices import resolve_device
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid
from mad_cli.models import RunRequest
from mad_cli.models.data import FolderInfo, ImageData, check_labels_fit, flat_unit_range, scan_folder
from mad_cli.models.dist import single_process
from mad_cli.models.gmm.model import (
    MAX_ITER,
    PIXEL_RANGE,
    REG_COVAR,
    decoder,
    encode,
    fit_mixture,
    fit_pca,
)
from mad_cli.models.gmm.options import (
    DEFAULT_COMPONENTS,
    DEFAULT_COMPONENTS_PER_CLASS,
    DEFAULT_COVARIANCE,
    DEFAULT_PCA_DIMS,
    GMMTrainOptions,
)
from mad_cli.models.gmm.sampler import check_model, sample_images
from mad_cli.models.runfolder import RunFolder, fakes_name
from mad_cli.models.snapshot import load_snapshot

FORMAT = "mad.gmm"
GRID_IMAGES = 64
SETTINGS = (("pca_dims", "--pca-dims"), ("components", "--components"), ("covariance", "--covariance"))


def _settings(options: GMMTrainOptions, stored: dict[str, Any] | None, folder: RunFolder, where: str, labelled: bool) -> dict[str, Any]:
    """PCA dimensions, components and covariance type: the flags', or a snapshot's when it has them."""
    components = DEFAULT_COMPONENTS_PER_CLASS if labelled else DEFAULT_COMPONENTS
    defaults = {"pca_dims": DEFAULT_PCA_DIMS, "components": components, "covariance": DEFAULT_COVARIANCE}
    given = {name: getattr(options, name) for name, _ in SETTINGS}
    if stored is None:
        return {name: given[name] if given[name] is not None else defaults[name] for name, _ in SETTINGS}
    try:
        settings = {"pca_dims": int(stored["pca_dims"]), "components": int(stored["components"]), "covariance": str(stored["covariance"])}
    except (KeyError, TypeError, ValueError):
        raise MadError(f"{where}: gmm snapshot config lacks pca_dims/components/covariance") from None
    differ = [(flag, given[name], settings[name]) for name, flag in SETTINGS if given[name] is not None and given[name] != settings[name]]
    if differ and folder.mode == "init":
        flag, value, theirs = differ[0]
        raise MadError(f"{flag} {value}: fine-tuning keeps the snapshot's {theirs} ({where}); leave the flag out or train from scratch")
    folder.warn_ignored({flag: settings[name] for name, flag in SETTINGS}, {flag: given[name] for name, flag in SETTINGS})
    return settings


def _class_indices(info: FolderInfo, classes: int) -> list[np.ndarray]:
    if not classes:
        return [np.arange(len(info.paths))]
    assert info.labels is not None
    return [np.flatnonzero(info.labels == c) for c in range(classes)]


def _check_counts(info: FolderInfo, groups: list[np.ndarray], settings: dict[str, Any], data: Path, *, new_pca: bool) -> None:
    """Too few images for the PCA or for a class's components: one line, before any work."""
    dim = info.height * info.width * info.channels
    if settings["pca_dims"] > dim:
        raise MadError(f"--pca-dims {settings['pca_dims']}: larger than the {dim} pixels of {data}'s {info.height}×{info.width}×{info.channels} images")
    if new_pca and settings["pca_dims"] > len(info.paths) - 1:
        raise MadError(f"--pca-dims {settings['pca_dims']}: {len(info.paths)} images span at most {len(info.paths) - 1} dimensions; use fewer dimensions or more images")
    for c, idx in enumerate(groups):
        if len(idx) < settings["components"]:
            where = f"class {c} of {data}" if len(groups) > 1 else str(data)
            raise MadError(f"--components {settings['components']}: {where} has only {len(idx)} images; use fewer components (or more images)")


def train(data: Path, run: RunRequest, options: GMMTrainOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    resolve_device(run.device)  # the fit runs on the CPU anywhere, but a bad --device still fails
    folder = RunFolder(run.out, single_process("gmm"), data=data, resume=run.resume)
    info = scan_folder(data, square_pow2=False, labels=True, model="the GMM")
    dim = info.height * info.width * info.channels

    init: dict[str, torch.Tensor] | None = None
    init_classes = 0
    init_from: str | None = None
    stored: dict[str, Any] | None = None
    where = ""
    if folder.mode in ("init", "continue"):
        assert folder.resume_path is not None
        where = str(folder.resume_path)
        snap = load_snapshot(folder.resume_path)
        if snap.get("format") != FORMAT:
            raise MadError(f"--resume {run.resume}: {where} is a {snap.get('format')} snapshot, not gmm")
        stored = snap.get("config") if isinstance(snap.get("config"), dict) else {}
        if folder.mode == "init":
            init, shape, init_classes = check_model(snap, folder.resume_path)
            init_from = where
        elif stored.get("init_from"):
            # A fine-tuning run refits from the snapshot it started from, as it did the first time.
            init_from = str(stored["init_from"])
            if not Path(init_from).is_file():
                raise MadError(f"--resume latest: {run.out} was initialised from {init_from}, which is gone; refit into a new RUN")
            init, shape, init_classes = check_model(load_snapshot(init_from), init_from)
        if init is not None and shape != (info.height, info.width, info.channels):
            raise MadError(f"--resume {run.resume}: {init_from} makes {shape[0]}×{shape[1]}×{shape[2]} images, {data} holds {info.height}×{info.width}×{info.channels}")
    if init is not None:
        # The snapshot's label set is part of what fine-tuning keeps: a conditional one needs
        # labels it knows, an unconditional one fits its single mixture to every image.
        classes = init_classes
        if classes:
            check_labels_fit(info, classes, str(init_from))
    else:
        classes = info.num_classes
    settings = _settings(options, stored, folder, where, labelled=bool(classes))
    groups = _class_indices(info, classes)
    _check_counts(info, groups, settings, data, new_pca=init is None)

    config: dict[str, Any] = {
        "model": "gmm",
        "cfg": None,
        **info.describe(),
        "num_classes": classes,
        "n_images": len(info.paths),
        "height": info.height,
        "width": info.width,
        "dim": dim,
        "pixel_range": list(PIXEL_RANGE),
        **settings,
        "reg_covar": REG_COVAR,
        "max_iter": MAX_ITER,
        "seed": run.seed,
    }
    if init_from is not None:
        config["init_from"] = init_from
    if run.dry_run:
        return {"config": config, "run": str(run.out), "classes": classes, **settings, "n_images": len(info.paths), "dim": dim}

    with folder:
        images = ImageData(info)
        try:
            x = flat_unit_range(images)
        finally:
            images.close()
        pca = {k: init[k] for k in ("pca_mean", "pca_components", "pca_scales")} if init is not None else fit_pca(x, settings["pca_dims"])
        z = encode(x, pca)
        # How much of the pixel variance the PCA keeps: the ceiling on what the mixture can model.
        explained = float((z @ decoder(pca).numpy()).var(axis=0, ddof=1).sum() / max(float(x.var(axis=0, ddof=1).sum()), 1e-300))
        del x
        fits, rows = [], []
        for c, idx in enumerate(groups):
            start = None
            if init is not None:
                start = {k: init[k][c].numpy() for k in ("weights", "means", "covariances")}
            params, fit_info = fit_mixture(z[idx], settings["components"], settings["covariance"], seed=run.seed, init=start)
            fits.append(params)
            rows.append({"class": c if classes else None, "n_images": len(idx), **fit_info})
        model = {
            **{k: v.to(torch.float64).contiguous() for k, v in pca.items()},
            **{k: torch.from_numpy(np.stack([f[k] for f in fits])).contiguous() for k in ("weights", "means", "covariances")},
        }
        snapshot = folder.save_fitted(FORMAT, config, model, len(info.paths))
        for row in rows:
            folder.log({"kimg": 0.0, "nimg": 0, **row})
        seconds = time.perf_counter() - t0
        folder.log({"kimg": 0.0, "nimg": 0, "n_images": len(info.paths), "classes": classes, **settings, "explained_variance": round(explained, 6), "seconds": round(seconds, 4)})
        seeds = range(GRID_IMAGES)
        grid = sample_images(model, seeds, [c % max(classes, 1) for c in seeds], (info.height, info.width, info.channels), psi=1.0)
        folder.write_image(fakes_name(0), image_grid(grid))
    return {
        "run": str(run.out),
        "snapshot": str(snapshot),
        "latest": str(folder.latest),
        "model": "gmm",
        "classes": classes,
        **settings,
        "n_images": len(info.paths),
        "converged": all(r["converged"] for r in rows),
        "seconds": round(time.perf_counter() - t0, 3),
    }
