"""ddpm training and sampling through the registry: run folder, exact resume, labels through
sample → mix → train, per-seed determinism, and the bad inputs of the issue."""

from __future__ import annotations

import csv
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

from mad_cli.datasets import write_digits
from mad_cli.errors import MadError
from mad_cli.imagedir import list_images, read_tags, write_png
from mad_cli.mix import mix
from mad_cli.models.runfolder import snapshot_name
from mad_cli.models.snapshot import load_snapshot
from mad_cli.sampling import sample_snapshot
from mad_cli.train import train

REPO = Path(__file__).resolve().parents[1]
#: Small enough for a CPU test: 4 steps of batch 8 at 8².
QUICK = {"cfg": "tiny", "kimg": 0.032, "batch": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddpm-digits")
    write_digits(root / "real", resolution=8, limit=40, split="train")
    return root / "real"


@pytest.fixture(scope="module")
def conditional_run(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ddpm-run") / "run"
    train(digits, run, model="ddpm", seed=1, **QUICK)
    return run


def test_run_folder_config_and_snapshot(conditional_run: Path) -> None:
    for name in ("config.json", "log.jsonl", "latest.pt", "reals.png", "fakes-000000.png", snapshot_name(32)):
        assert (conditional_run / name).exists(), name
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["model"] == "ddpm" and config["cfg"] == "tiny" and config["num_classes"] == 10
    assert config["unet"]["num_classes"] == 10 and config["train"]["batch"] == 8 and config["label_source"] == "labels.csv"
    snap = load_snapshot(conditional_run / "latest.pt")
    assert snap["format"] == "mad.ddpm" and snap["progress"]["cur_nimg"] == 32 and snap["progress"]["step"] == 4
    assert snap["ema"].keys() == snap["model"].keys()
    rows = [json.loads(line) for line in (conditional_run / "log.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)


def test_samples_carry_labels_and_settings(conditional_run: Path, tmp_path: Path) -> None:
    result = sample_snapshot(conditional_run, tmp_path / "s", n=12, guidance=1.0, steps=5, generation=1, device="cpu")
    assert result["model"] == "ddpm" and result["guidance"] == 1.0 and result["steps"] == 5 and result["written"] == 12
    tags = read_tags(tmp_path / "s" / "seed000013.png") if (tmp_path / "s" / "seed000013.png").exists() else read_tags(tmp_path / "s" / "seed000011.png")
    assert tags["label"] == "1" and tags["guidance"] == "1.0" and tags["steps"] == "5" and tags["eta"] == "0.0"
    assert tags["origin"] == "synthetic" and tags["generation"] == "1"
    fixed = sample_snapshot(conditional_run, tmp_path / "k", n=3, steps=5, class_=7, device="cpu")
    assert fixed["written"] == 3 and {read_tags(p)["label"] for p in list_images(tmp_path / "k")} == {"7"}


def test_images_depend_on_their_seed_alone(conditional_run: Path, tmp_path: Path) -> None:
    sample_snapshot(conditional_run, tmp_path / "all", seeds="0-9", steps=4, eta=1.0, guidance=0.5, device="cpu")
    sample_snapshot(conditional_run, tmp_path / "some", seeds="7,2", steps=4, eta=1.0, guidance=0.5, batch=1, device="cpu")
    for name in ("seed000002.png", "seed000007.png"):
        assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "some" / name).read_bytes()


def test_guidance_changes_images_and_zero_is_the_conditional_model(conditional_run: Path, tmp_path: Path) -> None:
    sample_snapshot(conditional_run, tmp_path / "w0", n=4, steps=4, device="cpu")
    sample_snapshot(conditional_run, tmp_path / "w0b", n=4, steps=4, guidance=0.0, device="cpu")
    sample_snapshot(conditional_run, tmp_path / "w3", n=4, steps=4, guidance=3.0, device="cpu")
    a = (tmp_path / "w0" / "seed000001.png").read_bytes()
    assert a == (tmp_path / "w0b" / "seed000001.png").read_bytes()
    assert a != (tmp_path / "w3" / "seed000001.png").read_bytes()


def test_labels_flow_through_sample_mix_train(conditional_run: Path, tmp_path: Path, one_thread) -> None:
    sample_snapshot(conditional_run, tmp_path / "gen1", n=20, steps=3, generation=1, device="cpu")
    info = mix(tmp_path / "train1", synthetic=[str(tmp_path / "gen1")])
    assert info["labelled"] == 20
    with open(tmp_path / "train1" / "labels.csv", newline="") as fh:
        rows = {r["file"]: int(r["label"]) for r in csv.DictReader(fh)}
    for p in list_images(tmp_path / "train1"):
        assert rows[p.name] == int(read_tags(p)["label"])
    with open(tmp_path / "train1" / "manifest.csv", newline="") as fh:
        assert all(r["label"] for r in csv.DictReader(fh))
    result = train(tmp_path / "train1", tmp_path / "run1", model="ddpm", resume=str(conditional_run / "latest.pt"), **{**QUICK, "kimg": 0.008})
    assert result["num_classes"] == 10
    assert json.loads((tmp_path / "run1" / "config.json").read_text())["init_from"].endswith("latest.pt")


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(digits: Path, tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    args = ["--model", "ddpm", "--cfg", "tiny", "--kimg", "0.096", "--batch", "8", "--snap-every", "0.032", "--device", "cpu", "--seed", "5"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mad_cli", "train", str(digits), "--out", str(killed), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (killed / snapshot_name(32)).exists():
            assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
            assert time.time() < deadline, "no snapshot within 300 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (killed / snapshot_name(96)).exists(), "run finished before it could be killed"
    done = subprocess.run([*cmd, "--resume", "latest"], cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    straight = tmp_path / "straight"
    done = subprocess.run([sys.executable, "-m", "mad_cli", "train", str(digits), "--out", str(straight), *args], cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    a, b = load_snapshot(killed / "latest.pt"), load_snapshot(straight / "latest.pt")
    for net in ("model", "ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for idx, state in a["optim"]["state"].items():
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optim"]["state"][idx][k])), f"optim {idx} {k}"
    assert a["progress"]["step"] == b["progress"]["step"] == 12
    log_a = [(r["nimg"], r["tick"]) for r in map(json.loads, (killed / "log.jsonl").read_text().splitlines())]
    log_b = [(r["nimg"], r["tick"]) for r in map(json.loads, (straight / "log.jsonl").read_text().splitlines())]
    assert log_a == log_b


def test_dry_run_counts_parameters_without_writing(digits: Path, tmp_path: Path, run_cli) -> None:
    res = run_cli("train", digits, "--out", tmp_path / "run", "--model", "ddpm", "--cfg", "tiny", "--dry-run", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    (row,) = res.json_rows()
    assert row["model"] == "ddpm" and row["cfg"] == "tiny" and row["num_classes"] == 10 and 5e5 < row["params"] < 3e6
    assert not (tmp_path / "run").exists()


# -- bad input ----------------------------------------------------------------------------


def _unlabelled(folder: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(folder / f"{i:02d}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return folder


def test_unconditional_model_refuses_class_and_guidance(tmp_path: Path, run_cli, one_thread) -> None:
    data = _unlabelled(tmp_path / "data")
    train(data, tmp_path / "run", model="ddpm", **{**QUICK, "kimg": 0.008})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_classes"] == 0
    res = run_cli("sample", tmp_path / "run", tmp_path / "s", "--n", "2", "--class", "3")
    assert res.exit_code == 1 and "--class 3" in res.stderr and "unconditional" in res.stderr and len(res.stderr.splitlines()) == 1
    res = run_cli("sample", tmp_path / "run", tmp_path / "s", "--n", "2", "--guidance", "1")
    assert res.exit_code == 1 and "--guidance 1" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps 0: must be at least 1"),
        (["--guidance", "-1"], "--guidance -1.0: must not be negative"),
        (["--guidance", "nan"], "--guidance nan: must be a finite number"),
        (["--guidance", "inf"], "--guidance inf: must be a finite number"),
        (["--eta", "2"], "--eta 2.0: must be at most 1"),
        (["--class", "10"], "--class 10:"),
        (["--psi", "0.7"], "--psi: does not apply to ddpm snapshots"),
        (["--noise-mode", "random"], "--noise-mode: does not apply to ddpm snapshots"),
    ],
)
def test_bad_sample_flags_are_one_line(conditional_run: Path, tmp_path: Path, run_cli, args: list[str], message: str) -> None:
    res = run_cli("sample", conditional_run, tmp_path / "s", "--n", "2", *args)
    assert res.exit_code == 1, res.stdout
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "s").exists()


def test_partly_labelled_folder_is_refused(digits: Path, tmp_path: Path) -> None:
    data = tmp_path / "partial"
    write_digits(data, resolution=8, limit=12)
    rows = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(rows[:-3]) + "\n")
    with pytest.raises(MadError, match=r"has no label in .*labels.csv \(9 of 12 images labelled\)"):
        train(data, tmp_path / "run", model="ddpm", **QUICK)
    tagged = tmp_path / "tagged"
    for i in range(4):
        write_png(tagged / f"{i}.png", np.zeros((8, 8), np.uint8), {"label": 1} if i else None)
    with pytest.raises(MadError, match="0.png: has no mad:label tag although 3 of 4"):
        train(tagged, tmp_path / "run2", model="ddpm", **QUICK)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_fine_tuning_on_labels_outside_the_models_classes_is_refused(conditional_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_digits(data, resolution=8, limit=10)
    text = (data / "labels.csv").read_text().replace(",9\n", ",12\n")
    (data / "labels.csv").write_text(text)
    with pytest.raises(MadError, match="label 12 is outside the 10 classes"):
        train(data, tmp_path / "run", model="ddpm", resume=str(conditional_run / "latest.pt"), **QUICK)
    unl = _unlabelled(tmp_path / "unl")
    with pytest.raises(MadError, match="has no labels, but .* is class-conditional"):
        train(unl, tmp_path / "run", model="ddpm", resume=str(conditional_run / "latest.pt"), **QUICK)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kimg": float("nan")}, "--kimg nan: must be a finite number"),
        ({"kimg": -1}, "--kimg -1: must be greater than 0"),
        ({"batch": 0}, "--batch 0: must be at least 1"),
        ({"p_uncond": 1.5}, "--p-uncond 1.5: must be in [0, 1]"),
        ({"schedule": "sigmoid"}, "--schedule sigmoid: expected one of cosine, linear"),
        ({"gamma": 1.0}, "--gamma: does not apply to --model ddpm"),
        ({"cfg": "paper256"}, "--cfg paper256: expected one of tiny, small, cifar32, faces64"),
    ],
)
def test_bad_train_options(digits: Path, tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(MadError) as err:
        train(digits, tmp_path / "run", model="ddpm", device="cpu", **options)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_guidance_needs_a_model_trained_with_label_dropout(digits: Path, tmp_path: Path, one_thread) -> None:
    train(digits, tmp_path / "run", model="ddpm", p_uncond=0.0, **{**QUICK, "kimg": 0.008})
    with pytest.raises(MadError, match="trained with --p-uncond 0, so it never learned the unconditional"):
        sample_snapshot(tmp_path / "run", tmp_path / "s", n=2, guidance=1.0, device="cpu")
    assert sample_snapshot(tmp_path / "run", tmp_path / "s", n=2, steps=2, device="cpu")["written"] == 2


def test_fine_tuning_keeps_the_snapshots_preset_and_class_count(conditional_run: Path, tmp_path: Path) -> None:
    data = tmp_path / "fewer"
    write_digits(data, resolution=8, limit=10)
    rows = [r for r in (data / "labels.csv").read_text().splitlines()[1:]]
    (data / "labels.csv").write_text("file,label\n" + "".join(f"{r.split(',')[0]},{int(r.split(',')[1]) % 5}\n" for r in rows))
    result = train(data, tmp_path / "run", model="ddpm", resume=str(conditional_run / "latest.pt"), dry_run=True, device="cpu")
    config = result["config"]
    assert config["num_classes"] == config["unet"]["num_classes"] == 10 and config["data_num_classes"] == 5
    assert config["cfg"] == "tiny" and config["train"]["batch"] == 64  # the preset's, not the snapshot run's --batch 8
