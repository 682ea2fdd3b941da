"""`mad sample` for a gmm snapshot: each seed picks a component, then y = μ + ψ·B z in the PCA."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import to_uint8
from mad_cli.models.gmm.model import MODEL_TENSORS, component_factors, sample_gmm
from mad_cli.models.gmm.options import GMMSampleOptions
from mad_cli.models.labels import check_class, seed_label


def check_model(snap: dict[str, Any], path: Path | str) -> tuple[dict[str, torch.Tensor], tuple[int, int, int], int]:
    """The model tensors, image shape (H, W, C) and number of classes, checked against each other."""
    model = snap.get("model")
    if not isinstance(model, dict) or not all(isinstance(model.get(k), torch.Tensor) for k in MODEL_TENSORS):
        raise MadError(f"{path}: gmm snapshot lacks its model tensors ({', '.join(MODEL_TENSORS)})")
    config = snap.get("config") if isinstance(snap.get("config"), dict) else {}
    try:
        shape = (int(config["height"]), int(config["width"]), int(config["channels"]))
        classes = int(config.get("num_classes") or 0)
    except (KeyError, TypeError, ValueError):
        raise MadError(f"{path}: gmm snapshot config lacks height/width/channels") from None
    m = {k: model[k] for k in MODEL_TENSORS}
    dim = math.prod(shape)
    d = m["pca_scales"].numel()
    c, k = (tuple(m["weights"].shape) + (0, 0))[:2] if m["weights"].dim() == 2 else (0, 0)
    expected = {
        "pca_mean": (dim,), "pca_components": (d, dim), "pca_scales": (d,), "weights": (c, k), "means": (c, k, d), "covariances": (c, k, d, d),
    }
    bad = [name for name, want in expected.items() if tuple(m[name].shape) != want]
    if bad or c != max(classes, 1) or not k or not d:
        raise MadError(f"{path}: gmm snapshot's tensors do not fit its {shape[0]}×{shape[1]}×{shape[2]} images and {classes} classes ({(bad or ['weights'])[0]})")
    if not all(bool(torch.isfinite(v).all()) for v in m.values()):
        raise MadError(f"{path}: gmm snapshot holds non-finite values")
    if bool((m["weights"] < 0).any()) or bool((m["weights"].sum(dim=1) <= 0).any()):
        raise MadError(f"{path}: gmm snapshot has negative mixture weights")
    return m, shape, classes


def sample_images(
    model: dict[str, torch.Tensor], seeds: Sequence[int], classes: Sequence[int], shape: tuple[int, int, int], *, psi: float,
    factors: torch.Tensor | None = None,
) -> np.ndarray:
    """uint8 N×H×W×C images for `seeds` (class of each given), with sampling bias ψ."""
    if factors is None:
        factors = component_factors(model["covariances"])
    x = sample_gmm(model, factors, list(seeds), list(classes), psi=psi)
    return to_uint8(x).reshape(len(seeds), *shape).numpy()


class GMMSampler:
    model = "gmm"

    def __init__(self, snap: dict[str, Any], path: Path, device: torch.device, options: GMMSampleOptions):
        # The model is small and sampled in float64 on the CPU on every machine, so an image
        # never depends on the device either.
        self._model, self.shape, self.num_classes = check_model(snap, path)
        check_class(options.class_, self.num_classes, path)
        self._factors = component_factors(self._model["covariances"], where=str(path))
        self.options = options
        self.psi = float(options.psi)
        self.tags = {"psi": repr(self.psi)}
        self.summary = {"psi": self.psi}
        self.step_multiple = 1

    def _label(self, seed: int) -> int:
        return seed_label(seed, self.num_classes, self.options.class_) if self.num_classes else 0

    def image_tags(self, seed: int) -> dict[str, str]:
        return {"label": str(self._label(seed))} if self.num_classes else {}

    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        return sample_images(self._model, seeds, [self._label(s) for s in seeds], self.shape, psi=self.psi, factors=self._factors)


def build_sampler(snap: dict[str, Any], path: Path, device: torch.device, options: GMMSampleOptions) -> GMMSampler:
    return GMMSampler(snap, path, device, options)
