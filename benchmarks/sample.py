"""Speed of `mad sample` against the bare G_ema forward pass (target: ratio >= 0.8).

`mad sample` does more than the forward pass: latents per seed, uint8 conversion, copy to
the host, PNG encoding with provenance tags and atomic renames. The writer threads are
meant to hide all of that behind the next chunk's forward pass; this prints how well they
do. Both sides use the same device and the same batch shape (the sampler's fixed compute
chunk, see mad_cli.sampling.COMPUTE_BATCH).

    .venv/bin/python benchmarks/sample.py [--device auto|cpu|cuda] [--n 512] [--cfg tiny small auto] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mad_cli.devices import resolve_device  # noqa: E402
from mad_cli.models.gaussian import fit_gaussian_folder  # noqa: E402
from mad_cli.models.snapshot import save_snapshot  # noqa: E402
from mad_cli.models.stylegan2.configs import resolve_config  # noqa: E402
from mad_cli.models.stylegan2.networks import Generator  # noqa: E402
from mad_cli.sampling import compute_batch, sample_snapshot, stylegan2_latents  # noqa: E402

# (cfg, resolution, channels) to benchmark; auto uses NVIDIA's 256² generator.
SETUPS = {"tiny": (32, 1), "small": (64, 3), "auto": (256, 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(G: torch.nn.Module, device: torch.device, n: int, psi: float) -> float:
    """Images/s of G(z) alone, on chunks of the sampler's compute batch (latents already on device)."""
    chunk = compute_batch(device)
    z = stylegan2_latents(range(chunk), G.z_dim).to(device)
    with torch.inference_mode():
        G(z, None, truncation_psi=psi)  # warm-up (kernel selection, allocator)
        _sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            G(z, None, truncation_psi=psi)
            done += chunk
        _sync(device)
    return done / (time.perf_counter() - t0)


def sampler_speed(snapshot: Path, device: torch.device, n: int, psi: float, batch: int) -> float:
    """Images/s of the whole library call (load, generate, encode, write), warm caches."""
    out = Path(tempfile.mkdtemp(prefix="mad-bench-sample-"))
    try:
        sample_snapshot(snapshot, out / "warm", n=compute_batch(device), psi=psi, device=str(device), batch=batch)
        t0 = time.perf_counter()
        sample_snapshot(snapshot, out / "run", n=n, psi=psi, device=str(device), batch=batch)
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=None, help="images per measurement (default: 256 on CPU, 4096 on CUDA)")
    parser.add_argument("--cfg", nargs="+", default=None, help="configs (default: tiny small on CPU, tiny small auto on CUDA)")
    parser.add_argument("--psi", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each side is reported")
    args = parser.parse_args()
    device = resolve_device(args.device)
    n = args.n or (4096 if device.type == "cuda" else 256)
    cfgs = args.cfg or (["tiny", "small", "auto"] if device.type == "cuda" else ["tiny", "small"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    print(f"device: {name}; compute chunk {compute_batch(device)}; n={n}; psi={args.psi}; --batch {args.batch}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mad-bench-snap-") as tmp:
        for cfg in cfgs:
            res, ch = SETUPS[cfg]
            G_kwargs = resolve_config(cfg, resolution=res, channels=ch)["G_kwargs"]
            torch.manual_seed(0)
            G = Generator(**G_kwargs).eval().requires_grad_(False)
            path = Path(tmp) / f"{cfg}.pt"
            save_snapshot(path, {"format": "mad.stylegan2", "version": 1, "config": {"G_kwargs": G_kwargs}, "G_ema": G.state_dict(), "progress": {"kimg": 0.0}})
            G = G.to(device)
            # Interleaved repeats, best of each: other processes on a shared machine only slow things down.
            bare = ours = 0.0
            for _ in range(args.repeats):
                bare = max(bare, bare_forward(G, device, n, args.psi))
                ours = max(ours, sampler_speed(path, device, n, args.psi, args.batch))
            rows.append((f"stylegan2 {cfg} {res}²×{ch}", bare, ours))

        # The Gaussian model has no network; its "forward" is the sampling itself.
        from mad_cli.imagedir import write_png
        import numpy as np

        rng = np.random.default_rng(0)
        for i in range(200):
            write_png(Path(tmp) / "gdata" / f"{i:04d}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        fit_gaussian_folder(Path(tmp) / "gdata", Path(tmp) / "grun")
        from mad_cli.models.gaussian import sample_gaussian
        from mad_cli.models.snapshot import load_snapshot

        model = load_snapshot(Path(tmp) / "grun" / "latest.pt")["model"]
        bare_g = ours_g = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample_gaussian(model, range(n), psi=args.psi, device=device)
            bare_g = max(bare_g, n / (time.perf_counter() - t0))
            ours_g = max(ours_g, sampler_speed(Path(tmp) / "grun" / "latest.pt", device, n, args.psi, args.batch))
        rows.append(("gaussian 32²×1 (full cov)", bare_g, ours_g))

    print()
    print(f"| {'model':<28} | {'forward img/s':>13} | {'mad sample img/s':>16} | {'ratio':>5} |")
    print(f"|{'-' * 30}|{'-' * 15}|{'-' * 18}|{'-' * 7}|")
    for label, bare, ours in rows:
        print(f"| {label:<28} | {bare:>13.1f} | {ours:>16.1f} | {ours / bare:>5.2f} |")


if __name__ == "__main__":
    main()
