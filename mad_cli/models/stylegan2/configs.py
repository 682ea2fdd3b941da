"""Training presets: NVIDIA's published ones (`auto`, `paper256/512/1024`) and two CPU ones.

The paper presets copy stylegan2-ada-pytorch's `train.py` cfg_specs (reference GPU count,
batch, minibatch-std group, feature-map multiplier, learning rate, R1 γ, EMA half-life,
EMA ramp-up, mapping depth), and `auto` derives them from the resolution and the GPU count
with the same formulas. `tiny` and `small` are ours, tuned so that five minutes on a
2-core CPU learn the 16² digits (see `_CPU_SPECS` for what was measured, and
benchmarks/stylegan2_cpu_curve.py to reproduce the curve).

A resolved config is a plain JSON-able dict; it is written to RUN/config.json and stored in
every snapshot, and `Generator(**config["G_kwargs"])` rebuilds the network.
"""

from __future__ import annotations

import copy
from typing import Any

from mad_cli.errors import MadError

CFG_NAMES = ("tiny", "small", "auto", "paper256", "paper512", "paper1024")
#: `--aug` modes and `--augpipe` presets (the transforms of each live in `augment.PRESETS`;
#: the names are here so that the CLI can offer them without importing torch).
AUG_MODES = ("ada", "noaug", "fixed")
AUGPIPE_NAMES = ("blit", "geom", "color", "filter", "noise", "cutout", "bg", "bgc", "bgcf", "bgcfn", "bgcfnc")
DEFAULT_AUGPIPE = "bgc"

# ref_gpus: GPUs the preset was tuned for (batch_gpu = mb / ref_gpus); kimg: training length;
# mb: global batch; mbstd: minibatch-std group; fmaps: channel_base multiplier of 32768;
# lrate: Adam lr; gamma: R1 weight; ema: G_ema half-life in kimg; ramp: EMA ramp-up; map: mapping layers.
_PAPER_SPECS: dict[str, dict[str, Any]] = {
    "paper256": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
    "paper512": dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None, map=8),
    "paper1024": dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
}

# Our CPU presets. Channel counts are min(channel_base / res, channel_max) per resolution.
#
# What limits a short CPU run, measured on the 1,438 16² training digits (fd_digits and recall
# of 1,000 samples against the 359 held-out test digits; one torch thread; each line one run,
# seed 0 unless said; the old tiny was lr 0.0025, γ 0.0032, batch 16):
#
# * R1 γ. NVIDIA's heuristic 0.0002·res²/batch gives γ = 0.0032 at 16²: practically no R1,
#   and D and G chase each other (fd 22.0, recall 0.14 at 32 kimg; 14.0 / 0.27 at 40).
#   γ = 0.5: 13.4 / 0.29 at 32 kimg; γ = 2: 14.0 / 0.25. The heuristic scales from
#   256²-1024² images (γ ≈ 0.8 for auto at 256², 6.6 at 1024²); at 16² it leaves D
#   practically unregularised.
# * The learning rate, together with γ: lr 0.005 alone 17.7 / 0.22 at 32 kimg, but with
#   γ = 0.5 it reaches fd 8.8 / recall 0.49 at 24 kimg and 6.4 / 0.55 at 32 (seed 1:
#   17.0 / 0.29 at 24, 8.6 / 0.50 at 32); γ = 1: 10.6 / 0.50 at 24, 6.9 / 0.53 at 32;
#   lr 0.008: fd falls faster (10.1 at 20 kimg) but recall lags (0.43 at 32).
# * Batch and path-length regularisation cost more than they give: batch 32 is ≈ 25 %
#   cheaper per kimg on a CPU but learns less per kimg (26.2 / 0.09 at 32 kimg at lr 0.0025;
#   with lr 0.005, γ 0.5 and no path-length term it needs 36-40 kimg for what batch 16
#   reaches at 24-32), and dropping the path-length term alone (≈ 12 % cheaper) gave 8.1 /
#   0.44 at 32 kimg against 6.4 / 0.55.
# * The EMA is not the limit: with the ramp-up (half-life 0.05 × images so far, at most
#   `ema` kimg) `ema` = 3 changes nothing before 60 kimg, and a 3× longer ramp-up did
#   not help (batch 32: 6.6 / 0.54 against 6.4 / 0.53 at 48 kimg). The mapping depth costs
#   nothing measurable (1 or 2 layers: the same CPU time); 2 kept, not varied for quality.
# * Threads: the convolutions are so small that a second torch thread mostly waits; on
#   this 2-core machine shared with other jobs, one thread trained tiny at 16-30 s/kimg
#   wall and two at 160-390 s/kimg (`cpu_threads`, applied unless OMP_NUM_THREADS is set).
# * Not D overfitting: with ADA on (`--aug ada`, p allowed to move 50× faster than NVIDIA's,
#   0 → 1 in 10 kimg; old tiny settings) D's r_t = E[sign(D(real))] averaged 0.46 (0.12 to
#   0.78 per tick) over 32 kimg on the 1,438 digits, below the 0.6 target, and p peaked at
#   0.045 and ended at 0 (fd 17.9 / recall 0.26 at 32 kimg against 22.0 / 0.14 without:
#   within run-to-run noise). On a 200-image subset likewise: r_t 0.48 on average, p at
#   most 0.038, fd 26.7 / 0.12 at 24 kimg with ADA, 24.4 / 0.11 without. So the CPU presets
#   default to `aug="noaug"`: at NVIDIA's speed
#   (0 → 1 in 500 kimg) p could not pass 0.08 in the preset's 40 kimg anyway, and the pipe
#   costs ≈ 5 % per kimg even at p = 0 (≈ 20 % at p = 0.01) for its random draws and
#   colour matrices. `--aug ada --ada-kimg 10` turns it on for long runs on small folders.
#
# Cost: tiny at 16² is ≈ 7.5 CPU-s/kimg with one thread, so the default 40 kimg is the five
# minutes of an idle 2-core machine, and fd_digits ≤ 10 with recall ≥ 0.4 (the issue's
# goal) came at 24-32 kimg, i.e. 3-4 minutes (benchmarks/stylegan2_cpu_curve.py).
_CPU_SPECS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        kimg=40, mb=16, mbstd=4, channel_base=1024, channel_max=32, z_dim=32, w_dim=32, map=2,
        lrate=0.005, gamma=0.5, ema=1.0, ramp=0.05, tick=0.5, snap=5, threads=1, aug="noaug",
    ),
    # small: 64 channels (≈ 4× tiny's convolution work, ≈ 15 CPU-s/kimg at 16²), for larger
    # images and longer runs. The old small (batch 32, lr 0.0025, γ 0.0064 at 16²) collapsed
    # to one digit at 24 kimg; with tiny's γ and lr (batch 32) it keeps improving (fd 31.6 →
    # 18.6, recall 0.10 at 24 kimg) but learns less per kimg than tiny at twice the cost, so
    # within five minutes tiny is the better choice on 16² digits.
    "small": dict(
        kimg=20, mb=16, mbstd=4, channel_base=2048, channel_max=64, z_dim=64, w_dim=64, map=2,
        lrate=0.005, gamma=0.5, ema=2.0, ramp=0.05, tick=1, snap=5, threads=1, aug="noaug",
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
    aug: str | None = None,
    augpipe: str | None = None,
    p: float | None = None,
    target: float | None = None,
    ada_kimg: float | None = None,
    c_dim: int = 0,
) -> dict[str, Any]:
    """The full training config for preset `cfg` on `resolution`² × `channels` data.

    Flags override the preset (`--kimg`, `--batch`, `--gamma`, `--aug`, ...). `c_dim` > 0
    makes G and D class-conditional (`--cond`: one class per label). Raises MadError for
    values that cannot work (batch not divisible by the device count, `--aug fixed`
    without `--p`, ...).
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

    mode = aug if aug is not None else s.get("aug", "ada")
    if aug is None and mode == "noaug":
        for flag, value in (("--augpipe", augpipe), ("--p", p), ("--target", target), ("--ada-kimg", ada_kimg)):
            if value is not None:
                raise MadError(f"{flag}: the {cfg} preset trains without augmentation by default; add --aug ada (or --aug fixed with --p)")
    if ada_kimg is None and mode == "ada":
        ada_kimg = s.get("ada_kimg")
    augment = resolve_augment_config(mode, augpipe, p, target, ada_kimg=ada_kimg)

    if c_dim < 0:
        raise ValueError("c_dim must be >= 0")
    conv_clamp = 256 if num_fp16_res > 0 else None
    G_kwargs = dict(
        z_dim=z_dim, c_dim=int(c_dim), w_dim=w_dim, img_resolution=resolution, img_channels=channels,
        mapping_kwargs=dict(num_layers=int(s["map"])),
        synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp),
    )
    D_kwargs = dict(
        c_dim=int(c_dim), img_resolution=resolution, img_channels=channels, architecture="resnet",
        channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
        epilogue_kwargs=dict(mbstd_group_size=mbstd),
    )
    if c_dim and cfg in _CPU_SPECS:
        # D's label embedding (NVIDIA: an 8-layer mapping network by default) as deep as G's
        # mapping: the CPU presets keep every MLP short.
        D_kwargs["mapping_kwargs"] = dict(num_layers=int(s["map"]))
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
        loss_kwargs=dict(r1_gamma=r1_gamma, style_mixing_prob=0.9, pl_weight=float(s.get("pl_weight", 2.0)), pl_batch_shrink=2, pl_decay=0.01),
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
        augment=augment,
        cond=bool(c_dim),
        cpu_threads=s.get("threads"),
    )


def resolve_augment_config(
    aug: str = "ada", augpipe: str | None = None, p: float | None = None, target: float | None = None,
    ada_kimg: float | None = None, ada_interval: int = 4,
) -> dict[str, Any]:
    """Validate `--aug/--augpipe/--p/--target/--ada-kimg` (NVIDIA's rules) into a JSON-able config entry.

    ada: p starts at 0 and adapts towards `target` (default 0.6), able to go from 0 to 1 in
    `ada_kimg` thousand images (default NVIDIA's 500); fixed: p = `--p` for the whole run;
    noaug: no augmentation.
    """
    if aug not in AUG_MODES:
        raise MadError(f"--aug {aug}: unknown mode; choose one of {', '.join(AUG_MODES)}")
    if augpipe is not None and augpipe not in AUGPIPE_NAMES:
        raise MadError(f"--augpipe {augpipe}: unknown pipeline; choose one of {', '.join(AUGPIPE_NAMES)}")
    if p is not None and not (0 <= p <= 1):  # also refuses NaN
        raise MadError(f"--p {p}: must be between 0 and 1")
    if target is not None and not (0 <= target <= 1):
        raise MadError(f"--target {target}: must be between 0 and 1")
    if ada_kimg is not None and not (0 < ada_kimg <= 1e6):  # also refuses NaN
        raise MadError(f"--ada-kimg {ada_kimg}: must be greater than 0 and at most 1e+06")
    if aug == "noaug":
        for flag, value in (("--augpipe", augpipe), ("--p", p), ("--target", target), ("--ada-kimg", ada_kimg)):
            if value is not None:
                raise MadError(f"{flag}: does not apply with --aug noaug")
        return {"aug": "noaug"}
    if aug == "fixed":
        if p is None:
            raise MadError("--aug fixed: needs --p (the fixed augmentation probability)")
        for flag, value in (("--target", target), ("--ada-kimg", ada_kimg)):
            if value is not None:
                raise MadError(f"{flag}: applies to --aug ada only")
        return {"aug": "fixed", "augpipe": augpipe or DEFAULT_AUGPIPE, "p": float(p)}
    if p is not None:
        raise MadError("--p: applies to --aug fixed only (with --aug ada, p adapts, starting at 0)")
    return {
        "aug": "ada", "augpipe": augpipe or DEFAULT_AUGPIPE, "p": 0.0,
        "target": 0.6 if target is None else float(target), "ada_kimg": 500.0 if ada_kimg is None else float(ada_kimg),
        "ada_interval": int(ada_interval),
    }
