"""The DDPM/ADM U-Net: shapes, conditioning, the NULL label, zero init, rebuild from JSON kwargs."""

from __future__ import annotations

import json

import pytest
import torch

from mad_cli.models.ddpm.unet import UNet, norm_groups, timestep_embedding

SMALL = dict(model_channels=16, channel_mult=[1, 2, 2], num_res_blocks=1, num_heads=2, dropout=0.1)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace every parameter (the zero-initialised ones included) by small random values.

    A fresh UNet outputs exactly 0 (zero-initialised last conv), which would make every
    comparison below pass trivially.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("resolution", [8, 16, 32])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shape(one_thread, channels: int, resolution: int, num_classes: int) -> None:
    attn = [resolution // 2, resolution // 4]
    net = randomise(UNet(resolution=resolution, in_channels=channels, num_classes=num_classes, attention_resolutions=attn, **SMALL)).eval()
    x = torch.randn(3, channels, resolution, resolution)
    t = torch.tensor([0, 500, 999])
    labels = torch.tensor([0, 9, 10]) if num_classes else None  # 10 = the NULL label
    out = net(x, t, labels)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_fresh_model_predicts_zero_and_branches_start_at_zero() -> None:
    """ADM's zero init: output conv, every residual out-conv and attention projection are zero."""
    torch.manual_seed(0)
    net = UNet(resolution=16, in_channels=1, num_classes=10, attention_resolutions=[8], **SMALL).eval()
    zeroed = [n for n, p in net.named_parameters() if n.startswith("out.2.") or ".out_conv." in n or ".proj." in n]
    assert any(n.startswith("out.2.") for n in zeroed) and any(".out_conv." in n for n in zeroed) and any(".proj." in n for n in zeroed)
    params = {n: p.detach() for n, p in net.named_parameters()}
    assert all(float(params[n].abs().max()) == 0.0 for n in zeroed)
    assert torch.count_nonzero(net(torch.randn(2, 1, 16, 16), torch.tensor([3, 900]), torch.tensor([1, 2]))) == 0
    others = [p for n, p in params.items() if n not in zeroed and p.ndim > 1]
    assert all(float(p.abs().max()) > 0 for p in others)


def test_null_label_row_and_conditioning(one_thread) -> None:
    net = randomise(UNet(resolution=8, in_channels=1, num_classes=4, **SMALL)).eval()
    assert net.label_embed.weight.shape == (5, 4 * SMALL["model_channels"])  # 4 classes + NULL
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        null = net(x, t, torch.tensor([4, 4]))
        assert torch.equal(net(x, t, None), null)  # labels=None on a conditional model = NULL
        a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([3, 3]))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)


def test_unconditional_model_has_no_label_table_and_refuses_labels() -> None:
    net = UNet(resolution=8, in_channels=3, num_classes=0, **SMALL)
    assert net.label_embed is None
    assert not any("label" in n for n, _ in net.named_parameters())
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 3, 8, 8), torch.tensor([1]), torch.tensor([0]))


def test_timestep_matters_and_float_timesteps_work(one_thread) -> None:
    net = randomise(UNet(resolution=8, in_channels=1, **SMALL)).eval()
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        a, b = net(x, torch.tensor([100])), net(x, torch.tensor([101]))
        assert not torch.allclose(a, b)
        assert torch.equal(net(x, torch.tensor([100.0])), a)  # float t = the same integer t
        assert torch.equal(net(x, torch.tensor(100)), a)  # a scalar t is broadcast
        assert torch.isfinite(net(x, torch.tensor([100.5]))).all()


def test_deterministic_on_cpu_and_eval_disables_dropout(one_thread) -> None:
    net = randomise(UNet(resolution=16, in_channels=3, num_classes=10, attention_resolutions=[8], **SMALL))
    x, t, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 500, 999]), torch.tensor([0, 1, 2, 10])
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x, t, y), net(x, t, y))
    net.train()  # dropout 0.1 is active in training
    with torch.no_grad():
        assert not torch.equal(net(x, t, y), net(x, t, y))


def test_rebuilds_from_json_kwargs(one_thread) -> None:
    kwargs = dict(resolution=16, in_channels=1, num_classes=10, attention_resolutions=[8, 4], use_scale_shift_norm=False, **SMALL)
    net = randomise(UNet(**kwargs)).eval()
    again = UNet(**json.loads(json.dumps(kwargs)))
    again.load_state_dict(net.state_dict())
    again.eval()
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([5, 700]), torch.tensor([3, 7])
    with torch.no_grad():
        assert torch.equal(again(x, t, y), net(x, t, y))


def test_gradients_reach_every_parameter(one_thread) -> None:
    """No dead branch: after one backward every parameter has a gradient (zero-init convs included)."""
    net = randomise(UNet(resolution=8, in_channels=1, num_classes=3, attention_resolutions=[4], **SMALL))
    net(torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    # The label rows used above are 0..3 (all of them); every other parameter is on the path.
    assert missing == []


def test_norm_groups_divide_channels_and_match_adm_for_wide_layers() -> None:
    for ch in range(1, 1025):
        g = norm_groups(ch)
        assert ch % g == 0 and 1 <= g <= 32 and (ch < 8 or ch // g >= 4)
    assert [norm_groups(c) for c in (32, 48, 64, 96, 128, 192, 256, 384, 512)] == [8, 12, 16, 24, 32, 32, 32, 32, 32]


def test_timestep_embedding_values() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    assert torch.allclose(emb[1], torch.cat([torch.cos(3 * freqs), torch.sin(3 * freqs)]), atol=1e-6)
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(resolution=12, channel_mult=[1, 2, 2, 2]), "divisible"),
        (dict(resolution=16, attention_resolutions=[5]), "attention_resolutions"),
        (dict(resolution=16, attention_resolutions=[8], num_heads=3), "heads"),
        (dict(resolution=16, num_res_blocks=0), ">= 1"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    base = dict(in_channels=1, model_channels=16, channel_mult=[1, 2, 2], num_res_blocks=1)
    with pytest.raises(ValueError, match=match):
        UNet(**{**base, **kwargs})
