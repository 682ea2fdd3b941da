"""Speed and quality of the ddpm model core (U-Net + diffusion), without the CLI.

    # forward+backward of a preset on a batch, and DDIM sampling speed (single thread)
    .venv/bin/python benchmarks/ddpm_core.py speed [--cfg tiny] [--threads 1] [--batch 64] [--steps 25]

    # a minimal training loop (AdamW, warm-up, grad clipping, EMA as in configs.py) on the
    # bundled digits, then fd_digits / precision / recall / coverage / class accuracy of
    # N DDIM samples against the held-out test split
    .venv/bin/python benchmarks/ddpm_core.py digits [--cfg tiny] [--resolution 16] [--kimg 30] [--threads 2]

The training loop here is a scratch check of the presets, not `mad train` (which adds the
run folder, resume, DDP and bf16): same loss, optimiser and EMA, nothing else.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mad_cli.models.ddpm.configs import (
    ema_beta,
    learning_rate,
    parameter_count,
    resolve_config,
)
from mad_cli.models.ddpm.diffusion import GaussianDiffusion, sample
from mad_cli.models.ddpm.unet import UNet


def speed(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    for res in args.resolutions:
        config = resolve_config(args.cfg, resolution=res, channels=1, num_classes=10)
        net = UNet(**config["unet"])
        x = torch.randn(args.batch, 1, res, res)
        t = torch.randint(0, 1000, (args.batch,))
        y = torch.randint(0, 10, (args.batch,))
        for _ in range(2):
            net(x, t, y).square().mean().backward()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            net(x, t, y).square().mean().backward()
        fb = (time.perf_counter() - t0) / args.repeats
        print(f"{args.cfg} {res}² params {parameter_count(config):,}  forward+backward batch {args.batch}: {fb:.3f} s  ({args.batch / fb:.0f} img/s, {args.batch / fb * 3.6:.0f} kimg/h)")

        diffusion = GaussianDiffusion.from_schedule("cosine", 1000)
        net.eval()
        with torch.no_grad():  # random weights would give ε = 0 (zero-init output): perturb them
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        n = args.n
        for w in (0.0, 1.0):
            sample(net, diffusion, range(args.chunk), [0] * args.chunk, shape=(1, res, res), steps=2, guidance=w, chunk=args.chunk)
            t0 = time.perf_counter()
            sample(net, diffusion, range(n), [i % 10 for i in range(n)], shape=(1, res, res), steps=args.steps, guidance=w, chunk=args.chunk)
            dt = time.perf_counter() - t0
            print(f"{args.cfg} {res}² DDIM {args.steps} steps, guidance {w}: {n / dt:.1f} img/s ({n} images, chunk {args.chunk}, {dt:.1f} s)")


def _digits(res: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from mad_cli.datasets import digit_to_uint8, load_digits_arrays, split_indices

    images, labels = load_digits_arrays()
    idx = split_indices(labels, split, 0)
    arr = np.stack([digit_to_uint8(images[i], res, 1) for i in idx])
    return torch.from_numpy(arr)[:, None], torch.from_numpy(labels[idx])


def digits(args: argparse.Namespace) -> None:
    from mad_cli.features import get_extractor, load_digits_net
    from mad_cli.metrics import fid_from_features, neighbourhood_metrics

    res = args.resolution
    train_u8, train_y = _digits(res, "train")
    test_u8, _ = _digits(res, "test")
    data = train_u8.float() / 127.5 - 1.0
    config = resolve_config(args.cfg, resolution=res, channels=1, num_classes=10)
    tc = config["train"]
    if args.kimg is not None:
        tc["kimg"] = args.kimg
    for key in ("lr", "ema_halflife_kimg", "batch"):
        if getattr(args, key) is not None:
            tc[key] = getattr(args, key)
    torch.manual_seed(args.seed)
    net = UNet(**config["unet"])
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    diffusion = GaussianDiffusion.from_schedule(**config["diffusion"])
    if args.load:
        ema.load_state_dict(torch.load(args.load, weights_only=True))
        tc["kimg"] = 0
    opt = torch.optim.AdamW(net.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]), weight_decay=tc["weight_decay"])
    batch = int(tc["batch"])
    print(f"{args.cfg} {res}²: {parameter_count(config):,} parameters, {tc['kimg']} kimg, batch {batch}, lr {tc['lr']}, EMA half-life {tc['ema_halflife_kimg']} kimg", flush=True)
    nimg, step, t0 = 0, 0, time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    while nimg < tc["kimg"] * 1000:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = learning_rate(tc, nimg)
        loss = diffusion.training_loss(net, data[idx], train_y[idx], p_uncond=tc["p_uncond"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), tc["grad_clip"])
        opt.step()
        nimg += batch
        step += 1
        beta = ema_beta(tc, nimg, batch)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - beta)
        if step % 100 == 0:
            print(f"  step {step} kimg {nimg / 1000:.1f} loss {loss.item():.4f} {time.perf_counter() - t0:.0f} s", flush=True)
    train_s = time.perf_counter() - t0
    if args.save:
        torch.save(ema.state_dict(), args.save)

    extractor = get_extractor("digits")
    classifier = load_digits_net()
    real_f = extractor.extract(test_u8).numpy()
    if nimg:
        print(f"trained {nimg / 1000:.1f} kimg in {train_s:.0f} s ({train_s / (nimg / 1000):.1f} s/kimg)")
    for w, spacing, sampler in [(w, sp, sa) for w in args.guidance for sp in args.spacing for sa in args.sampler]:
        t0 = time.perf_counter()
        labels = [i % 10 for i in range(args.n)]
        x = sample(ema, diffusion, range(args.n), labels, shape=(1, res, res), steps=args.steps, guidance=w, chunk=64, spacing=spacing, sampler=sampler)
        dt = time.perf_counter() - t0
        u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        f = extractor.extract(u8).numpy()
        m = neighbourhood_metrics(f, real_f)
        with torch.no_grad():
            pred = classifier(classifier.prepare(u8)).argmax(1)
        acc = float((pred == torch.tensor(labels)).float().mean())
        print(
            f"{sampler} {spacing} guidance {w}: fd_digits {fid_from_features(f, real_f):.2f} precision {m['precision']:.3f} recall {m['recall']:.3f} "
            f"density {m['density']:.3f} coverage {m['coverage']:.3f} class accuracy {acc:.3f}  ({args.n} samples, {args.steps} steps, {dt:.0f} s)",
            flush=True,
        )
        if args.grid:
            from mad_cli.imagedir import image_grid, write_png

            write_png(Path(args.grid.replace(".png", f"-{sampler}-{spacing}-w{w}.png")), image_grid(u8[:100].permute(0, 2, 3, 1).numpy(), 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--cfg", default="tiny")
    s.add_argument("--resolutions", type=int, nargs="+", default=[8, 16])
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--steps", type=int, default=25)
    s.add_argument("--n", type=int, default=128)
    s.add_argument("--chunk", type=int, default=64)
    s.add_argument("--threads", type=int, default=1)
    d = sub.add_parser("digits")
    d.add_argument("--cfg", default="tiny")
    d.add_argument("--resolution", type=int, default=16)
    d.add_argument("--kimg", type=float, default=None)
    d.add_argument("--lr", type=float, default=None)
    d.add_argument("--ema-halflife-kimg", dest="ema_halflife_kimg", type=float, default=None)
    d.add_argument("--batch", type=int, default=None)
    d.add_argument("--n", type=int, default=1000)
    d.add_argument("--steps", type=int, default=25)
    d.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0])
    d.add_argument("--spacing", nargs="+", default=["linspace"])
    d.add_argument("--sampler", nargs="+", default=["ddim"])
    d.add_argument("--save", default=None, help="write the EMA weights here (state dict)")
    d.add_argument("--load", default=None, help="skip training: sample from these EMA weights")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--grid", default=None, help="write a 10×10 grid per guidance (name-w{w}.png)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speed(args) if args.cmd == "speed" else digits(args)


if __name__ == "__main__":
    main()
