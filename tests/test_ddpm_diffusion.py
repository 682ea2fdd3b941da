"""Gaussian diffusion: closed forms against independent computations, samplers against an exact
denoiser, classifier-free guidance, and per-seed determinism of `sample`."""

from __future__ import annotations

import math

import pytest
import torch

from mad_cli.models.ddpm.diffusion import (
    GaussianDiffusion,
    cosine_f,
    denoise,
    drop_labels,
    guided_eps,
    make_betas,
    sample,
    spaced_timesteps,
)
from mad_cli.models.ddpm.unet import UNet

SCHEDULES = ["linear", "cosine"]


@pytest.fixture(scope="module", params=SCHEDULES)
def diffusion(request) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(request.param, 1000)


# ---------------------------------------------------------------------------------------
# schedules


def test_linear_schedule_endpoints() -> None:
    betas = make_betas("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert float(betas[0]) == pytest.approx(1e-4, abs=1e-15) and float(betas[-1]) == pytest.approx(0.02, abs=1e-15)
    assert torch.all(betas[1:] > betas[:-1])


def test_cosine_alphas_cumprod_follow_the_formula() -> None:
    """ᾱ_t = f(t + 1) / f(0), f(u) = cos²((u/T + s)/(1 + s)·π/2), wherever β was not clipped at 0.999."""
    T, s = 1000, 0.008
    d = GaussianDiffusion.from_schedule("cosine", T)
    f = [math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2 for u in range(T + 1)]
    formula = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    clipped = d.betas >= 0.999
    first_clipped = int(clipped.nonzero()[0]) if clipped.any() else T
    assert first_clipped >= T - 5  # clipping touches the last few steps only
    assert torch.allclose(d.alphas_cumprod[:first_clipped], formula[:first_clipped], rtol=1e-10, atol=0)
    assert float(d.betas.max()) <= 0.999
    assert cosine_f(0, T) == pytest.approx(f[0])


def test_alphas_cumprod_decrease_within_unit_interval(diffusion: GaussianDiffusion) -> None:
    ac = diffusion.alphas_cumprod
    assert ac.dtype == torch.float64
    assert torch.all(ac > 0) and torch.all(ac <= 1)
    assert torch.all(ac[1:] < ac[:-1])
    assert float(ac[0]) > 0.999 and float(ac[-1]) < 1e-3  # data at t = 0, nearly pure noise at T - 1
    assert float(diffusion.alphas_cumprod_prev[0]) == 1.0


# ---------------------------------------------------------------------------------------
# forward process and posterior


def test_q_moments_closed_form_and_monte_carlo(diffusion: GaussianDiffusion) -> None:
    """Chaining q(x_t | x_{t−1}) = N(√α_t x_{t−1}, β_t) from x_0 must give q_mean_variance's moments."""
    gen = torch.Generator().manual_seed(0)
    n = 5000
    x0 = torch.tensor([0.7, -0.4], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    checked = []
    for t in range(diffusion.num_timesteps):
        beta = float(diffusion.betas[t])
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if t in (0, 10, 250, 600, 999):
            tt = torch.tensor([t, t])
            mean, var, log_var = diffusion.q_mean_variance(x0, tt)
            # analytic: mean √ᾱ_t x_0, variance 1 − ᾱ_t, from the product of (1 − β) written out here
            ac = math.prod(1 - float(b) for b in diffusion.betas[: t + 1])
            assert torch.allclose(mean, math.sqrt(ac) * x0, rtol=1e-12, atol=1e-15)
            assert torch.allclose(var, torch.full((2,), 1 - ac, dtype=torch.float64), rtol=1e-9, atol=0)
            assert torch.allclose(log_var, var.log(), rtol=1e-9)
            # Monte Carlo: sample mean within 5 standard errors, sample variance within 5 SE (SE of s² = σ²√(2/(n−1)))
            se_mean = math.sqrt((1 - ac) / n)
            assert torch.all((x.mean(0) - mean).abs() < 5 * se_mean)
            assert torch.all((x.var(0) - var).abs() < 5 * (1 - ac) * math.sqrt(2 / (n - 1)))
            checked.append(t)
    assert len(checked) == 5
    noise = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    mean, var, _ = diffusion.q_mean_variance(x0.expand(3, 2), t)
    assert torch.allclose(diffusion.q_sample(x0.expand(3, 2), t, noise), mean + var.sqrt() * noise, rtol=1e-12)


def test_posterior_by_bayes_rule(diffusion: GaussianDiffusion) -> None:
    """q(x_{t−1} | x_t, x_0) ∝ q(x_t | x_{t−1}) q(x_{t−1} | x_0), two scalar Gaussians multiplied out."""
    betas = [float(b) for b in diffusion.betas]
    x0, xt = 0.3, -1.2
    for t in (1, 2, 50, 500, 998, 999):
        ac_prev = math.prod(1 - b for b in betas[:t])  # ᾱ_{t−1}
        a_t = 1 - betas[t]
        # prior N(√ᾱ_{t−1} x0, 1 − ᾱ_{t−1}); likelihood of x_t: N(√α_t x_{t−1}, β_t)
        precision = 1 / (1 - ac_prev) + a_t / betas[t]
        want_var = 1 / precision
        want_mean = want_var * (math.sqrt(ac_prev) * x0 / (1 - ac_prev) + math.sqrt(a_t) * xt / betas[t])
        mean, var, log_var = diffusion.q_posterior_mean_variance(
            torch.tensor([x0], dtype=torch.float64), torch.tensor([xt], dtype=torch.float64), torch.tensor([t])
        )
        assert float(mean) == pytest.approx(want_mean, rel=1e-9, abs=1e-12)
        assert float(var) == pytest.approx(want_var, rel=1e-9)
        assert float(log_var) == pytest.approx(math.log(want_var), rel=1e-9)
    # t = 0: x_{−1} is x_0 itself — variance 0, mean x_0; the log-variance is clipped to β̃_1's.
    mean, var, log_var = diffusion.q_posterior_mean_variance(torch.tensor([x0], dtype=torch.float64), torch.tensor([xt], dtype=torch.float64), torch.tensor([0]))
    assert float(var) == 0.0 and float(mean) == pytest.approx(x0, abs=1e-12)
    assert float(log_var) == pytest.approx(math.log(float(diffusion.posterior_variance[1])), rel=1e-12)


def test_x0_eps_round_trip(diffusion: GaussianDiffusion) -> None:
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 400, 990])
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion.predict_x0_from_eps(xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(diffusion.predict_eps_from_x0(xt, t, x0), eps, atol=1e-9)


def test_coefficients_cast_to_the_data_dtype(diffusion: GaussianDiffusion) -> None:
    x = torch.ones(2, 1, 4, 4)
    out = diffusion.q_sample(x, torch.tensor([3, 900]), torch.zeros_like(x))
    assert out.dtype == torch.float32
    assert torch.allclose(out[1], torch.full((1, 4, 4), float(diffusion.sqrt_alphas_cumprod[900]), dtype=torch.float32))


def test_respacing_keeps_alphas_cumprod_and_maps_timesteps() -> None:
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    full = d.respace(range(1000))
    assert torch.allclose(full.betas, d.betas, rtol=1e-12) and full.timestep_map.tolist() == list(range(1000))
    keep = spaced_timesteps(1000, 25)
    sub = d.respace(keep)
    assert sub.num_timesteps == 25 and sub.timestep_map.tolist() == keep
    assert torch.allclose(sub.alphas_cumprod, d.alphas_cumprod[keep], rtol=1e-12)


def test_spacings() -> None:
    lin = spaced_timesteps(1000, 25)
    assert lin[0] == 0 and lin[-1] == 999 and len(lin) == 25 and lin == sorted(set(lin))
    assert spaced_timesteps(1000, 1000) == list(range(1000))
    assert spaced_timesteps(1000, 25, "leading") == list(range(0, 1000, 40))
    trailing = spaced_timesteps(1000, 25, "trailing")
    assert trailing[-1] == 999 and trailing[0] == 39 and len(trailing) == 25
    assert spaced_timesteps(1000, 1) == [999]
    for bad in (0, 1001):
        with pytest.raises(ValueError):
            spaced_timesteps(1000, bad)


# ---------------------------------------------------------------------------------------
# training loss


class Recorder(torch.nn.Module):
    """Returns a fixed linear function of x_t and records what it was called with."""

    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((x.clone(), t.clone(), None if labels is None else labels.clone()))
        return 0.5 * x


def test_training_loss_matches_a_manual_computation() -> None:
    """The documented draw order (t, ε, dropout mask) reproduced by hand from the same generator."""
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    x0 = torch.rand(8, 1, 4, 4) * 2 - 1
    labels = torch.arange(8)
    model = Recorder()
    loss = d.training_loss(model, x0, labels, p_uncond=0.5, generator=torch.Generator().manual_seed(5))

    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    drop = torch.rand(8, generator=g) < 0.5
    ac = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    xt = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    x_seen, t_seen, labels_seen = model.calls[0]
    assert torch.equal(t_seen, t)
    assert torch.allclose(x_seen, xt, atol=1e-6)
    assert torch.equal(labels_seen, torch.where(drop, torch.full_like(labels, 10), labels))
    assert 0 < int(drop.sum()) < 8  # this seed drops some labels and keeps others
    assert float(loss) == pytest.approx(float(((0.5 * xt - noise) ** 2).mean()), rel=1e-5)


def test_training_loss_uses_the_global_rng_without_a_generator() -> None:
    d = GaussianDiffusion.from_schedule("linear", 1000)
    x0 = torch.zeros(4, 1, 2, 2)
    torch.manual_seed(3)
    a = d.training_loss(Recorder(), x0, torch.arange(4), p_uncond=0.1)
    torch.manual_seed(3)
    b = d.training_loss(Recorder(), x0, torch.arange(4), p_uncond=0.1)
    c = d.training_loss(Recorder(), x0, torch.arange(4), p_uncond=0.1)
    assert float(a) == float(b) != float(c)


def test_drop_labels_rate() -> None:
    labels = torch.zeros(100_000, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    dropped = drop_labels(labels, 0.1, 10, gen)
    frac = float((dropped == 10).double().mean())
    assert abs(frac - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(labels))  # 4 standard errors
    assert set(dropped.unique().tolist()) == {0, 10}
    assert torch.equal(drop_labels(labels, 0.0, 10, gen), labels)
    assert torch.all(drop_labels(labels, 1.0, 10, gen) == 10)


def test_training_loss_on_a_real_unet_backpropagates(one_thread) -> None:
    net = UNet(resolution=8, in_channels=1, model_channels=16, channel_mult=[1, 2], num_res_blocks=1, num_classes=3)
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    torch.manual_seed(0)
    loss = d.training_loss(net, torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0]), p_uncond=0.1)
    # A fresh UNet predicts ε̂ = 0, so the loss is the mean of ε², ≈ 1.
    assert 0.5 < loss.item() < 1.5
    loss.backward()
    assert net.out[2].weight.grad is not None and net.out[2].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# samplers against the exact ε of a Gaussian data distribution

MU = torch.tensor([0.3, -0.2])
SIGMA = torch.tensor([0.3, 0.5])
N_SAMPLES = 4000


def exact_eps(diffusion: GaussianDiffusion, mu: torch.Tensor, sigma: torch.Tensor):
    """E[ε | x_t] for x_0 ~ N(μ, σ²) per dimension: (x_t − √ᾱ μ)·√(1 − ᾱ) / (ᾱσ² + 1 − ᾱ)."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert bool((t == t[0]).all())  # samplers step the whole batch together
        ac = float(diffusion.alphas_cumprod[int(t[0])])
        scale = (math.sqrt(1 - ac) / (ac * sigma**2 + 1 - ac)).float()
        return (x - (math.sqrt(ac) * mu).float()) * scale

    return eps


def run_sampler(diffusion: GaussianDiffusion, sigma: torch.Tensor, **kwargs) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(N_SAMPLES, 2, generator=gen)
    return denoise(
        diffusion, exact_eps(diffusion, MU.double(), sigma.double()), x_T, clip_x0=False,
        noise_fn=lambda: torch.randn(N_SAMPLES, 2, generator=gen), **kwargs,
    )


def moments_ok(x: torch.Tensor, k: float = 4.0) -> bool:
    """Mean within k standard errors (σ/√N) and std within k SE (σ/√(2N)) of the target Gaussian."""
    se_mean = SIGMA / math.sqrt(N_SAMPLES)
    se_std = SIGMA / math.sqrt(2 * N_SAMPLES)
    return bool(torch.all((x.mean(0) - MU).abs() < k * se_mean) and torch.all((x.std(0) - SIGMA).abs() < k * se_std))


# Sampler, steps, eta. Discretisation error shrinks the std: with these σ and N it is at most
# 1.1 standard errors at 1000 steps (DDPM / DDIM η=1, linear schedule) and 1.6 SE for DDIM η=0
# at 250 steps (linear; 0.8 SE cosine), the mean's at most 0.12 SE — computed exactly by
# propagating the moments through the (affine) steps. The tolerance is 4 SE.
SAMPLER_CASES = [("ddim", 1000, 0.0), ("ddim", 250, 0.0), ("ddim", 1000, 1.0), ("ddpm", 1000, 0.0)]


@pytest.mark.parametrize("sampler, steps, eta", SAMPLER_CASES)
def test_samplers_draw_the_gaussian_of_an_exact_denoiser(diffusion: GaussianDiffusion, sampler: str, steps: int, eta: float) -> None:
    x = run_sampler(diffusion, SIGMA, sampler=sampler, steps=steps, eta=eta)
    assert x.shape == (N_SAMPLES, 2)
    assert moments_ok(x), (x.mean(0), x.std(0))


def test_the_gaussian_check_rejects_a_wrong_denoiser() -> None:
    """The same check fails when the denoiser knows a distribution 20 % wider: the test has power."""
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    assert not moments_ok(run_sampler(d, SIGMA * 1.2, sampler="ddim", steps=250, eta=0.0))


def test_ddim_eta0_is_deterministic_and_draws_no_noise() -> None:
    d = GaussianDiffusion.from_schedule("cosine", 1000)

    def no_noise() -> torch.Tensor:
        raise AssertionError("DDIM with eta = 0 must not draw noise")

    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    eps = exact_eps(d, MU.double(), SIGMA.double())
    a = denoise(d, eps, x_T, sampler="ddim", steps=20, eta=0.0, noise_fn=no_noise)
    b = denoise(d, eps, x_T, sampler="ddim", steps=20, eta=0.0, noise_fn=no_noise)
    assert torch.equal(a, b)


def test_noise_draws_per_step() -> None:
    """DDPM draws at every step but the last; DDIM η > 0 likewise (its last σ is 0)."""
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    eps = exact_eps(d, MU.double(), SIGMA.double())
    for sampler, eta, steps in (("ddpm", 0.0, 1000), ("ddpm", 0.0, 30), ("ddim", 0.5, 30)):
        draws = []

        def noise(draws=draws) -> torch.Tensor:
            draws.append(1)
            return torch.zeros(1, 2)

        denoise(d, eps, torch.zeros(1, 2), sampler=sampler, steps=steps, eta=eta, noise_fn=noise)
        assert len(draws) == steps - 1


def test_clip_x0_keeps_samples_in_range() -> None:
    """With clipping on, even a denoiser that pushes x̂_0 far out yields samples in [−1, 1] from DDIM."""
    d = GaussianDiffusion.from_schedule("linear", 1000)
    x = denoise(d, lambda x, t: -3 * torch.ones_like(x), torch.randn(8, 2), sampler="ddim", steps=10, clip_x0=True)
    assert x.abs().max() <= 1.0 + 1e-6


# ---------------------------------------------------------------------------------------
# classifier-free guidance


class TwoEps(torch.nn.Module):
    """ε(x, c) = x + c/10 for real labels and ε(x, ∅) = −x (or NaN) for the NULL label; counts forwards."""

    num_classes = 5

    def __init__(self, null_is_nan: bool = False) -> None:
        super().__init__()
        self.null_is_nan = null_is_nan
        self.batches: list[int] = []
        self.saw_null = False

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        assert labels is not None and x.shape[0] == t.shape[0] == labels.shape[0]
        self.batches.append(x.shape[0])
        null = (labels == self.num_classes).view(-1, *([1] * (x.ndim - 1)))
        self.saw_null |= bool(null.any())
        cond = x * 0.9 + labels.view(-1, *([1] * (x.ndim - 1))).float() / 10
        uncond = torch.full_like(x, float("nan")) if self.null_is_nan else -x
        return torch.where(null, uncond, cond)


def test_guided_eps_is_exactly_the_cfg_combination_in_one_forward() -> None:
    model = TwoEps()
    x = torch.randn(4, 1, 2, 2)
    t = torch.tensor([10, 20, 30, 40])
    labels = torch.tensor([0, 1, 2, 4])
    w = 1.5
    out = guided_eps(model, x, t, labels, w)
    assert model.batches == [8]  # one forward on [x; x]
    eps_c = model(x, t, labels)
    eps_u = model(x, t, torch.full_like(labels, 5))
    assert not torch.allclose(eps_c, eps_u)
    assert torch.equal(out, (1 + w) * eps_c - w * eps_u)


def test_guidance_zero_never_runs_the_unconditional_pass() -> None:
    model = TwoEps(null_is_nan=True)
    x = torch.randn(3, 1, 2, 2)
    out = guided_eps(model, x, torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]), 0.0)
    assert model.batches == [3] and not model.saw_null and torch.isfinite(out).all()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    imgs = sample(model, d, [1, 2, 3], [0, 1, 2], shape=(1, 2, 2), steps=5, eta=1.0, guidance=0.0, chunk=2)
    assert torch.isfinite(imgs).all() and not model.saw_null


def tiny_unet(num_classes: int = 4, seed: int = 0) -> UNet:
    net = UNet(resolution=8, in_channels=1, model_channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[4], num_classes=num_classes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # away from the zero init, so that ε̂ depends on x, t and the label
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_guidance_zero_equals_the_conditional_samples_bit_for_bit(one_thread, sampler: str, eta: float) -> None:
    """sample(guidance=0) against a loop written here that calls the model with the labels only."""
    net = tiny_unet()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    seeds, labels = [11, 12, 13], [0, 3, 1]
    got = sample(net, d, seeds, labels, shape=(1, 8, 8), steps=6, eta=eta, guidance=0.0, sampler=sampler, chunk=3)

    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.randn(1, 8, 8, generator=g) for g in gens])
    sub = d.respace(spaced_timesteps(1000, 6))
    lab = torch.tensor(labels)
    with torch.no_grad():
        for i in reversed(range(6)):
            t = torch.full((3,), int(sub.timestep_map[i]))
            eps = net(x, t, lab)
            noise = torch.stack([torch.randn(1, 8, 8, generator=g) for g in gens]) if sub.step_needs_noise(sampler, i, eta) else None
            x = sub.ddim_step(x, i, eps, eta=eta, noise=noise) if sampler == "ddim" else sub.ddpm_step(x, i, eps, noise=noise)
    assert torch.equal(got, x.clamp(-1, 1))
    guided = sample(net, d, seeds, labels, shape=(1, 8, 8), steps=6, eta=eta, guidance=2.0, sampler=sampler, chunk=3)
    assert not torch.allclose(guided, got)


# ---------------------------------------------------------------------------------------
# sample(): per-seed determinism


@pytest.mark.parametrize("sampler, eta, guidance", [("ddim", 0.0, 0.0), ("ddim", 1.0, 1.5), ("ddpm", 0.0, 0.5)])
def test_images_depend_only_on_their_seed_and_label(one_thread, sampler: str, eta: float, guidance: float) -> None:
    net = tiny_unet()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    kw = dict(shape=(1, 8, 8), steps=4, eta=eta, guidance=guidance, sampler=sampler, chunk=4)
    together = sample(net, d, [3, 7, 9], [1, 2, 3], **kw)
    one_by_one = torch.cat([sample(net, d, [s], [c], **kw) for s, c in ((3, 1), (7, 2), (9, 3))])
    reordered = sample(net, d, [9, 0, 3, 5, 7, 1], [3, 0, 1, 2, 2, 1], **kw)  # two chunks, other positions
    assert together.shape == (3, 1, 8, 8) and together.dtype == torch.float32
    assert torch.equal(together, one_by_one)
    assert torch.equal(together, reordered[[2, 4, 0]])
    assert not torch.equal(together[0], together[1])
    assert together.abs().max() <= 1.0


def test_sample_restores_training_mode_and_checks_arguments() -> None:
    net = tiny_unet()
    net.train()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    sample(net, d, [1], [0], shape=(1, 8, 8), steps=2)
    assert net.training
    with pytest.raises(ValueError, match="labels"):
        sample(net, d, [1, 2], [0], shape=(1, 8, 8), steps=2)
    with pytest.raises(ValueError, match="guidance"):
        sample(net, d, [1], [0], shape=(1, 8, 8), steps=2, guidance=float("nan"))
    with pytest.raises(ValueError, match="guidance"):
        sample(net, d, [1], None, shape=(1, 8, 8), steps=2, guidance=1.0)
    with pytest.raises(ValueError, match="steps"):
        sample(net, d, [1], [0], shape=(1, 8, 8), steps=0)
    with pytest.raises(ValueError, match="labels must be in"):
        sample(net, d, [1], [5], shape=(1, 8, 8), steps=2)  # 4 classes: 0..3, NULL = 4


def test_unconditional_sampling(one_thread) -> None:
    net = tiny_unet(num_classes=0)
    d = GaussianDiffusion.from_schedule("linear", 1000)
    done: list[int] = []
    out = sample(net, d, range(5), None, shape=(1, 8, 8), steps=3, chunk=2, progress=done.append)
    assert out.shape == (5, 1, 8, 8) and done == [2, 2, 1]
    assert torch.equal(out[4], sample(net, d, [4], None, shape=(1, 8, 8), steps=3, chunk=2)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_sampling_is_per_seed_and_close_to_cpu() -> None:
    net = tiny_unet().cuda()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    kw = dict(shape=(1, 8, 8), steps=4, eta=1.0, guidance=1.0, chunk=4, device="cuda")
    together = sample(net, d, [3, 7, 9], [1, 2, 3], **kw)
    reordered = sample(net, d, [9, 0, 3, 5, 7, 1], [3, 0, 1, 2, 2, 1], **kw)
    assert together.device.type == "cpu" and torch.equal(together, reordered[[2, 4, 0]])
    on_cpu = sample(net.cpu(), d, [3, 7, 9], [1, 2, 3], **{**kw, "device": "cpu"})
    assert torch.allclose(on_cpu, together, atol=0.05)  # same noise; TF32 / kernel differences only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_autocast_training_loss() -> None:
    net = tiny_unet().cuda().train()
    d = GaussianDiffusion.from_schedule("cosine", 1000)
    x0 = torch.rand(8, 1, 8, 8, device="cuda") * 2 - 1
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = d.training_loss(net, x0, torch.arange(8, device="cuda") % 4, p_uncond=0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
