"""Presets of the ddpm backend, resolved into one JSON-able config per run.

Two presets for a CPU and two for a GPU:

- `tiny` (1.19 M parameters with 10 classes): the digits preset. It learns 16² digits on a
  CPU in minutes: 30 kimg (≈470 steps of 64) gave fd_digits 1.9, recall 0.87, coverage
  0.99 with DDIM-25 (benchmarks/ddpm_core.py digits). Its EMA is short — half-life 5 kimg
  (≈80 steps), ramped up as 0.25 × the images seen — so a run of a few tens of kimg
  samples from an average of its last ~100 steps; at 30 kimg this beat half-lives of 1 and
  3 kimg for DDIM η = 0 (fd 1.7 vs 2.2 and 1.8 on 500 samples).
- `small` (≈4.7 M): the same shape, twice as wide; a longer CPU run or a small GPU.
- `cifar32`: DDPM's CIFAR-10 network (Ho et al. 2020): 128 channels, multipliers
  (1, 2, 2, 2), two residual blocks per level, single-head attention at 16², dropout 0.1,
  the timestep added to the features (no scale-shift norm) — 35.7 M parameters at 32² RGB,
  the paper's count. Adam at 2e-4 with a 5,000-step warm-up (640 kimg at batch 128) and
  gradient clipping at 1, EMA 0.9999 per step.
- `faces64`: ADM-like at 64² (Dhariwal & Nichol 2021) for faces, flowers or birds: 128
  channels, multipliers (1, 2, 3, 4), two residual blocks per level, attention at 32², 16²
  and 8² with 64 channels per head, scale-shift norm, dropout 0.1 — ≈93 M parameters at 64²
  RGB (ADM's ImageNet-64 model is wider: 192 channels, three blocks). lr 1e-4, EMA 0.9999.

Both GPU presets train with the cosine schedule (Nichol & Dhariwal) by default, as all
presets do; `linear` is Ho et al.'s.

Units. `batch` is the global batch (images per optimiser step, over all processes);
`kimg`, `warmup_kimg`, `tick_kimg`, `snap_kimg` and `ema_halflife_kimg` are thousands of
training images, like StyleGAN2's `--kimg`, so a budget means the same on one or eight
GPUs. The EMA follows StyleGAN2-ADA: after every step the EMA weights move toward the
weights with β = 0.5 ** (batch / (1000 · half-life)), where early in a run the half-life is
capped at `ema_rampup` × the images seen so far (None: no cap). The GPU presets state
ADM's per-step decay 0.9999 as the half-life it implies at their batch
(batch · ln 0.5 / ln 0.9999 images); their ramp-up only shortens the EMA while fewer than
half-life / ramp-up images have been seen, so a short GPU run still samples from trained
weights and a full-length one uses ADM's EMA. `ema_beta` and `learning_rate` below are
these definitions in code.

Resolution. A preset lists channel multipliers for its largest setting; `resolve_config`
keeps the leading levels while the feature map can still be halved (the smallest map is
at least 2×2 and the side stays divisible), so `tiny` is 8→4→2 at 8² and 32→16→8 at 32².
Attention is kept at the preset's listed sides that exist at this resolution; the middle
block always has attention.

`UNet(**config["unet"])` rebuilds the network and
`GaussianDiffusion.from_schedule(**config["diffusion"])` the process.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from mad_cli.errors import MadError

PRESET_NAMES = ("tiny", "small", "cifar32", "faces64")

_EMA_HALFLIFE_PER_STEP_0_9999 = math.log(0.5) / math.log(0.9999)  # ≈ 6931 steps


def _adm_ema_kimg(batch: int) -> float:
    """The half-life in kimg of a per-step EMA decay of 0.9999 at this batch."""
    return round(batch * _EMA_HALFLIFE_PER_STEP_0_9999 / 1000, 3)


# unet: UNet kwargs except resolution/in_channels/num_classes; attention_resolutions are sides.
# train: see the module docstring for units.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        device="cpu",
        unet=dict(
            model_channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[8],
            num_heads=1, num_head_channels=32, dropout=0.0, use_scale_shift_norm=True,
        ),
        diffusion=dict(schedule="cosine", timesteps=1000),
        train=dict(
            batch=64, lr=1e-3, betas=[0.9, 0.999], weight_decay=0.0, warmup_kimg=1.0, grad_clip=1.0,
            ema_halflife_kimg=5.0, ema_rampup=0.25, p_uncond=0.1, kimg=30.0, tick_kimg=2.0, snap_kimg=10.0,
        ),
    ),
    "small": dict(
        device="cpu",
        unet=dict(
            model_channels=64, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[8],
            num_heads=1, num_head_channels=32, dropout=0.0, use_scale_shift_norm=True,
        ),
        diffusion=dict(schedule="cosine", timesteps=1000),
        train=dict(
            batch=64, lr=5e-4, betas=[0.9, 0.999], weight_decay=0.0, warmup_kimg=2.0, grad_clip=1.0,
            ema_halflife_kimg=10.0, ema_rampup=0.25, p_uncond=0.1, kimg=100.0, tick_kimg=4.0, snap_kimg=25.0,
        ),
    ),
    "cifar32": dict(
        device="gpu",
        unet=dict(
            model_channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2, attention_resolutions=[16],
            num_heads=1, num_head_channels=-1, dropout=0.1, use_scale_shift_norm=False,
        ),
        diffusion=dict(schedule="cosine", timesteps=1000),
        train=dict(
            batch=128, lr=2e-4, betas=[0.9, 0.999], weight_decay=0.0, warmup_kimg=640.0, grad_clip=1.0,
            ema_halflife_kimg=_adm_ema_kimg(128), ema_rampup=0.05, p_uncond=0.1, kimg=102400.0, tick_kimg=64.0, snap_kimg=2560.0,
        ),
    ),
    "faces64": dict(
        device="gpu",
        unet=dict(
            model_channels=128, channel_mult=[1, 2, 3, 4], num_res_blocks=2, attention_resolutions=[32, 16, 8],
            num_heads=4, num_head_channels=64, dropout=0.1, use_scale_shift_norm=True,
        ),
        diffusion=dict(schedule="cosine", timesteps=1000),
        train=dict(
            batch=64, lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0, warmup_kimg=0.0, grad_clip=1.0,
            ema_halflife_kimg=_adm_ema_kimg(64), ema_rampup=0.05, p_uncond=0.1, kimg=25600.0, tick_kimg=32.0, snap_kimg=1280.0,
        ),
    ),
}

# Preset kimg for the GPU presets: cifar32 is DDPM's 800k steps at batch 128; faces64 is
# 400k steps at batch 64, in the range of ADM's 64² runs on smaller data sets.

MIN_RESOLUTION = 4


def _levels(resolution: int, channel_mult: list[int]) -> list[int]:
    """The leading multipliers for which every level halves evenly and the last map is ≥ 2²."""
    n = 1
    while n < len(channel_mult) and resolution % (2**n) == 0 and resolution >> n >= 2:
        n += 1
    return channel_mult[:n]


def resolve_config(preset: str, *, resolution: int, channels: int, num_classes: int = 0) -> dict[str, Any]:
    """The full JSON-able config of `preset` for `resolution`² images with `channels` channels.

    num_classes > 0 makes the model class-conditional (labels 0..num_classes-1 plus NULL).
    Training values can be overridden by the caller in config["train"] afterwards.
    """
    if preset not in PRESETS:
        raise MadError(f"--cfg {preset}: expected one of {', '.join(PRESET_NAMES)}")
    if resolution < MIN_RESOLUTION:
        raise MadError(f"images of {resolution}×{resolution} pixels are too small for ddpm (at least {MIN_RESOLUTION}×{MIN_RESOLUTION})")
    if channels not in (1, 3):
        raise MadError(f"images with {channels} channels: ddpm takes grey (1) or RGB (3) images")
    if num_classes < 0:
        raise ValueError("num_classes must be >= 0")
    spec = copy.deepcopy(PRESETS[preset])
    unet = spec["unet"]
    mult = _levels(resolution, unet["channel_mult"])
    sides = [resolution >> i for i in range(len(mult))]
    unet.update(
        resolution=int(resolution),
        in_channels=int(channels),
        num_classes=int(num_classes),
        channel_mult=mult,
        attention_resolutions=[r for r in unet["attention_resolutions"] if r in sides],
    )
    return dict(
        model="ddpm",
        preset=preset,
        resolution=int(resolution),
        channels=int(channels),
        num_classes=int(num_classes),
        unet=unet,
        diffusion=spec["diffusion"],
        train=spec["train"],
    )


def default_preset(resolution: int, device_type: str) -> str:
    """The preset when none is named: `tiny` on a CPU; on a GPU `cifar32` up to 32², else `faces64`."""
    if device_type != "cuda":
        return "tiny"
    return "cifar32" if resolution <= 32 else "faces64"


def parameter_count(config: dict[str, Any]) -> int:
    """Trainable parameters of config["unet"], counted on the meta device (no memory, no init cost)."""
    import torch

    from mad_cli.models.ddpm.unet import UNet

    with torch.device("meta"):
        net = UNet(**config["unet"])
    return sum(p.numel() for p in net.parameters())


def learning_rate(train: dict[str, Any], cur_nimg: float) -> float:
    """lr after `cur_nimg` training images: linear warm-up over warmup_kimg, then constant."""
    warm = float(train["warmup_kimg"]) * 1000
    return float(train["lr"]) * (min(1.0, cur_nimg / warm) if warm > 0 else 1.0)


def ema_beta(train: dict[str, Any], cur_nimg: float, batch: int | None = None) -> float:
    """Per-step EMA decay after `cur_nimg` images (StyleGAN2-ADA's half-life with ramp-up).

    ema ← β · ema + (1 − β) · weights, β = 0.5 ** (batch / ema_nimg), where ema_nimg is the
    half-life in images, capped at ema_rampup · cur_nimg when a ramp-up is set.
    """
    batch = int(train["batch"] if batch is None else batch)
    ema_nimg = float(train["ema_halflife_kimg"]) * 1000
    if train.get("ema_rampup") is not None:
        ema_nimg = min(ema_nimg, cur_nimg * float(train["ema_rampup"]))
    return 0.5 ** (batch / max(ema_nimg, 1e-8))
