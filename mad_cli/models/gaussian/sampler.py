"""`mad sample` for a Gaussian snapshot: x = μ + ψ·(deviation), i.e. N(μ, ψ²Σ)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import to_uint8
from mad_cli.models.gaussian.model import sample_gaussian
from mad_cli.models.gaussian.options import GaussianSampleOptions

MODEL_TENSORS = ("mean", "components", "scales", "residual_std")


def image_shape(config: Any, path: Path | str) -> tuple[int, int, int]:
    """(H, W, C) of a gaussian snapshot's images."""
    try:
        return int(config["height"]), int(config["width"]), int(config["channels"])
    except (KeyError, TypeError, ValueError):
        raise MadError(f"{path}: gaussian snapshot config lacks height/width/channels") from None


def check_model(snap: dict[str, Any], path: Path | str) -> tuple[dict[str, torch.Tensor], tuple[int, int, int]]:
    """The model tensors and image shape, checked against each other before any use."""
    model = snap.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), torch.Tensor) for k in MODEL_TENSORS):
        raise MadError(f"{path}: gaussian snapshot lacks its model tensors ({', '.join(MODEL_TENSORS)})")
    shape = image_shape(snap.get("config") or {}, path)
    dim = math.prod(shape)
    m = {k: model[k] for k in MODEL_TENSORS}
    k = m["scales"].numel()
    if (m["mean"].shape, m["residual_std"].shape, m["scales"].dim(), tuple(m["components"].shape)) != ((dim,), (dim,), 1, (dim, k)):
        raise MadError(f"{path}: gaussian snapshot's tensors do not fit its {shape[0]}×{shape[1]}×{shape[2]} images")
    return m, shape


class GaussianSampler:
    model = "gaussian"

    def __init__(self, snap: dict[str, Any], path: Path, device: torch.device, options: GaussianSampleOptions):
        self._model, self.shape = check_model(snap, path)
        self.device = device
        self.psi = float(options.psi)
        self.tags = {"psi": repr(self.psi)}
        self.summary = {"psi": self.psi}
        self.step_multiple = 1

    def image_tags(self, seed: int) -> dict[str, str]:
        return {}

    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        x = sample_gaussian(self._model, list(seeds), psi=self.psi, device=self.device)
        return to_uint8(x).reshape(len(seeds), *self.shape).cpu().numpy()


def build_sampler(snap: dict[str, Any], path: Path, device: torch.device, options: GaussianSampleOptions) -> GaussianSampler:
    return GaussianSampler(snap, path, device, options)
