"""StyleGAN2 training: losses, a short run, exact resume after SIGKILL (ADA on), fine-tuning, 2-rank DDP, ADA's p."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.imagedir import write_png
from mad_cli.models.runfolder import snapshot_name
from mad_cli.models.snapshot import load_snapshot
from mad_cli.models.stylegan2.configs import resolve_config
from mad_cli.models.stylegan2.loss import StyleGAN2Loss
from mad_cli.models.stylegan2.training import build_networks
from mad_cli.train import train

REPO = Path(__file__).resolve().parents[1]


def _digits_like(folder: Path, n: int = 24, size: int = 8, seed: int = 0) -> Path:
    """Bright blobs on black at random places: learnable, but not constant."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(2, size - 2, 2)
        img = 255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3)
        write_png(folder / f"{i:03d}.png", img.astype(np.uint8))
    return folder


def _assert_same_state(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    for opt in ("G", "D"):
        sa, sb = a["optim"][opt]["state"], b["optim"][opt]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            for k in sa[idx]:
                assert torch.equal(torch.as_tensor(sa[idx][k]), torch.as_tensor(sb[idx][k])), f"optim {opt} {idx} {k}"
    assert torch.equal(a["loss"]["pl_mean"], b["loss"]["pl_mean"])
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"]
    assert a["progress"]["batch_idx"] == b["progress"]["batch_idx"]
    assert a.get("ada") == b.get("ada")
    assert a.get("augment_pipe", {}).keys() == b.get("augment_pipe", {}).keys()
    for k in a.get("augment_pipe", {}):
        assert torch.equal(a["augment_pipe"][k], b["augment_pipe"][k]), f"augment_pipe.{k} differs"


def test_r1_and_path_length_terms_have_gradients(one_thread):
    config = resolve_config("tiny", resolution=8, channels=1, batch=4)
    G, D, _ = build_networks(config, torch.device("cpu"))
    loss = StyleGAN2Loss(G, D, **config["loss_kwargs"])
    real = torch.rand(4, 1, 8, 8) * 2 - 1

    D.requires_grad_(True)
    stats = loss.accumulate_gradients("Dreg", real, torch.randn(4, G.z_dim), gain=16)
    D.requires_grad_(False)
    assert stats["r1_penalty"] > 0 and np.isfinite(stats["r1_penalty"])
    grads = [p.grad for p in D.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0

    G.requires_grad_(True)
    stats = loss.accumulate_gradients("Greg", real, torch.randn(4, G.z_dim), gain=4)
    G.requires_grad_(False)
    assert stats["pl_penalty"] > 0 and stats["pl_length"] > 0
    assert loss.pl_mean.item() == pytest.approx(0.01 * stats["pl_length"], rel=1e-5)
    g_mapping = G.mapping.fc0.weight.grad
    g_synth = G.synthesis.b8.conv0.weight.grad
    assert g_mapping is not None and g_mapping.abs().sum() > 0
    assert g_synth is not None and torch.isfinite(g_synth).all() and g_synth.abs().sum() > 0


def test_short_run_learns_separable_set_and_writes_run_folder(tmp_path, one_thread):
    data = tmp_path / "white"
    data.mkdir()
    for i in range(16):
        write_png(data / f"{i:02d}.png", np.full((8, 8), 255, np.uint8))
    out = tmp_path / "run"
    # D must learn to tell the constant reals from fakes within 20 steps: the preset's R1
    # (γ 0.5, tuned for real data, see configs._CPU_SPECS) deliberately slows exactly that.
    summary = train(data, out, cfg="tiny", kimg=0.16, batch=8, snap_every=0.04, device="cpu", seed=0, gamma=0.01)
    assert summary["kimg"] == pytest.approx(0.16)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["nimg"] for r in rows] == [40, 80, 120, 160]
    for r in rows:
        for k in ("loss_G", "loss_D", "sec_per_kimg", "pl_mean"):
            assert r[k] is not None and np.isfinite(r[k]), (k, r)
        assert "gpu_mem_gb" in r
    assert rows[-1]["loss_D"] < rows[0]["loss_D"]
    assert rows[-1]["scores_real"] > rows[-1]["scores_fake"]
    for name in ("config.json", "reals.png", "fakes-000000.png", "latest.pt", snapshot_name(160), snapshot_name(40)):
        assert (out / name).exists(), name
    snap = torch.load(out / "latest.pt", weights_only=True)
    assert snap["format"] == "mad.stylegan2" and snap["progress"]["kimg"] == pytest.approx(0.16)
    for net in ("G", "D", "G_ema"):
        assert all(torch.isfinite(v).all() for v in snap[net].values() if v.is_floating_point())
    config = json.loads((out / "config.json").read_text())
    assert config["G_kwargs"] == snap["config"]["G_kwargs"]
    assert snap["G"]["mapping.w_avg"].abs().sum() > 0  # w_avg was tracked
    assert snap["loss"]["pl_mean"] > 0


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, one_thread, subprocess_env):
    """With ADA on and fast (p moves by 0.064 every 4 minibatches), so that the augment
    pipe's draws, p and the controller's running statistic all have to survive the kill."""
    data = _digits_like(tmp_path / "data")
    args = ["--cfg", "tiny", "--kimg", "0.192", "--batch", "8", "--snap-every", "0.064", "--device", "cpu", "--seed", "3",
            "--aug", "ada", "--ada-kimg", "0.5"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mad_cli", "train", str(data), "--out", str(killed), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (killed / "latest.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no snapshot within 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (killed / snapshot_name(192)).exists(), "run finished before it could be killed"

    done = subprocess.run([*cmd, "--resume", "latest", "--json"], cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["kimg"] == pytest.approx(0.192)
    nimgs = [json.loads(line)["nimg"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert nimgs == sorted(set(nimgs)) and nimgs[-1] == 192  # no duplicated ticks after the resume

    straight = tmp_path / "straight"
    train(data, straight, cfg="tiny", kimg=0.192, batch=8, snap_every=0.064, device="cpu", seed=3, aug="ada", ada_kimg=0.5)
    a = load_snapshot(killed / "latest.pt")
    b = load_snapshot(straight / "latest.pt")
    _assert_same_state(a, b)
    assert a["ada"]["adjustments"] == 6 and a["ada"]["p"] > 0  # ADA was really at work
    rows = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [r["augment_p"] for r in rows] == [r["augment_p"] for r in map(json.loads, (straight / "log.jsonl").read_text().splitlines())]
    assert (killed / "fakes-000000.192.png").read_bytes() == (straight / "fakes-000000.192.png").read_bytes()

    # --resume SNAPSHOT: a new run that starts from those weights, counting kimg from zero.
    tuned = tmp_path / "tuned"
    summary = train(data, tuned, cfg="tiny", kimg=0.032, batch=8, device="cpu", seed=3, resume=str(straight / "latest.pt"))
    assert summary["kimg"] == pytest.approx(0.032)
    c = load_snapshot(tuned / "latest.pt")
    assert c["progress"]["cur_nimg"] == 32 and c["config"]["init_from"].endswith("latest.pt")
    # Same seed, same G_ema weights at the start -> the initial fakes grid equals the source run's final one.
    assert (tuned / "fakes-000000.png").read_bytes() == (straight / "fakes-000000.192.png").read_bytes()


@pytest.mark.slow
def test_ddp_two_gloo_ranks_match_single_process(tmp_path, one_thread, subprocess_env, free_port):
    data = _digits_like(tmp_path / "data", n=16)
    # ADA fast enough that p is large after the first adjustment: each rank augments its own
    # rounds, and the controller's statistic is all-reduced so both ranks keep one p.
    args = ["--cfg", "tiny", "--kimg", "0.064", "--batch", "8", "--device", "cpu", "--seed", "1", "--json", "--aug", "ada", "--ada-kimg", "0.1",
            "--snap-every", "0.032"]
    ddp = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "mad_cli", "train", str(data), "--out", str(ddp), *args,
    ]
    res = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1  # only rank 0 prints
    a = load_snapshot(ddp / "latest.pt")
    assert a["config"]["gpus"] == 2 and a["config"]["batch_gpu"] == 4

    single = tmp_path / "single"
    train(data, single, cfg="tiny", kimg=0.064, batch=8, batch_gpu=4, device="cpu", seed=1, aug="ada", ada_kimg=0.1, snap_every=0.032)
    b = load_snapshot(single / "latest.pt")
    assert a["progress"]["cur_nimg"] == b["progress"]["cur_nimg"] == 64
    assert a["ada"] == b["ada"] and a["ada"]["adjustments"] == 2
    p_ddp, p_single = ([json.loads(line)["augment_p"] for line in (run / "log.jsonl").read_text().splitlines()] for run in (ddp, single))
    assert p_ddp == p_single and max(p_ddp) > 0  # one tick per adjustment: p moved, identically
    for net in ("G", "D", "G_ema"):
        for k, v in b[net].items():
            if k.endswith("w_avg"):
                continue  # each rank tracks w_avg on its own half of the batch (as NVIDIA's)
            torch.testing.assert_close(a[net][k], v, rtol=1e-4, atol=2e-5, msg=lambda m, k=k, net=net: f"{net}.{k}: {m}")
    torch.testing.assert_close(a["loss"]["pl_mean"], b["loss"]["pl_mean"], rtol=1e-5, atol=1e-7)
    # Only rank 0 wrote files: one set, no per-rank duplicates.
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())


def test_streaming_loader_matches_cached_and_order_is_deterministic(tmp_path):
    from mad_cli.models.data import DataOrder, ImageData, scan_folder

    folder = _digits_like(tmp_path / "d", n=10, size=16)
    info = scan_folder(folder)
    assert (info.resolution, info.channels, len(info.paths)) == (16, 1, 10)
    cached, streamed = ImageData(info), ImageData(info, cache_bytes=0)
    try:
        idx = np.array([3, 0, 9, 3])
        assert torch.equal(cached.get(idx), streamed.get(idx))
        assert cached.get(idx).shape == (4, 1, 16, 16) and cached.get(idx).dtype == torch.uint8
    finally:
        streamed.close()
    order = DataOrder(10, seed=5, mirror=True)
    a_idx, a_flip = order.samples(7, 12)  # crosses an epoch boundary
    b_idx, b_flip = DataOrder(10, seed=5, mirror=True).samples(7, 12)
    assert np.array_equal(a_idx, b_idx) and np.array_equal(a_flip, b_flip)
    first_epoch, _ = order.samples(0, 10)
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    assert 0 < DataOrder(1000, seed=0, mirror=True).samples(0, 1000)[1].sum() < 1000
    assert not DataOrder(10, seed=0, mirror=False).samples(0, 10)[1].any()


def test_lazy_regularisation_adjusts_adam_and_ema_ramps_up(tmp_path, one_thread):
    from mad_cli.models.stylegan2.training import _make_phases

    config = resolve_config("tiny", resolution=8, channels=1, batch=4)
    G, D, _ = build_networks(config, torch.device("cpu"))
    phases = _make_phases(config, G, D)
    assert [(p.name, p.interval) for p in phases] == [("Gmain", 1), ("Greg", 4), ("Dmain", 1), ("Dreg", 16)]
    g_group, d_group = phases[0].opt.param_groups[0], phases[2].opt.param_groups[0]
    assert phases[0].opt is phases[1].opt and phases[2].opt is phases[3].opt
    lr = config["G_opt_kwargs"]["lr"]
    assert config["D_opt_kwargs"]["lr"] == lr
    assert g_group["lr"] == pytest.approx(lr * 4 / 5) and g_group["betas"][1] == pytest.approx(0.99 ** (4 / 5))
    assert d_group["lr"] == pytest.approx(lr * 16 / 17) and d_group["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert g_group["betas"][0] == 0

    # With the ramp-up, the EMA half-life is 0 images at the first step: G_ema becomes G exactly.
    data = _digits_like(tmp_path / "d", n=8)
    train(data, tmp_path / "run", cfg="tiny", kimg=0.008, batch=8, device="cpu")
    snap = load_snapshot(tmp_path / "run" / "latest.pt")
    for k, v in snap["G"].items():
        assert torch.equal(snap["G_ema"][k], v), k
    start = build_networks(snap["config"], torch.device("cpu"))[0].state_dict()
    assert not torch.equal(start["synthesis.b8.conv0.weight"], snap["G"]["synthesis.b8.conv0.weight"])  # G did move


def test_ada_moves_p_with_the_sign_of_r_t_in_a_real_run(tmp_path, one_thread):
    """Eight images shown over and over: D soon tells them from fakes (r_t > target) and p
    climbs. One tick = one adjustment interval (4 minibatches), so every logged r_t must
    have moved p by exactly one step in its direction (clamped at 0)."""
    data = _digits_like(tmp_path / "data", n=8)
    out = tmp_path / "run"
    summary = train(data, out, cfg="tiny", kimg=0.256, batch=8, snap_every=0.032, device="cpu", seed=0, aug="ada", ada_kimg=2)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    step = 8 * 4 / 2000
    snap = load_snapshot(out / "latest.pt")
    ada = snap["ada"]
    assert ada["adjustments"] == len(rows) == 8 and ada["batches"] == 32
    p_before = 0.0
    for r in rows:
        assert r["ada_rt"] is not None and -1 <= r["ada_rt"] <= 1
        expected = max(0.0, p_before + step * float(np.sign(r["ada_rt"] - 0.6)))
        assert r["augment_p"] == pytest.approx(expected, abs=1e-6), (r, p_before)
        p_before = r["augment_p"]
    assert rows[0]["ada_rt"] > 0.6 and max(r["augment_p"] for r in rows) >= 2 * step  # D overfit early: p went up
    assert summary["augment_p"] == rows[-1]["augment_p"] == ada["p"] == pytest.approx(snap["augment_pipe"]["p"].item())


def test_fixed_and_noaug_modes_and_p_from_the_source_snapshot(tmp_path, one_thread):
    from mad_cli.models.snapshot import save_snapshot

    data = _digits_like(tmp_path / "data", n=8)
    fixed = train(data, tmp_path / "fixed", cfg="tiny", kimg=0.016, batch=8, device="cpu", aug="fixed", p=0.3)
    snap = load_snapshot(tmp_path / "fixed" / "latest.pt")
    assert fixed["augment_p"] == pytest.approx(0.3) and "ada" not in snap and snap["augment_pipe"]["p"].item() == pytest.approx(0.3)
    assert json.loads((tmp_path / "fixed" / "log.jsonl").read_text().splitlines()[-1])["augment_p"] == pytest.approx(0.3)
    none = train(data, tmp_path / "none", cfg="tiny", kimg=0.016, batch=8, device="cpu", aug="noaug")
    snap = load_snapshot(tmp_path / "none" / "latest.pt")
    assert none["augment_p"] is None and "augment_pipe" not in snap and snap["config"]["augment"] == {"aug": "noaug"}

    # --resume SNAPSHOT whose augment pipe has p (what the NVIDIA importer puts in snap["augment_pipe"]):
    # ADA starts from that p instead of 0.
    src = load_snapshot(tmp_path / "none" / "latest.pt")
    src["augment_pipe"] = {"p": torch.tensor(0.25), "Hz_geom": torch.zeros(12), "Hz_fbank": torch.zeros(4, 43)}
    save_snapshot(tmp_path / "src.pt", src)
    train(data, tmp_path / "ft", cfg="tiny", kimg=0.008, batch=8, device="cpu", resume=str(tmp_path / "src.pt"), aug="ada")
    snap = load_snapshot(tmp_path / "ft" / "latest.pt")
    assert snap["config"]["augment"]["p"] == 0.25 and snap["config"]["augment"]["p_from"] == str(tmp_path / "src.pt")
    assert snap["ada"]["adjustments"] == 0 and snap["ada"]["p"] == 0.25  # one minibatch: no adjustment yet
    # ... unless the mode is not ADA: fixed keeps --p.
    train(data, tmp_path / "ft2", cfg="tiny", kimg=0.008, batch=8, device="cpu", resume=str(tmp_path / "src.pt"), aug="fixed", p=0.1)
    assert load_snapshot(tmp_path / "ft2" / "latest.pt")["augment_pipe"]["p"].item() == pytest.approx(0.1)
