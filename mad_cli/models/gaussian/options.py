"""`mad train --model gaussian` and `mad sample` flags for the Gaussian (light: no torch).

The Gaussian is fitted in closed form, so it takes no training flags: `--kimg`, `--cfg`
and the like are refused for it with one line rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from mad_cli import flags
from mad_cli.models.options import Options, option


@dataclass
class GaussianTrainOptions(Options):
    pass


@dataclass
class GaussianSampleOptions(Options):
    psi: float = option(1.0, "--psi", "Sampling bias: truncation psi, w = w_avg + psi (w - w_avg); Gaussian/GMM: covariance x psi^2. 1 = none.", type=float, check=flags.bounded(flags.non_negative, high=100.0))
