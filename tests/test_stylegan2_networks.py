"""StyleGAN2 networks: shapes, exact parameter counts, NVIDIA names, truncation, w_avg, modconv."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mad_cli.models.stylegan2.networks import (
    Discriminator,
    Generator,
    MinibatchStdLayer,
    count_parameters,
    modulated_conv2d,
)


def _ch(res: int, base: int, cmax: int) -> int:
    return min(base // res, cmax)


def expected_G_params(z: int, w: int, res: int, img_ch: int, base: int, cmax: int, map_layers: int) -> int:
    """Parameter count of a skip generator, derived layer by layer from the architecture."""
    feats = [z] + [w] * (map_layers - 1) + [w]
    total = sum(feats[i] * feats[i + 1] + feats[i + 1] for i in range(map_layers))

    def modconv(cin: int, cout: int, k: int = 3) -> int:  # affine (w->cin, bias) + weight + noise_strength + bias
        return (w * cin + cin) + cout * cin * k * k + 1 + cout

    def torgb(cin: int) -> int:  # affine + 1x1 weight + bias, no noise
        return (w * cin + cin) + img_ch * cin + img_ch

    c4 = _ch(4, base, cmax)
    total += c4 * 4 * 4 + modconv(c4, c4) + torgb(c4)
    r = 8
    while r <= res:
        cin, cout = _ch(r // 2, base, cmax), _ch(r, base, cmax)
        total += modconv(cin, cout) + modconv(cout, cout) + torgb(cout)
        r *= 2
    return total


def expected_D_params(res: int, img_ch: int, base: int, cmax: int, mbstd_channels: int = 1) -> int:
    """Parameter count of the residual discriminator with minibatch-std epilogue."""
    total = 0
    r = res
    while r >= 8:
        tmp, out = _ch(r, base, cmax), _ch(r // 2, base, cmax)
        if r == res:
            total += img_ch * tmp + tmp  # fromrgb 1x1
        total += tmp * tmp * 9 + tmp  # conv0
        total += out * tmp * 9 + out  # conv1 (down 2)
        total += out * tmp  # skip 1x1, no bias
        r //= 2
    c4 = _ch(4, base, cmax)
    total += (c4 + mbstd_channels) * c4 * 9 + c4  # conv
    total += c4 * 16 * c4 + c4  # fc
    total += c4 + 1  # out
    return total


CONFIG_F = dict(
    z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
    mapping_kwargs=dict(num_layers=8),
    synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
)


def test_config_f_1024_parameter_counts_match_architecture_and_nvidia():
    torch.manual_seed(0)
    G = Generator(**CONFIG_F)
    D = Discriminator(c_dim=0, img_resolution=1024, img_channels=3, channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256)
    n_g, n_d = count_parameters(G), count_parameters(D)
    assert n_g == expected_G_params(512, 512, 1024, 3, 32768, 512, 8)
    assert n_d == expected_D_params(1024, 3, 32768, 512)
    # NVIDIA's published stylegan2-ada-pytorch config-F generator (ffhq 1024): 30,370,060 parameters.
    assert n_g == 30_370_060
    assert count_parameters(G.mapping) == 8 * (512 * 512 + 512)
    assert G.num_ws == 18


@pytest.mark.parametrize(
    "res,img_ch,base,cmax,z,w,layers",
    [(8, 1, 1024, 64, 32, 32, 2), (32, 1, 1024, 64, 64, 64, 2), (32, 3, 4096, 128, 128, 128, 2), (64, 3, 16384, 512, 512, 512, 2), (256, 3, 16384, 512, 512, 512, 8)],
)
def test_shapes_and_counts_for_several_configs(res, img_ch, base, cmax, z, w, layers):
    torch.manual_seed(0)
    G = Generator(z, 0, w, res, img_ch, mapping_kwargs=dict(num_layers=layers), synthesis_kwargs=dict(channel_base=base, channel_max=cmax))
    D = Discriminator(0, res, img_ch, channel_base=base, channel_max=cmax)
    assert count_parameters(G) == expected_G_params(z, w, res, img_ch, base, cmax, layers)
    assert count_parameters(D) == expected_D_params(res, img_ch, base, cmax)
    log2 = int(np.log2(res))
    assert G.num_ws == 2 * log2 - 2
    if res <= 64:
        zz = torch.randn(2, z)
        ws = G.mapping(zz, None)
        assert ws.shape == (2, G.num_ws, w)
        img = G(zz)
        assert img.shape == (2, img_ch, res, res) and img.dtype == torch.float32
        assert torch.isfinite(img).all()
        logits = D(img)
        assert logits.shape == (2, 1) and torch.isfinite(logits).all()


def test_state_dict_uses_nvidia_names():
    G = Generator(32, 0, 32, 16, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))
    D = Discriminator(0, 16, 3, channel_base=512, channel_max=32, epilogue_kwargs=dict(mbstd_group_size=4))
    g_keys, d_keys = set(G.state_dict()), set(D.state_dict())
    for key in [
        "mapping.fc0.weight", "mapping.fc0.bias", "mapping.fc1.weight", "mapping.w_avg",
        "synthesis.b4.const", "synthesis.b4.resample_filter",
        "synthesis.b4.conv1.weight", "synthesis.b4.conv1.bias", "synthesis.b4.conv1.noise_const",
        "synthesis.b4.conv1.noise_strength", "synthesis.b4.conv1.resample_filter",
        "synthesis.b4.conv1.affine.weight", "synthesis.b4.conv1.affine.bias",
        "synthesis.b4.torgb.weight", "synthesis.b4.torgb.bias", "synthesis.b4.torgb.affine.weight",
        "synthesis.b8.conv0.weight", "synthesis.b8.conv0.affine.weight", "synthesis.b16.torgb.affine.bias",
    ]:
        assert key in g_keys, key
    for key in [
        "b16.fromrgb.weight", "b16.fromrgb.bias", "b16.conv0.weight", "b16.conv1.weight", "b16.conv1.resample_filter",
        "b16.skip.weight", "b8.conv0.bias", "b4.conv.weight", "b4.fc.weight", "b4.out.weight", "b4.out.bias",
    ]:
        assert key in d_keys, key
    assert "b8.fromrgb.weight" not in d_keys and "b16.skip.bias" not in d_keys
    assert G.state_dict()["synthesis.b8.conv0.noise_const"].shape == (8, 8)


def test_equalized_lr_and_mapping_lr_multiplier():
    torch.manual_seed(0)
    G = Generator(64, 0, 64, 8, 1, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=32))
    fc = G.mapping.fc0
    # Stored weights are N(0, 1/lr_mult^2): the 0.01 multiplier makes the mapping learn 100x slower.
    assert fc.weight.std().item() == pytest.approx(100, rel=0.1)
    assert fc.weight_gain == pytest.approx(0.01 / np.sqrt(64))
    assert G.synthesis.b4.conv1.affine.bias.eq(1).all()  # styles start at 1 (identity modulation)


def test_psi_zero_gives_the_w_avg_image_for_every_latent():
    torch.manual_seed(1)
    G = Generator(32, 0, 32, 16, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32)).eval()
    G.mapping.w_avg.copy_(torch.randn(32))
    imgs = G(torch.randn(5, 32), None, truncation_psi=0, noise_mode="const")
    ref = G.synthesis(G.mapping.w_avg.reshape(1, 1, -1).repeat(1, G.num_ws, 1), noise_mode="const")
    for img in imgs:
        torch.testing.assert_close(img, ref[0], rtol=0, atol=1e-5)
    assert imgs.std(0).max() < 1e-5
    psi1 = G(torch.randn(5, 32), None, truncation_psi=1)
    assert psi1.std(0).max() > 1e-2


def test_truncation_cutoff_only_moves_the_first_layers():
    torch.manual_seed(2)
    G = Generator(16, 0, 16, 8, 1, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16)).eval()
    G.mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(3, 16)
    full = G.mapping(z, None)
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, 2:], full[:, 2:])
    torch.testing.assert_close(cut[:, :2], G.mapping.w_avg + 0.5 * (full[:, :2] - G.mapping.w_avg))


def test_w_avg_tracks_the_mean_of_w_in_training_mode_only():
    torch.manual_seed(3)
    G = Generator(16, 0, 16, 8, 1, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    z = torch.randn(6, 16)
    G.eval()
    w = G.mapping(z, None)[:, 0]
    assert G.mapping.w_avg.abs().max() == 0
    G.train()
    G.mapping(z, None)
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * w.mean(0))
    G.mapping(z, None, skip_w_avg_update=True)
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * w.mean(0))


def test_fused_and_unfused_modulated_conv_agree():
    torch.manual_seed(4)
    x = torch.randn(3, 8, 6, 6)
    weight = torch.randn(5, 8, 3, 3)
    styles = torch.randn(3, 8)
    for up, demod in [(1, True), (2, True), (1, False)]:
        from stylegan2_ops import setup_filter

        f = setup_filter([1, 3, 3, 1])
        a = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demod, flip_weight=(up == 1), fused_modconv=True)
        b = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, demodulate=demod, flip_weight=(up == 1), fused_modconv=False)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # Demodulation: with unit-variance input, every output channel has about unit variance.
    y = modulated_conv2d(torch.randn(64, 8, 16, 16), weight, torch.randn(64, 8) * 3, padding=1)
    assert y.std().item() == pytest.approx(1.0, rel=0.2)


def test_generator_train_and_eval_paths_agree_with_const_noise():
    torch.manual_seed(5)
    G = Generator(16, 0, 16, 16, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    z = torch.randn(2, 16)
    G.eval()
    a = G(z, noise_mode="const")
    G.train()
    ws = G.mapping(z, None, skip_w_avg_update=True)
    b = G.synthesis(ws, noise_mode="const")  # training mode uses the unfused modulated conv
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    c = G.synthesis(ws, noise_mode="random")
    assert not torch.equal(b, c) or G.synthesis.b4.conv1.noise_strength.item() == 0


def test_minibatch_std_uses_strided_groups():
    x = torch.randn(8, 4, 2, 2)
    y = MinibatchStdLayer(group_size=4)(x)
    assert y.shape == (8, 5, 2, 2)
    xn = x.numpy()
    for i in range(8):
        members = xn[i % 2 :: 2]  # group of sample i: i, i+2, i+4, i+6
        expected = np.sqrt(members.var(axis=0) + 1e-8).mean()
        assert y[i, 4, 0, 0].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        MinibatchStdLayer(group_size=4)(torch.randn(6, 4, 2, 2))


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError):
        Generator(16, 0, 16, 24, 3)
    with pytest.raises(ValueError):
        Discriminator(0, 4, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_blocks_on_cuda_give_finite_float32_images():
    torch.manual_seed(6)
    kwargs = dict(channel_base=2048, channel_max=64, num_fp16_res=2, conv_clamp=256)
    G = Generator(64, 0, 64, 32, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=kwargs).cuda()
    D = Discriminator(0, 32, 3, **kwargs).cuda()
    assert G.synthesis.b32.use_fp16 and G.synthesis.b16.use_fp16 and not G.synthesis.b8.use_fp16
    img = G(torch.randn(4, 64, device="cuda"))
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    ref = G.cpu()(torch.randn(4, 64))  # CPU ignores fp16 flags
    assert ref.dtype == torch.float32
    logits = D(img)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_conditional_networks_use_nvidias_parameter_names_and_shapes():
    """c_dim > 0: G embeds the label as `mapping.embed` and concatenates it with z; D maps it
    with its own `mapping` network (no w_avg) to a cmap that `b4.out` projects onto, as in
    NVIDIA's networks (stylegan2-ada-pytorch networks.py / stylegan3 networks_stylegan2.py)."""
    z, w, c, res = 24, 16, 5, 16
    G = Generator(z, c, w, res, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    D = Discriminator(c, res, 3, channel_base=256, channel_max=16)
    g = {k: tuple(v.shape) for k, v in G.state_dict().items() if k.startswith("mapping.")}
    assert g == {
        "mapping.embed.weight": (w, c), "mapping.embed.bias": (w,),  # embed_features defaults to w_dim
        "mapping.fc0.weight": (w, z + w), "mapping.fc0.bias": (w,),
        "mapping.fc1.weight": (w, w), "mapping.fc1.bias": (w,),
        "mapping.w_avg": (w,),
    }
    cmap = 16  # cmap_dim defaults to the channel count at 4×4
    d = {k: tuple(v.shape) for k, v in D.state_dict().items() if k.startswith("mapping.") or k.startswith("b4.out.")}
    expected = {"mapping.embed.weight": (cmap, c), "mapping.embed.bias": (cmap,), "b4.out.weight": (cmap, 16), "b4.out.bias": (cmap,)}
    expected.update({f"mapping.fc{i}.weight": (cmap, cmap) for i in range(8)})  # NVIDIA's default depth 8
    expected.update({f"mapping.fc{i}.bias": (cmap,) for i in range(8)})
    assert d == expected
    # The unconditional networks have none of these, and a one-hot label steers both networks.
    assert not any(k.startswith("mapping.embed") for k in Generator(z, 0, w, res, 3).state_dict())
    assert not any(k.startswith("mapping.") for k in Discriminator(0, res, 3).state_dict())
    torch.manual_seed(0)
    G.eval()
    zz = torch.randn(4, z).repeat(2, 1)
    labels = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 4, 4, 4, 4]), c).float()
    img = G(zz, labels)
    assert img.shape == (8, 3, res, res) and (img[:4] - img[4:]).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    logits = D(img, labels)
    assert logits.shape == (8, 1) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match=r"c_dim=5\): c must be \[N, 5\]"):
        G(zz, None)  # a conditional generator needs its label
    with pytest.raises(ValueError, match="got \\[8, 4\\]"):
        D(img, labels[:, :4])
