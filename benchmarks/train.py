"""Speed and memory of `mad train` per model and preset on the current device.

Why: the CPU presets are chosen so that a self-consuming loop on the digits finishes in
minutes, and on a GPU the question is how close we get to NVIDIA's published numbers
(auto at 256²: 12.5 sec/kimg on one A100). Each preset runs in its own process so that
peak memory is its own. sec/kimg is measured on the ticks after the first (warm-up), and
CPU seconds per kimg are shown too because wall time on a shared machine says little.

    .venv/bin/python benchmarks/train.py [--cfgs tiny small] [--kimg 1] [--resolution 32] [--device cpu]
    .venv/bin/python benchmarks/train.py --cfgs auto --resolution 256 --device cuda --ops auto ref
    .venv/bin/python benchmarks/train.py --cfgs tiny --resolution 16 --threads 1 2   # one torch thread or two
    .venv/bin/python benchmarks/train.py --model ddpm --cfgs tiny small --resolution 16   # the diffusion presets
    .venv/bin/python benchmarks/train.py --model ddpm --cfgs cifar32 --resolution 32 --channels 3 --device cuda

`--threads` sets torch's thread count (and OMP_NUM_THREADS) in each run: on a small,
shared CPU one thread is often faster than two for the tiny presets (see
benchmarks/stylegan2_cpu_curve.py for what the presets reach in a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_KIMG = {"tiny": 1.0, "small": 0.5, "auto": 2.0, "paper256": 1.0, "paper512": 0.5, "paper1024": 0.25, "cifar32": 2.0, "faces64": 2.0}


def make_data(folder: Path, resolution: int, channels: int, n: int = 512) -> None:
    """The bundled digits at `resolution` when grey, random smooth colour images otherwise."""
    if channels == 1:
        from mad_cli.datasets import write_digits

        write_digits(folder, resolution=resolution, channels=1, limit=n, split="train")
        return
    from mad_cli.imagedir import write_png

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:resolution, :resolution] / resolution
    for i in range(n):
        f = rng.uniform(1, 4, 3)
        arr = np.stack([np.sin(2 * np.pi * (f[c] * xx + rng.uniform() * yy)) for c in range(3)], -1)
        write_png(folder / f"{i:05d}.png", ((arr + 1) * 127.5).astype(np.uint8))


def _batch(config: dict) -> int | None:
    """The global batch: StyleGAN2 keeps it at the top of config.json, ddpm under "train"."""
    return config.get("batch") or config.get("train", {}).get("batch")


def worker(model: str, cfg: str, data: str, out: str, kimg: float, device: str, batch: int | None) -> dict:
    import torch

    from mad_cli.train import train

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    summary = train(data, out, model=model, cfg=cfg, kimg=kimg, batch=batch, snap_every=kimg, device=device)
    rows = [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    nimg_steady = steady[-1]["nimg"] - (rows[0]["nimg"] if len(rows) > 1 else 0)
    secs = steady[-1]["train_seconds"] - (rows[0]["train_seconds"] if len(rows) > 1 else 0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu = max((r.get("gpu_mem_gb") or 0) for r in rows) if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else None
    return {
        "model": model,
        "cfg": cfg,
        "batch": _batch(json.loads((Path(out) / "config.json").read_text())),
        "kimg": kimg,
        "sec_per_kimg": secs / (nimg_steady / 1000),
        "cpu_sec_per_kimg": (time.process_time() - cpu0) / kimg,
        "wall_total_s": time.perf_counter() - wall0,
        "peak_rss_gb": peak_rss,
        "peak_gpu_gb": gpu,
        "params": summary.get("params") or summary.get("G_params"),
        "D_params": summary.get("D_params"),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="stylegan2", choices=["stylegan2", "ddpm"])
    ap.add_argument("--cfgs", nargs="+", default=["tiny", "small"])
    ap.add_argument("--kimg", type=float, default=None, help="training length per preset (default: per preset)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ops", nargs="+", default=["auto"], help="MAD_OPS values to compare (auto, ref)")
    ap.add_argument("--threads", nargs="+", type=int, default=[0], help="torch thread counts to compare (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="rows as JSON lines")
    ap.add_argument("--worker", nargs=5, metavar=("CFG", "DATA", "OUT", "KIMG", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        cfg, data, out, kimg, batch = args.worker
        print(json.dumps(worker(args.model, cfg, data, out, float(kimg), args.device, int(batch) if batch != "-" else None)))
        return

    from mad_cli.output import Results

    with tempfile.TemporaryDirectory(prefix="mad-train-bench-") as tmp:
        data = Path(tmp) / "data"
        make_data(data, args.resolution, args.channels)
        print(f"device {args.device}, {args.resolution}² × {args.channels}, cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}", file=sys.stderr)
        columns = ["model", "cfg", "ops", "batch", "sec_per_kimg", "cpu_sec_per_kimg", "peak_rss_gb", "peak_gpu_gb", "params", "D_params", "threads"]
        with Results(args.json, title=f"mad train speed ({args.resolution}²)", columns=columns) as results:
            for cfg in args.cfgs:
                for ops in args.ops:
                    for threads in args.threads:
                        kimg = args.kimg or DEFAULT_KIMG.get(cfg, 1.0)
                        out = Path(tmp) / f"run-{cfg}-{ops}-{threads}"
                        env = dict(os.environ, MAD_OPS=ops, PYTHONPATH=str(REPO))
                        if threads:
                            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
                        cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device, "--worker", cfg, str(data), str(out), str(kimg), str(args.batch or "-")]
                        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
                        if res.returncode != 0:
                            print(f"{cfg} ({ops}) failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                            continue
                        row = json.loads(res.stdout.strip().splitlines()[-1])
                        results.row({**row, "ops": ops})


if __name__ == "__main__":
    main()
