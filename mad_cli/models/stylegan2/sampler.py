"""`mad sample` for StyleGAN2 snapshots (ours and NVIDIA's pickles): G_ema with truncation.

Latents follow NVIDIA's `gen_images.py`, z = np.random.RandomState(seed).randn(z_dim), so
an imported NVIDIA pickle gives the same images for the same seeds as NVIDIA's script.
The truncation trick w = w_avg + ψ (w − w_avg) is the paper's sampling bias (ψ < 1 trades
diversity for quality). Conditional generators draw class `i mod c_dim` for seed i, so
every class is equally represented, unless `--class K` asks for one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_cli.devices import compute_batch
from mad_cli.errors import MadError
from mad_cli.imagedir import to_uint8
from mad_cli.models.labels import check_class, seed_label
from mad_cli.models.snapshot import check_architecture
from mad_cli.models.stylegan2.options import StyleGAN2SampleOptions


def check_networks(snap: dict[str, Any], path: Path | str, flag: str | None = None) -> None:
    """Compare the networks the snapshot's config describes with the weights it holds, before
    anything is allocated (`snapshot.check_architecture`): G_ema and G against config.G_kwargs,
    D against config.D_kwargs when both are there. Used by `mad sample` and training resume."""
    from mad_cli.models.stylegan2.networks import Discriminator, Generator

    where = f"{flag}: {path}" if flag else str(path)
    config = snap.get("config")
    g_kwargs = config.get("G_kwargs") if isinstance(config, dict) else None
    if not isinstance(g_kwargs, dict):
        raise MadError(f"{where}: StyleGAN2 snapshot has no config.G_kwargs")
    present = [k for k in ("G_ema", "G") if snap.get(k) is not None]
    if not present:
        raise MadError(f"{where}: StyleGAN2 snapshot has no G_ema weights")
    for key in present:
        check_architecture(lambda: Generator(**g_kwargs), snap[key], where=where, what=f"{key}", config="config.G_kwargs")
    d_kwargs = config.get("D_kwargs")
    if isinstance(d_kwargs, dict) and snap.get("D") is not None:
        check_architecture(lambda: Discriminator(**d_kwargs), snap["D"], where=where, what="D", config="config.D_kwargs")


def load_generator(snap: dict[str, Any], device: torch.device | str = "cpu", path: Path | str = "snapshot") -> torch.nn.Module:
    """Build `Generator(**config["G_kwargs"])` and load G_ema (or G) into it, ready for inference."""
    from mad_cli.models.stylegan2.networks import Generator

    config = snap.get("config") or {}
    kwargs = config.get("G_kwargs") if isinstance(config, dict) else None
    if not isinstance(kwargs, dict):
        raise MadError(f"{path}: StyleGAN2 snapshot has no config.G_kwargs")
    state = snap.get("G_ema") if isinstance(snap.get("G_ema"), dict) else snap.get("G")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MadError(f"{path}: StyleGAN2 snapshot has no G_ema weights")
    check_architecture(lambda: Generator(**kwargs), state, where=str(path), what="generator", config="config.G_kwargs")
    try:
        G = Generator(**kwargs)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise MadError(f"{path}: cannot build the generator from its G_kwargs ({exc})") from None
    ours = G.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MadError(f"{path}: generator weights do not fit the architecture in G_kwargs ({detail})")
    bad_shape = [k for k, v in ours.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad_shape:
        k = bad_shape[0]
        raise MadError(f"{path}: weight {k} has shape {list(state[k].shape)}, the architecture wants {list(ours[k].shape)}")
    G.load_state_dict(state)
    return G.eval().requires_grad_(False).to(device)


def stylegan2_latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """z for each seed exactly as NVIDIA's gen_images.py draws it: RandomState(seed).randn(z_dim)."""
    return torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds])).to(torch.float32)


class StyleGAN2Sampler:
    model = "stylegan2"

    def __init__(self, snap: dict[str, Any], path: Path, device: torch.device, options: StyleGAN2SampleOptions):
        self.G = load_generator(snap, device, path)
        self.num_classes = int(getattr(self.G, "c_dim", 0))
        check_class(options.class_, self.num_classes, path)
        self.device, self.options = device, options
        self.chunk = compute_batch(device)
        self.step_multiple = 1 if options.noise_mode == "random" else self.chunk
        self.shape = (int(self.G.img_resolution), int(self.G.img_resolution), int(self.G.img_channels))
        self.tags = {"psi": repr(float(options.psi)), "noise_mode": options.noise_mode}
        if options.psi_cutoff is not None:
            self.tags["psi_cutoff"] = str(options.psi_cutoff)
        self.summary = {"psi": float(options.psi)}

    def image_tags(self, seed: int) -> dict[str, str]:
        return {"label": str(seed_label(seed, self.num_classes, self.options.class_))} if self.num_classes else {}

    def _forward(self, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        o = self.options
        return self.G(z, c, truncation_psi=o.psi, truncation_cutoff=o.psi_cutoff, noise_mode=o.noise_mode)

    def _labels(self, seeds: Sequence[int]) -> torch.Tensor | None:
        if not self.num_classes:
            return None
        idx = torch.tensor([seed_label(s, self.num_classes, self.options.class_) for s in seeds])
        return torch.nn.functional.one_hot(idx, self.num_classes).to(torch.float32).to(self.device)

    @torch.inference_mode()
    def generate(self, seeds: Sequence[int]) -> np.ndarray:
        z = stylegan2_latents(seeds, int(self.G.z_dim)).to(self.device)
        c = self._labels(seeds)
        parts = []
        if self.options.noise_mode == "random":
            # Noise is drawn inside the network from the global RNG: seed it per image and
            # run one image per forward, so the noise belongs to the seed alone.
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                for i, s in enumerate(seeds):
                    torch.manual_seed(int(s))
                    parts.append(self._forward(z[i : i + 1], None if c is None else c[i : i + 1]))
        else:
            for start in range(0, len(seeds), self.chunk):
                zs = z[start : start + self.chunk]
                cs = None if c is None else c[start : start + self.chunk]
                k = zs.shape[0]
                if k < self.chunk:
                    zs = torch.cat([zs, zs[-1:].expand(self.chunk - k, -1)])
                    cs = None if cs is None else torch.cat([cs, cs[-1:].expand(self.chunk - k, -1)])
                parts.append(self._forward(zs, cs)[:k])
        return to_uint8(torch.cat(parts)).permute(0, 2, 3, 1).cpu().numpy()


def build_sampler(snap: dict[str, Any], path: Path, device: torch.device, options: StyleGAN2SampleOptions) -> StyleGAN2Sampler:
    return StyleGAN2Sampler(snap, path, device, options)
