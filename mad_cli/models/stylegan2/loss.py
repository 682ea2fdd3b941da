"""StyleGAN2's training objective: non-saturating logistic loss, lazy R1, path-length regularisation.

As in NVIDIA's stylegan2-ada-pytorch, one training step is split into phases that each
accumulate gradients for one network: `Gmain` (fool D), `Greg` (path length, every
G_reg_interval steps), `Dmain` (tell real from fake), `Dreg` (R1 on reals, every
D_reg_interval steps). Regularising lazily (rarely, with the penalty multiplied by the
interval) costs a fraction of the compute for the same effect.

One deliberate extension: the path-length mean `pl_mean` can be shared between
data-parallel processes (`gather`), updated in the same order a single process would
update it round by round. That keeps multi-process training numerically equal to
single-process training of the same global batch, which the tests check.

ADA (`augment.py`): D only ever sees augmented images — fakes in Gmain and Dmain, reals in
Dmain and Dreg — so `run_D` applies the pipe. R1 differentiates D(aug(x)) with respect to
the un-augmented x (the reals are marked before the pipe), as NVIDIA's loss does. The
signs of D's real logits (Dmain and Dreg) feed the controller's overfitting statistic r_t.

Conditional models take one-hot labels `c`: the reals' own labels for D, and for fakes the
labels the training loop drew (NVIDIA: labels of random training images).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mad_cli.models.stylegan2.augment import AdaController, AugmentPipe
from mad_cli.models.stylegan2.networks import Discriminator, Generator

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")

#: gather(local scalar tensor) -> (values of every process in rank order, own rank).
Gather = Callable[[torch.Tensor], tuple[list[torch.Tensor], int]]


def _gather_single(value: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    return [value], 0


class StyleGAN2Loss:
    """Accumulates the gradients of one phase for one chunk of the batch."""

    def __init__(
        self,
        G: Generator,
        D: Discriminator,
        r1_gamma: float = 10.0,
        style_mixing_prob: float = 0.9,
        pl_weight: float = 2.0,
        pl_batch_shrink: int = 2,
        pl_decay: float = 0.01,
        gather: Gather | None = None,
        augment_pipe: AugmentPipe | None = None,
        ada: AdaController | None = None,
    ):
        self.G, self.D = G, D
        self.augment_pipe = augment_pipe
        self.ada = ada
        self.r1_gamma = r1_gamma
        self.style_mixing_prob = style_mixing_prob
        self.pl_weight = pl_weight
        self.pl_batch_shrink = pl_batch_shrink
        self.pl_decay = pl_decay
        self.gather = gather or _gather_single
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)

    def run_G(self, z: torch.Tensor, c: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate with random noise and, with probability `style_mixing_prob`, two latents.

        Style mixing (switching to a second w at a random layer) keeps the layers' styles
        independent of each other.
        """
        ws = self.G.mapping(z, c)
        if self.style_mixing_prob > 0:
            cutoff = int(torch.randint(1, ws.shape[1], []).item())
            if float(torch.rand([]).item()) >= self.style_mixing_prob:
                cutoff = ws.shape[1]
            if cutoff < ws.shape[1]:
                ws2 = self.G.mapping(torch.randn_like(z), c, skip_w_avg_update=True)
                ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        img = self.G.synthesis(ws, noise_mode="random")
        return img, ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    def accumulate_gradients(
        self, phase: str, real_img: torch.Tensor, gen_z: torch.Tensor, gain: float,
        *, real_c: torch.Tensor | None = None, gen_c: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Backpropagate `gain` × this phase's loss for one chunk; returns detached statistics.

        `real_c`/`gen_c`: one-hot labels of the reals and for the fakes (conditional models).
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}")
        stats: dict[str, float] = {}

        if phase == "Gmain":
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img, gen_c)
            loss = F.softplus(-gen_logits)  # -log(sigmoid(D(G(z))))
            loss.mean().mul(gain).backward()
            stats["loss_G"] = float(loss.detach().mean())
            stats["scores_fake"] = float(gen_logits.detach().mean())

        elif phase == "Greg":
            if self.pl_weight == 0:
                return stats
            n = max(1, gen_z.shape[0] // self.pl_batch_shrink)
            gen_img, gen_ws = self.run_G(gen_z[:n], None if gen_c is None else gen_c[:n])
            # Random image-space direction, scaled so that the expected length does not depend on resolution.
            pl_noise = torch.randn_like(gen_img) / np.sqrt(gen_img.shape[2] * gen_img.shape[3])
            (pl_grads,) = torch.autograd.grad(outputs=[(gen_img * pl_noise).sum()], inputs=[gen_ws], create_graph=True)
            pl_lengths = pl_grads.square().sum(2).mean(1).sqrt()
            values, rank = self.gather(pl_lengths.mean().detach())
            # Update the running mean in global round order; this process's own value stays differentiable.
            pl_mean = self.pl_mean
            for i, v in enumerate(values[: rank + 1]):
                pl_mean = pl_mean.lerp(pl_lengths.mean() if i == rank else v.to(pl_mean.device), self.pl_decay)
            final = self.pl_mean
            for v in values:
                final = final.lerp(v.to(final.device), self.pl_decay)
            self.pl_mean = final.detach().clone()
            pl_penalty = (pl_lengths - pl_mean).square()
            loss = pl_penalty * self.pl_weight
            (gen_img[:, 0, 0, 0] * 0 + loss).mean().mul(gain).backward()
            stats["pl_penalty"] = float(pl_penalty.detach().mean())
            stats["pl_length"] = float(pl_lengths.detach().mean())

        elif phase == "Dmain":
            gen_img, _ = self.run_G(gen_z, gen_c)
            gen_logits = self.run_D(gen_img.detach(), gen_c)
            loss_fake = F.softplus(gen_logits)  # -log(1 - sigmoid(D(G(z))))
            loss_fake.mean().mul(gain).backward()
            real_logits = self.run_D(real_img.detach(), real_c)
            if self.ada is not None:
                self.ada.accumulate(real_logits)
            loss_real = F.softplus(-real_logits)  # -log(sigmoid(D(x)))
            loss_real.mean().mul(gain).backward()
            stats["loss_D"] = float((loss_fake + loss_real).detach().mean())
            stats["scores_fake"] = float(gen_logits.detach().mean())
            stats["scores_real"] = float(real_logits.detach().mean())

        else:  # Dreg
            if self.r1_gamma == 0:
                return stats
            real = real_img.detach().requires_grad_(True)  # before the pipe: R1 differentiates through it
            real_logits = self.run_D(real, real_c)
            if self.ada is not None:
                self.ada.accumulate(real_logits)
            (r1_grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real], create_graph=True)
            r1_penalty = r1_grads.square().sum([1, 2, 3])
            loss = r1_penalty * (self.r1_gamma / 2)
            (real_logits * 0 + loss).mean().mul(gain).backward()
            stats["r1_penalty"] = float(r1_penalty.detach().mean())
        return stats
