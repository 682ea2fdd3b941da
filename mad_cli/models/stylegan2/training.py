"""StyleGAN2 training loop: data, phases, EMA, snapshots, resume and data parallelism.

The loop follows NVIDIA's stylegan2-ada-pytorch `training_loop.py` (phases Gmain/Greg/
Dmain/Dreg, lazy regularisation with the Adam lr and betas adjusted by c = k/(k+1),
G_ema with half-life `ema_kimg` and ramp-up, NaN-safe gradients) with two choices of our own:

* **Randomness is a pure function of (seed, step, phase, round).** Before each chunk of
  work the RNG is re-seeded from those numbers, and the data order is a per-epoch
  permutation seeded by (seed, epoch). A run resumed from a snapshot therefore continues
  bit for bit like a run that was never stopped, and N processes computing rounds
  0..N-1 of a global batch do exactly what one process computing them in turn does.
* **Gradients are all-reduced by hand** (as NVIDIA's StyleGAN3 does) rather than with
  DistributedDataParallel: the R1 and path-length terms need double backward, which DDP's
  hooks do not support well, and a plain all-reduce of one flat tensor is simple.

Only rank 0 writes files. Every file is written atomically, and `latest.pt` always points
at a complete snapshot, so killing the process at any moment loses at most the work since
the last snapshot.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mad_cli.devices import resolve_device
from mad_cli.errors import MadError
from mad_cli.imagedir import atomic_write_text, place_file, prepare_output_dir, read_image, require_images, write_png
from mad_cli.models.stylegan2.configs import resolve_config
from mad_cli.models.stylegan2.loss import StyleGAN2Loss
from mad_cli.models.stylegan2.networks import Discriminator, Generator, count_parameters

MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024
#: Folders whose decoded pixels fit in this many bytes are held in memory; larger ones stream.
CACHE_BYTES = 1 << 30
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_RESIZE_HINT = "resize the folder first, e.g. `mad dataset digits --resolution 32` for the bundled digits"


# ---------------------------------------------------------------------------------------
# Data


@dataclass
class FolderInfo:
    """What training needs to know about an image folder before reading any pixels."""

    folder: Path
    paths: list[Path]
    resolution: int
    channels: int


def scan_folder(folder: str | os.PathLike[str]) -> FolderInfo:
    """Check that every image is square, power-of-two, 8²..1024² and the same size (headers only).

    The first offending file is named in the error, so the user knows what to fix.
    """
    paths = require_images(folder)
    first_size: tuple[int, int] | None = None
    grey = True
    for p in paths:
        try:
            with Image.open(p) as img:
                size, mode = img.size, img.mode
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise MadError(f"{p}: cannot decode image ({exc})") from None
        w, h = size
        if first_size is None:
            if w != h:
                raise MadError(f"{p}: image is {w}×{h}, not square; StyleGAN2 needs square power-of-two images ({_RESIZE_HINT})")
            if w & (w - 1) or not MIN_RESOLUTION <= w <= MAX_RESOLUTION:
                raise MadError(
                    f"{p}: image is {w}×{h}; StyleGAN2 needs a power-of-two size from {MIN_RESOLUTION} to {MAX_RESOLUTION} ({_RESIZE_HINT})"
                )
            first_size = size
        elif size != first_size:
            raise MadError(f"{p}: image is {w}×{h} but {paths[0].name} is {first_size[0]}×{first_size[1]}; all images must have one size ({_RESIZE_HINT})")
        grey = grey and mode in _GREY_MODES
    assert first_size is not None
    return FolderInfo(Path(folder), paths, first_size[0], 1 if grey else 3)


class ImageData:
    """Random access to the folder's images as uint8 N×C×H×W; small folders are cached in memory."""

    def __init__(self, info: FolderInfo, cache_bytes: int = CACHE_BYTES, workers: int = 4):
        self.info = info
        self.paths = info.paths
        self.channels = info.channels
        nbytes = len(self.paths) * info.channels * info.resolution**2
        self._cache: torch.Tensor | None = None
        self._pool: ThreadPoolExecutor | None = None
        if nbytes <= cache_bytes:
            self._cache = torch.from_numpy(np.stack([self._load(i) for i in range(len(self.paths))]))
        else:
            self._pool = ThreadPoolExecutor(max_workers=workers)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> np.ndarray:
        arr = read_image(self.paths[i], channels=self.channels)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def get(self, indices: np.ndarray) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[torch.from_numpy(np.asarray(indices, dtype=np.int64))]
        assert self._pool is not None
        return torch.from_numpy(np.stack(list(self._pool.map(self._load, [int(i) for i in indices]))))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class DataOrder:
    """Which image (and whether mirrored) is the k-th sample of the run, for any k.

    A pure function of (seed, epoch): no state to save, so resuming and data parallelism
    see exactly the order an uninterrupted single process would.
    """

    def __init__(self, n: int, seed: int, mirror: bool):
        self.n, self.seed, self.mirror = n, seed, mirror
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        if e not in self._epochs:
            rng = np.random.default_rng([self.seed, e, 0x5EED])
            perm = rng.permutation(self.n)
            flips = rng.random(self.n) < 0.5 if self.mirror else np.zeros(self.n, dtype=bool)
            if len(self._epochs) > 4:
                self._epochs.pop(min(self._epochs))
            self._epochs[e] = (perm, flips)
        return self._epochs[e]

    def samples(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.empty(count, dtype=np.int64)
        flip = np.empty(count, dtype=bool)
        for j, k in enumerate(range(start, start + count)):
            perm, flips = self._epoch(k // self.n)
            idx[j], flip[j] = perm[k % self.n], flips[k % self.n]
        return idx, flip


def _to_float(img: torch.Tensor, flips: np.ndarray, device: torch.device) -> torch.Tensor:
    x = img.to(device=device, dtype=torch.float32) / 127.5 - 1
    if flips.any():
        f = torch.from_numpy(flips).to(device)
        x = torch.where(f[:, None, None, None], x.flip(3), x)
    return x


# ---------------------------------------------------------------------------------------
# Processes


@dataclass
class Dist:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world > 1


def init_dist(device_spec: str) -> Dist:
    """Join the torchrun process group if there is one (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world <= 1:
        return Dist(0, 1, device)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MadError(f"LOCAL_RANK {local_rank}: only {torch.cuda.device_count()} GPU(s) visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return Dist(rank, world, device)


def _agree(dist: Dist, ok: bool, message: str) -> None:
    """All processes learn whether every one of them got through a step (so none hangs waiting)."""
    if not dist.active:
        return
    flag = torch.tensor([0.0 if ok else 1.0], device=dist.device)
    torch.distributed.all_reduce(flag)
    if flag.item() > 0 and ok:
        raise MadError(message)


def _gather_fn(dist: Dist) -> Callable[[torch.Tensor], tuple[list[torch.Tensor], int]]:
    def gather(value: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        if not dist.active:
            return [value], 0
        out = [torch.zeros_like(value) for _ in range(dist.world)]
        torch.distributed.all_gather(out, value.contiguous())
        return out, dist.rank

    return gather


# ---------------------------------------------------------------------------------------
# Snapshots and images


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _cpu_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_tree(v) for v in value)
    return value


def _rng_state() -> dict[str, Any]:
    """Global RNG states (the loop re-seeds per chunk anyway; kept so that nothing is lost)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"][: torch.cuda.device_count()]])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["key"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def snapshot_name(cur_nimg: int) -> str:
    """snapshot-{kimg:06d}.pt; runs with fractional --snap-every get the remaining images appended."""
    kimg, rest = divmod(cur_nimg, 1000)
    return f"snapshot-{kimg:06d}.pt" if rest == 0 else f"snapshot-{kimg:06d}.{rest:03d}.pt"


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 N×H×W×C."""
    x = (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, cols: int) -> np.ndarray:
    """Tile uint8 N×H×W×C images row by row into one H'×W'(×3) picture."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return grid[:, :, 0] if c == 1 else grid


def grid_shape(resolution: int) -> tuple[int, int]:
    """8×8 thumbnails up to 256², 4×4 above (keeps the PNG a reasonable size)."""
    side = int(np.clip(2048 // resolution, 4, 8))
    return side, side


@torch.no_grad()
def generate_grid(G_ema: Generator, z: torch.Tensor, batch: int) -> np.ndarray:
    G_ema.eval()
    out = [to_uint8(G_ema(z[i : i + batch], None, noise_mode="const")) for i in range(0, len(z), batch)]
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------
# The loop


@dataclass
class Phase:
    name: str
    module: torch.nn.Module
    opt: torch.optim.Optimizer
    interval: int


def _round_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


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


def _load_run_log(path: Path, upto_nimg: int) -> list[str]:
    """The log lines a resumed run keeps: complete records up to the snapshot it resumes from."""
    if not path.exists():
        return []
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("nimg", 0) <= upto_nimg:
            keep.append(line)
    return keep


def _resolve_resume(out: Path, resume: str | None) -> tuple[str, Path | None]:
    """('fresh', None), ('continue', RUN/latest.pt) or ('init', SNAPSHOT)."""
    if resume is None:
        return "fresh", None
    if resume == "latest":
        latest = out / "latest.pt"
        return ("continue", latest) if latest.exists() else ("fresh", None)
    p = Path(resume)
    if not p.exists():
        raise MadError(f"--resume {resume}: snapshot not found (use a snapshot file, or `latest` to continue RUN)")
    if p.is_dir():
        p = p / "latest.pt"
        if not p.exists():
            raise MadError(f"--resume {resume}: folder has no latest.pt")
    return "init", p


def _restartable(out: Path) -> bool:
    """A run folder killed before its first snapshot (ours, but nothing to resume) may start over."""
    return out.is_dir() and (out / "config.json").exists() and not any(out.glob("snapshot-*.pt"))


def train_stylegan2(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    cfg: str | None = None,
    kimg: float | None = None,
    batch: int | None = None,
    batch_gpu: int | None = None,
    gamma: float | None = None,
    mirror: bool = False,
    seed: int = 0,
    resume: str | None = None,
    snap_every: float | None = None,
    device: str = "auto",
    dry_run: bool = False,
) -> dict[str, Any]:
    """Train StyleGAN2 on the images in `data`, writing snapshots, logs and grids into `out`.

    `resume='latest'` continues RUN from its last snapshot (or starts it if it has none);
    `resume=<snapshot>` starts a new run initialised from another run's weights. Returns a
    summary (or, with `dry_run`, the resolved config and parameter counts without training).
    """
    dist = init_dist(device)
    dev = dist.device
    info = scan_folder(data)
    out_path = Path(out)
    mode, resume_path = _resolve_resume(out_path, resume)
    cfg_name = cfg or ("auto" if dev.type == "cuda" else "tiny")

    snap: dict[str, Any] | None = None
    d_from_snap = mode == "continue"
    if mode != "fresh":
        from mad_cli.models.snapshot import load_snapshot

        snap = load_snapshot(resume_path, map_location="cpu")
        if snap.get("format") != "mad.stylegan2":
            raise MadError(f"--resume {resume}: {resume_path} is a {snap.get('format')} snapshot, not StyleGAN2")

    if mode == "continue":
        assert snap is not None
        config = copy.deepcopy(snap["config"])
        if (config["resolution"], config["channels"]) != (info.resolution, info.channels):
            raise MadError(
                f"--resume latest: {resume_path} was trained on {config['resolution']}² × {config['channels']} images, "
                f"{data} holds {info.resolution}² × {info.channels}"
            )
        if config.get("gpus", 1) != dist.world:
            raise MadError(f"--resume latest: {resume_path} was trained with {config.get('gpus', 1)} process(es), this run has {dist.world}")
        # Loop scripts pass the same flags on every re-run: only a flag that asks for
        # something other than the stored config deserves a warning.
        stored = {"--cfg": config.get("cfg"), "--batch": config.get("batch"), "--batch-gpu": config.get("batch_gpu"),
                  "--gamma": config.get("loss_kwargs", {}).get("r1_gamma")}
        given = {"--cfg": cfg, "--batch": batch, "--batch-gpu": batch_gpu, "--gamma": None if gamma is None else float(gamma)}
        ignored = [flag for flag, value in given.items() if value is not None and value != stored[flag]]
        if ignored and dist.rank == 0:
            from mad_cli.output import warn

            warn(f"{', '.join(ignored)} ignored: a continued run keeps the config stored in {resume_path}")
        if kimg is not None:
            config["total_kimg"] = float(kimg)
        if snap_every is not None:
            config["snap_kimg"] = float(snap_every)
            config["tick_kimg"] = min(config["tick_kimg"], float(snap_every))
    else:
        config = resolve_config(
            cfg_name, resolution=info.resolution, channels=info.channels, gpus=dist.world, kimg=kimg, batch=batch,
            batch_gpu=batch_gpu, gamma=gamma, mirror=mirror, seed=seed, snap_kimg=snap_every,
        )
        if mode == "init":
            assert snap is not None
            src = snap.get("config", {})
            g_kwargs = src.get("G_kwargs")
            if not g_kwargs:
                raise MadError(f"--resume {resume}: snapshot has no G_kwargs in its config")
            if (g_kwargs["img_resolution"], g_kwargs["img_channels"]) != (info.resolution, info.channels):
                raise MadError(
                    f"--resume {resume}: the snapshot makes {g_kwargs['img_resolution']}² × {g_kwargs['img_channels']} images, "
                    f"{data} holds {info.resolution}² × {info.channels}"
                )
            config["G_kwargs"] = copy.deepcopy(g_kwargs)
            d_from_snap = snap.get("D") is not None and bool(src.get("D_kwargs"))
            if d_from_snap:
                d_kwargs = copy.deepcopy(src["D_kwargs"])
                d_kwargs.setdefault("epilogue_kwargs", {})["mbstd_group_size"] = config["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"]
                config["D_kwargs"] = d_kwargs
            config["init_from"] = str(resume_path)
    config["data"] = str(Path(data).resolve())
    config["num_images"] = len(info.paths)

    try:
        G, D, G_ema = build_networks(config, dev)
    except (TypeError, ValueError) as exc:
        if snap is None:
            raise
        raise MadError(f"--resume {resume}: cannot build the networks from the snapshot's config ({exc})") from None
    counts = {"G_params": count_parameters(G), "D_params": count_parameters(D), "mapping_params": count_parameters(G.mapping), "synthesis_params": count_parameters(G.synthesis)}
    if dry_run:
        return {"config": config, **counts}

    # -- output folder (rank 0 only; the others wait to hear whether it worked) ----------
    error = ""
    if dist.rank == 0:
        try:
            if mode == "continue":
                prepare_output_dir(out_path, sources=[data], force=True)
            elif (mode == "init" or resume == "latest") and _restartable(out_path):
                prepare_output_dir(out_path, sources=[data], force=True)  # killed before its first snapshot: start over
            else:
                if out_path.exists() and (out_path / "latest.pt").exists():
                    raise MadError(f"--out {out_path}: holds a training run; continue it with --resume latest or choose another folder")
                prepare_output_dir(out_path, sources=[data])
        except MadError as exc:
            error = str(exc)
    _agree(dist, not error, f"--out {out_path}: rank 0 could not prepare the output folder")
    if error:
        raise MadError(error)

    # -- state ---------------------------------------------------------------------------
    loss = StyleGAN2Loss(G, D, gather=_gather_fn(dist), **config["loss_kwargs"])
    phases = _make_phases(config, G, D)
    cur_nimg = 0
    batch_idx = 0
    train_seconds = 0.0
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
            phases[0].opt.load_state_dict(optim["G"])
            next(p for p in phases if p.name == "Dmain").opt.load_state_dict(optim["D"])
            progress_state = snap["progress"]
            cur_nimg = int(progress_state["cur_nimg"])
            batch_idx = int(progress_state["batch_idx"])
            train_seconds = float(progress_state.get("train_seconds", 0.0))
            loss.pl_mean = snap["loss"]["pl_mean"].to(dev)
            if "rng" in snap:
                _set_rng_state(snap["rng"])
    if dist.active:
        for t in list(G.parameters()) + list(G.buffers()) + list(D.parameters()) + list(D.buffers()) + list(G_ema.parameters()) + list(G_ema.buffers()):
            torch.distributed.broadcast(t.data, src=0)

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
    writer = dist.rank == 0
    log_path = out_path / "log.jsonl"

    gw, gh = grid_shape(info.resolution)
    grid_z = torch.randn([gw * gh, G.z_dim], generator=torch.Generator().manual_seed(config["seed"])).to(dev)
    if writer:
        atomic_write_text(out_path / "config.json", json.dumps(config, indent=2) + "\n")
        kept = _load_run_log(log_path, cur_nimg) if mode == "continue" else []
        atomic_write_text(log_path, "".join(line + "\n" for line in kept))
        if mode != "continue":
            idx, flips = order.samples(0, gw * gh)
            reals = _to_float(data_src.get(idx), flips, torch.device("cpu"))
            write_png(out_path / "reals.png", image_grid(to_uint8(reals), gw))
            write_png(out_path / snapshot_name(0).replace("snapshot-", "fakes-").replace(".pt", ".png"), image_grid(generate_grid(G_ema, grid_z, bg), gw))

    def fetch(start: int) -> tuple[torch.Tensor, np.ndarray]:
        """This process's rounds of the global batch starting at sample `start`."""
        idx, flips = order.samples(start, batch_size)
        mine = np.concatenate([np.arange(g * bg, (g + 1) * bg) for g in (j * dist.world + dist.rank for j in range(local_rounds))])
        return data_src.get(idx[mine]), flips[mine]

    prefetch = ThreadPoolExecutor(max_workers=1)
    pending: Future[tuple[torch.Tensor, np.ndarray]] = prefetch.submit(fetch, cur_nimg)
    tick_stats: dict[str, list[float]] = {}
    tick_start_nimg = cur_nimg
    tick_start_time = time.perf_counter()
    tick_index = 0
    last_snapshot: Path | None = None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    from mad_cli.models.snapshot import save_snapshot
    from mad_cli.output import log as log_line
    from mad_cli.output import progress

    def write_snapshot() -> Path:
        G_opt = phases[0].opt
        D_opt = next(p for p in phases if p.name == "Dmain").opt
        snapshot = {
            "format": "mad.stylegan2",
            "version": 1,
            "config": config,
            "G": _cpu_state(G),
            "D": _cpu_state(D),
            "G_ema": _cpu_state(G_ema),
            "optim": {"G": _cpu_tree(G_opt.state_dict()), "D": _cpu_tree(D_opt.state_dict())},
            "progress": {"kimg": cur_nimg / 1000, "cur_nimg": cur_nimg, "batch_idx": batch_idx, "train_seconds": train_seconds},
            "loss": {"pl_mean": loss.pl_mean.detach().cpu().clone()},
            "rng": _rng_state(),
        }
        path = out_path / snapshot_name(cur_nimg)
        save_snapshot(path, snapshot)
        place_file(path, out_path / "latest.pt", link="hardlink")
        write_png(path.with_name(path.name.replace("snapshot-", "fakes-").replace(".pt", ".png")), image_grid(generate_grid(G_ema, grid_z, bg), gw))
        G_ema.eval()
        return path

    fields = ("kimg", "sec_kimg", "loss_G", "loss_D")
    last_row: dict[str, Any] = {}
    try:
        with progress(total_nimg, "train", fields=fields) if writer else _quiet() as bar:
            bar.advance(min(cur_nimg, total_nimg))
            while cur_nimg < total_nimg:
                step_start = time.perf_counter()
                real_u8, flips = pending.result()
                pending = prefetch.submit(fetch, cur_nimg + batch_size)
                reals = _to_float(real_u8, flips, dev).split(bg)
                for phase_idx, phase in enumerate(phases):
                    if batch_idx % phase.interval:
                        continue
                    phase.module.requires_grad_(True)
                    phase.opt.zero_grad(set_to_none=True)
                    for j in range(local_rounds):
                        g = j * dist.world + dist.rank
                        torch.manual_seed(_round_seed(config["seed"], batch_idx, phase_idx, g))
                        gen_z = torch.randn([bg, G.z_dim], device=dev)
                        stats = loss.accumulate_gradients(phase.name, reals[j], gen_z, gain=phase.interval / total_rounds)
                        for k, v in stats.items():
                            tick_stats.setdefault(k, []).append(v)
                    phase.module.requires_grad_(False)
                    params = [p for p in phase.module.parameters() if p.grad is not None]
                    if params:
                        flat = torch.cat([p.grad.flatten() for p in params])
                        if dist.active:
                            torch.distributed.all_reduce(flat)
                        torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                        for p, gflat in zip(params, flat.split([p.numel() for p in params])):
                            p.grad.copy_(gflat.view_as(p))
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

                prev_nimg = cur_nimg
                cur_nimg += batch_size
                batch_idx += 1
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
                        **{k: float(np.mean(v)) for k, v in sorted(tick_stats.items())},
                        "pl_mean": float(loss.pl_mean),
                        "gpu_mem_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
                    }
                    last_row = row
                    if writer:
                        with open(log_path, "a", encoding="utf-8") as fh:
                            fh.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}) + "\n")
                            fh.flush()
                        bar.update(
                            kimg=f"{row['kimg']:.2f}", sec_kimg=f"{row['sec_per_kimg']:.1f}",
                            loss_G=f"{row.get('loss_G', float('nan')):.3f}", loss_D=f"{row.get('loss_D', float('nan')):.3f}",
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
        if dist.active:
            torch.distributed.barrier()

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
        **counts,
    }


class _quiet:
    """Progress stand-in for ranks other than 0."""

    def __enter__(self) -> "_quiet":
        return self

    def __exit__(self, *_: Any) -> None:
        return None

    def advance(self, n: int = 1) -> None:
        pass

    def update(self, **_: Any) -> None:
        pass
