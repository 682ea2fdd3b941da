"""`mad train --model stylegan2` and `mad sample` flags for StyleGAN2 (light: no torch).

The augmentation flags are NVIDIA's (`--aug/--augpipe/--p/--target`, stylegan2-ada-pytorch's
train.py) and so is `--cond`. Each flag's own range is checked here; the rules between them
(`--aug fixed` needs `--p`, ...) are `configs.resolve_augment_config`'s, run by `validate`
when `--aug` is given and by the preset resolution otherwise (the preset picks the default
mode), so either way a bad combination is one line before any work.
"""

from __future__ import annotations

from dataclasses import dataclass

from mad_cli import flags
from mad_cli.models.options import Options, option
from mad_cli.models.stylegan2.configs import AUG_MODES, AUGPIPE_NAMES, CFG_NAMES, resolve_augment_config

NOISE_MODES = ("const", "random", "none")


@dataclass
class StyleGAN2TrainOptions(Options):
    cfg: str | None = option(
        None, "--cfg", "Preset, stylegan2: tiny, small (CPU), auto, paper256, paper512, paper1024 (NVIDIA's); default auto on CUDA, tiny on CPU.",
        type=str, check=flags.bounded(flags.choice, choices=CFG_NAMES),
    )
    kimg: float | None = option(None, "--kimg", "Train until this many thousand real images have been shown (default: the preset's).", type=float, check=flags.bounded(flags.positive, high=1e6))
    batch: int | None = option(None, "--batch", "Global batch size, split across processes (default: the preset's).", type=int, check=flags.batch)
    batch_gpu: int | None = option(None, "--batch-gpu", "Samples per device per pass; smaller values accumulate gradients over several passes.", type=int, check=flags.batch)
    gamma: float | None = option(None, "--gamma", "R1 regularisation weight (default: the preset's).", type=float, check=flags.bounded(flags.non_negative, high=1e6))
    mirror: bool = option(False, "--mirror", "Augment with left-right flips.", type=bool)
    snap_every: float | None = option(None, "--snap-every", "Snapshot (and fakes grid) every KIMG thousand images, and at the end.", type=float, check=flags.bounded(flags.positive, high=1e6), metavar="KIMG")
    aug: str | None = option(
        None, "--aug", "Discriminator augmentation: ada (adaptive p, NVIDIA's default), noaug, or fixed (p = --p); default ada, noaug for the CPU presets tiny/small.",
        type=str, check=flags.bounded(flags.choice, choices=AUG_MODES),
    )
    augpipe: str | None = option(
        None, "--augpipe", f"ADA's transforms, NVIDIA's presets: {', '.join(AUGPIPE_NAMES)} (default bgc: blit, geometry, colour).",
        type=str, check=flags.bounded(flags.choice, choices=AUGPIPE_NAMES),
    )
    p: float | None = option(None, "--p", "Augmentation probability for --aug fixed, in [0, 1].", type=float, check=flags.bounded(flags.fraction, zero_ok=True))
    target: float | None = option(None, "--target", "ADA's target for r_t = E[sign(D(real))], in [0, 1] (default 0.6).", type=float, check=flags.bounded(flags.fraction, zero_ok=True))
    ada_kimg: float | None = option(
        None, "--ada-kimg", "ADA's speed: p can go from 0 to 1 in this many thousand images (NVIDIA: 500; default: the preset's).",
        type=float, check=flags.bounded(flags.positive, high=1e6), metavar="KIMG",
    )
    cond: bool = option(False, "--cond", "Train a class-conditional model on the folder's labels (labels.csv, dataset.json or mad:label tags).", type=bool)

    def validate(self) -> "StyleGAN2TrainOptions":
        super().validate()
        if self.aug is not None:  # otherwise the preset's mode decides, checked when the config is resolved
            resolve_augment_config(self.aug, self.augpipe, self.p, self.target, ada_kimg=self.ada_kimg)
        return self


@dataclass
class StyleGAN2SampleOptions(Options):
    psi: float = option(1.0, "--psi", "Sampling bias: truncation psi, w = w_avg + psi (w - w_avg); Gaussian/GMM: covariance x psi^2. 1 = none.", type=float, check=flags.bounded(flags.non_negative, high=100.0))
    psi_cutoff: int | None = option(None, "--psi-cutoff", "Truncate only the first K w's (coarse layers).", type=int, check=flags.bounded(flags.count, low=0, high=10_000), metavar="K")
    noise_mode: str = option("const", "--noise-mode", "Noise inputs: const, random (seeded per image) or none.", type=str, check=flags.bounded(flags.choice, choices=NOISE_MODES))
    class_: int | None = option(None, "--class", "Conditional models: draw every image of class K (default: class of seed i is i mod classes).", type=int, check=flags.bounded(flags.count, low=0, high=1_000_000), metavar="K")
