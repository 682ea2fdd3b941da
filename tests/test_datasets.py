"""The bundled digits: split, upscaling, labels, provenance, determinism, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mad_cli import datasets
from mad_cli.datasets import digit_to_uint8, load_digits_arrays, split_indices, write_digits
from mad_cli.errors import MadError
from mad_cli.imagedir import list_images, read_image, read_tags, sha256_file
from mad_cli.outputs import LEDGER_NAME, STAGING_NAME


def _labels(out: Path) -> dict[str, int]:
    with open(out / "labels.csv", newline="") as fh:
        return {row["file"]: int(row["label"]) for row in csv.DictReader(fh)}


def test_split_is_stratified_disjoint_and_complete() -> None:
    _, labels = load_digits_arrays()
    assert len(labels) == 1797
    train, test, every = (split_indices(labels, s, seed=0) for s in ("train", "test", "all"))
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(range(1797)) == set(every)
    for digit in range(10):
        n = int((labels == digit).sum())
        assert int((labels[test] == digit).sum()) == round(0.2 * n)


def test_split_depends_on_seed_only() -> None:
    _, labels = load_digits_arrays()
    assert np.array_equal(split_indices(labels, "test", 0), split_indices(labels, "test", 0))
    assert set(split_indices(labels, "test", 0)) != set(split_indices(labels, "test", 1))


def test_order_deals_digits_round_robin() -> None:
    _, labels = load_digits_arrays()
    first = split_indices(labels, "train", 3)[:20]
    assert np.bincount(labels[first], minlength=10).tolist() == [2] * 10


def test_upscaling_looks_like_the_digit() -> None:
    images, _ = load_digits_arrays()
    big = digit_to_uint8(images[0], 32, 1)
    assert big.shape == (32, 32) and big.dtype == np.uint8
    assert big.max() >= 200 and big.min() <= 10  # full range: 16 maps to 255
    back = np.asarray(Image.fromarray(big).resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    assert np.corrcoef(back.ravel(), images[0].ravel())[0, 1] > 0.95
    rgb = digit_to_uint8(images[0], 16, 3)
    assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    assert digit_to_uint8(images[0], 8, 1).tolist() == np.rint(images[0] * 255 / 16).astype(int).tolist()


def test_write_digits_files_labels_and_tags(tmp_path: Path) -> None:
    out = tmp_path / "train"
    summary = write_digits(out, resolution=16, limit=30, split="train", seed=0)
    assert summary["count"] == 30 and summary["split"] == "train" and summary["resolution"] == 16
    paths = list_images(out)
    assert len(paths) == 30
    labels = _labels(out)
    assert sorted(labels) == [p.name for p in paths]
    _, truth = load_digits_arrays()
    train_first = split_indices(truth, "train", 0)[:30]
    assert sorted(int(p.stem) for p in paths) == sorted(train_first.tolist())
    for p in paths[:5]:
        tags = read_tags(p)
        assert tags["origin"] == "real" and tags["dataset"] == "sklearn-digits"
        assert int(tags["label"]) == labels[p.name] == truth[int(p.stem)]
        assert read_image(p).shape == (16, 16)
    info = json.loads((out / "dataset.json").read_text())
    assert info["count"] == 30 and sum(info["per_digit"].values()) == 30 and info["split"] == "train"
    assert not (out / STAGING_NAME).exists()


def test_channels_3_and_test_split_names_differ_from_train(tmp_path: Path) -> None:
    write_digits(tmp_path / "train", resolution=8, limit=50, split="train")
    write_digits(tmp_path / "test", resolution=8, limit=50, split="test", channels=3)
    train = {p.name for p in list_images(tmp_path / "train")}
    test = list_images(tmp_path / "test")
    assert not train & {p.name for p in test}
    assert read_image(test[0]).shape == (8, 8, 3)


def test_limit_is_a_prefix_and_deterministic(tmp_path: Path) -> None:
    write_digits(tmp_path / "a", resolution=8, limit=10, seed=5)
    write_digits(tmp_path / "b", resolution=8, limit=25, seed=5)
    write_digits(tmp_path / "c", resolution=8, limit=10, seed=5)
    write_digits(tmp_path / "d", resolution=8, limit=10, seed=6)
    names = {k: [p.name for p in list_images(tmp_path / k)] for k in "abcd"}
    assert set(names["a"]) < set(names["b"])
    assert names["a"] == names["c"]
    assert [sha256_file(tmp_path / "a" / n) for n in names["a"]] == [sha256_file(tmp_path / "c" / n) for n in names["c"]]
    assert names["a"] != names["d"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 12}, "--resolution 12"),
        ({"resolution": 4}, "--resolution 4"),
        ({"channels": 2}, "--channels 2"),
        ({"limit": 0}, "--limit 0"),
        ({"limit": 5000}, "--limit 5000: the train split has only 1438"),
        ({"split": "valid"}, "--split valid"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(MadError, match=message):
        write_digits(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_refuses_non_empty_and_force_replaces_earlier_result(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_digits(out, resolution=8, limit=20)
    with pytest.raises(MadError, match="^OUT .*not empty"):  # OUT is positional: no --out flag to name
        write_digits(out, resolution=8, limit=20)
    (out / "mine.txt").write_text("user file")
    write_digits(out, resolution=8, limit=5, split="test", force=True)
    assert len(list_images(out)) == 5  # the 20 earlier images are gone, not mixed in
    assert len(_labels(out)) == 5 and (out / "mine.txt").read_text() == "user file"


def test_interrupted_run_leaves_nothing_and_reruns(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    calls = {"n": 0}
    real_write = datasets.write_png

    def flaky(path, arr, tags=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        real_write(path, arr, tags, **kwargs)

    monkeypatch.setattr(datasets, "write_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_digits(out, resolution=8, limit=10)
    assert not out.exists()
    # A run killed hard leaves only the hidden staging folder: the same command just runs again.
    (out / STAGING_NAME).mkdir(parents=True)
    (out / STAGING_NAME / "0001.png").write_bytes(b"half")
    monkeypatch.setattr(datasets, "write_png", real_write)
    assert write_digits(out, resolution=8, limit=10)["count"] == 10
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in list_images(out)] + ["labels.csv", "dataset.json", LEDGER_NAME])


def test_cli_dataset_digits_json(tmp_path: Path, run_cli) -> None:
    res = run_cli("dataset", "digits", tmp_path / "d", "--resolution", "16", "--limit", "12", "--channels", "3", "--json")
    assert res.exit_code == 0, res.stderr
    (row,) = res.json_rows()
    assert row["count"] == 12 and row["resolution"] == 16 and row["channels"] == 3 and row["out"] == str(tmp_path / "d")
    assert len(list_images(tmp_path / "d")) == 12
    bad = run_cli("dataset", "digits", tmp_path / "e", "--resolution", "20")
    assert bad.exit_code == 1 and bad.stderr.strip().count("\n") == 0 and "--resolution 20" in bad.stderr
