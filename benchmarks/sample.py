"""Speed of `mad sample` against the bare model (target: ratio >= 0.8), for every backend.

`mad sample` does more than the model: latents per seed, uint8 conversion, copy to the
host, PNG encoding with provenance tags and atomic renames. The writer threads are meant
to hide all of that behind the next chunk's generation; this prints how well they do.
Both sides use the same device and the same batch shape (the sampler's fixed compute
chunk). StyleGAN2 rows time G_ema's forward pass; ddpm rows time DDIM sampling (`--steps`,
default 25, as in the project's measurements) of a class-conditional U-Net with random
weights (speed does not depend on the weights), without and with classifier-free guidance
(one batched forward of conditional and unconditional images).

    .venv/bin/python benchmarks/sample.py [--device auto|cpu|cuda] [--n 512] [--cfg tiny small auto] [--ddpm tiny@16 tiny@32] [--repeats 3]
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

from mad_cli.devices import compute_batch, resolve_device  # noqa: E402
from mad_cli.models.snapshot import save_snapshot  # noqa: E402
from mad_cli.models.stylegan2.configs import resolve_config  # noqa: E402
from mad_cli.models.stylegan2.networks import Generator  # noqa: E402
from mad_cli.models.stylegan2.sampler import stylegan2_latents  # noqa: E402
from mad_cli.sampling import sample_snapshot  # noqa: E402
from mad_cli.train import train  # noqa: E402

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


def sampler_speed(snapshot: Path, device: torch.device, n: int, batch: int, warm: int, **settings: float) -> float:
    """Images/s of the whole library call (load, generate, encode, write), warm caches."""
    out = Path(tempfile.mkdtemp(prefix="mad-bench-sample-"))
    try:
        sample_snapshot(snapshot, out / "warm", n=warm, device=str(device), batch=batch, **settings)
        t0 = time.perf_counter()
        sample_snapshot(snapshot, out / "run", n=n, device=str(device), batch=batch, **settings)
        return n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def ddpm_rows(spec: str, device: torch.device, n: int, steps: int, batch: int, repeats: int, tmp: Path) -> list[tuple[str, float, float]]:
    """`preset@resolution`: bare DDIM vs `mad sample`, unguided and with guidance 1."""
    from mad_cli.models.ddpm.configs import parameter_count, resolve_config as ddpm_config
    from mad_cli.models.ddpm.diffusion import GaussianDiffusion, sample
    from mad_cli.models.ddpm.sampler import CHUNK
    from mad_cli.models.ddpm.unet import UNet

    preset, _, res_text = spec.partition("@")
    res = int(res_text or 16)
    channels = 1 if preset in ("tiny", "small") else 3
    config = ddpm_config(preset, resolution=res, channels=channels, num_classes=10)
    torch.manual_seed(0)
    net = UNet(**config["unet"]).eval().requires_grad_(False)
    path = tmp / f"ddpm-{preset}-{res}.pt"
    save_snapshot(path, {"format": "mad.ddpm", "version": 1, "config": config, "ema": net.state_dict(), "progress": {"kimg": 0.0}})
    net = net.to(device)
    diffusion = GaussianDiffusion.from_schedule(**config["diffusion"])
    chunk = CHUNK.get(device.type, CHUNK["cpu"])
    rows = []
    for w in (0.0, 1.0):
        bare = ours = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample(net, diffusion, range(n), [i % 10 for i in range(n)], shape=(channels, res, res), device=device, steps=steps, guidance=w, chunk=chunk)
            _sync(device)
            bare = max(bare, n / (time.perf_counter() - t0))
            ours = max(ours, sampler_speed(path, device, n, batch, warm=chunk, guidance=w, steps=steps))
        label = f"ddpm {preset} {res}²×{channels} ({parameter_count(config) / 1e6:.1f} M) {steps} steps" + (", w=1" if w else "")
        rows.append((label, bare, ours))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--n", type=int, default=None, help="images per measurement (default: 256 on CPU, 4096 on CUDA)")
    parser.add_argument("--cfg", nargs="+", default=None, help="configs (default: tiny small on CPU, tiny small auto on CUDA)")
    parser.add_argument("--psi", type=float, default=0.7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each side is reported")
    parser.add_argument("--ddpm", nargs="*", default=None, help="ddpm PRESET@RES (default: tiny@16 tiny@32 on CPU, cifar32@32 faces64@64 on CUDA)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the ddpm rows")
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
                ours = max(ours, sampler_speed(path, device, n, args.batch, warm=compute_batch(device), psi=args.psi))
            rows.append((f"stylegan2 {cfg} {res}²×{ch}", bare, ours))

        # The Gaussian model has no network; its "forward" is the sampling itself.
        from mad_cli.imagedir import write_png
        import numpy as np

        rng = np.random.default_rng(0)
        for i in range(200):
            write_png(Path(tmp) / "gdata" / f"{i:04d}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
        train(Path(tmp) / "gdata", Path(tmp) / "grun", model="gaussian")
        from mad_cli.models.gaussian.model import sample_gaussian
        from mad_cli.models.snapshot import load_snapshot

        model = load_snapshot(Path(tmp) / "grun" / "latest.pt")["model"]
        bare_g = ours_g = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sample_gaussian(model, range(n), psi=args.psi, device=device)
            bare_g = max(bare_g, n / (time.perf_counter() - t0))
            ours_g = max(ours_g, sampler_speed(Path(tmp) / "grun" / "latest.pt", device, n, args.batch, warm=16, psi=args.psi))
        rows.append(("gaussian 32²×1 (full cov)", bare_g, ours_g))

        ddpm = args.ddpm if args.ddpm is not None else (["cifar32@32", "faces64@64"] if device.type == "cuda" else ["tiny@16", "tiny@32"])
        for spec in ddpm:
            rows.extend(ddpm_rows(spec, device, n, args.steps, args.batch, args.repeats, Path(tmp)))

    print()
    print(f"| {'model':<46} | {'model img/s':>11} | {'mad sample img/s':>16} | {'ratio':>5} |")
    print(f"|{'-' * 48}|{'-' * 13}|{'-' * 18}|{'-' * 7}|")
    for label, bare, ours in rows:
        print(f"| {label:<46} | {bare:>11.1f} | {ours:>16.1f} | {ours / bare:>5.2f} |")


if __name__ == "__main__":
    main()
