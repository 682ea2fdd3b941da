"""How `mad merge` combines two gmm snapshots (see `mad_cli.merge`).

Every parameter is merged by θ = (1 − W) θ_B + W θ_O, component by component: the PCA
(mean, directions, scales) and, per class and component, the weight, the mean and the
covariance. That is meaningful when component k means the same in both snapshots, which
is what fine-tuning gives (`mad train --resume BASE` keeps BASE's PCA and starts EM from
its mixture, so OTHER's component k is BASE's component k, moved); two independent fits
merge too, like two independently trained networks do, but their components do not
correspond. The architecture is the image shape, the PCA dimensions, the number of
components and the covariance type; the label set is the number of classes.

A result that is no mixture of Gaussians is refused with one line: a negative weight, or
a covariance that is not positive semi-definite (W outside [0, 1] can give both).
"""

from __future__ import annotations

from typing import Any

import torch

from mad_cli.errors import MadError
from mad_cli.merge import MergeSpec, Names, lerp
from mad_cli.models.gmm.model import MODEL_TENSORS
from mad_cli.models.gmm.sampler import check_model

#: Relative size below which a negative eigenvalue or weight is round-off.
TOLERANCE = 1e-9


def architecture(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config.get(k) for k in ("height", "width", "channels", "pixel_range", "pca_dims", "components", "covariance")}


def classes(config: dict[str, Any]) -> int:
    return int(config.get("num_classes") or 0)


def merge_model(base: dict[str, Any], other: dict[str, Any], weight: float, names: Names) -> tuple[dict[str, Any], dict[str, Any]]:
    mb, _, _ = check_model(base, names.base)
    mo, _, _ = check_model(other, names.other)
    model = {k: lerp(mb[k], mo[k], weight) for k in MODEL_TENSORS}
    w = model["weights"]
    if float(w.min()) < -TOLERANCE:
        c, k = divmod(int(w.argmin()), w.shape[1])
        raise MadError(f"{names.flag}: component {k} of class {c} gets a negative mixture weight ({float(w.min()):.3g}); choose W closer to [0, 1]")
    model["weights"] = w.clamp_min(0)
    cov = model["covariances"]
    evals = torch.linalg.eigvalsh((cov + cov.transpose(-1, -2)) / 2)
    scale = evals.abs().amax(dim=-1).clamp_min(1e-300)
    worst = (evals[..., 0] / scale).flatten()
    if float(worst.min()) < -TOLERANCE:
        c, k = divmod(int(worst.argmin()), cov.shape[1])
        raise MadError(
            f"{names.flag}: component {k} of class {c} gets a covariance that is not positive semi-definite "
            f"(eigenvalue {float(evals[c, k, 0]):.3g}); choose W closer to [0, 1]"
        )
    return {"model": model}, {}


SPEC = MergeSpec(networks=(), architecture=architecture, classes=classes, model=merge_model)
