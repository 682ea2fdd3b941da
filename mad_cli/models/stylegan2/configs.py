"""Training presets: NVIDIA's published ones (`auto`, `paper256/512/1024`) and two CPU ones.

The paper presets copy stylegan2-ada-pytorch's `train.py` cfg_specs (reference GPU count,
batch, minibatch-std group, feature-map multiplier, learning rate, R1 γ, EMA half-life,
EMA ramp-up, mapping depth), and `auto` derives them from the resolution and the GPU count
with the same formulas. `tiny` and `small` are ours: narrow networks, a two-layer mapping
and short EMA so that a few minutes on a laptop CPU already show digit-like shapes (see
benchmarks/train.py for the measured speed).

A resolved config is a plain JSON-able dict; it is written to RUN/config.json and stored in
every snapshot, and `Generator(**config["G_kwargs"])` rebuilds the network.
"""

from __future__ import annotations

import copy
from typing import Any

from mad_cli.errors import MadError

CFG_NAMES = ("tiny", "small", "auto", "paper256", "paper512", "paper1024")

# ref_gpus: GPUs the preset was tuned for (batch_gpu = mb / ref_gpus); kimg: training length;
# mb: global batch; mbstd: minibatch-std group; fmaps: channel_base multiplier of 32768;
# lrate: Adam lr; gamma: R1 weight; ema: G_ema half-life in kimg; ramp: EMA ramp-up; map: mapping layers.
_PAPER_SPECS: dict[str, dict[str, Any]] = {
    "paper256": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
    "paper512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
}

# Our CPU presets. Channel counts are min(channel_base / res, channel_max) per resolution.
# Measured on the 2-core CI machine with 32² digits (benchmarks/train.py): tiny ≈ 13-18 s/kimg
# (≈ 15 CPU-s/kimg) and draws digit-like strokes after ~8 kimg; small is ≈ 2.5× the cost.
# γ (R1) follows NVIDIA's auto heuristic 0.0002·res²/batch; the EMA ramp-up keeps G_ema
# useful from the first kimg of these short runs.
_CPU_SPECS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        kimg=10, mb=16, mbstd=4, channel_base=1024, channel_max=32, z_dim=32, w_dim=32, map=2,
        lrate=0.0025, gamma=None, ema=1.0, ramp=0.05, tick=0.5, snap=5,
    ),
    "small": dict(
        kimg=25, mb=32, mbstd=4, channel_base=2048, channel_max=64, z_dim=64, w_dim=64, map=2,
        lrate=0.0025, gamma=None, ema=2.0, ramp=0.05, tick=1, snap=5,
    ),
}


def _auto_spec(resolution: int, gpus: int) -> dict[str, Any]:
    """NVIDIA's `auto` formulas: batch and γ scale with resolution, wider nets from 512² up."""
    mb = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    return dict(
        ref_gpus=gpus,
        kimg=25000,
        mb=mb,
        mbstd=min(mb // gpus, 4),
        fmaps=1 if resolution >= 512 else 0.5,
        lrate=0.002 if resolution >= 1024 else 0.0025,
        gamma=0.0002 * resolution**2 / mb,
        ema=mb * 10 / 32,
        ramp=0.05,
        map=2,
    )


def resolve_config(
    cfg: str,
    *,
    resolution: int,
    channels: int,
    gpus: int = 1,
    kimg: float | None = None,
    batch: int | None = None,
    batch_gpu: int | None = None,
    gamma: float | None = None,
    mirror: bool = False,
    seed: int = 0,
    snap_kimg: float | None = None,
) -> dict[str, Any]:
    """The full training config for preset `cfg` on `resolution`² × `channels` data.

    Flags override the preset (`--kimg`, `--batch`, `--gamma`, ...). Raises MadError for
    values that cannot work (batch not divisible by the device count, ...).
    """
    if cfg not in CFG_NAMES:
        raise MadError(f"--cfg {cfg}: expected one of {', '.join(CFG_NAMES)}")
    if gpus < 1:
        raise ValueError("gpus must be >= 1")

    if cfg in _CPU_SPECS:
        s = dict(_CPU_SPECS[cfg])
        z_dim, w_dim = s["z_dim"], s["w_dim"]
        channel_base, channel_max = s["channel_base"], s["channel_max"]
        ref_gpus = 1
        num_fp16_res = 0
        tick, snap = s["tick"], s["snap"]
    else:
        s = dict(_auto_spec(resolution, gpus) if cfg == "auto" else _PAPER_SPECS[cfg])
        z_dim = w_dim = 512
        channel_base, channel_max = int(s["fmaps"] * 32768), 512
        ref_gpus = s["ref_gpus"]
        num_fp16_res = 4  # mixed precision on the four highest resolutions (CUDA only)
        tick, snap = 4, 200  # NVIDIA: 4 kimg per tick, snapshot every 50 ticks

    mb = int(batch if batch is not None else s["mb"])
    if mb < 1:
        raise MadError(f"--batch {mb}: must be at least 1")
    if mb % gpus:
        raise MadError(f"--batch {mb}: must be divisible by the number of processes ({gpus})")
    per_process = mb // gpus
    if batch_gpu is None:
        batch_gpu = max(1, min(per_process, s["mb"] // ref_gpus)) if batch is None else per_process
        while per_process % batch_gpu:
            batch_gpu -= 1
    if batch_gpu < 1 or per_process % batch_gpu:
        raise MadError(f"--batch-gpu {batch_gpu}: must divide the batch per process ({per_process})")
    mbstd = min(int(s["mbstd"]), batch_gpu)
    while batch_gpu % mbstd:
        mbstd -= 1

    r1_gamma = float(gamma) if gamma is not None else (float(s["gamma"]) if s.get("gamma") is not None else 0.0002 * resolution**2 / mb)
    if r1_gamma < 0:
        raise MadError(f"--gamma {r1_gamma}: must be >= 0")
    total_kimg = float(kimg if kimg is not None else s["kimg"])
    if total_kimg <= 0:
        raise MadError(f"--kimg {total_kimg}: must be positive")
    snap = float(snap_kimg if snap_kimg is not None else snap)
    if snap <= 0:
        raise MadError(f"--snap-every {snap}: must be positive")

    conv_clamp = 256 if num_fp16_res > 0 else None
    G_kwargs = dict(
        z_dim=z_dim, c_dim=0, w_dim=w_dim, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=int(s["map"])),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp),
    )
    D_kwargs = dict(
        c_dim=0, img_resolution=resolution, img_channels=channels, architecture="resnet",
        channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
        epilogue_kwargs=dict(mbstd_group_size=mbstd),
    )
    opt = dict(lr=float(s["lrate"]), betas=[0.0, 0.99], eps=1e-8)
    return dict(
        cfg=cfg,
        resolution=resolution,
        channels=channels,
        gpus=gpus,
        G_kwargs=G_kwargs,
        D_kwargs=D_kwargs,
        G_opt_kwargs=copy.deepcopy(opt),
        D_opt_kwargs=copy.deepcopy(opt),
        loss_kwargs=dict(r1_gamma=r1_gamma, style_mixing_prob=0.9, pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01),
        G_reg_interval=4,
        D_reg_interval=16,
        batch=mb,
        batch_gpu=batch_gpu,
        ema_kimg=float(s["ema"]),
        ema_rampup=s["ramp"],
        total_kimg=total_kimg,
        tick_kimg=float(min(tick, snap)),
        snap_kimg=snap,
        mirror=bool(mirror),
        seed=int(seed),
    )
