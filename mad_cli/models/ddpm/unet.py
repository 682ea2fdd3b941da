"""The ε-prediction U-Net of DDPM (Ho et al. 2020) as refined by Improved DDPM and ADM.

Layout (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021, "ADM"):

- a sinusoidal embedding of the timestep, then a two-layer MLP to `4 * model_channels`;
  for a class-conditional model a learned label embedding is added to it. The label table
  has `num_classes + 1` rows: row `num_classes` is the NULL label that classifier-free
  guidance (Ho & Salimans 2022) trains with probability p_uncond and samples with.
- an encoder of `len(channel_mult)` levels, each `num_res_blocks` residual blocks at
  `model_channels * channel_mult[level]` channels, then a stride-2 convolution (not after
  the last level); self-attention after the residual blocks of the levels whose
  resolution is in `attention_resolutions`;
- a middle of residual block, attention, residual block;
- a decoder mirroring the encoder with `num_res_blocks + 1` blocks per level, each taking
  the matching encoder activation concatenated on the channel axis (every encoder output,
  the input convolution's and the downsamplers' included, is used exactly once), and a
  nearest-neighbour ×2 + 3×3 convolution between levels;
- GroupNorm, SiLU and a zero-initialised 3×3 convolution to the output.

Residual blocks inject the embedding either additively after the first convolution (DDPM)
or as ADM's scale-shift norm, GroupNorm(h)·(1 + scale) + shift, before the second one.
The last convolution of every residual branch, of every attention block and of the output
is zero-initialised (ADM): a fresh model predicts ε̂ = 0 and every block starts as the
identity, which keeps the first steps of training stable.

GroupNorm needs a group count dividing the channel count. ADM uses 32 groups everywhere,
which small CPU models (32 or 48 channels) cannot use well, so the count is the largest
divisor of the channel count that is at most min(32, channels // 4) (`norm_groups`): 32 for
the GPU presets' 128-, 256- and 384-channel tensors as in ADM, 8 for 32 channels, 12 for 48,
and at least 4 channels per group everywhere.

The constructor takes plain JSON-able keyword arguments only, so `UNet(**config["unet"])`
rebuilds a network from a snapshot's config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count: the largest divisor of `channels` ≤ min(max_groups, channels // 4)."""
    groups = max(1, min(max_groups, channels // 4))
    while channels % groups:
        groups -= 1
    return groups


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels, max_groups), channels, eps=1e-5)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: the residual branch it ends starts as a no-op (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t·f_k), sin(t·f_k)] with frequencies f_k = max_period^(-k/half), k < half.

    `t` may be fractional (respaced or continuous timesteps); it is embedded in float32 even
    under autocast, because bf16 cannot tell t = 998 from t = 999.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, embedding in, GroupNorm → SiLU → dropout → zero conv, plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float, scale_shift: bool, max_groups: int):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_norm = group_norm(in_ch, max_groups)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.out_norm = group_norm(out_ch, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(F.silu(self.in_norm(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions, pre-GroupNorm, zero-initialised output."""

    def __init__(self, channels: int, heads: int, *, max_groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention: {channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = group_norm(channels, max_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, hgt * wid)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (b, heads, hw, c/heads)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q·kᵀ/√d)·v
        return x + self.proj(h.transpose(-1, -2).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A Sequential whose residual blocks also receive the timestep/label embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """ε̂(x_t, t, label) for images of `in_channels` × `resolution`².

    Args (all JSON-able):
        resolution: image side; must be divisible by 2^(len(channel_mult) - 1).
        in_channels: 1 (grey) or 3 (RGB); `out_channels` defaults to it (ε has the image's shape).
        model_channels: channels of the first level; the embedding MLP is 4× wider.
        channel_mult: channel multiplier per level, highest resolution first.
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        attention_resolutions: feature-map sides (e.g. [16, 8]) that get self-attention after
            each residual block; every one must be a level's resolution. The middle always has one.
        num_heads / num_head_channels: attention heads, or (when num_head_channels > 0) as many
            heads as channels // num_head_channels (ADM's 64 channels per head).
        dropout: inside every residual block, before its last convolution.
        num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1 plus
            the NULL label `num_classes`.
        use_scale_shift_norm: ADM's scale-shift injection of the embedding (False: DDPM's sum).
        max_norm_groups: cap on GroupNorm groups (see `norm_groups`).
    """

    def __init__(
        self,
        *,
        resolution: int,
        in_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int] = (),
        num_heads: int = 1,
        num_head_channels: int = -1,
        dropout: float = 0.0,
        num_classes: int = 0,
        use_scale_shift_norm: bool = True,
        out_channels: int | None = None,
        max_norm_groups: int = 32,
    ):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attention_resolutions = sorted({int(r) for r in attention_resolutions}, reverse=True)
        levels = len(channel_mult)
        if levels < 1 or min(channel_mult) < 1 or model_channels < 1 or num_res_blocks < 1:
            raise ValueError("UNet: model_channels, channel_mult entries and num_res_blocks must be >= 1")
        if resolution < 1 or resolution % (2 ** (levels - 1)):
            raise ValueError(f"UNet: resolution {resolution} is not divisible by 2^{levels - 1} ({levels} levels)")
        level_res = [resolution >> i for i in range(levels)]
        stray = [r for r in attention_resolutions if r not in level_res]
        if stray:
            raise ValueError(f"UNet: attention_resolutions {stray} are not among the levels' resolutions {level_res}")
        if num_classes < 0:
            raise ValueError("UNet: num_classes must be >= 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("UNet: dropout must be in [0, 1)")

        self.resolution = int(resolution)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels or in_channels)
        self.model_channels = int(model_channels)
        self.num_classes = int(num_classes)
        emb_dim = 4 * model_channels

        def heads_for(ch: int) -> int:
            return ch // num_head_channels if num_head_channels > 0 else num_heads

        block = dict(dropout=float(dropout), scale_shift=bool(use_scale_shift_norm), max_groups=int(max_norm_groups))

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, model_channels * mult, emb_dim, **block)]
                ch = model_channels * mult
                if level_res[level] in attention_resolutions:
                    layers.append(AttentionBlock(ch, heads_for(ch), max_groups=max_norm_groups))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level < levels - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle = EmbedSequential(
            ResBlock(ch, ch, emb_dim, **block),
            AttentionBlock(ch, heads_for(ch), max_groups=max_norm_groups),
            ResBlock(ch, ch, emb_dim, **block),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), model_channels * mult, emb_dim, **block)]
                ch = model_channels * mult
                if level_res[level] in attention_resolutions:
                    layers.append(AttentionBlock(ch, heads_for(ch), max_groups=max_norm_groups))
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(EmbedSequential(*layers))
        assert not skip_channels

        self.out = nn.Sequential(group_norm(ch, max_norm_groups), nn.SiLU(), zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε̂ for a batch: `t` (B,) or scalar, integer or float timesteps in [0, T); `labels` (B,) ints.

        For a conditional model `labels=None` means the NULL label for the whole batch (the
        unconditional ε of classifier-free guidance); an unconditional model takes no labels.
        Labels are not range-checked here (that would synchronise the GPU every call): the
        caller validates them once.
        """
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(labels)
        elif labels is not None:
            raise ValueError("UNet: labels given to an unconditional model (num_classes = 0)")

        skips = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
