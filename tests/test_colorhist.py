"""mad colorhist: histograms against hand-computed ones, the analytic distance cases, the CLI."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mad_cli.colorhist import (
    Accumulator,
    channels_of,
    colorhist,
    emd_circular_pct,
    emd_linear_pct,
    rgb_to_hsv,
    rgb_to_lab,
    tv_distance_pct,
)
from mad_cli.errors import MadError
from mad_cli.imagedir import write_png


def _folder(folder: Path, images: list[np.ndarray], prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, arr in enumerate(images):
        write_png(folder / f"{prefix}{i:03d}.png", np.asarray(arr, dtype=np.uint8))
    return folder


def _const(color: tuple[int, int, int], size: tuple[int, int] = (4, 4)) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (*size, 3)).copy()


# --- histograms against hand-computed values ------------------------------------------------


def test_joint_and_marginal_histograms_match_hand_computed(tmp_path: Path) -> None:
    # One 2×2 image; 16 bins of 16 levels: level 15 is bin 0, 16 is bin 1, 255 is bin 15.
    img = np.array([[[0, 0, 0], [255, 255, 255]], [[16, 32, 48], [15, 16, 17]]], dtype=np.uint8)
    folder = _folder(tmp_path / "a", [img])
    (row,) = colorhist([folder], bins=16, full=True, workers=0)

    joint = np.asarray(row["joint"]).reshape(row["joint_shape"])
    expected = np.zeros((16, 16, 16), dtype=np.int64)
    for r, g, b in [(0, 0, 0), (15, 15, 15), (1, 2, 3), (0, 1, 1)]:
        expected[r, g, b] += 1
    assert np.array_equal(joint, expected)

    assert row["hist"]["r"][0] == 0.5 and row["hist"]["r"][1] == 0.25 and row["hist"]["r"][15] == 0.25
    assert row["hist"]["g"][0] == 0.25 and row["hist"]["g"][1] == 0.25 and row["hist"]["g"][2] == 0.25
    assert row["hist"]["b"][3] == 0.25 and row["hist"]["b"][1] == 0.25
    assert all(abs(sum(h) - 1.0) < 1e-12 for h in row["hist"].values())
    assert row["hist_range"]["r"] == [0.0, 256.0]

    px = img.reshape(-1, 3).astype(np.float64)
    for k, name in enumerate("rgb"):
        assert row["mean"][name] == pytest.approx(px[:, k].mean(), abs=1e-9)
        assert row["std"][name] == pytest.approx(px[:, k].std(), abs=1e-9)
    assert row["n_images"] == 1 and row["n_pixels"] == 4 and row["sizes"] == {"2x2": 1}


def test_two_bins_split_at_level_128(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "a", [np.array([[[127, 128, 0]]], dtype=np.uint8)])
    (row,) = colorhist([folder], bins=2, full=True, workers=0)
    joint = np.asarray(row["joint"]).reshape(2, 2, 2)
    assert joint[0, 1, 0] == 1 and joint.sum() == 1


def test_hsv_and_lab_marginals_from_constant_colours(tmp_path: Path) -> None:
    # Pure green: h = 1/3, s = 1, v = 1 → bins 5 (of 16), 15, 15.
    folder = _folder(tmp_path / "g", [_const((0, 255, 0))])
    (row,) = colorhist([folder], space="hsv", bins=16, workers=0)
    assert np.argmax(row["hist"]["h"]) == 5 and np.argmax(row["hist"]["s"]) == 15 and np.argmax(row["hist"]["v"]) == 15
    assert row["mean"]["h"] == pytest.approx(1 / 3, abs=1e-3)
    assert row["mean"]["s"] == pytest.approx(1.0) and row["mean"]["v"] == pytest.approx(1.0)
    # White in Lab: L = 100 (last bin of 0..100), a = b = 0 (bin 8 of -128..127 in 16 bins).
    folder = _folder(tmp_path / "w", [_const((255, 255, 255))])
    (row,) = colorhist([folder], space="lab", bins=16, workers=0)
    assert row["hist"]["L"][15] == 1.0 and row["hist"]["a"][8] == 1.0 and row["hist"]["b"][8] == 1.0
    assert row["mean"]["L"] == pytest.approx(100.0, abs=1e-3) and row["std"]["L"] == pytest.approx(0.0, abs=1e-3)


# --- colour conversions --------------------------------------------------------------------


def test_hsv_matches_colorsys() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(2000, 3), dtype=np.uint8)
    rgb[:20] = rgb[:20, :1]  # some greys
    rgb[20:40, 1] = rgb[20:40, 0]  # ties between channels
    ours = rgb_to_hsv(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*(c / 255.0)) for c in rgb.astype(np.float64)])
    assert np.allclose(ours, ref, atol=1e-12)
    assert ours[:, 0].min() >= 0.0 and ours[:, 0].max() < 1.0


def test_lab_known_values() -> None:
    lab = rgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255], [128, 128, 128]], dtype=np.uint8))
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=1e-4)
    assert lab[1] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    # Reference values for sRGB red and blue under D65 (Lindbloom's calculator).
    assert lab[2] == pytest.approx([53.2408, 80.0925, 67.2032], abs=2e-3)
    assert lab[3] == pytest.approx([32.2970, 79.1875, -107.8602], abs=2e-3)
    assert lab[4, 1:] == pytest.approx([0.0, 0.0], abs=1e-4) and lab[4, 0] == pytest.approx(53.585, abs=1e-2)


# --- distances: the analytic cases ---------------------------------------------------------


def test_identical_folders_have_zero_distance(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8) for _ in range(6)]
    a = _folder(tmp_path / "a", images)
    b = _folder(tmp_path / "b", images[::-1], prefix="other")  # other names and order
    for space in ("rgb", "hsv", "lab"):
        rows = colorhist([a, b], space=space, workers=0)
        assert rows[1]["tv_vs_ref_pct"] == 0.0
        assert all(v == 0.0 for v in rows[1]["emd_vs_ref_pct"].values())
        assert rows[1]["tv_vs_prev_pct"] == 0.0


def test_disjoint_folders_have_full_distance(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", [_const((0, 0, 0)), _const((10, 5, 15))])
    b = _folder(tmp_path / "b", [_const((255, 255, 255)), _const((250, 240, 245))])
    rows = colorhist([a, b], workers=0)
    assert rows[1]["tv_vs_ref_pct"] == pytest.approx(100.0)
    black = _folder(tmp_path / "black", [_const((0, 0, 0))])
    white = _folder(tmp_path / "white", [_const((255, 255, 255))])
    rows = colorhist([black, white], workers=0)
    assert rows[1]["tv_vs_ref_pct"] == pytest.approx(100.0)
    assert rows[1]["emd_vs_ref_pct"] == pytest.approx({"r": 100.0, "g": 100.0, "b": 100.0})


def test_half_the_mass_moved_is_fifty_percent_tv(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", [_const((0, 0, 0)), _const((200, 0, 0))])
    b = _folder(tmp_path / "b", [_const((0, 0, 0)), _const((0, 0, 0))])
    rows = colorhist([a, b], workers=0)
    assert rows[1]["tv_vs_ref_pct"] == pytest.approx(50.0)
    # r: half of the mass moves 200 levels → 100/255 of the range.
    assert rows[1]["emd_vs_ref_pct"]["r"] == pytest.approx(100.0 / 255.0 * 100.0)


@pytest.mark.parametrize("shift", [1, 37, 55])
def test_brightness_shift_gives_emd_equal_to_the_shift(tmp_path: Path, shift: int) -> None:
    rng = np.random.default_rng(shift)
    base = [rng.integers(0, 200, size=(8, 8, 3), dtype=np.uint8) for _ in range(5)]
    a = _folder(tmp_path / "a", base)
    b = _folder(tmp_path / "b", [im + np.uint8(shift) for im in base])
    rows = colorhist([a, b], bins=8, workers=0)
    expected = shift / 255.0 * 100.0
    assert rows[1]["emd_vs_ref_pct"] == pytest.approx({"r": expected, "g": expected, "b": expected}, abs=1e-9)
    assert rows[1]["mean"]["r"] - rows[0]["mean"]["r"] == pytest.approx(shift)
    # HSV value is max(r, g, b): it shifts by exactly the same amount.
    rows = colorhist([a, b], space="hsv", workers=0)
    assert rows[1]["emd_vs_ref_pct"]["v"] == pytest.approx(expected, abs=1e-9)


def test_hue_distance_is_circular(tmp_path: Path) -> None:
    # Hue 0.95 (r=255, g=0, b=76) and hue 0.05 (r=255, g=76, b=0) are 0.1 turn apart
    # across red, not 0.9 turn.
    h_hi, h_lo = rgb_to_hsv(np.array([[255, 0, 76], [255, 76, 0]], dtype=np.uint8))[:, 0]
    assert h_hi == pytest.approx(0.95, abs=1e-3) and h_lo == pytest.approx(0.05, abs=1e-3)
    a = _folder(tmp_path / "a", [_const((255, 0, 76))])
    b = _folder(tmp_path / "b", [_const((255, 76, 0))])
    rows = colorhist([a, b], space="hsv", workers=0)
    turns = (1.0 - h_hi) + h_lo
    assert rows[1]["hue_emd_vs_ref_pct"] == pytest.approx(turns / 0.5 * 100.0, abs=0.2)
    assert rows[1]["hue_emd_vs_ref_pct"] < 25.0
    assert rows[1]["emd_vs_ref_pct"]["h"] == rows[1]["hue_emd_vs_ref_pct"]
    # The circular mean of hue stays red, it does not average to cyan.
    both = _folder(tmp_path / "both", [_const((255, 0, 76)), _const((255, 76, 0))])
    (row,) = colorhist([both], space="hsv", workers=0)
    assert min(row["mean"]["h"], 1.0 - row["mean"]["h"]) < 0.01


def test_emd_formulas_on_histograms() -> None:
    n = 1024
    p, q = np.zeros(n), np.zeros(n)
    p[0], q[n // 2] = 1, 1
    assert emd_circular_pct(p, q) == pytest.approx(100.0)  # opposite side: the maximum
    q = np.zeros(n)
    q[n - 1] = 1
    assert emd_circular_pct(p, q) == pytest.approx(1.0 / n / 0.5 * 100.0)  # one arc, across 0
    assert emd_linear_pct(p, q) == pytest.approx(100.0)  # on a line that is the whole range
    assert tv_distance_pct(p, q) == pytest.approx(100.0) and tv_distance_pct(p, p) == 0.0
    assert np.isnan(tv_distance_pct(p, np.zeros(n)))


# --- noise floor, sizes, grey, reference choice --------------------------------------------


def test_noise_floor_of_a_homogeneous_folder(tmp_path: Path) -> None:
    same = _folder(tmp_path / "same", [_const((30, 90, 200))] * 6)
    (row,) = colorhist([same], workers=0)
    assert row["noise_tv_pct"] == 0.0 and row["noise_emd_mean_pct"] == 0.0
    rng = np.random.default_rng(3)
    noisy = _folder(tmp_path / "noisy", [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(40)])
    other = _folder(tmp_path / "other", [_const((255, 255, 255), (32, 32))] * 4)
    rows = colorhist([noisy, other], bins=4, workers=0)
    assert 0.0 < rows[0]["noise_emd_mean_pct"] < 1.0
    assert 0.0 < rows[0]["noise_tv_pct"] < 5.0  # 64 cells, 20,480 pixels per half: ≈ 3.2 % expected
    # Only the reference row carries the floor; the drifted folder is far above it.
    assert rows[1]["noise_tv_pct"] is None or np.isnan(rows[1]["noise_tv_pct"])
    assert rows[1]["tv_vs_ref_pct"] > 10 * rows[0]["noise_tv_pct"]


def test_mixed_sizes_are_reported(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "m", [_const((1, 2, 3), (16, 16)), _const((1, 2, 3), (16, 16)), _const((1, 2, 3), (8, 12))])
    (row,) = colorhist([folder], workers=0)
    assert row["sizes"] == {"12x8": 1, "16x16": 2} and row["mixed_sizes"] is True
    assert row["n_pixels"] == 2 * 256 + 96


def test_grey_images_count_as_rgb_with_equal_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    grey = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(3)]
    g = _folder(tmp_path / "grey", grey)
    c = _folder(tmp_path / "rgb", [np.repeat(im[:, :, None], 3, axis=2) for im in grey])
    rows = colorhist([g, c], workers=0)
    assert rows[1]["tv_vs_ref_pct"] == 0.0
    assert rows[0]["mean"]["r"] == rows[0]["mean"]["g"] == rows[0]["mean"]["b"]


def test_ref_and_prev(tmp_path: Path) -> None:
    a = _folder(tmp_path / "a", [_const((0, 0, 0))])
    b = _folder(tmp_path / "b", [_const((100, 0, 0))])
    c = _folder(tmp_path / "c", [_const((200, 0, 0))])
    rows = colorhist([a, b, c], workers=0)
    assert [r["is_ref"] for r in rows] == [True, False, False]
    assert rows[2]["emd_vs_ref_pct"]["r"] == pytest.approx(200 / 255 * 100)
    assert rows[2]["emd_vs_prev_pct"]["r"] == pytest.approx(100 / 255 * 100)
    assert rows[0]["tv_vs_prev_pct"] != rows[0]["tv_vs_prev_pct"]  # NaN: no previous folder
    # --ref among the folders: chosen; not among them: added as its own first row.
    rows = colorhist([a, b, c], ref=b, workers=0)
    assert [r["is_ref"] for r in rows] == [False, True, False]
    assert rows[0]["emd_vs_ref_pct"]["r"] == pytest.approx(100 / 255 * 100)
    rows = colorhist([b, c], ref=a, workers=0)
    assert [Path(r["folder"]).name for r in rows] == ["a", "b", "c"]
    assert rows[0]["is_ref"] and rows[2]["emd_vs_ref_pct"]["r"] == pytest.approx(200 / 255 * 100)
    assert rows[1]["tv_vs_prev_pct"] != rows[1]["tv_vs_prev_pct"]


def test_worker_processes_give_the_same_result(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "a", 70, size=8, seed=5)
    make_images(tmp_path / "b", 70, size=8, seed=6)
    for space in ("rgb", "hsv"):
        one = colorhist([tmp_path / "a", tmp_path / "b"], space=space, bins=8, full=True, workers=0)
        two = colorhist([tmp_path / "a", tmp_path / "b"], space=space, bins=8, full=True, workers=2)
        assert [r["joint"] for r in one] == [r["joint"] for r in two]  # counts: exactly equal
        flat_one, flat_two = _flatten(one), _flatten(two)
        assert [k for k, _ in flat_one] == [k for k, _ in flat_two]
        for (key, a), (_, b) in zip(flat_one, flat_two):
            if isinstance(a, float):  # float sums may be added in another order
                assert a == pytest.approx(b, rel=1e-12, abs=1e-12, nan_ok=True), key
            else:
                assert a == b, key


def _flatten(value: object, key: str = "") -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [kv for k in sorted(value) for kv in _flatten(value[k], f"{key}.{k}")]
    if isinstance(value, list):
        return [kv for i, v in enumerate(value) for kv in _flatten(v, f"{key}[{i}]")]
    return [(key, value)]


def test_accumulator_merge_equals_one_pass() -> None:
    rng = np.random.default_rng(7)
    px = rng.integers(0, 256, size=(1000, 3), dtype=np.uint8)
    whole, a, b = Accumulator("lab", 8), Accumulator("lab", 8), Accumulator("lab", 8)
    whole.add_pixels(px)
    a.add_pixels(px[:400])
    b.add_pixels(px[400:])
    a.merge(b)
    assert np.array_equal(whole.joint, a.joint) and all(np.array_equal(x, y) for x, y in zip(whole.fine, a.fine))
    assert np.allclose(whole.mean_std(), a.mean_std())
    assert [c.name for c in channels_of("lab")] == ["L", "a", "b"]


# --- CLI -----------------------------------------------------------------------------------


def test_cli_json_rows(tmp_path: Path, run_cli, make_images) -> None:
    make_images(tmp_path / "a", 4, size=8, seed=1)
    make_images(tmp_path / "b", 4, size=8, seed=2)
    result = run_cli("colorhist", tmp_path / "a", tmp_path / "b", "--space", "hsv", "--bins", "8", "--json", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    rows = result.json_rows()
    assert len(rows) == 2
    assert rows[0]["is_ref"] is True and rows[0]["tv_vs_ref_pct"] == 0.0 and rows[0]["tv_vs_prev_pct"] is None
    assert rows[0]["noise_tv_pct"] is not None and rows[1]["noise_tv_pct"] is None
    assert set(rows[1]["emd_vs_ref_pct"]) == {"h", "s", "v"} and "hue_emd_vs_ref_pct" in rows[1]
    assert len(rows[1]["hist"]["h"]) == 8 and rows[1]["n_images"] == 4 and rows[1]["sizes"] == {"8x8": 4}
    assert "joint" not in rows[0]
    full = run_cli("colorhist", tmp_path / "a", "--bins", "4", "--json", "--full", "--workers", "0").json_rows()
    assert len(full[0]["joint"]) == 64 and sum(full[0]["joint"]) == 4 * 64


def test_cli_table_and_plot(tmp_path: Path, run_cli, make_images, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the table at the terminal width
    make_images(tmp_path / "a", 3, size=8, seed=1)
    make_images(tmp_path / "b", 3, size=8, seed=2, channels=1)
    plot = tmp_path / "out" / "colour.png"
    result = run_cli("colorhist", tmp_path / "a", tmp_path / "b", "--plot", plot, "--workers", "0")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("TV % ref" in line for line in lines)
    assert any(str(tmp_path / "a") + " (ref)" in line for line in lines)
    assert any(str(tmp_path / "b") in line and "3× 8x8" in line for line in lines)
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 400 and img.size[1] > 200
    assert [p.name for p in plot.parent.iterdir()] == ["colour.png"]  # no temp file left


def test_cli_help_ends_with_example(run_cli) -> None:
    result = run_cli("colorhist", "--help")
    assert result.exit_code == 0
    assert result.stdout.rstrip().splitlines()[-1].strip().startswith("mad colorhist ")


# --- bad input -----------------------------------------------------------------------------


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mad: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_and_empty_folders(tmp_path: Path, run_cli, make_images) -> None:
    make_images(tmp_path / "a", 2, size=8)
    _one_error_line(run_cli("colorhist", tmp_path / "a", tmp_path / "nope"), "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    _one_error_line(run_cli("colorhist", tmp_path / "a", tmp_path / "empty"), "empty", "no images")
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--ref", tmp_path / "nope"), "nope")


@pytest.mark.parametrize("kind", ["not_an_image", "truncated"])
def test_bad_image_fails_or_is_skipped(tmp_path: Path, run_cli, make_images, kind: str) -> None:
    paths = make_images(tmp_path / "a", 3, size=8)
    bad = tmp_path / "a" / "zz_bad.png"
    if kind == "not_an_image":
        bad.write_text("this is not a PNG")
    else:
        bad.write_bytes(paths[0].read_bytes()[:60])
    make_images(tmp_path / "good", 2, size=8)
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    failed = run_cli("colorhist", tmp_path / "good", tmp_path / "a", "--json", "--workers", "0")
    _one_error_line(failed, "zz_bad.png")
    assert failed.stdout == ""  # no partial result for the folders read before the bad file

    result = run_cli("colorhist", tmp_path / "a", "--json", "--skip-bad", "--workers", "0")
    assert result.exit_code == 0, result.stderr
    (row,) = result.json_rows()
    assert row["n_images"] == 3 and row["n_skipped"] == 1
    assert "zz_bad.png" in result.stderr and "skipped 1" in result.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before  # source untouched


def test_bad_image_in_worker_process_fails_with_its_name(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "a", 70, size=4)
    (tmp_path / "a" / "img0033.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(MadError, match="img0033.png"):
        colorhist([tmp_path / "a"], workers=2)
    (row,) = colorhist([tmp_path / "a"], workers=2, skip_bad=True)
    assert row["n_skipped"] == 1 and row["n_images"] == 69


def test_all_images_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_text("nope")
    with pytest.raises(MadError, match="none of its 1 images"):
        colorhist([tmp_path / "a"], skip_bad=True)


def test_bad_flags(tmp_path: Path, run_cli, make_images) -> None:
    make_images(tmp_path / "a", 2, size=8)
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--space", "cmyk"), "--space cmyk")
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--bins", "1"), "--bins 1")
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--bins", "65"), "--bins 65")
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--plot", tmp_path / "x.jpg"), "--plot")
    assert not (tmp_path / "x.jpg").exists()
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--workers", "-1"), "--workers -1")
    (tmp_path / "file").write_text("a file, not a folder")
    _one_error_line(run_cli("colorhist", tmp_path / "a", "--plot", tmp_path / "file" / "p.png"), "--plot", "a file is in the way")


def test_plot_is_never_written_into_a_measured_folder(tmp_path: Path, run_cli, make_images) -> None:
    """§1 item 8: `--plot SRC/plot.png` became an image of SRC for the next `mix`."""
    make_images(tmp_path / "a", 2, size=8)
    make_images(tmp_path / "b", 2, size=8, seed=1)
    make_images(tmp_path / "ref", 2, size=8, seed=2)
    for folder in ("a", "b", "ref"):
        r = run_cli("colorhist", tmp_path / "a", tmp_path / "b", "--ref", tmp_path / "ref", "--plot", tmp_path / folder / "sub" / "plot.png")
        _one_error_line(r, f"--plot {tmp_path / folder / 'sub' / 'plot.png'}: is inside measured folder")
        assert not (tmp_path / folder / "sub").exists() and len(list((tmp_path / folder).iterdir())) == 2
    r = run_cli("colorhist", tmp_path / "a", tmp_path / "b", "--plot", tmp_path / "figs" / "plot.png")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "figs" / "plot.png").is_file() and [p.name for p in (tmp_path / "figs").iterdir()] == ["plot.png"]
