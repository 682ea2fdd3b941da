"""StyleGAN2 training loop: phases, EMA, snapshots, resume and data parallelism.

The loop follows NVIDIA's stylegan2-ada-pytorch `training_loop.py` (phases Gmain/Greg/
Dmain/Dreg, lazy regularisation with the Adam lr and betas adjusted by c = k/(k+1),
G_ema with half-life `ema_kimg` and ramp-up, NaN-safe gradients) with one choice of our
own: **randomness is a pure function of (seed, step, phase, round).** Before each chunk of
work the RNG is re-seeded from those numbers, and the data order is a per-epoch
permutation seeded by (seed, epoch) (`models.data.DataOrder`). A run resumed from a
snapshot therefore continues bit for bit like a run that was never stopped, and N
processes computing rounds 0..N-1 of a global batch do exactly what one process
computing them in turn does.

ADA (`augment.py`) plugs in as NVIDIA's does: the loss runs every image D sees through
the augment pipe, the controller collects the signs of D's real logits and adjusts p after
every minibatch (its statistics summed over processes first, so every rank keeps the same
p), and the pipe and controller states go into every snapshot (`augment_pipe`, `ada`), so
`--resume latest` continues with the same p, bit for bit.

Conditional models (`--cond`) train on the folder's labels (`models.labels`): reals carry
their own one-hot label, and fakes get the labels of random training images (NVIDIA's
choice: the fakes' class frequencies follow the data's), drawn from the same per-round
seed as z.

The machinery every backend shares lives elsewhere: the data and its labels
(`models.data`), the run folder and resume rules (`models.runfolder`), the torchrun
group (`models.dist`) and the RNG capture (`models.rngstate`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.devices import cpu_threads
from mad_cli.errors import MadError
from mad_cli.imagedir import image_grid, to_uint8
from mad_cli.models import RunRequest, rngstate
from mad_cli.models.data import (
    DataOrder,
    FolderInfo,
    ImageData,
    check_labels_fit,
    scan_folder,
    to_float,
)
from mad_cli.models.dist import Dist, init_dist
from mad_cli.models.runfolder import RunFolder, fakes_name
from mad_cli.models.snapshot import cpu_tree, load_snapshot
from mad_cli.models.stylegan2.augment import build_augment
from mad_cli.models.stylegan2.configs import resolve_config
from mad_cli.models.stylegan2.loss import StyleGAN2Loss
from mad_cli.models.stylegan2.networks import Discriminator, Generator, count_parameters
from mad_cli.models.stylegan2.options import StyleGAN2TrainOptions
from mad_cli.models.stylegan2.sampler import check_networks

# ---------------------------------------------------------------------------------------
# Snapshots and images


def grid_shape(resolution: int) -> tuple[int, int]:
    """8×8 thumbnails up to 256², 4×4 above (keeps the PNG a reasonable size)."""
    side = int(np.clip(2048 // resolution, 4, 8))
    return side, side


@torch.no_grad()
def generate_grid(G_ema: Generator, z: torch.Tensor, batch: int, c: torch.Tensor | None = None) -> np.ndarray:
    G_ema.eval()
    out = [
        to_uint8(G_ema(z[i : i + batch], None if c is None else c[i : i + batch], noise_mode="const")).permute(0, 2, 3, 1).cpu().numpy()
        for i in range(0, len(z), batch)
    ]
    return np.concatenate(out)


def one_hot(labels: torch.Tensor, c_dim: int, device: torch.device) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels.to(torch.int64), c_dim).to(device=device, dtype=torch.float32)


def draw_gen_c(labels: torch.Tensor, count: int, c_dim: int, device: torch.device) -> torch.Tensor:
    """One-hot labels for `count` fakes: the labels of random training images (NVIDIA's way),
    drawn from torch's global CPU generator (re-seeded per round by the loop)."""
    idx = torch.randint(len(labels), [count])
    return one_hot(labels[idx], c_dim, device)


# ---------------------------------------------------------------------------------------
# Config and networks


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


def build_networks(config: dict[str, Any], device: torch.device) -> tuple[Generator, Discriminator, Generator]:
    torch.manual_seed(config["seed"])
    G = Generator(**config["G_kwargs"]).train().requires_grad_(False).to(device)
    D = Discriminator(**config["D_kwargs"]).train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()
    return G, D, G_ema


def _make_phases(config: dict[str, Any], G: Generator, D: Discriminator) -> list[Phase]:
    phases: list[Phase] = []
    loss_kwargs = config["loss_kwargs"]
    for name, module, opt_kwargs, interval, reg_on in (
        ("G", G, config["G_opt_kwargs"], config["G_reg_interval"], loss_kwargs["pl_weight"] != 0),
        ("D", D, config["D_opt_kwargs"], config["D_reg_interval"], loss_kwargs["r1_gamma"] != 0),
    ):
        # Lazy regularisation: the main and reg steps together should move the weights as much
        # as one step would, so lr and betas shrink by c = k/(k+1) (StyleGAN2 paper, App. B).
        c = interval / (interval + 1)
        opt = torch.optim.Adam(
            module.parameters(), lr=opt_kwargs["lr"] * c, betas=tuple(b**c for b in opt_kwargs["betas"]), eps=opt_kwargs["eps"]
        )
        phases.append(Phase(name + "main", module, opt, 1))
        if reg_on:
            phases.append(Phase(name + "reg", module, opt, interval))
    return phases


def _check_resume_snapshot(snap: dict[str, Any], path: Path, resume: str | None, continuing: bool) -> None:
    """The fields this loop reads from a snapshot, checked before anything is built from it."""
    if snap.get("format") != "mad.stylegan2":
        raise MadError(f"--resume {resume}: {path} is a {snap.get('format')} snapshot, not StyleGAN2")
    config = snap.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("G_kwargs"), dict):
        raise MadError(f"--resume {resume}: {path} has no config.G_kwargs")
    if not isinstance(snap.get("G_ema") if snap.get("G_ema") is not None else snap.get("G"), dict):
        raise MadError(f"--resume {resume}: {path} holds no generator weights")
    if continuing:
        needed = {"G": dict, "D": dict, "optim": dict, "progress": dict, "loss": dict}
        bad = [k for k, t in needed.items() if not isinstance(snap.get(k), t)]
        if bad or not isinstance(config.get("D_kwargs"), dict):
            raise MadError(f"--resume {resume}: {path} is not a complete training snapshot (lacks {(bad or ['config.D_kwargs'])[0]}); fine-tune from it with --resume {path} into a new RUN")
        opt = snap["optim"]
        prog = snap["progress"]
        if not (isinstance(opt.get("G"), dict) and isinstance(opt.get("D"), dict) and isinstance(prog.get("cur_nimg"), int) and isinstance(prog.get("batch_idx"), int)):
            raise MadError(f"--resume {resume}: {path} has a malformed optimiser or progress record")
        if not isinstance(snap["loss"].get("pl_mean"), torch.Tensor):
            raise MadError(f"--resume {resume}: {path} lacks loss.pl_mean")
        aug = config.get("augment", {"aug": "noaug"})
        if not isinstance(aug, dict) or aug.get("aug", "noaug") not in ("ada", "noaug", "fixed"):
            raise MadError(f"--resume {resume}: {path} has a malformed config.augment")
        if aug.get("aug", "noaug") != "noaug" and not isinstance(snap.get("augment_pipe"), dict):
            raise MadError(f"--resume {resume}: {path} lacks the augment pipe state (augment_pipe) its config.augment needs")
        if aug.get("aug") == "ada" and not isinstance(snap.get("ada"), dict):
            raise MadError(f"--resume {resume}: {path} lacks the ADA controller state (ada) its config.augment needs")
    check_networks(snap, path, f"--resume {resume}")  # architecture against the tensors present, before allocating


def _classes(options: StyleGAN2TrainOptions, info: FolderInfo, folder: RunFolder, snap: dict[str, Any] | None) -> tuple[FolderInfo, int]:
    """The model's number of classes (0: unconditional), and the folder info with labels
    read when the model needs them (an unconditional model never reads them, so a folder's
    labels can never stop it)."""
    if folder.mode == "fresh":
        if not options.cond:
            return info, 0
        if info.labels is None:
            raise MadError(
                f"--cond: {info.folder} has no labels; give it a labels.csv (columns file,label), an NVIDIA dataset.json "
                "or mad:label tags (what `mad dataset digits` and conditional `mad sample` write)"
            )
        return info, info.num_classes
    assert snap is not None
    where = str(folder.resume_path)
    c_dim = snap["config"]["G_kwargs"].get("c_dim") or 0
    if not isinstance(c_dim, int) or c_dim < 0:
        raise MadError(f"--resume {folder.resume}: {where} has a malformed config.G_kwargs.c_dim ({c_dim!r})")
    if folder.mode == "init" and options.cond and not c_dim:
        raise MadError(f"--cond: {where} is an unconditional model and fine-tuning keeps its architecture; train a conditional model from scratch instead")
    if c_dim:
        if info.labels is None:
            info = scan_folder(info.folder, labels=True, model="StyleGAN2")
        check_labels_fit(info, c_dim, where)
    elif info.labels is not None:  # --cond on an unconditional run that continues: labels unused
        info = dataclasses.replace(info, labels=None, label_source=None)
    return info, c_dim


def _resolve(
    options: StyleGAN2TrainOptions, run: RunRequest, info: FolderInfo, dist: Dist, folder: RunFolder, snap: dict[str, Any] | None,
    dev: torch.device, c_dim: int,
) -> tuple[dict[str, Any], bool]:
    """The run's config, and whether D comes from the snapshot."""
    cfg_name = options.cfg or ("auto" if dev.type == "cuda" else "tiny")
    resume, resume_path = run.resume, folder.resume_path
    if folder.mode == "continue":
        assert snap is not None
        config = copy.deepcopy(snap["config"])
        if (config.get("resolution"), config.get("channels")) != (info.resolution, info.channels):
            raise MadError(
                f"--resume latest: {resume_path} was trained on {config.get('resolution')}² × {config.get('channels')} images, "
                f"{info.folder} holds {info.resolution}² × {info.channels}"
            )
        if config.get("gpus", 1) != dist.world:
            raise MadError(f"--resume latest: {resume_path} was trained with {config.get('gpus', 1)} process(es), this run has {dist.world}")
        folder.check_same_data(config, info.describe())
        config.setdefault("augment", {"aug": "noaug"})  # snapshots from before ADA trained without it
        config["cond"] = bool(c_dim)
        # Loop scripts pass the same flags on every re-run: only a flag that asks for
        # something other than the stored config deserves a warning (RunFolder.warn_ignored).
        augment = config["augment"]
        stored = {"--cfg": config.get("cfg"), "--batch": config.get("batch"), "--batch-gpu": config.get("batch_gpu"),
                  "--gamma": config.get("loss_kwargs", {}).get("r1_gamma"), "--mirror": config.get("mirror"),
                  "--aug": augment.get("aug"), "--augpipe": augment.get("augpipe"), "--target": augment.get("target"),
                  "--p": augment.get("p") if augment.get("aug") == "fixed" else None, "--ada-kimg": augment.get("ada_kimg"),
                  "--cond": config["cond"]}
        given = {"--cfg": options.cfg, "--batch": options.batch, "--batch-gpu": options.batch_gpu,
                 "--gamma": None if options.gamma is None else float(options.gamma), "--mirror": options.mirror or None,
                 "--aug": options.aug, "--augpipe": options.augpipe, "--target": options.target, "--p": options.p,
                 "--ada-kimg": options.ada_kimg, "--cond": options.cond or None}
        folder.warn_ignored(stored, given)
        if options.kimg is not None:
            config["total_kimg"] = float(options.kimg)
        if options.snap_every is not None:
            config["snap_kimg"] = float(options.snap_every)
            config["tick_kimg"] = min(config["tick_kimg"], float(options.snap_every))
        config.update(info.describe())
        return config, True
    config = resolve_config(
        cfg_name, resolution=info.resolution, channels=info.channels, gpus=dist.world, kimg=options.kimg, batch=options.batch,
        batch_gpu=options.batch_gpu, gamma=options.gamma, mirror=options.mirror, seed=run.seed, snap_kimg=options.snap_every,
        aug=options.aug, augpipe=options.augpipe, p=options.p, target=options.target, ada_kimg=options.ada_kimg, c_dim=c_dim,
    )
    config = {"model": "stylegan2", **config, **info.describe()}
    d_from_snap = False
    if folder.mode == "init":
        assert snap is not None
        src = snap["config"]
        g_kwargs = src["G_kwargs"]
        if (g_kwargs.get("img_resolution"), g_kwargs.get("img_channels")) != (info.resolution, info.channels):
            raise MadError(
                f"--resume {resume}: the snapshot makes {g_kwargs.get('img_resolution')}² × {g_kwargs.get('img_channels')} images, "
                f"{info.folder} holds {info.resolution}² × {info.channels}"
            )
        config["G_kwargs"] = copy.deepcopy(g_kwargs)
        d_from_snap = isinstance(snap.get("D"), dict) and isinstance(src.get("D_kwargs"), dict)
        if d_from_snap:
            d_kwargs = copy.deepcopy(src["D_kwargs"])
            d_kwargs.setdefault("epilogue_kwargs", {})["mbstd_group_size"] = config["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"]
            config["D_kwargs"] = d_kwargs
        config["init_from"] = str(resume_path)
        # ADA continues from the source's p (an NVIDIA pickle's augment pipe, or our snapshot's)
        # rather than from 0: the source's D was trained against augmented images at that p.
        pipe_state = snap.get("augment_pipe")
        p0 = pipe_state.get("p") if isinstance(pipe_state, dict) else None
        if config["augment"]["aug"] == "ada" and isinstance(p0, torch.Tensor) and p0.numel() == 1 and torch.isfinite(p0).all():
            config["augment"]["p"] = float(p0.float().clamp(0, 1))
            config["augment"]["p_from"] = str(resume_path)
    return config, d_from_snap


def train(data: Path, run: RunRequest, options: StyleGAN2TrainOptions) -> dict[str, Any]:
    """Train StyleGAN2 on the images in `data`, writing snapshots, logs and grids into `run.out`.

    Returns a summary (or, with `run.dry_run`, the resolved config and parameter counts
    without training and without touching RUN).
    """
    dist = init_dist(run.device)
    dev = dist.device
    info = scan_folder(data, labels=options.cond, model="StyleGAN2")
    folder = RunFolder(run.out, dist, data=data, resume=run.resume)

    snap: dict[str, Any] | None = None
    if folder.mode != "fresh":
        assert folder.resume_path is not None
        snap = load_snapshot(folder.resume_path, map_location="cpu")
        _check_resume_snapshot(snap, folder.resume_path, run.resume, folder.mode == "continue")
    info, c_dim = _classes(options, info, folder, snap)
    config, d_from_snap = _resolve(options, run, info, dist, folder, snap, dev, c_dim)

    try:
        G, D, G_ema = build_networks(config, dev)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        if snap is None:
            raise
        raise MadError(f"--resume {run.resume}: cannot build the networks from the snapshot's config ({exc})") from None
    counts = {"G_params": count_parameters(G), "D_params": count_parameters(D), "mapping_params": count_parameters(G.mapping), "synthesis_params": count_parameters(G.synthesis)}
    if run.dry_run:
        return {"config": config, **counts}
    with folder, cpu_threads(config.get("cpu_threads"), dev):
        return _train_loop(config, info, dist, folder, snap, d_from_snap, G, D, G_ema, counts, run.resume)


def _train_loop(
    config: dict[str, Any], info: FolderInfo, dist: Dist, folder: RunFolder, snap: dict[str, Any] | None, d_from_snap: bool,
    G: Generator, D: Discriminator, G_ema: Generator, counts: dict[str, int], resume: str | None,
) -> dict[str, Any]:
    dev = dist.device
    out_path = folder.path
    mode = folder.mode
    # -- state ---------------------------------------------------------------------------
    pipe, ada = build_augment(config["augment"], batch_size=config["batch"], device=dev)
    loss = StyleGAN2Loss(G, D, gather=dist.gather_fn(), augment_pipe=pipe, ada=ada, **config["loss_kwargs"])
    phases = _make_phases(config, G, D)
    cur_nimg = 0
    batch_idx = 0
    train_seconds = 0.0
    cpu_seconds = 0.0
    if snap is not None:
        G_src = snap.get("G") if snap.get("G") is not None else snap.get("G_ema")
        try:
            G.load_state_dict(G_src)
            G_ema.load_state_dict(snap.get("G_ema") if snap.get("G_ema") is not None else G_src)
            if d_from_snap:
                D.load_state_dict(snap["D"])
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise MadError(f"--resume {resume}: weights do not fit the architecture in the snapshot's config ({str(exc).splitlines()[0][:120]})") from None
        if mode == "continue":
            optim = snap["optim"]
            try:
                phases[0].opt.load_state_dict(optim["G"])
                next(p for p in phases if p.name == "Dmain").opt.load_state_dict(optim["D"])
            except (ValueError, KeyError, RuntimeError, TypeError) as exc:
                raise MadError(f"--resume {resume}: the optimiser state does not fit the networks ({str(exc).splitlines()[0][:120]})") from None
            progress_state = snap["progress"]
            cur_nimg = int(progress_state["cur_nimg"])
            batch_idx = int(progress_state["batch_idx"])
            train_seconds = float(progress_state.get("train_seconds", 0.0))
            cpu_seconds = float(progress_state.get("cpu_seconds", 0.0))
            loss.pl_mean = snap["loss"]["pl_mean"].to(dev)
            try:
                if pipe is not None:
                    pipe.load_state_dict(snap["augment_pipe"])
                if ada is not None:
                    ada.load_state_dict(snap["ada"])
            except (RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise MadError(f"--resume {resume}: the augment state does not fit config.augment ({str(exc).splitlines()[0][:120]})") from None
            if "rng" in snap:
                rngstate.restore(snap["rng"])
    dist.share(list(G.parameters()) + list(G.buffers()) + list(D.parameters()) + list(D.buffers()) + list(G_ema.parameters()) + list(G_ema.buffers()))

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # as NVIDIA: TF32 hurts GAN training stability
        torch.backends.cudnn.allow_tf32 = False

    data_src = ImageData(info)
    order = DataOrder(len(data_src), config["seed"], config["mirror"])
    batch_size, bg = config["batch"], config["batch_gpu"]
    local_rounds = batch_size // (bg * dist.world)
    total_rounds = batch_size // bg
    total_nimg = int(round(config["total_kimg"] * 1000))
    snap_nimg = max(1, int(round(config["snap_kimg"] * 1000)))
    tick_nimg = max(1, int(round(config["tick_kimg"] * 1000)))
    writer = dist.writer

    c_dim = int(G.c_dim)
    labels_all = torch.from_numpy(info.labels) if c_dim else None
    reduce = torch.distributed.all_reduce if dist.active else None  # ADA's statistic, summed over ranks

    gw, gh = grid_shape(info.resolution)
    grid_z = torch.randn([gw * gh, G.z_dim], generator=torch.Generator().manual_seed(config["seed"])).to(dev)
    grid_c = one_hot(torch.arange(gw * gh) % c_dim, c_dim, dev) if c_dim else None  # class i mod classes, as `mad sample`
    folder.write_config(config)
    folder.start_log(cur_nimg if mode == "continue" else None)
    if writer and mode != "continue":
        idx, flips = order.samples(0, gw * gh)
        reals = to_float(data_src.get(idx), flips, torch.device("cpu"))
        folder.write_image("reals.png", image_grid(to_uint8(reals).permute(0, 2, 3, 1).numpy(), gw))
        folder.write_image(fakes_name(0), image_grid(generate_grid(G_ema, grid_z, bg, grid_c), gw))

    def fetch(start: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """This process's rounds of the global batch starting at sample `start`."""
        idx, flips = order.samples(start, batch_size)
        mine = np.concatenate([np.arange(g * bg, (g + 1) * bg) for g in (j * dist.world + dist.rank for j in range(local_rounds))])
        return data_src.get(idx[mine]), flips[mine], data_src.labels(idx[mine]) if c_dim else None

    prefetch = ThreadPoolExecutor(max_workers=1)
    pending: Future[tuple[torch.Tensor, np.ndarray, torch.Tensor | None]] = prefetch.submit(fetch, cur_nimg)
    tick_stats: dict[str, list[float]] = {}
    tick_start_nimg = cur_nimg
    tick_start_time = time.perf_counter()
    tick_index = 0
    last_snapshot: Path | None = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    from mad_cli.output import log as log_line
    from mad_cli.output import progress

    def write_snapshot() -> Path:
        G_opt = phases[0].opt
        D_opt = next(p for p in phases if p.name == "Dmain").opt
        snapshot = {
            "format": "mad.stylegan2",
            "version": 1,
            "config": config,
            "G": cpu_tree(G.state_dict()),
            "D": cpu_tree(D.state_dict()),
            "G_ema": cpu_tree(G_ema.state_dict()),
            "optim": {"G": cpu_tree(G_opt.state_dict()), "D": cpu_tree(D_opt.state_dict())},
            "progress": {"kimg": cur_nimg / 1000, "cur_nimg": cur_nimg, "batch_idx": batch_idx, "train_seconds": train_seconds, "cpu_seconds": cpu_seconds},
            "loss": {"pl_mean": loss.pl_mean.detach().cpu().clone()},
            "rng": rngstate.capture(),
        }
        if pipe is not None:
            snapshot["augment_pipe"] = cpu_tree(pipe.state_dict())
        if ada is not None:
            snapshot["ada"] = ada.state_dict()
        path = folder.save_snapshot(snapshot, cur_nimg)
        folder.write_image(fakes_name(cur_nimg), image_grid(generate_grid(G_ema, grid_z, bg, grid_c), gw))
        G_ema.eval()
        return path

    fields = ("kimg", "sec_kimg", "loss_G", "loss_D") + (("p",) if pipe is not None else ())
    last_row: dict[str, Any] = {}
    try:
        with progress(total_nimg, "train", fields=fields, enabled=writer) as bar:
            bar.advance(min(cur_nimg, total_nimg))
            while cur_nimg < total_nimg:
                step_start = time.perf_counter()
                cpu_start = time.process_time()
                real_u8, flips, real_labels = pending.result()
                pending = prefetch.submit(fetch, cur_nimg + batch_size)
                reals = to_float(real_u8, flips, dev).split(bg)
                real_cs = one_hot(real_labels, c_dim, dev).split(bg) if real_labels is not None else None
                for phase_idx, phase in enumerate(phases):
                    if batch_idx % phase.interval:
                        continue
                    phase.module.requires_grad_(True)
                    phase.opt.zero_grad(set_to_none=True)
                    for j in range(local_rounds):
                        g = j * dist.world + dist.rank
                        torch.manual_seed(rngstate.round_seed(config["seed"], batch_idx, phase_idx, g))
                        gen_z = torch.randn([bg, G.z_dim], device=dev)
                        gen_c = draw_gen_c(labels_all, bg, c_dim, dev) if labels_all is not None else None
                        stats = loss.accumulate_gradients(
                            phase.name, reals[j], gen_z, gain=phase.interval / total_rounds,
                            real_c=None if real_cs is None else real_cs[j], gen_c=gen_c,
                        )
                        for k, v in stats.items():
                            tick_stats.setdefault(k, []).append(v)
                    phase.module.requires_grad_(False)
                    dist.all_reduce_grads(list(phase.module.parameters()))
                    phase.opt.step()

                # G_ema: half-life of ema_kimg thousand images, shortened early on by the ramp-up.
                with torch.no_grad():
                    ema_nimg = config["ema_kimg"] * 1000
                    if config["ema_rampup"] is not None:
                        ema_nimg = min(ema_nimg, cur_nimg * config["ema_rampup"])
                    ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
                    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                        p_ema.copy_(p.lerp(p_ema, ema_beta))
                    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                        b_ema.copy_(b)
                if ada is not None:
                    ada.step(reduce)

                prev_nimg = cur_nimg
                cur_nimg += batch_size
                batch_idx += 1
                train_seconds += time.perf_counter() - step_start
                cpu_seconds += time.process_time() - cpu_start
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
                        "cpu_seconds": round(cpu_seconds, 3),
                        **{k: float(np.mean(v)) for k, v in sorted(tick_stats.items())},
                        **(ada.tick_stats() if ada is not None else {"augment_p": float(pipe.p)} if pipe is not None else {}),
                        "pl_mean": float(loss.pl_mean),
                        "gpu_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                    }
                    last_row = row
                    folder.log(row)
                    if writer:
                        bar.update(
                            kimg=f"{row['kimg']:.2f}", sec_kimg=f"{row['sec_per_kimg']:.1f}",
                            loss_G=f"{row.get('loss_G', float('nan')):.3f}", loss_D=f"{row.get('loss_D', float('nan')):.3f}",
                            **({"p": f"{row['augment_p']:.3f}"} if pipe is not None else {}),
                        )
                    tick_stats = {}
                    tick_index += 1
                    tick_start_nimg = cur_nimg
                    tick_start_time = time.perf_counter()
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(dev)

                if done or cur_nimg // snap_nimg > prev_nimg // snap_nimg:
                    if writer:
                        last_snapshot = write_snapshot()
                    tick_start_time = time.perf_counter()
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        data_src.close()
        dist.barrier()

    if writer and not last_row:
        log_line(f"{out_path}: already trained to {cur_nimg / 1000:g} kimg (raise --kimg to train further)")
    return {
        "run": str(out_path),
        "kimg": cur_nimg / 1000,
        "snapshot": str(last_snapshot or (out_path / "latest.pt")),
        "sec_per_kimg": last_row.get("sec_per_kimg"),
        "loss_G": last_row.get("loss_G"),
        "loss_D": last_row.get("loss_D"),
        "train_seconds": round(train_seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "augment_p": None if pipe is None else float(pipe.p),
        "num_classes": c_dim,
        **counts,
    }

