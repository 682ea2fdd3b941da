"""Bundled real data: scikit-learn's handwritten digits written as an image folder.

The digits (1,797 8×8 greyscale images, values 0..16, shipped inside scikit-learn) need
no download, so every example and test can start a loop from real data on a fresh
machine. They are upscaled to a power-of-two resolution because the StyleGAN2 networks
grow by factors of two from 4×4.

Upscaling: values 0..16 are first mapped linearly to 0..255 (16 -> 255), then resized
with PIL's bicubic filter. Bicubic keeps strokes smooth and round like handwriting;
nearest would give 4×4 blocks and Lanczos rings visibly around strokes when a tiny
8×8 image is enlarged 4-8×. Overshoot is clipped to 0..255 by PIL.

The train/test split is stratified by digit (20 % of each digit held out), drawn from
`seed`, and independent of `--limit`, so a small training folder never contains an image
of the held-out set that metrics compare against. `--limit N` takes the first N images
of the split in a fixed order (also from `seed`) that deals the digits round-robin, so
small folders hold every digit in near-equal shares, and a larger limit is a superset
of a smaller one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mad_cli import __version__, flags
from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_write_text, provenance_tags, write_png
from mad_cli.output import progress
from mad_cli.outputs import OutputFolder

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
DATASET_NAME = "sklearn-digits"
#: The largest size any model trains on (StyleGAN2 at 1024²); above it a folder of 1,797
#: upscaled 8×8 digits would only cost disk and time (--resolution 1048576 would need terabytes).
MAX_RESOLUTION = 1024


def _check_resolution(resolution: int) -> None:
    value = flags.count(resolution, "--resolution", low=1, high=2**31)
    assert value is not None
    if not 8 <= value <= MAX_RESOLUTION or value & (value - 1):
        raise MadError(f"--resolution {resolution}: must be a power of two from 8 to {MAX_RESOLUTION} (8, 16, 32, ..., 1024)")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as (images float 0..16 N×8×8, labels int N), straight from scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def split_indices(labels: np.ndarray, split: str, seed: int) -> np.ndarray:
    """Dataset indices of `split` in the fixed order that `--limit` takes a prefix of.

    Per digit, a seeded permutation puts round(20 %) of its images into test and the rest
    into train. The order then deals the digits round-robin (each round one image of
    every digit, in a seeded order), so any prefix holds all digits in near-equal shares.
    Our own code rather than sklearn's train_test_split, so the split cannot change with
    a scikit-learn upgrade.
    """
    if split not in SPLITS:
        raise MadError(f"--split {split}: expected one of {', '.join(SPLITS)}")
    rng = np.random.default_rng([seed, 0])
    members_of: dict[str, list[list[int]]] = {"train": [], "test": []}
    for digit in np.unique(labels):
        members = np.flatnonzero(labels == digit)
        members = members[rng.permutation(len(members))]
        n_test = int(round(TEST_FRACTION * len(members)))
        members_of["test"].append(members[:n_test].tolist())
        members_of["train"].append(members[n_test:].tolist())
    if split == "all":
        per_digit = [tr + te for tr, te in zip(members_of["train"], members_of["test"])]
    else:
        per_digit = members_of[split]
    order_rng = np.random.default_rng([seed, 1, SPLITS.index(split)])
    dealt: list[int] = []
    for r in range(max(len(m) for m in per_digit)):
        round_members = [m[r] for m in per_digit if r < len(m)]
        dealt.extend(round_members[i] for i in order_rng.permutation(len(round_members)))
    return np.asarray(dealt, dtype=np.int64)


def digit_to_uint8(image: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    """One 8×8 digit (0..16) as uint8 resolution×resolution (×3 when channels=3)."""
    grey = np.clip(np.rint(np.asarray(image, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    img = Image.fromarray(grey, "L")
    if resolution != grey.shape[0]:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if channels == 3:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def write_digits(
    out: str | os.PathLike[str],
    resolution: int = 32,
    channels: int = 1,
    limit: int | None = None,
    split: str = "train",
    seed: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Write the digits of `split` as PNGs tagged origin=real, plus labels.csv and dataset.json.

    Files are named by their index in scikit-learn's dataset (`0042.png`), so the same
    digit has the same name in every folder made from it, and train and test never share
    a name. Returns the summary row (count, split, resolution, channels, out, digits).
    """
    _check_resolution(resolution)
    if isinstance(channels, bool) or channels not in (1, 3):
        raise MadError(f"--channels {channels}: expected 1 or 3")
    limit = flags.count(limit, "--limit")
    seed = flags.seed(seed)
    assert seed is not None
    images, labels = load_digits_arrays()
    indices = split_indices(labels, split, seed)
    if limit is not None:
        if limit > len(indices):
            raise MadError(f"--limit {limit}: the {split} split has only {len(indices)} images")
        indices = indices[:limit]
    written = sorted(int(i) for i in indices)
    base_tags = provenance_tags("real")
    counts = np.bincount(labels[written], minlength=10)

    with OutputFolder(out, command="dataset digits", flag="OUT", force=force) as staged, progress(len(written), "digits") as bar:
        rows = []
        for index in written:
            name = f"{index:04d}.png"
            arr = digit_to_uint8(images[index], resolution, channels)
            tags = {**base_tags, "dataset": DATASET_NAME, "index": index, "label": int(labels[index])}
            write_png(staged.stage(name), arr, tags, fsync=False)
            rows.append((name, int(labels[index])))
            bar.advance()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "label"])
        writer.writerows(rows)
        atomic_write_text(staged.stage("labels.csv"), buf.getvalue(), fsync=False)
        info = {
            "dataset": DATASET_NAME,
            "mad_version": __version__,
            "split": split,
            "test_fraction": TEST_FRACTION,
            "seed": seed,
            "limit": limit,
            "resolution": resolution,
            "channels": channels,
            "filter": "0..16 -> 0..255 linear, then PIL bicubic",
            "count": len(rows),
            "per_digit": {str(d): int(c) for d, c in enumerate(counts)},
        }
        atomic_write_text(staged.stage("dataset.json"), json.dumps(info, indent=2) + "\n", fsync=False)

    return {
        "count": len(rows),
        "split": split,
        "resolution": resolution,
        "channels": channels,
        "seed": seed,
        "out": str(Path(out)),
        "per_digit": info["per_digit"],
    }
