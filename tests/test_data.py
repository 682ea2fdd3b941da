"""The shared training-data loader and the label contract: sizes, the one channel rule,
labels from labels.csv, dataset.json or tags, and partly labelled folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mad_cli.datasets import write_digits
from mad_cli.errors import MadError
from mad_cli.imagedir import write_png
from mad_cli.models.data import ImageData, check_labels_fit, scan_folder
from mad_cli.models.labels import check_class, seed_label


def _img(path: Path, size: int = 8, rgb: bool = False, value: int = 0, tags: dict | None = None) -> None:
    shape = (size, size, 3) if rgb else (size, size)
    write_png(path, np.full(shape, value, np.uint8), tags)


def test_one_colour_image_makes_the_folder_rgb_and_says_so(tmp_path: Path, capsys) -> None:
    _img(tmp_path / "a.png")  # the first image is grey
    _img(tmp_path / "b.png", rgb=True, value=200)
    info = scan_folder(tmp_path)
    assert info.channels == 3 and info.grey_in_rgb == 1
    assert "1 grey and 1 colour images: training on RGB" in capsys.readouterr().err
    x = ImageData(info).get(np.array([0, 1]))
    assert x.shape == (2, 3, 8, 8) and int(x[1, 0, 0, 0]) == 200


def test_all_grey_is_grey(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / f"{i}.png")
    assert scan_folder(tmp_path).channels == 1


def test_sizes_are_checked_from_headers(tmp_path: Path) -> None:
    _img(tmp_path / "a.png", 8)
    _img(tmp_path / "b.png", 16)
    with pytest.raises(MadError, match="b.png: image is 16×16 but a.png is 8×8"):
        scan_folder(tmp_path)
    (tmp_path / "b.png").unlink()
    write_png(tmp_path / "c.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(MadError, match="c.png: image is 12×8"):
        scan_folder(tmp_path)
    odd = tmp_path / "odd"
    write_png(odd / "x.png", np.zeros((12, 12), np.uint8))
    with pytest.raises(MadError, match="power-of-two"):
        scan_folder(odd)
    assert scan_folder(odd, square_pow2=False).width == 12


def test_labels_from_each_source(tmp_path: Path) -> None:
    digits = tmp_path / "digits"
    write_digits(digits, resolution=8, limit=20)
    info = scan_folder(digits)
    assert info.label_source == "labels.csv" and info.num_classes == 10 and len(info.labels) == 20
    assert scan_folder(digits, labels=False).labels is None

    nv = tmp_path / "nvidia"
    for i in range(3):
        _img(nv / "00000" / f"img{i}.png")
    (nv / "dataset.json").write_text(json.dumps({"labels": [[f"00000/img{i}.png", i * 2] for i in range(3)]}))
    info = scan_folder(nv)
    assert info.label_source == "dataset.json" and info.labels.tolist() == [0, 2, 4] and info.num_classes == 5

    tagged = tmp_path / "tagged"
    for i in range(3):
        _img(tagged / f"{i}.png", tags={"label": 3 - i})
    info = scan_folder(tagged)
    assert info.label_source == "mad:label tags" and info.labels.tolist() == [3, 2, 1]

    ours = tmp_path / "ours"  # a dataset.json without labels (mad's own facts) is not a label file
    _img(ours / "a.png")
    (ours / "dataset.json").write_text(json.dumps({"dataset": "x"}))
    assert scan_folder(ours).labels is None


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("file,label\na.png,1\n", "b.png: has no label in"),
        ("file,class\na.png,1\nb.png,2\n", "expected the columns file,label"),
        ("file,label\na.png,1000000000000\nb.png,1\n", "label 1000000000000 is larger than the largest class index"),
        ("file,label\na.png,cat\nb.png,1\n", "label 'cat' is not an integer class index"),
        ("file,label\na.png,-1\nb.png,1\n", "label -1 is negative"),
    ],
)
def test_bad_label_files(tmp_path: Path, csv_text: str, message: str) -> None:
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(MadError, match=message):
        scan_folder(tmp_path)
    assert scan_folder(tmp_path, labels=False).labels is None  # models without labels ignore them


def test_bad_nvidia_json(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "dataset.json").write_text('{"labels": [["a.png", [0.1, 0.9]]]}')
    with pytest.raises(MadError, match="only integer class labels"):
        scan_folder(tmp_path)
    (tmp_path / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MadError, match="dataset.json: cannot read"):
        scan_folder(tmp_path)


def test_labels_must_fit_the_model(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / f"{i}.png", tags={"label": i * 5})
    info = scan_folder(tmp_path)
    check_labels_fit(info, 11, "the model")
    with pytest.raises(MadError, match="label 10 is outside the 10 classes of the model"):
        check_labels_fit(info, 10, "the model")
    with pytest.raises(MadError, match="is labelled .* but the model is unconditional"):
        check_labels_fit(info, 0, "the model")


def test_seed_labels_are_balanced_and_class_is_checked() -> None:
    assert [seed_label(s, 3, None) for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert seed_label(5, 3, 1) == 1
    check_class(None, 0, "m")
    with pytest.raises(MadError, match="--class 2: m is an unconditional model"):
        check_class(2, 0, "m")
    with pytest.raises(MadError, match="--class 3: m has classes 0..2"):
        check_class(3, 3, "m")


def test_fingerprint_changes_with_content_names_or_sizes(tmp_path: Path) -> None:
    for i in range(3):
        _img(tmp_path / f"{i}.png", value=i)
    a = scan_folder(tmp_path).fingerprint()
    write_png(tmp_path / "3.png", np.zeros((8, 8), np.uint8))
    assert scan_folder(tmp_path).fingerprint() != a


def test_old_digit_column_and_mix_folders(tmp_path: Path) -> None:
    old = tmp_path / "old"  # a folder from mad 0.1's `mad dataset digits`: file,digit
    _img(old / "a.png")
    _img(old / "b.png")
    (old / "labels.csv").write_text("file,digit\na.png,3\nb.png,4\n")
    assert scan_folder(old).labels.tolist() == [3, 4]
    mixed = tmp_path / "mixed"  # a mix of labelled and unlabelled images: mix wrote no labels.csv
    _img(mixed / "a.png", tags={"label": 1})
    _img(mixed / "b.png")
    (mixed / "mix.json").write_text("{}")
    assert scan_folder(mixed).labels is None
