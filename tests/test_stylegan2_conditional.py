"""Conditional StyleGAN2 (`mad train --cond`): labels in training, in sampling, and on resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli.imagedir import read_image, read_tags, write_png
from mad_cli.models.snapshot import load_snapshot
from mad_cli.models.stylegan2.training import build_networks, draw_gen_c
from mad_cli.train import train


def _labelled(folder: Path, labels: list[int], size: int = 8, seed: int = 0) -> Path:
    """A blob per image whose brightness is its class, and labels.csv (as `mad dataset digits` writes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        for i, label in enumerate(labels):
            cy, cx = rng.uniform(2, size - 2, 2)
            img = (80 + 80 * label) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3)
            write_png(folder / f"{i:03d}.png", img.astype(np.uint8))
            w.writerow([f"{i:03d}.png", label])
    return folder


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mad: error: ")
    return lines[0]


def _same_training_state(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    assert a["ada"] == b["ada"]


def test_fakes_get_the_labels_of_random_training_images() -> None:
    labels = torch.tensor([2] * 15 + [0])  # class 1 exists only as an index: never drawn
    torch.manual_seed(0)
    c = draw_gen_c(labels, 4000, 3, torch.device("cpu"))
    assert c.shape == (4000, 3) and torch.equal(c.sum(1), torch.ones(4000))
    share = c.mean(0)
    assert share[1] == 0
    assert share[2].item() == pytest.approx(15 / 16, abs=0.02)


def test_conditional_run_trains_on_labels_and_samples_with_them(tmp_path: Path, run_cli, one_thread) -> None:
    data = _labelled(tmp_path / "data", [0, 1, 2] * 6)
    out = tmp_path / "run"
    res = run_cli("train", data, "--out", out, "--cond", "--cfg", "tiny", "--batch", "8", "--kimg", "0.048", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    snap = load_snapshot(out / "latest.pt")
    config = snap["config"]
    assert config["cond"] is True and config["G_kwargs"]["c_dim"] == 3 and config["D_kwargs"]["c_dim"] == 3
    assert res.json_rows()[0]["num_classes"] == 3
    # The label embeddings (NVIDIA's parameter names) exist in G and D and were trained.
    start = build_networks(config, torch.device("cpu"))
    for net, initial in (("G", start[0]), ("D", start[1])):
        key = "mapping.embed.weight"
        assert snap[net][key].shape[1] == 3
        assert not torch.equal(snap[net][key], initial.state_dict()[key]), f"{net}'s label embedding did not move"

    balanced = run_cli("sample", out / "latest.pt", tmp_path / "s", "--n", "6", "--device", "cpu")
    assert balanced.exit_code == 0, balanced.stderr
    assert [read_tags(tmp_path / "s" / f"seed{i:06d}.png")["label"] for i in range(6)] == ["0", "1", "2", "0", "1", "2"]
    one = run_cli("sample", out / "latest.pt", tmp_path / "s2", "--n", "4", "--class", "2", "--device", "cpu")
    assert one.exit_code == 0, one.stderr
    assert {read_tags(p)["label"] for p in (tmp_path / "s2").glob("*.png")} == {"2"}
    # Same seed, same class: the same image; same seed, another class: another image.
    assert np.array_equal(read_image(tmp_path / "s" / "seed000002.png"), read_image(tmp_path / "s2" / "seed000002.png"))
    assert not np.array_equal(read_image(tmp_path / "s" / "seed000000.png"), read_image(tmp_path / "s2" / "seed000000.png"))

    # An unconditional run on the same labelled folder ignores the labels.
    plain = train(data, tmp_path / "plain", cfg="tiny", batch=8, kimg=0.008, device="cpu")
    assert plain["num_classes"] == 0
    assert load_snapshot(tmp_path / "plain" / "latest.pt")["config"]["G_kwargs"]["c_dim"] == 0


def test_conditional_resume_is_exact(tmp_path: Path, one_thread) -> None:
    data = _labelled(tmp_path / "data", [0, 1, 1, 3] * 4)  # class 2 absent: c_dim is max label + 1
    kw = dict(cfg="tiny", batch=8, device="cpu", seed=2, cond=True, aug="ada", ada_kimg=0.5)
    train(data, tmp_path / "a", kimg=0.032, **kw)
    train(data, tmp_path / "a", kimg=0.064, resume="latest", **kw)
    train(data, tmp_path / "b", kimg=0.064, **kw)
    a, b = load_snapshot(tmp_path / "a" / "latest.pt"), load_snapshot(tmp_path / "b" / "latest.pt")
    assert a["config"]["G_kwargs"]["c_dim"] == 4
    _same_training_state(a, b)
    assert a["ada"]["adjustments"] == 2


def test_label_problems_are_one_line(tmp_path: Path, run_cli, make_images, one_thread) -> None:
    plain = tmp_path / "plain"
    make_images(plain, 4, size=8, channels=1)
    base = ["--cfg", "tiny", "--batch", "4", "--kimg", "0.004", "--device", "cpu"]
    res = run_cli("train", plain, "--out", tmp_path / "r0", "--cond", *base)
    assert res.exit_code == 1
    line = _error_line(res)
    assert "--cond" in line and str(plain) in line and "labels.csv" in line
    assert not (tmp_path / "r0").exists()

    data = _labelled(tmp_path / "data", [0, 1, 0, 1])
    run = tmp_path / "run"
    assert run_cli("train", data, "--out", run, "--cond", *base).exit_code == 0

    # --resume latest with a label the model has no class for: the file is named.
    with open(data / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["004.png", 2])
    write_png(data / "004.png", np.zeros((8, 8), np.uint8))
    res = run_cli("train", data, "--out", run, *base[:-2], "--kimg", "0.008", "--device", "cpu", "--resume", "latest")
    assert res.exit_code == 1
    line = _error_line(res)
    assert "004.png" in line and "label 2" in line and "2 classes" in line

    # Fine-tuning a conditional model on an unlabelled folder, and --cond on an unconditional one.
    res = run_cli("train", plain, "--out", tmp_path / "ft", *base, "--resume", run / "latest.pt")
    assert res.exit_code == 1 and "has no labels" in _error_line(res)
    assert run_cli("train", plain, "--out", tmp_path / "u", *base).exit_code == 0
    res = run_cli("train", data, "--out", tmp_path / "ft2", *base, "--cond", "--resume", tmp_path / "u" / "latest.pt")
    assert res.exit_code == 1 and "--cond" in _error_line(res) and "unconditional" in _error_line(res)


def test_cond_on_mad_dataset_digits_and_class_on_an_unconditional_model(tmp_path: Path, run_cli, one_thread) -> None:
    """`mad dataset digits` writes the labels --cond trains on (the `--model stylegan2` path of
    the CLI), and `--class` on a model without classes is one line naming the flag."""
    data = tmp_path / "digits"
    assert run_cli("dataset", "digits", data, "--resolution", "8", "--limit", "40").exit_code == 0
    base = ["--model", "stylegan2", "--cfg", "tiny", "--batch", "8", "--kimg", "0.008", "--device", "cpu", "--json"]
    res = run_cli("train", data, "--out", tmp_path / "cond", "--cond", *base)
    assert res.exit_code == 0, res.stderr
    assert res.json_rows()[-1]["num_classes"] == 10
    assert load_snapshot(tmp_path / "cond" / "latest.pt")["G_ema"]["mapping.embed.weight"].shape[1] == 10
    sampled = run_cli("sample", tmp_path / "cond" / "latest.pt", tmp_path / "s", "--n", "3", "--class", "7", "--device", "cpu")
    assert sampled.exit_code == 0, sampled.stderr
    assert [read_tags(p)["label"] for p in sorted((tmp_path / "s").glob("*.png"))] == ["7"] * 3

    res = run_cli("train", data, "--out", tmp_path / "plain", *base)
    assert res.exit_code == 0, res.stderr
    res = run_cli("sample", tmp_path / "plain" / "latest.pt", tmp_path / "s2", "--n", "2", "--class", "1", "--device", "cpu")
    assert res.exit_code == 1
    line = _error_line(res)  # one line, no traceback
    assert "--class 1" in line and "unconditional" in line
    assert not list(tmp_path.glob("s2/*.png"))
    res = run_cli("sample", tmp_path / "cond" / "latest.pt", tmp_path / "s3", "--n", "2", "--class", "10", "--device", "cpu")
    assert res.exit_code == 1 and "--class 10" in _error_line(res) and "classes 0..9" in _error_line(res)
