"""`mad train --model ddpm`: the diffusion model's training loop on the shared machinery.

Ho et al.'s simple objective (ε-prediction, t uniform) with AdamW, a linear warm-up,
gradient clipping and an EMA of the weights that sampling uses; bf16 autocast on CUDA.
A folder with labels trains a class-conditional model whose labels are replaced by the
NULL label with probability `p_uncond`, so the same network also predicts ε(x, ∅) and
can be sampled with classifier-free guidance.

As for StyleGAN2, randomness is a pure function of (seed, step, round): before each
round of a step the global RNG is re-seeded from those numbers (it draws t, ε, the label
dropout and the U-Net's dropout), and the data order is `models.data.DataOrder`. A run
resumed with `--resume latest` after a SIGKILL therefore continues bit for bit, and N
torchrun processes computing rounds 0..N−1 of a global batch do what one process
computing them in turn does. Budgets are in kimg like StyleGAN2's, so one `--kimg` means
the same on a laptop and on eight GPUs.
"""

from __future__ import annotations

import contextlib
import copy
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.devices import cpu_threads
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid, to_uint8
from mad_cli.models import RunRequest, rngstate
from mad_cli.models.data import DataOrder, FolderInfo, ImageData, check_labels_fit, scan_folder, to_float
from mad_cli.models.ddpm.configs import PRESET_NAMES, PRESETS, default_preset, ema_beta, learning_rate, parameter_count, resolve_config
from mad_cli.models.ddpm.diffusion import GaussianDiffusion, sample
from mad_cli.models.ddpm.options import DDPMTrainOptions
from mad_cli.models.ddpm.unet import UNet
from mad_cli.models.dist import Dist, init_dist
from mad_cli.models.runfolder import RunFolder, fakes_name
from mad_cli.models.snapshot import check_architecture, cpu_tree, load_snapshot
from mad_cli.output import log as log_line
from mad_cli.output import progress

FORMAT = "mad.ddpm"
#: Diffusion steps a snapshot may ask for: ADM used 4,000; the schedule tables are this long.
MAX_TIMESTEPS = 100_000
#: The fakes grid: DDIM steps and images (fixed seeds, class i mod classes).
GRID_STEPS = 25


def grid_side(resolution: int) -> int:
    """8×8 thumbnails up to 64², 4×4 above (a CPU run must not spend its minutes on grids)."""
    return 8 if resolution <= 64 else 4


def check_snapshot(snap: dict[str, Any], path: Path | str, *, flag: str, complete: bool) -> dict[str, Any]:
    """The fields this backend reads, checked before anything is built from them.

    `complete`: a training snapshot that `--resume latest` can continue (optimiser,
    progress, RNG), not only weights. Returns the config.
    """
    if snap.get("format") != FORMAT:
        raise MadError(f"{flag}: {path} is a {snap.get('format')} snapshot, not ddpm")
    config = snap.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("unet"), dict) or not isinstance(config.get("diffusion"), dict):
        raise MadError(f"{flag}: {path} has no ddpm config (unet, diffusion)")
    for key in ("resolution", "in_channels", "num_classes", "model_channels"):
        if not isinstance(config["unet"].get(key), int) or config["unet"][key] < 0:
            raise MadError(f"{flag}: {path} has a malformed config.unet.{key}")
    if not 4 <= config["unet"]["resolution"] <= 1024 or config["unet"]["in_channels"] not in (1, 3) or not 1 <= config["unet"]["model_channels"] <= 4096:
        raise MadError(f"{flag}: {path} describes an implausible network (config.unet)")
    steps = config["diffusion"].get("timesteps", 1000)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_TIMESTEPS:
        raise MadError(f"{flag}: {path} has a malformed config.diffusion.timesteps ({steps!r}; expected 1 to {MAX_TIMESTEPS:,})")
    for key in ("ema", "model") if complete else ("ema",):
        state = snap.get(key)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise MadError(f"{flag}: {path} holds no {key} weights")
    if complete:
        prog = snap.get("progress")
        if not isinstance(snap.get("optim"), dict) or not isinstance(prog, dict) or not isinstance(prog.get("cur_nimg"), int) or not isinstance(prog.get("step"), int):
            raise MadError(f"{flag}: {path} is not a complete training snapshot; fine-tune from it with --resume {path} into a new RUN")
    for key in [k for k in ("ema", "model") if isinstance(snap.get(k), dict)]:  # before any U-Net is allocated
        check_architecture(lambda: UNet(**config["unet"]), snap[key], where=f"{flag}: {path}", what=f"U-Net ({key})", config="config.unet")
    return config


def build_unet(config: dict[str, Any], state: dict[str, torch.Tensor], path: Path | str, flag: str) -> UNet:
    """UNet(**config["unet"]) with `state` loaded; weights that do not fit are one error line."""
    try:
        net = UNet(**config["unet"])
    except (TypeError, ValueError, KeyError) as exc:
        raise MadError(f"{flag}: cannot build the U-Net from {path}'s config ({exc})") from None
    ours = net.state_dict()
    bad = [k for k in ours if k not in state or tuple(state[k].shape) != tuple(ours[k].shape)]
    extra = [k for k in state if k not in ours]
    if bad or extra:
        raise MadError(f"{flag}: {path}'s weights do not fit its config.unet ({(bad or extra)[0]})")
    net.load_state_dict(state)
    return net


def _resolve(options: DDPMTrainOptions, run: RunRequest, info: FolderInfo, dist: Dist, folder: RunFolder, snap: dict[str, Any] | None) -> dict[str, Any]:
    """The run's config: stored (continue), the snapshot's network (init), or the preset's."""
    if folder.mode == "continue":
        assert snap is not None
        config = copy.deepcopy(snap["config"])
        if (config.get("resolution"), config.get("channels")) != (info.resolution, info.channels):
            raise MadError(
                f"--resume latest: {folder.resume_path} was trained on {config.get('resolution')}² × {config.get('channels')} images, "
                f"{info.folder} holds {info.resolution}² × {info.channels}"
            )
        if config.get("gpus", 1) != dist.world:
            raise MadError(f"--resume latest: {folder.resume_path} was trained with {config.get('gpus', 1)} process(es), this run has {dist.world}")
        check_labels_fit(info, int(config["unet"]["num_classes"]), str(folder.resume_path))
        folder.check_same_data(config, info.describe())
        train = config["train"]
        stored = {"--cfg": config.get("cfg"), "--batch": train.get("batch"), "--batch-gpu": train.get("batch_gpu"), "--lr": train.get("lr"),
                  "--p-uncond": train.get("p_uncond"), "--schedule": config["diffusion"].get("schedule"), "--mirror": config.get("mirror")}
        given = {"--cfg": options.cfg, "--batch": options.batch, "--batch-gpu": options.batch_gpu, "--lr": options.lr,
                 "--p-uncond": options.p_uncond, "--schedule": options.schedule, "--mirror": options.mirror or None}
        folder.warn_ignored(stored, given)
        if options.kimg is not None:
            train["kimg"] = float(options.kimg)
        if options.snap_every is not None:
            train["snap_kimg"] = float(options.snap_every)
            train["tick_kimg"] = min(train["tick_kimg"], float(options.snap_every))
        config.update(info.describe())
        return config

    preset = options.cfg or default_preset(info.resolution, dist.device.type)
    num_classes = info.num_classes
    if folder.mode == "init":
        assert snap is not None
        src = snap["config"]
        if options.cfg is None and src.get("cfg") in PRESET_NAMES:
            preset = src["cfg"]  # fine-tuning keeps the training settings the network was made with
        num_classes = int(src["unet"]["num_classes"])
        if (src["unet"]["resolution"], src["unet"]["in_channels"]) != (info.resolution, info.channels):
            raise MadError(
                f"--resume {run.resume}: the snapshot makes {src['unet']['resolution']}² × {src['unet']['in_channels']} images, "
                f"{info.folder} holds {info.resolution}² × {info.channels}"
            )
        check_labels_fit(info, num_classes, str(folder.resume_path))
    config = resolve_config(preset, resolution=info.resolution, channels=info.channels, num_classes=num_classes)
    train = config["train"]
    if folder.mode == "init":
        assert snap is not None
        config["unet"] = copy.deepcopy(snap["config"]["unet"])
        config["diffusion"] = copy.deepcopy(snap["config"]["diffusion"])
        config["init_from"] = str(folder.resume_path)
    for key, value in (("batch", options.batch), ("lr", options.lr), ("p_uncond", options.p_uncond), ("kimg", options.kimg), ("snap_kimg", options.snap_every)):
        if value is not None:
            train[key] = value
    if options.schedule is not None:
        if folder.mode == "init" and options.schedule != config["diffusion"]["schedule"]:
            raise MadError(f"--schedule {options.schedule}: the snapshot was trained with the {config['diffusion']['schedule']} schedule; fine-tuning keeps it")
        config["diffusion"]["schedule"] = options.schedule
    train["tick_kimg"] = min(float(train["tick_kimg"]), float(train["snap_kimg"]))
    batch = int(train["batch"])
    if batch % dist.world:
        raise MadError(f"--batch {batch}: must be divisible by the number of processes ({dist.world})")
    per_process = batch // dist.world
    batch_gpu = int(options.batch_gpu) if options.batch_gpu is not None else per_process
    if per_process % batch_gpu:
        raise MadError(f"--batch-gpu {batch_gpu}: must divide the batch per process ({per_process})")
    train["batch_gpu"] = batch_gpu
    config.update(cfg=preset, gpus=dist.world, mirror=bool(options.mirror), seed=int(run.seed), **info.describe())
    return config


def train(data: Path, run: RunRequest, options: DDPMTrainOptions) -> dict[str, Any]:
    """Train the U-Net on `data` into `run.out`; returns the summary row (or, with
    `run.dry_run`, the resolved config and parameter count without touching RUN)."""
    dist = init_dist(run.device)
    info = scan_folder(data, model="ddpm")
    folder = RunFolder(run.out, dist, data=data, resume=run.resume)
    snap: dict[str, Any] | None = None
    if folder.mode != "fresh":
        assert folder.resume_path is not None
        snap = load_snapshot(folder.resume_path, map_location="cpu")
        check_snapshot(snap, folder.resume_path, flag=f"--resume {run.resume}", complete=folder.mode == "continue")
    config = _resolve(options, run, info, dist, folder, snap)
    params = parameter_count(config)
    if run.dry_run:
        return {"config": config, "params": params}
    cpu_preset = PRESETS.get(str(config.get("cfg")), {}).get("device") == "cpu"
    with folder, cpu_threads(1 if cpu_preset else None, dist.device):
        return _loop(config, info, dist, folder, snap, params, run.resume)


def _loop(config: dict[str, Any], info: FolderInfo, dist: Dist, folder: RunFolder, snap: dict[str, Any] | None, params: int, resume: str | None) -> dict[str, Any]:
    dev = dist.device
    train = config["train"]
    flag = f"--resume {resume}"
    torch.manual_seed(config["seed"])
    net = UNet(**config["unet"]).to(dev).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=float(train["lr"]), betas=tuple(train["betas"]), weight_decay=float(train["weight_decay"]))
    diffusion = GaussianDiffusion.from_schedule(**config["diffusion"])
    num_classes = int(config["unet"]["num_classes"])
    cur_nimg, step, train_seconds, first_tick = 0, 0, 0.0, 0
    if snap is not None:
        assert folder.resume_path is not None
        source = snap["model"] if isinstance(snap.get("model"), dict) else snap["ema"]
        net.load_state_dict(build_unet(config, source, folder.resume_path, flag).state_dict())
        ema.load_state_dict(build_unet(config, snap["ema"], folder.resume_path, flag).state_dict())
        if folder.mode == "continue":
            try:
                opt.load_state_dict(snap["optim"])
            except (ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise MadError(f"{flag}: the optimiser state does not fit the network ({str(exc).splitlines()[0][:120]})") from None
            cur_nimg, step = int(snap["progress"]["cur_nimg"]), int(snap["progress"]["step"])
            train_seconds = float(snap["progress"].get("train_seconds", 0.0))
            first_tick = int(snap["progress"].get("tick", 0))
            if isinstance(snap.get("rng"), dict):
                rngstate.restore(snap["rng"])
    dist.share(list(net.parameters()) + list(net.buffers()) + list(ema.parameters()) + list(ema.buffers()))

    data_src = ImageData(info)
    order = DataOrder(len(data_src), config["seed"], config["mirror"])
    batch, bg = int(train["batch"]), int(train["batch_gpu"])
    local_rounds = batch // (bg * dist.world)
    total_rounds = batch // bg
    total_nimg = int(round(float(train["kimg"]) * 1000))
    snap_nimg = max(1, int(round(float(train["snap_kimg"]) * 1000)))
    tick_nimg = max(1, int(round(float(train["tick_kimg"]) * 1000)))
    p_uncond = float(train["p_uncond"]) if num_classes else 0.0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    side = grid_side(info.resolution)
    grid_seeds = list(range(side * side))
    grid_labels = [s % num_classes for s in grid_seeds] if num_classes else None

    def fakes() -> np.ndarray:
        x = sample(ema, diffusion, grid_seeds, grid_labels, shape=(info.channels, info.resolution, info.resolution), device=dev, steps=GRID_STEPS, chunk=len(grid_seeds))
        return image_grid(to_uint8(x).permute(0, 2, 3, 1).numpy(), side)

    folder.write_config(config)
    folder.start_log(cur_nimg if folder.mode == "continue" else None)
    if dist.writer and folder.mode != "continue":
        idx, flips = order.samples(0, side * side)
        reals = to_float(data_src.get(idx), flips, torch.device("cpu"))
        folder.write_image("reals.png", image_grid(to_uint8(reals).permute(0, 2, 3, 1).numpy(), side))
        folder.write_image(fakes_name(0), fakes())

    def fetch(start: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """This process's rounds of the global batch starting at sample `start`."""
        idx, flips = order.samples(start, batch)
        mine = np.concatenate([np.arange(g * bg, (g + 1) * bg) for g in (j * dist.world + dist.rank for j in range(local_rounds))])
        return data_src.get(idx[mine]), flips[mine], data_src.labels(idx[mine])

    def write_snapshot() -> Path:
        snapshot = {
            "format": FORMAT,
            "version": 1,
            "config": config,
            "model": cpu_tree(net.state_dict()),
            "ema": cpu_tree(ema.state_dict()),
            "optim": cpu_tree(opt.state_dict()),
            "progress": {"kimg": cur_nimg / 1000, "cur_nimg": cur_nimg, "step": step, "tick": tick_index, "train_seconds": train_seconds},
            "rng": rngstate.capture(),
        }
        path = folder.save_snapshot(snapshot, cur_nimg)
        folder.write_image(fakes_name(cur_nimg), fakes())
        return path

    prefetch = ThreadPoolExecutor(max_workers=1)
    pending: Future[tuple[torch.Tensor, np.ndarray, torch.Tensor | None]] = prefetch.submit(fetch, cur_nimg)
    losses: list[float] = []
    tick_start_nimg, tick_start_time, tick_index = cur_nimg, time.perf_counter(), first_tick
    last_row: dict[str, Any] = {}
    last_snapshot: Path | None = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with progress(total_nimg, "train", fields=("kimg", "sec_kimg", "loss"), enabled=dist.writer) as bar:
            bar.advance(min(cur_nimg, total_nimg))
            while cur_nimg < total_nimg:
                step_start = time.perf_counter()
                real_u8, flips, labels = pending.result()
                pending = prefetch.submit(fetch, cur_nimg + batch)
                x_all = to_float(real_u8, flips, dev).split(bg)
                lab_all = labels.to(dev).split(bg) if labels is not None and num_classes else None
                opt.zero_grad(set_to_none=True)
                step_loss = 0.0
                for j in range(local_rounds):
                    g = j * dist.world + dist.rank
                    torch.manual_seed(rngstate.round_seed(config["seed"], step, 0, g))
                    with autocast:
                        loss = diffusion.training_loss(net, x_all[j], None if lab_all is None else lab_all[j], p_uncond=p_uncond)
                    (loss / total_rounds).backward()
                    step_loss += float(loss.detach()) / local_rounds
                dist.all_reduce_grads(list(net.parameters()))
                torch.nn.utils.clip_grad_norm_(net.parameters(), float(train["grad_clip"]))
                for group in opt.param_groups:
                    group["lr"] = learning_rate(train, cur_nimg)
                opt.step()
                with torch.no_grad():
                    beta = ema_beta(train, cur_nimg, batch)
                    for p_ema, p in zip(ema.parameters(), net.parameters()):
                        p_ema.copy_(p.detach().lerp(p_ema, beta))
                    for b_ema, b in zip(ema.buffers(), net.buffers()):
                        b_ema.copy_(b)
                losses.append(step_loss)

                prev_nimg = cur_nimg
                cur_nimg += batch
                step += 1
                train_seconds += time.perf_counter() - step_start
                bar.advance(min(cur_nimg, total_nimg) - min(prev_nimg, total_nimg))
                done = cur_nimg >= total_nimg
                if done or cur_nimg // tick_nimg > prev_nimg // tick_nimg:
                    elapsed = time.perf_counter() - tick_start_time
                    row = {
                        "kimg": round(cur_nimg / 1000, 3),
                        "nimg": cur_nimg,
                        "tick": tick_index,
                        "sec_per_kimg": elapsed / max((cur_nimg - tick_start_nimg) / 1000, 1e-9),
                        "train_seconds": round(train_seconds, 3),
                        "loss": float(np.mean(losses)),
                        "lr": learning_rate(train, cur_nimg),
                        "gpu_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                    }
                    last_row = row
                    folder.log(row)
                    bar.update(kimg=f"{row['kimg']:.2f}", sec_kimg=f"{row['sec_per_kimg']:.1f}", loss=f"{row['loss']:.4f}")
                    losses = []
                    tick_index += 1
                    tick_start_nimg, tick_start_time = cur_nimg, time.perf_counter()
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(dev)
                if done or cur_nimg // snap_nimg > prev_nimg // snap_nimg:
                    if dist.writer:
                        last_snapshot = write_snapshot()
                    tick_start_time = time.perf_counter()
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        data_src.close()
        dist.barrier()

    if dist.writer and not last_row:
        log_line(f"{folder.path}: already trained to {cur_nimg / 1000:g} kimg (raise --kimg to train further)")
    return {
        "run": str(folder.path),
        "kimg": cur_nimg / 1000,
        "snapshot": str(last_snapshot or folder.latest),
        "sec_per_kimg": last_row.get("sec_per_kimg"),
        "loss": last_row.get("loss"),
        "train_seconds": round(train_seconds, 1),
        "cfg": config["cfg"],
        "num_classes": num_classes,
        "params": params,
    }

