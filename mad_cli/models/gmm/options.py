"""`mad train --model gmm` and `mad sample` flags for the PCA + Gaussian-mixture model (light: no torch, no sklearn).

A flag left out (None) means the default below, or, when fine-tuning with `--resume
SNAPSHOT`, the snapshot's value (the PCA and the mixture's shape are its architecture).
"""

from __future__ import annotations

from dataclasses import dataclass

from mad_cli import flags
from mad_cli.models.options import Options, option

COVARIANCE_TYPES = ("full", "diag", "tied", "spherical")
DEFAULT_PCA_DIMS = 32
DEFAULT_COMPONENTS = 20
#: Per class on a labelled folder: 20 full-covariance components per digit class (about
#: 7 images each) put samples nearer the training images than held-out digits are.
DEFAULT_COMPONENTS_PER_CLASS = 5
DEFAULT_COVARIANCE = "full"


@dataclass
class GMMTrainOptions(Options):
    pca_dims: int | None = option(
        None, "--pca-dims", f"gmm: whitened PCA dimensions the mixture lives in (default {DEFAULT_PCA_DIMS}).",
        type=int, check=flags.bounded(flags.count, low=1, high=100_000), metavar="D",
    )
    components: int | None = option(
        None, "--components", f"gmm: mixture components (per class on a labelled folder; default {DEFAULT_COMPONENTS}, or {DEFAULT_COMPONENTS_PER_CLASS} per class).",
        type=int, check=flags.bounded(flags.count, low=1, high=100_000), metavar="K",
    )
    covariance: str | None = option(
        None, "--covariance", f"gmm: covariance type of the components, {', '.join(COVARIANCE_TYPES)} (scikit-learn's; default {DEFAULT_COVARIANCE}).",
        type=str, check=flags.bounded(flags.choice, choices=COVARIANCE_TYPES),
    )


@dataclass
class GMMSampleOptions(Options):
    psi: float = option(1.0, "--psi", "Sampling bias: truncation psi, w = w_avg + psi (w - w_avg); Gaussian/GMM: covariance x psi^2. 1 = none.", type=float, check=flags.bounded(flags.non_negative, high=100.0))
    class_: int | None = option(None, "--class", "Conditional models: draw every image of class K (default: class of seed i is i mod classes).", type=int, check=flags.bounded(flags.count, low=0, high=1_000_000), metavar="K")
