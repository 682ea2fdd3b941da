"""Gaussian diffusion with ε-prediction: schedules, q(x_t | x_0), the posterior, the loss, samplers.

Notation and indexing. Timesteps are 0-based as in the DDPM / ADM code bases: index t
(0 ≤ t < T) is the paper's step t + 1. β_t is the variance added at step t, α_t = 1 − β_t,
ᾱ_t = Π_{s ≤ t} α_s, and ᾱ_{−1} = 1 (x_{−1} is the data x_0). So

    q(x_t | x_0)        = N(√ᾱ_t · x_0, (1 − ᾱ_t) I)
    q(x_{t−1} | x_t, x_0) = N(c1_t · x_0 + c2_t · x_t, β̃_t I),
        c1_t = β_t √ᾱ_{t−1} / (1 − ᾱ_t),  c2_t = (1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t),
        β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)   (0 at t = 0, where x_{t−1} is x_0 itself).

All tables are computed and stored in float64 (ᾱ_t reaches ~1e-9 under the linear
schedule, where float32 loses 1 − ᾱ_t's precision); coefficients are gathered in float64 and
cast to the data's dtype just before use, as the code bases do.

Randomness. `training_loss` draws its timesteps, noise and label dropout from the
`generator` passed in, or from torch's global RNG on the data's device when None. The
training loop re-seeds the global RNG each step, so passing None is the intended use there;
the draw order (t, then ε, then the dropout mask) is part of the contract so runs resume
exactly. Sampling never touches the global RNG: `sample` draws every image's initial noise
and step noise from a CPU `torch.Generator` seeded with that image's seed (see `sample`).

Sampling. Both samplers run on a sub-sequence of the T timesteps (`spaced_timesteps`),
through the respaced process of ADM's timestep respacing: keeping timesteps s_0 < … < s_{K−1}
defines ᾱ'_i = ᾱ_{s_i} and β'_i = 1 − ᾱ'_i / ᾱ'_{i−1}, and the network is called with the
original timestep s_i. With all T steps the respaced process is the original one.

- DDIM (Song et al. 2021): x_{i−1} = √ᾱ'_{i−1} x̂_0 + √(1 − ᾱ'_{i−1} − σ_i²) ε̂' + σ_i z with
  σ_i = η √((1 − ᾱ'_{i−1}) / (1 − ᾱ'_i)) √(1 − ᾱ'_i / ᾱ'_{i−1}); η = 0 is deterministic,
  η = 1 has the variance of the (respaced) DDPM posterior. The last step goes from s_0 to
  ᾱ'_{−1} = 1, i.e. returns x̂_0.
- Ancestral DDPM (Ho et al. 2020): x_{i−1} = c1'_i x̂_0 + c2'_i x_i + √β̃'_i z (no noise at i = 0),
  i.e. the "fixed small" variance β̃; with `steps = T` it is the plain T-step sampler.

x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t is clipped to [−1, 1] (`clip_x0`, default on, as in both
code bases: the data lie in [−1, 1]) and, for DDIM, ε̂' is recomputed from the clipped x̂_0.

Classifier-free guidance (Ho & Salimans 2022): ε̃ = (1 + w) ε(x, c) − w ε(x, ∅), both terms
from one forward pass on [x; x] with labels [c; NULL] (`guided_eps`). w = 0 runs the
conditional pass alone, so it is the plain conditional model bit for bit. The MAD paper's
sampling bias is λ = 1 / (1 + w).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

SCHEDULES = ("linear", "cosine")
SPACINGS = ("linspace", "leading", "trailing")
SAMPLERS = ("ddim", "ddpm")

#: ε̂ as a function of (x_t, original integer timesteps (B,)).
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_betas(schedule: str, timesteps: int = 1000) -> torch.Tensor:
    """β_0 … β_{T−1} in float64.

    linear: evenly from 1e-4 to 0.02 (Ho et al.), both scaled by 1000 / T so that other T
        keep the same ᾱ curve (as ADM does; at T = 1000 the scale is 1).
    cosine: ᾱ_t = f(t + 1) / f(0) with f(u) = cos²((u / T + s) / (1 + s) · π / 2), s = 0.008,
        so β_t = 1 − f(t + 1) / f(t), clipped at 0.999 to avoid the singularity at u = T
        (Nichol & Dhariwal 2021). Clipping touches the last few steps only.
    """
    if timesteps < 1:
        raise ValueError("timesteps must be >= 1")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if schedule == "cosine":
        return torch.tensor([1.0 - cosine_f(t + 1, timesteps) / cosine_f(t, timesteps) for t in range(timesteps)], dtype=torch.float64).clamp(max=0.999)
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def cosine_f(u: float, timesteps: int, s: float = 0.008) -> float:
    """f(u) = cos²((u / T + s) / (1 + s) · π / 2): the cosine schedule's unnormalised ᾱ."""
    return math.cos((u / timesteps + s) / (1 + s) * math.pi / 2) ** 2


def spaced_timesteps(timesteps: int, steps: int, spacing: str = "linspace") -> list[int]:
    """`steps` of the `timesteps` original indices, ascending, for a sampler to visit.

    linspace (default): round(i · (T − 1) / (steps − 1)), i < steps: evenly spaced from 0 to
        T − 1 inclusive, ADM's respacing of one section. It starts from the noisiest step
        t = T − 1, where x_T ~ N(0, I) is right, and ends at t = 0, from which the last
        update goes to x_0.
    leading: 0, k, 2k, … with k = T // steps (DDIM paper's "uniform", ADM's "ddimN"); it
        starts below T − 1 (at 960 for 25 steps of 1000).
    trailing: round(T − i · T / steps) − 1 (Lin et al. 2024): starts at T − 1, ends at
        T / steps − 1.
    steps = 1 gives [T − 1] under every spacing: one jump from pure noise to x̂_0.
    """
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    if steps == 1:
        return [timesteps - 1]
    if spacing == "linspace":
        stride = (timesteps - 1) / (steps - 1)
        out = [round(i * stride) for i in range(steps)]
    elif spacing == "leading":
        out = list(range(0, timesteps, timesteps // steps))[:steps]
    elif spacing == "trailing":
        out = sorted(round(timesteps - i * timesteps / steps) - 1 for i in range(steps))
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    assert len(set(out)) == steps and out == sorted(out)
    return out


def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Labels with each entry replaced by `null_label` with probability p_uncond (one rand per entry).

    This is how one network learns both ε(x, c) and ε(x, ∅) for classifier-free guidance.
    `generator` must live on labels' device; None draws from the global RNG.
    """
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError("p_uncond must be in [0, 1]")
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)


class GaussianDiffusion:
    """The tables of one diffusion process and the formulas that use them.

    Build it with `GaussianDiffusion.from_schedule("cosine", 1000)`; `respace(timesteps)`
    gives the sub-process a sampler runs on, whose `timestep_map` says which original
    timestep the network must be told.
    """

    _TABLES = (
        "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
        "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    )

    def __init__(self, betas: torch.Tensor | Sequence[float], timestep_map: Sequence[int] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or len(betas) < 1:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]")
        T = len(betas)
        self.num_timesteps = T
        self.timestep_map = torch.as_tensor(list(range(T)) if timestep_map is None else list(timestep_map), dtype=torch.long)
        if self.timestep_map.shape != (T,):
            raise ValueError("timestep_map must have one entry per beta")

        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.betas = betas
        self.alphas_cumprod = ac
        self.alphas_cumprod_prev = ac_prev
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-ac)
        self.sqrt_recip_alphas_cumprod = ac.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        self.posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
        # β̃_0 = 0 (x_{−1} = x_0 is known), whose log is −∞: the code bases substitute β̃_1 there.
        # It never matters for sampling (step 0 adds no noise), only for likelihood terms.
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]]) if T > 1 else betas)
        self.posterior_mean_coef1 = betas * ac_prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)
        self._device_tables: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def from_schedule(cls, schedule: str = "cosine", timesteps: int = 1000) -> GaussianDiffusion:
        return cls(make_betas(schedule, timesteps))

    def respace(self, use_timesteps: Sequence[int]) -> GaussianDiffusion:
        """The process on the kept timesteps only (ADM's respacing); see the module docstring."""
        keep = sorted({int(t) for t in use_timesteps})
        if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(f"timesteps to keep must be in [0, {self.num_timesteps})")
        ac = self.alphas_cumprod[keep]
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        return GaussianDiffusion(1.0 - ac / ac_prev, timestep_map=self.timestep_map[keep].tolist())

    # -- coefficient lookup -------------------------------------------------------------

    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        table = self._device_tables.get(key)
        if table is None:
            table = getattr(self, name)
            if device.type == "mps":  # no float64 there
                table = table.float()
            table = self._device_tables[key] = table.to(device)
        return table

    def _coef(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """table[t] gathered in float64 on t's device, cast to x's dtype, shaped to broadcast over x."""
        out = self._table(name, t.device)[t].to(x.dtype)
        return out.reshape(-1, *([1] * (x.ndim - 1)))

    # -- forward process and posterior ----------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self._coef("sqrt_alphas_cumprod", t, x0) * x0
        var = self._coef("sqrt_one_minus_alphas_cumprod", t, x0) ** 2
        return mean, var.expand_as(x0), self._coef("log_one_minus_alphas_cumprod", t, x0).expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε: a draw of q(x_t | x_0) for the given ε."""
        return self._coef("sqrt_alphas_cumprod", t, x0) * x0 + self._coef("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior_mean_variance(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t−1} | x_t, x_0)."""
        mean = self._coef("posterior_mean_coef1", t, x_t) * x0 + self._coef("posterior_mean_coef2", t, x_t) * x_t
        var = self._coef("posterior_variance", t, x_t).expand_as(x_t)
        return mean, var, self._coef("posterior_log_variance_clipped", t, x_t).expand_as(x_t)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t, written as √(1/ᾱ_t) x_t − √(1/ᾱ_t − 1) ε."""
        return self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self._coef("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The ε that maps x_0 to x_t (the inverse of `predict_x0_from_eps`)."""
        return (self._coef("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x0) / self._coef("sqrt_recipm1_alphas_cumprod", t, x_t)

    # -- training -----------------------------------------------------------------------

    def training_loss(
        self,
        model: Callable[..., torch.Tensor],
        x0: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        p_uncond: float = 0.0,
        null_label: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Ho et al.'s simple loss: mean over batch and pixels of ‖ε − ε̂(x_t, t, c)‖², t ~ U{0..T−1}.

        With labels, each is replaced by `null_label` (default: model.num_classes, the UNet's
        NULL row) with probability `p_uncond` before the forward pass (`drop_labels`).
        Draws, in this order, from `generator` (on x0's device) or the global RNG: t (B,),
        ε (x0's shape), then the dropout mask (B,) when labels and p_uncond > 0. The loss is
        returned in float32 whatever dtype the model computed in (e.g. bf16 autocast).
        """
        if self.timestep_map.tolist() != list(range(self.num_timesteps)):
            raise ValueError("train on the full process, not a respaced one")
        b = x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if labels is not None and p_uncond > 0:
            if null_label is None:
                null_label = _num_classes(model)
            labels = drop_labels(labels, p_uncond, null_label, generator)
        x_t = self.q_sample(x0, t, noise)
        eps = model(x_t, t, labels)
        return (eps.float() - noise.float()).square().mean()

    # -- one reverse step (i indexes this, possibly respaced, process) ---------------------

    def _x0_and_eps(self, x: torch.Tensor, i: int, eps: torch.Tensor, clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ac = float(self.alphas_cumprod[i])
        x0 = x * math.sqrt(1.0 / ac) - eps * math.sqrt(1.0 / ac - 1.0)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x * math.sqrt(1.0 / ac) - x0) / math.sqrt(1.0 / ac - 1.0)
        return x0, eps

    def ddim_sigma(self, i: int, eta: float) -> float:
        """σ_i of DDIM: η times the std of the (respaced) DDPM posterior at step i."""
        ac, ac_prev = float(self.alphas_cumprod[i]), float(self.alphas_cumprod_prev[i])
        return eta * math.sqrt((1.0 - ac_prev) / (1.0 - ac)) * math.sqrt(1.0 - ac / ac_prev)

    def ddim_step(self, x: torch.Tensor, i: int, eps: torch.Tensor, *, eta: float = 0.0, noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
        """x_{i−1} from x_i and ε̂; `noise` (x's shape) is needed exactly when ddim_sigma(i, eta) > 0."""
        x0, eps = self._x0_and_eps(x, i, eps, clip_x0)
        ac_prev = float(self.alphas_cumprod_prev[i])
        sigma = self.ddim_sigma(i, eta)
        out = x0 * math.sqrt(ac_prev) + eps * math.sqrt(max(1.0 - ac_prev - sigma**2, 0.0))
        if sigma > 0:
            if noise is None:
                raise ValueError("ddim_step: eta > 0 needs noise")
            out = out + sigma * noise
        return out

    def ddpm_step(self, x: torch.Tensor, i: int, eps: torch.Tensor, *, noise: torch.Tensor | None = None, clip_x0: bool = True) -> torch.Tensor:
        """x_{i−1} ~ q(x_{i−1} | x_i, x̂_0) with β̃_i; `noise` is needed exactly when i > 0."""
        x0, _ = self._x0_and_eps(x, i, eps, clip_x0)
        out = x0 * float(self.posterior_mean_coef1[i]) + x * float(self.posterior_mean_coef2[i])
        if i > 0:
            if noise is None:
                raise ValueError("ddpm_step: steps i > 0 need noise")
            out = out + math.exp(0.5 * float(self.posterior_log_variance_clipped[i])) * noise
        return out

    def step_needs_noise(self, sampler: str, i: int, eta: float) -> bool:
        if sampler == "ddim":
            return self.ddim_sigma(i, eta) > 0
        return i > 0


def denoise(
    diffusion: GaussianDiffusion,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    *,
    sampler: str = "ddim",
    steps: int = 50,
    eta: float = 0.0,
    spacing: str = "linspace",
    clip_x0: bool = True,
    noise_fn: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run a sampler from x_T to x_0 (no clamp of the result; no grad bookkeeping of its own).

    `eps_fn(x, t)` gets original timesteps; `noise_fn()` is called once per step that adds
    noise, in step order, and must return a tensor like x_T (default: randn_like from the
    global RNG). DDIM with η = 0 never calls it.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if eta < 0 or not math.isfinite(eta):
        raise ValueError("eta must be finite and >= 0")
    sub = diffusion.respace(spaced_timesteps(diffusion.num_timesteps, steps, spacing))
    x = x_T
    for i in reversed(range(sub.num_timesteps)):
        t = torch.full((x.shape[0],), int(sub.timestep_map[i]), dtype=torch.long, device=x.device)
        eps = eps_fn(x, t).to(x.dtype)
        noise = None
        if sub.step_needs_noise(sampler, i, eta):
            noise = noise_fn() if noise_fn is not None else torch.randn_like(x)
        x = sub.ddim_step(x, i, eps, eta=eta, noise=noise, clip_x0=clip_x0) if sampler == "ddim" else sub.ddpm_step(x, i, eps, noise=noise, clip_x0=clip_x0)
    return x


def _num_classes(model: Any) -> int:
    """num_classes of a UNet, also through a DistributedDataParallel / compile wrapper's `.module`."""
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if m is not None and int(getattr(m, "num_classes", 0)) > 0:
            return int(m.num_classes)
    raise ValueError("the model is not class-conditional (no num_classes > 0)")


def guided_eps(model: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """ε̃ = (1 + w) ε(x, c) − w ε(x, ∅) from ONE forward pass on [x; x] with labels [c; NULL].

    w = 0 (or no labels) is a single conditional pass, bit-identical to calling the model.
    The NULL label is model.num_classes.
    """
    if guidance == 0 or labels is None:
        return model(x, t, labels)
    null = torch.full_like(labels, _num_classes(model))
    eps_c, eps_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
    return (1 + guidance) * eps_c - guidance * eps_u


def _image_noise(generators: list[torch.Generator], shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """One standard-normal draw per image from its own CPU stream, stacked and moved to `device`."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(device)


def sample(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    seeds: Sequence[int],
    labels: Sequence[int] | None = None,
    *,
    shape: Sequence[int],
    device: torch.device | str = "cpu",
    steps: int = 50,
    eta: float = 0.0,
    guidance: float = 0.0,
    sampler: str = "ddim",
    spacing: str = "linspace",
    chunk: int = 64,
    clip_x0: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> torch.Tensor:
    """Images (N, C, H, W) float32 on the CPU, in [−1, 1], image i a function of seeds[i], labels[i] alone.

    Determinism per seed: image i's x_T and then every step's noise are successive draws
    from `torch.Generator("cpu").manual_seed(seeds[i])` (moved to `device` afterwards), and
    the network always sees exactly `chunk` images (2·chunk with guidance): the last chunk
    is padded by repeating its last seed and label, and the padding is dropped. On a given
    device and software stack the result is therefore byte-identical however the caller
    splits or orders the seeds (a different `chunk` may change the last bits). The model is
    run in eval mode under no_grad and put back in its previous mode.

    labels: one class per seed for a conditional model; None samples an unconditional
    model, or a conditional one with the NULL label (then guidance must be 0).
    guidance: w ≥ 0 of classifier-free guidance (see `guided_eps`).
    """
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if not (guidance >= 0 and math.isfinite(guidance)):
        raise ValueError("guidance must be finite and >= 0")
    if labels is not None:
        labels = [int(c) for c in labels]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} seeds")
        null = _num_classes(model)
        if any(not 0 <= c <= null for c in labels):
            raise ValueError(f"labels must be in [0, {null}] ({null} = NULL)")
    elif guidance != 0:
        raise ValueError("guidance needs labels (a class-conditional model)")
    device = torch.device(device)
    shape = tuple(int(s) for s in shape)
    out = torch.empty((n, *shape), dtype=torch.float32)
    was_training = model.training if isinstance(model, nn.Module) else None
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, chunk):
                real = min(chunk, n - start)
                idx = list(range(start, start + real)) + [start + real - 1] * (chunk - real)
                gens = [torch.Generator("cpu").manual_seed(seeds[j]) for j in idx]
                lab = torch.tensor([labels[j] for j in idx], dtype=torch.long, device=device) if labels is not None else None

                def eps_fn(x: torch.Tensor, t: torch.Tensor, lab: torch.Tensor | None = lab) -> torch.Tensor:
                    return guided_eps(model, x, t, lab, guidance)

                x_T = _image_noise(gens, shape, device)
                x0 = denoise(
                    diffusion, eps_fn, x_T, sampler=sampler, steps=steps, eta=eta, spacing=spacing, clip_x0=clip_x0,
                    noise_fn=lambda gens=gens: _image_noise(gens, shape, device),
                )
                out[start : start + real] = x0[:real].float().clamp(-1.0, 1.0).cpu()
                if progress is not None:
                    progress(real)
    finally:
        if was_training:
            model.train()
    return out
