"""`mad train --model ddpm` and `mad sample` flags for the diffusion model (light: no torch).

Sampling bias for diffusion is classifier-free guidance (Ho & Salimans 2022):
ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅). The MAD paper maps its sampling bias λ to w = 1/λ − 1,
i.e. λ = 1/(1 + w): w = 0 is unbiased (λ = 1, the default, as `--psi 1` is for StyleGAN2),
w = 1 is λ = 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

from mad_cli import flags
from mad_cli.models.ddpm.configs import PRESET_NAMES
from mad_cli.models.options import Options, option

SCHEDULES = ("cosine", "linear")


@dataclass
class DDPMTrainOptions(Options):
    cfg: str | None = option(
        None, "--cfg", "ddpm: tiny, small (CPU), cifar32, faces64 (GPU); default on CUDA by resolution, tiny on CPU.",
        type=str, check=flags.bounded(flags.choice, choices=PRESET_NAMES),
    )
    kimg: float | None = option(None, "--kimg", "Train until this many thousand real images have been shown (default: the preset's).", type=float, check=flags.bounded(flags.positive, high=1e6))
    batch: int | None = option(None, "--batch", "Global batch size, split across processes (default: the preset's).", type=int, check=flags.batch)
    batch_gpu: int | None = option(None, "--batch-gpu", "Samples per device per pass; smaller values accumulate gradients over several passes.", type=int, check=flags.batch)
    lr: float | None = option(None, "--lr", "AdamW learning rate (default: the preset's).", type=float, check=flags.bounded(flags.positive, high=1.0))
    p_uncond: float | None = option(None, "--p-uncond", "Probability of training a labelled image with the null label, for classifier-free guidance (default 0.1).", type=float, check=flags.bounded(flags.fraction, zero_ok=True))
    schedule: str | None = option(None, "--schedule", "Noise schedule, cosine (Nichol & Dhariwal) or linear (Ho et al.); default cosine.", type=str, check=flags.bounded(flags.choice, choices=SCHEDULES))
    mirror: bool = option(False, "--mirror", "Augment with left-right flips.", type=bool)
    snap_every: float | None = option(None, "--snap-every", "Snapshot (and fakes grid) every KIMG thousand images, and at the end.", type=float, check=flags.bounded(flags.positive, high=1e6), metavar="KIMG")


@dataclass
class DDPMSampleOptions(Options):
    guidance: float = option(0.0, "--guidance", "Classifier-free guidance w >= 0; the MAD paper's bias lambda = 1/(1+w) (w=1: lambda=0.5). 0 = none.", type=float, check=flags.bounded(flags.non_negative, high=1000.0), metavar="W")
    steps: int = option(50, "--steps", "DDIM sampling steps (1..1000).", type=int, check=flags.bounded(flags.count, low=1, high=1000))
    eta: float = option(0.0, "--eta", "DDIM eta, 0 = deterministic DDIM, 1 = ancestral (DDPM-like) noise.", type=float, check=flags.bounded(flags.non_negative, high=1.0))
    class_: int | None = option(None, "--class", "Conditional models: draw every image of class K (default: class of seed i is i mod classes).", type=int, check=flags.bounded(flags.count, low=0, high=1_000_000), metavar="K")
