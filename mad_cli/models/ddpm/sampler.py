"""`mad sample` for ddpm snapshots: DDIM from the EMA weights, with classifier-free guidance.

Seed i's starting noise and every step's noise come from seed i's own generator, and the
U-Net always runs on chunks of the same size, so an image depends on its seed (and class)
alone: byte-identical across `--batch`, reruns and torchrun processes. Conditional models
draw class `i mod classes` for seed i (every class equally represented) unless `--class K`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.errors import MadError
from mad_cli.imagedir import to_uint8
from mad_cli.models.labels import check_class, seed_label
from mad_cli.models.ddpm.diffusion import GaussianDiffusion, sample
from mad_cli.models.ddpm.options import DDPMSampleOptions
from mad_cli.models.ddpm.training import build_unet, check_snapshot

#: Images per U-Net forward (twice that with guidance). Larger than StyleGAN2's chunk: a
#: small U-Net on a CPU runs far more images per second in chunks of 64 than of 16.
CHUNK = {"cpu": 64, "cuda": 256}


class DDPMSampler:
    model = "ddpm"

    def __init__(self, snap: dict[str, Any], path: Path, device: torch.device, options: DDPMSampleOptions):
        config = check_snapshot(snap, path, flag=str(path), complete=False)
        try:
            self.num_classes = int(config["unet"]["num_classes"])
            p_uncond = float((config.get("train") or {}).get("p_uncond", 0.1))
        except (TypeError, ValueError, KeyError) as exc:
            raise MadError(f"{path}: malformed config.unet/config.train ({exc})") from None
        check_class(options.class_, self.num_classes, path)
        if options.guidance and not self.num_classes:
            raise MadError(f"--guidance {options.guidance:g}: {path} is an unconditional model; classifier-free guidance needs one trained on a labelled folder")
        if options.guidance and p_uncond == 0:
            raise MadError(f"--guidance {options.guidance:g}: {path} was trained with --p-uncond 0, so it never learned the unconditional ε that guidance needs")
        self.net = build_unet(config, snap["ema"], path, str(path)).to(device).eval().requires_grad_(False)
        try:
            self.diffusion = GaussianDiffusion.from_schedule(**config["diffusion"])
        except (TypeError, ValueError, KeyError) as exc:
            raise MadError(f"{path}: malformed config.diffusion ({exc})") from None
        if options.steps > self.diffusion.num_timesteps:
            raise MadError(f"--steps {options.steps}: {path}'s diffusion has only {self.diffusion.num_timesteps} timesteps")
        res, channels = int(config["unet"]["resolution"]), int(config["unet"]["in_channels"])
        self.shape = (res, res, channels)
        self.device, self.options = device, options
        self.chunk = CHUNK.get(device.type, CHUNK["cpu"])
        self.step_multiple = self.chunk
        self.tags = {"guidance": repr(float(options.guidance)), "steps": str(options.steps), "eta": repr(float(options.eta))}
        self.summary = {"guidance": float(options.guidance), "steps": options.steps, "eta": float(options.eta)}

    def image_tags(self, seed: int) -> dict[str, str]:
        return {"label": str(seed_label(seed, self.num_classes, self.options.class_))} if self.num_classes else {}

    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        labels = [seed_label(s, self.num_classes, self.options.class_) for s in seeds] if self.num_classes else None
        o = self.options
        x = sample(
            self.net, self.diffusion, list(seeds), labels, shape=(self.shape[2], self.shape[0], self.shape[1]), device=self.device,
            steps=o.steps, eta=o.eta, guidance=o.guidance, chunk=self.chunk,
        )
        return to_uint8(x).permute(0, 2, 3, 1).numpy()


def build_sampler(snap: dict[str, Any], path: Path, device: torch.device, options: DDPMSampleOptions) -> DDPMSampler:
    return DDPMSampler(snap, path, device, options)
