"""ddpm presets: resolution handling, JSON round trip, parameter counts, EMA and lr schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mad_cli.errors import MadError
from mad_cli.models.ddpm.configs import (
    PRESET_NAMES,
    PRESETS,
    default_preset,
    ema_beta,
    learning_rate,
    parameter_count,
    resolve_config,
)
from mad_cli.models.ddpm.diffusion import GaussianDiffusion
from mad_cli.models.ddpm.unet import UNet

TRAIN_KEYS = {
    "batch", "lr", "betas", "weight_decay", "warmup_kimg", "grad_clip", "ema_halflife_kimg", "ema_rampup",
    "p_uncond", "kimg", "tick_kimg", "snap_kimg",
}


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("resolution", [8, 16, 28, 32, 64])
def test_presets_resolve_and_build_at_every_resolution(preset: str, resolution: int) -> None:
    config = resolve_config(preset, resolution=resolution, channels=1, num_classes=10)
    again = json.loads(json.dumps(config))
    assert again == config  # plain JSON values only
    unet = config["unet"]
    sides = [resolution >> i for i in range(len(unet["channel_mult"]))]
    assert resolution % (2 ** (len(unet["channel_mult"]) - 1)) == 0 and sides[-1] >= 2
    assert set(unet["attention_resolutions"]) <= set(sides)
    assert set(config["train"]) == TRAIN_KEYS and config["train"]["p_uncond"] == 0.1
    assert config["diffusion"] == {"schedule": "cosine", "timesteps": 1000}
    with torch.device("meta"):
        net = UNet(**again["unet"])
    assert net.num_classes == 10 and net.label_embed.weight.shape[0] == 11
    GaussianDiffusion.from_schedule(**config["diffusion"])


def test_levels_follow_the_resolution() -> None:
    assert resolve_config("tiny", resolution=8, channels=1)["unet"]["channel_mult"] == [1, 2, 2]  # 8 → 4 → 2
    assert resolve_config("tiny", resolution=32, channels=1)["unet"]["channel_mult"] == [1, 2, 2]  # 32 → 16 → 8
    assert resolve_config("cifar32", resolution=32, channels=3)["unet"]["channel_mult"] == [1, 2, 2, 2]
    assert resolve_config("cifar32", resolution=8, channels=3)["unet"]["channel_mult"] == [1, 2, 2]
    assert resolve_config("faces64", resolution=64, channels=3)["unet"]["attention_resolutions"] == [32, 16, 8]
    assert resolve_config("faces64", resolution=16, channels=3)["unet"]["attention_resolutions"] == [16, 8]
    assert resolve_config("tiny", resolution=28, channels=1)["unet"]["channel_mult"] == [1, 2, 2]  # 28 → 14 → 7
    assert resolve_config("tiny", resolution=12, channels=1)["unet"]["channel_mult"] == [1, 2, 2]  # 12 → 6 → 3
    assert resolve_config("tiny", resolution=6, channels=1)["unet"]["channel_mult"] == [1, 2]  # 6 → 3


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_tiny_forward_on_real_tensors(one_thread, channels: int, resolution: int) -> None:
    config = resolve_config("tiny", resolution=resolution, channels=channels, num_classes=10)
    net = UNet(**config["unet"]).eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, resolution, resolution), torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == (2, channels, resolution, resolution)


def test_parameter_counts_are_in_the_documented_ranges() -> None:
    def count(preset: str, res: int, ch: int, classes: int = 10) -> int:
        return parameter_count(resolve_config(preset, resolution=res, channels=ch, num_classes=classes))

    assert 0.8e6 <= count("tiny", 16, 1) <= 1.5e6
    assert 0.8e6 <= count("tiny", 32, 1) <= 1.5e6
    assert 0.6e6 <= count("tiny", 8, 1) <= 1.5e6
    assert 3e6 <= count("small", 16, 1) <= 8e6
    # DDPM's CIFAR-10 model: 35.7 M parameters (Ho et al. 2020, Table 1 / appendix B).
    assert abs(count("cifar32", 32, 3, 0) - 35.7e6) < 0.05e6
    assert 80e6 <= count("faces64", 64, 3, 0) <= 100e6
    # The label table adds (classes + 1) × 4·model_channels.
    assert count("tiny", 16, 1, 10) - count("tiny", 16, 1, 0) == 11 * 4 * PRESETS["tiny"]["unet"]["model_channels"]
    # parameter_count counts what UNet builds.
    config = resolve_config("tiny", resolution=16, channels=3, num_classes=5)
    assert parameter_count(config) == sum(p.numel() for p in UNet(**config["unet"]).parameters())


def test_bad_presets_and_images_are_one_line_errors() -> None:
    with pytest.raises(MadError, match="--cfg huge"):
        resolve_config("huge", resolution=16, channels=1)
    with pytest.raises(MadError, match="too small"):
        resolve_config("tiny", resolution=2, channels=1)
    with pytest.raises(MadError, match="channels"):
        resolve_config("tiny", resolution=16, channels=4)


def test_learning_rate_warms_up_linearly() -> None:
    train = resolve_config("tiny", resolution=16, channels=1)["train"]
    lr, warm = train["lr"], train["warmup_kimg"] * 1000
    assert learning_rate(train, 0) == 0.0
    assert learning_rate(train, warm / 2) == pytest.approx(lr / 2)
    assert learning_rate(train, warm) == lr == learning_rate(train, 10 * warm)
    assert learning_rate({**train, "warmup_kimg": 0.0}, 0) == lr


def test_ema_half_life_with_ramp_up() -> None:
    train = resolve_config("tiny", resolution=16, channels=1)["train"]
    batch, half = train["batch"], train["ema_halflife_kimg"] * 1000
    late = 10 * half / train["ema_rampup"]
    beta = ema_beta(train, late)
    assert beta ** (half / batch) == pytest.approx(0.5)  # half-life reached after `half` images
    early = ema_beta(train, 1000)
    assert early < beta and early ** (1000 * train["ema_rampup"] / batch) == pytest.approx(0.5)
    assert ema_beta({**train, "ema_rampup": None}, 1000) == pytest.approx(beta)


def test_gpu_presets_use_adm_ema_decay_once_ramped_up() -> None:
    for preset in ("cifar32", "faces64"):
        train = resolve_config(preset, resolution=32, channels=3)["train"]
        assert ema_beta(train, 1e9) == pytest.approx(0.9999, abs=2e-8)


def test_cpu_presets_ema_is_short() -> None:
    for preset in ("tiny", "small"):
        train = PRESETS[preset]["train"]
        assert train["ema_halflife_kimg"] <= train["kimg"] / 5
        assert 0 < train["warmup_kimg"] < train["kimg"] / 5


def test_default_preset() -> None:
    assert default_preset(16, "cpu") == "tiny"
    assert default_preset(64, "cpu") == "tiny"
    assert default_preset(32, "cuda") == "cifar32"
    assert default_preset(16, "cuda") == "cifar32"
    assert default_preset(64, "cuda") == "faces64"
    assert default_preset(128, "cuda") == "faces64"
    assert math.isclose(PRESETS["cifar32"]["train"]["warmup_kimg"], 5000 * 128 / 1000)
