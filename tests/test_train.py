"""`mad train` on the command line: dispatch, dry run, run folders and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.imagedir import write_png


def _png(path: Path, h: int, w: int, channels: int = 1, value: int | None = None) -> Path:
    rng = np.random.default_rng(abs(hash((path.name, h, w))) % 2**32)
    shape = (h, w) if channels == 1 else (h, w, 3)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    write_png(path, arr)
    return path


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mad: error: ")
    return lines[0]


def test_help_ends_with_example(run_cli):
    res = run_cli("train", "--help")
    assert res.exit_code == 0
    assert res.stdout.rstrip().splitlines()[-1].strip().startswith("mad train")


def test_dry_run_prints_config_and_counts_without_writing(tmp_path, run_cli, make_images):
    make_images(tmp_path / "data", 4, size=32, channels=3)
    out = tmp_path / "run"
    res = run_cli("train", tmp_path / "data", "--out", out, "--cfg", "tiny", "--dry-run", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    (row,) = res.json_rows()
    assert row["cfg"] == "tiny" and row["resolution"] == 32 and row["channels"] == 3
    cfg = row["config"]
    assert cfg["G_kwargs"]["img_channels"] == 3 and cfg["G_kwargs"]["mapping_kwargs"]["num_layers"] == 2
    assert row["G_params"] == row["mapping_params"] + row["synthesis_params"] > 0
    assert row["D_params"] > 0
    assert cfg["augment"] == {"aug": "noaug"}  # the CPU presets' default (configs._CPU_SPECS says why)
    assert cfg["G_kwargs"]["c_dim"] == cfg["D_kwargs"]["c_dim"] == 0 and cfg["cond"] is False
    assert not out.exists()


@pytest.mark.parametrize(
    "cfg,res,expect",
    [
        ("auto", 256, dict(batch=16, mbstd=4, gamma=0.0002 * 256**2 / 16, ema=5.0, lr=0.0025, base=16384, map=2)),
        ("paper256", 256, dict(batch=64, mbstd=8, gamma=1.0, ema=20.0, lr=0.0025, base=16384, map=8)),
        ("paper512", 512, dict(batch=64, mbstd=8, gamma=0.5, ema=20.0, lr=0.0025, base=32768, map=8)),
        ("paper1024", 1024, dict(batch=32, mbstd=4, gamma=2.0, ema=10.0, lr=0.002, base=32768, map=8)),
    ],
)
def test_paper_presets_follow_nvidia(cfg, res, expect):
    from mad_cli.models.stylegan2.configs import resolve_config

    c = resolve_config(cfg, resolution=res, channels=3)
    assert c["batch"] == expect["batch"]
    assert c["D_kwargs"]["epilogue_kwargs"]["mbstd_group_size"] == expect["mbstd"]
    assert c["loss_kwargs"]["r1_gamma"] == pytest.approx(expect["gamma"])
    assert c["ema_kimg"] == pytest.approx(expect["ema"])
    assert c["G_opt_kwargs"] == {"lr": expect["lr"], "betas": [0.0, 0.99], "eps": 1e-8}
    assert c["G_kwargs"]["synthesis_kwargs"]["channel_base"] == expect["base"] == c["D_kwargs"]["channel_base"]
    assert c["G_kwargs"]["mapping_kwargs"]["num_layers"] == expect["map"]
    assert c["G_kwargs"]["synthesis_kwargs"]["num_fp16_res"] == 4 and c["G_kwargs"]["synthesis_kwargs"]["conv_clamp"] == 256
    assert (c["G_reg_interval"], c["D_reg_interval"]) == (4, 16)
    assert c["loss_kwargs"]["style_mixing_prob"] == 0.9 and c["loss_kwargs"]["pl_weight"] == 2
    # NVIDIA's defaults: --aug ada --augpipe bgc --target 0.6, p able to go 0 -> 1 in 500 kimg, adjusted every 4 minibatches.
    assert c["augment"] == {"aug": "ada", "augpipe": "bgc", "p": 0.0, "target": 0.6, "ada_kimg": 500.0, "ada_interval": 4}


def test_cpu_presets_as_tuned_and_measured():
    """The values benchmarks/stylegan2_cpu_curve.py measured (see configs._CPU_SPECS): R1 γ
    fixed instead of NVIDIA's resolution heuristic (0.0032 at 16²), lr 0.005, one thread."""
    from mad_cli.models.stylegan2.configs import resolve_config

    tiny = resolve_config("tiny", resolution=16, channels=1)
    assert tiny["loss_kwargs"]["r1_gamma"] == 0.5 and tiny["G_opt_kwargs"]["lr"] == tiny["D_opt_kwargs"]["lr"] == 0.005
    assert tiny["batch"] == 16 and tiny["total_kimg"] == 40 and tiny["cpu_threads"] == 1
    assert tiny["G_kwargs"]["synthesis_kwargs"]["num_fp16_res"] == 0
    assert resolve_config("tiny", resolution=16, channels=1, gamma=2)["loss_kwargs"]["r1_gamma"] == 2
    small = resolve_config("small", resolution=32, channels=3)
    assert small["cpu_threads"] == 1 and small["loss_kwargs"]["r1_gamma"] > 0
    assert resolve_config("auto", resolution=256, channels=3)["cpu_threads"] is None


def test_auto_preset_scales_with_gpus():
    from mad_cli.models.stylegan2.configs import resolve_config

    c = resolve_config("auto", resolution=1024, channels=3, gpus=8)
    assert c["batch"] == 32 and c["batch_gpu"] == 4  # max(min(8 * min(4096 // 1024, 32), 64), 8)
    assert c["G_kwargs"]["synthesis_kwargs"]["channel_base"] == 32768 and c["G_opt_kwargs"]["lr"] == 0.002


def test_gaussian_model_dispatch(tmp_path, run_cli, make_images):
    make_images(tmp_path / "data", 12, size=8, channels=1)
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "g", "--model", "gaussian", "--json")
    assert res.exit_code == 0, res.stderr
    snap = torch.load(tmp_path / "g" / "latest.pt", weights_only=True)
    assert snap["format"] == "mad.gaussian"
    bad = run_cli("train", tmp_path / "data", "--out", tmp_path / "g2", "--model", "gaussian", "--cfg", "tiny")
    assert bad.exit_code == 1 and "--cfg" in _error_line(bad)


def test_cli_run_then_refuse_overwrite_then_continue(tmp_path, run_cli, one_thread):
    data = tmp_path / "data"
    for i in range(8):
        _png(data / f"{i}.png", 8, 8)
    out = tmp_path / "run"
    args = ["train", data, "--out", out, "--cfg", "tiny", "--batch", "8", "--device", "cpu", "--json"]
    res = run_cli(*args, "--kimg", "0.016")
    assert res.exit_code == 0, res.stderr
    (row,) = res.json_rows()
    assert row["kimg"] == pytest.approx(0.016) and Path(row["snapshot"]).exists()

    again = run_cli(*args, "--kimg", "0.016")
    assert again.exit_code == 1 and "--resume latest" in _error_line(again)

    more = run_cli(*args, "--kimg", "0.032", "--resume", "latest")
    assert more.exit_code == 0, more.stderr
    assert more.json_rows()[0]["kimg"] == pytest.approx(0.032)
    snap = torch.load(out / "latest.pt", weights_only=True)
    assert snap["progress"]["cur_nimg"] == 32


def test_resume_latest_restarts_a_run_killed_before_its_first_snapshot(tmp_path, run_cli, one_thread):
    data = tmp_path / "data"
    for i in range(8):
        _png(data / f"{i}.png", 8, 8)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "reals.png").write_bytes(b"partial")
    res = run_cli("train", data, "--out", out, "--cfg", "tiny", "--batch", "8", "--kimg", "0.008", "--device", "cpu", "--resume", "latest")
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["cfg"] == "tiny"


def test_resume_snapshot_restarts_a_finetune_run_killed_before_its_first_snapshot(tmp_path, run_cli, one_thread):
    data = tmp_path / "data"
    for i in range(8):
        _png(data / f"{i}.png", 8, 8)
    base = tmp_path / "gen0"
    args = ["--cfg", "tiny", "--batch", "8", "--kimg", "0.008", "--device", "cpu"]
    assert run_cli("train", data, "--out", base, *args).exit_code == 0
    out = tmp_path / "gen1"
    out.mkdir()
    (out / "config.json").write_text("{}")  # what a kill before the first snapshot leaves
    res = run_cli("train", data, "--out", out, *args, "--resume", base / "latest.pt")
    assert res.exit_code == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["init_from"] == str(base / "latest.pt")


def test_continued_run_warns_only_about_flags_that_differ(tmp_path, run_cli, one_thread):
    data = tmp_path / "data"
    for i in range(8):
        _png(data / f"{i}.png", 8, 8)
    out = tmp_path / "run"
    args = ["train", data, "--out", out, "--cfg", "tiny", "--batch", "8", "--device", "cpu", "--resume", "latest"]
    assert run_cli(*args, "--kimg", "0.008").exit_code == 0
    same = run_cli(*args, "--kimg", "0.016")
    assert same.exit_code == 0 and "ignored" not in same.stderr
    other = run_cli(*args, "--kimg", "0.024", "--gamma", "3")
    assert other.exit_code == 0 and "--gamma ignored" in other.stderr and "--cfg" not in other.stderr
    aug = run_cli(*args, "--kimg", "0.032", "--aug", "fixed", "--p", "0.5")
    assert aug.exit_code == 0 and "--aug, --p ignored" in aug.stderr
    assert torch.load(out / "latest.pt", weights_only=True)["config"]["augment"]["aug"] == "noaug"


@pytest.mark.parametrize(
    "case,expect",
    [
        ("mixed", "b.png"),
        ("nonsquare", "a.png"),
        ("npot", "a.png"),
        ("toosmall", "a.png"),
        ("empty", "no images"),
        ("missing", "does not exist"),
    ],
)
def test_bad_folders_exit_1_with_one_line(tmp_path, run_cli, case, expect):
    data = tmp_path / "data"
    data.mkdir()
    if case == "mixed":
        _png(data / "a.png", 16, 16)
        _png(data / "b.png", 8, 8)
    elif case == "nonsquare":
        _png(data / "a.png", 8, 16)
    elif case == "npot":
        _png(data / "a.png", 12, 12)
    elif case == "toosmall":
        _png(data / "a.png", 4, 4)
    elif case == "missing":
        data = tmp_path / "nope"
    res = run_cli("train", data, "--out", tmp_path / "run", "--device", "cpu")
    assert res.exit_code == 1
    line = _error_line(res)
    assert expect in line
    if case in ("mixed", "nonsquare", "npot"):
        assert "--resolution" in line
    assert not (tmp_path / "run").exists()


def test_bad_flags_exit_1(tmp_path, run_cli, make_images):
    make_images(tmp_path / "data", 4, size=8, channels=1)
    (tmp_path / "g").mkdir()
    base = ["train", tmp_path / "data", "--out", tmp_path / "run", "--device", "cpu"]
    for extra, needle in [
        (["--cfg", "huge"], "--cfg"),
        (["--model", "vae"], "--model"),
        (["--batch", "8", "--batch-gpu", "3"], "--batch-gpu"),
        (["--kimg", "0"], "--kimg"),
        (["--gamma", "-1"], "--gamma"),
        (["--resume", str(tmp_path / "missing.pt")], "--resume"),
        (["--augpipe", "bgcx"], "--augpipe bgcx"),
        (["--aug", "fixed", "--p", "1.5"], "--p 1.5"),
        (["--aug", "fixed", "--p", "-0.1"], "--p -0.1"),
        (["--aug", "fixed"], "--aug fixed: needs --p"),
        (["--aug", "ada", "--p", "0.3"], "--p: applies to --aug fixed only"),
        (["--p", "0.3"], "--p: the tiny preset trains without augmentation by default; add --aug"),
        (["--cfg", "auto", "--p", "0.3"], "--p: applies to --aug fixed only"),  # NVIDIA's: ada
        (["--aug", "noaug", "--target", "0.5"], "--target"),
        (["--target", "2"], "--target 2"),
        (["--aug", "sometimes"], "--aug sometimes"),
        (["--ada-kimg", "0"], "--ada-kimg"),
        (["--aug", "fixed", "--p", "0.2", "--ada-kimg", "5"], "--ada-kimg: applies to --aug ada only"),
    ]:
        res = run_cli(*base, *extra)
        assert res.exit_code == 1, (extra, res.stderr)
        assert needle in _error_line(res)
        assert not (tmp_path / "run").exists()


def test_resume_from_a_gaussian_snapshot_is_refused(tmp_path, run_cli, make_images):
    make_images(tmp_path / "data", 6, size=8, channels=1)
    assert run_cli("train", tmp_path / "data", "--out", tmp_path / "g", "--model", "gaussian").exit_code == 0
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--resume", tmp_path / "g" / "latest.pt", "--device", "cpu")
    assert res.exit_code == 1 and "not StyleGAN2" in _error_line(res)


@pytest.mark.parametrize("kind", ["corrupted", "foreign", "pickle"])
def test_resume_from_a_bad_snapshot_is_one_line_and_writes_nothing(tmp_path, run_cli, make_images, kind):
    make_images(tmp_path / "data", 4, size=8, channels=1)
    bad = tmp_path / "bad.pt"
    if kind == "corrupted":  # a real snapshot cut short, as a full disk or a killed copy leaves it
        assert run_cli("train", tmp_path / "data", "--out", tmp_path / "g", "--model", "gaussian").exit_code == 0
        data = (tmp_path / "g" / "latest.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":  # neither ours nor NVIDIA's
        torch.save({"state_dict": {"w": torch.ones(2)}}, bad)
    else:
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(b"\x80\x04not really a pickle")
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--resume", bad, "--device", "cpu")
    assert res.exit_code == 1
    assert str(bad) in _error_line(res)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU exists")
@pytest.mark.parametrize("model", ["stylegan2", "gaussian"])
def test_cuda_without_gpu_exit_1(tmp_path, run_cli, make_images, model):
    make_images(tmp_path / "data", 4, size=8, channels=1)
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--device", "cuda", "--model", model)
    assert res.exit_code == 1 and "--device cuda" in _error_line(res)
    assert not (tmp_path / "run").exists()


def test_gaussian_refuses_an_unknown_device(tmp_path, run_cli, make_images):
    make_images(tmp_path / "data", 4, size=8, channels=1)
    res = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--model", "gaussian", "--device", "tpu")
    assert res.exit_code == 1 and "--device tpu" in _error_line(res)
    assert not (tmp_path / "run").exists()


def test_resume_from_a_generator_only_snapshot_trains_a_fresh_discriminator(tmp_path, run_cli, one_thread):
    """Like an imported NVIDIA pickle: only G_ema and its G_kwargs; D starts from scratch."""
    from mad_cli.models.snapshot import save_snapshot
    from mad_cli.models.stylegan2.networks import Generator

    data = tmp_path / "data"
    for i in range(8):
        _png(data / f"{i}.png", 8, 8, channels=3)
    g_kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=8, img_channels=3, mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=128, channel_max=16))
    torch.manual_seed(0)
    G = Generator(**g_kwargs)
    G.mapping.w_avg.fill_(0.5)
    save_snapshot(tmp_path / "g.pt", {"format": "mad.stylegan2", "version": 1, "config": {"G_kwargs": g_kwargs}, "G_ema": G.state_dict(), "progress": {}})
    out = tmp_path / "run"
    res = run_cli("train", data, "--out", out, "--cfg", "tiny", "--batch", "4", "--kimg", "0.004", "--device", "cpu", "--resume", tmp_path / "g.pt")
    assert res.exit_code == 0, res.stderr
    snap = torch.load(out / "latest.pt", weights_only=True)
    assert snap["config"]["G_kwargs"]["z_dim"] == 16 and snap["G"]["mapping.fc0.weight"].shape == (16, 16)
    assert snap["progress"]["cur_nimg"] == 4
    # w_avg continued from the source (one step of decay 0.995 towards the batch mean).
    assert (snap["G"]["mapping.w_avg"] - 0.5).abs().max() < 0.5 * 0.01 + 0.05

    wrong = tmp_path / "data16"
    for i in range(4):
        _png(wrong / f"{i}.png", 16, 16, channels=3)
    bad = run_cli("train", wrong, "--out", tmp_path / "run2", "--device", "cpu", "--resume", tmp_path / "g.pt")
    assert bad.exit_code == 1 and "8² × 3" in _error_line(bad)
