"""Metrics: analytic cases, agreement with torch-fidelity's own functions, and `mad metrics` end to end."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mad_cli import metrics as M
from mad_cli.features import (
    DIGITS_WEIGHTS,
    INCEPTION_FILE,
    write_random_inception_weights,
)
from mad_cli.imagedir import write_png

# ---------------------------------------------------------------------------------------
# Analytic cases on features


def test_identical_sets_give_fid_zero_and_all_neighbourhood_metrics_one() -> None:
    x = np.random.default_rng(0).normal(size=(200, 16))
    assert M.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    out = M.neighbourhood_metrics(x, x, k_pr=3, k_dc=5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_far_apart_sets_give_zero_neighbourhood_metrics_and_large_fid() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(size=(150, 8))
    gen = rng.normal(size=(150, 8)) + 100.0
    out = M.neighbourhood_metrics(gen, real, k_pr=3, k_dc=5)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    assert M.fid_from_features(gen, real) == pytest.approx(8 * 100.0**2, rel=0.05)


@pytest.mark.parametrize("a,b,shift", [(1.0, 4.0, 0.0), (0.25, 0.25, 3.0), (2.0, 0.5, 1.5)])
def test_fid_of_two_isotropic_gaussians_matches_closed_form(a: float, b: float, shift: float) -> None:
    d = 64
    mu1, mu2 = np.zeros(d), np.full(d, shift / math.sqrt(d))
    closed = float(np.sum((mu1 - mu2) ** 2)) + d * (math.sqrt(a) - math.sqrt(b)) ** 2
    exact = M.fid_from_statistics(mu1, a * np.eye(d), mu2, b * np.eye(d))
    assert exact == pytest.approx(closed, rel=1e-10, abs=1e-10)
    # ... and from samples, with n large enough that the estimate is close.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20000, d)) * math.sqrt(a) + mu1
    y = rng.normal(size=(20000, d)) * math.sqrt(b) + mu2
    assert M.fid_from_features(x, y) == pytest.approx(closed, abs=0.05 * closed + 0.2)


def test_fid_of_non_commuting_covariances_matches_scipy_sqrtm() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 10)), rng.normal(size=(10, 10))
    s1, s2 = a @ a.T + np.eye(10), b @ b.T + 0.1 * np.eye(10)
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(scipy_linalg.sqrtm(s1 @ s2)).real)
    assert M.fid_from_statistics(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)


def test_fid_is_never_negative_with_rank_deficient_covariances() -> None:
    x = np.random.default_rng(4).normal(size=(5, 50))  # 5 samples in 50-d: singular covariance
    assert M.fid_from_features(x, x.copy()) >= 0.0
    assert M.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_coverage_of_two_samples_of_one_distribution_matches_expectation() -> None:
    n_real, n_gen, k = 60, 40, 5
    expected = 1.0 - np.prod([(n_real - i) / (n_gen + n_real - i) for i in range(1, k + 1)])
    rng = np.random.default_rng(5)
    values = [M.neighbourhood_metrics(rng.normal(size=(n_gen, 4)), rng.normal(size=(n_real, 4)), None, k)["coverage"] for _ in range(300)]
    # 300 trials of 60 points: the standard error of the mean is well below 0.01.
    assert np.mean(values) == pytest.approx(expected, abs=0.015)


def test_density_of_two_samples_of_one_distribution_is_near_one() -> None:
    rng = np.random.default_rng(6)
    values = [M.neighbourhood_metrics(rng.normal(size=(100, 4)), rng.normal(size=(100, 4)), None, 5)["density"] for _ in range(50)]
    assert np.mean(values) == pytest.approx(1.0, abs=0.05)


def test_collapsed_generator_has_recall_zero_and_precision_high() -> None:
    rng = np.random.default_rng(7)
    real = rng.normal(size=(300, 12))
    gen = np.repeat(real[:10], 30, axis=0)  # 10 distinct images, repeated
    out = M.neighbourhood_metrics(gen, real, k_pr=3, k_dc=5)
    assert out["recall"] == pytest.approx(0.0, abs=0.02)
    assert out["precision"] == 1.0
    assert out["coverage"] < 0.3  # a fresh sample of 300 would cover ~97 %


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two() -> None:
    rng = np.random.default_rng(8)
    same_mean, same_std = M.kid_from_features(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), 100, 50, seed=1)
    diff_mean, _ = M.kid_from_features(rng.normal(size=(200, 8)) + 1.0, rng.normal(size=(200, 8)), 100, 50, seed=1)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert diff_mean > 10 * abs(same_mean)


def test_kid_subset_size_rules() -> None:
    assert M.kid_subset_size(5000, 3000) == 1000
    assert M.kid_subset_size(40, 3000) == 40
    with pytest.raises(ValueError):
        M.kid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------
# Against torch-fidelity's own functions on the same features


@pytest.fixture(scope="module")
def feature_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    gen = rng.normal(size=(180, 32)).astype(np.float32) * 1.3 + 0.2
    real = rng.normal(size=(150, 32)).astype(np.float32)
    return gen, real


def test_fid_agrees_with_torch_fidelity(feature_pair) -> None:
    from torch_fidelity.metric_fid import (
        fid_features_to_statistics,
        fid_statistics_to_metric,
    )

    gen, real = feature_pair
    theirs = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(gen)), fid_features_to_statistics(torch.from_numpy(real)), verbose=False)
    assert M.fid_from_features(gen, real) == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)


def test_kid_agrees_with_torch_fidelity(feature_pair) -> None:
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen, real = feature_pair
    size = M.kid_subset_size(len(real), len(gen))
    theirs = kid_features_to_metric(torch.from_numpy(gen), torch.from_numpy(real), kid_subset_size=size, kid_subsets=20, rng_seed=123, verbose=False)
    mean, std = M.kid_from_features(gen, real, size, 20, seed=123)
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)


@pytest.mark.parametrize("k", [3, 5])
def test_precision_recall_agree_with_torch_fidelity(feature_pair, k: int) -> None:
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen, real = feature_pair
    theirs = prc_features_to_metric(torch.from_numpy(gen), torch.from_numpy(real), prc_neighborhood=k, verbose=False)
    ours = M.neighbourhood_metrics(gen, real, k_pr=k, k_dc=None)
    assert ours["precision"] == pytest.approx(theirs["precision"], abs=1e-6)  # theirs is a float32 mean
    assert ours["recall"] == pytest.approx(theirs["recall"], abs=1e-6)


def test_parse_metrics_rejects_unknown_names() -> None:
    assert M.parse_metrics("fid, KID,pr") == ["fid", "kid", "pr"]
    from mad_cli.errors import MadError

    with pytest.raises(MadError, match="--metrics"):
        M.parse_metrics("fid,is")


# ---------------------------------------------------------------------------------------
# `mad metrics` end to end


def _digit_folder(folder: Path, n: int, *, seed: int = 0, noise: float = 0.0, size: int = 32, channels: int = 1) -> Path:
    """Real-looking digits (from scikit-learn) optionally with noise: the digits net sees them as digits."""
    from mad_cli.datasets import digit_to_uint8, load_digits_arrays

    images, _labels = load_digits_arrays()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for j, i in enumerate(rng.choice(len(images), n, replace=False)):
        arr = digit_to_uint8(images[i], size, channels).astype(np.float64)
        if noise:
            arr = arr + rng.normal(0, noise, arr.shape)
        write_png(folder / f"d{j:04d}.png", np.clip(arr, 0, 255).astype(np.uint8))
    return folder


@pytest.fixture(scope="module")
def digit_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("digits")
    return {
        "real": _digit_folder(root / "real", 60, seed=0),
        "close": _digit_folder(root / "close", 50, seed=1),
        "noisy": _digit_folder(root / "noisy", 50, seed=2, noise=400.0, size=64, channels=3),
    }


def test_cli_digits_json_one_row_per_gen_with_reproducibility_fields(run_cli, digit_dirs) -> None:
    r = run_cli("metrics", digit_dirs["real"], digit_dirs["close"], digit_dirs["noisy"], "--features", "digits", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    rows = r.json_rows()
    assert [Path(row["gen"]).name for row in rows] == ["close", "noisy"]
    close, noisy = rows
    for row in rows:
        assert row["n_real"] == 60 and row["extractor"] == "digits" and len(row["weights_sha256"]) == 64
        assert row["k_pr"] == 3 and row["k_dc"] == 5 and row["kid_subset_size"] == 50 and row["seed"] == 2020
        assert row["torch_fidelity_version"] == "0.4.0" and "fid" not in row
        assert row["fd_digits_real_split_half"] == close["fd_digits_real_split_half"]
    assert close["fd_digits"] < noisy["fd_digits"]
    assert close["kid_mean"] < noisy["kid_mean"]
    assert close["precision"] > noisy["precision"] and close["coverage"] > noisy["coverage"]


def test_cli_digits_table_metric_subset_n_k_seed_batch_and_no_cache(run_cli, digit_dirs, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    r = run_cli("metrics", digit_dirs["real"], digit_dirs["close"], "--metrics", "pr,dc", "--n", "20", "--k-pr", "2", "--k-dc", "4", "--seed", "7", "--batch", "5", "--no-cache", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "precision" in r.stdout and "coverage" in r.stdout and "close" in r.stdout and "kid_mean" not in r.stdout
    rj = run_cli("metrics", digit_dirs["real"], digit_dirs["close"], "--metrics", "pr,dc", "--n", "20", "--k-pr", "2", "--k-dc", "4", "--seed", "7", "--cache-dir", tmp_path / "c", "--json")
    (row,) = rj.json_rows()
    assert row["n_real"] == row["n_gen"] == 20 and row["k_pr"] == 2 and row["k_dc"] == 4 and row["seed"] == 7
    assert "fd_digits" not in row and "kid_mean" not in row
    assert list((tmp_path / "c").rglob("*.npy")), "features were not cached in --cache-dir"


def test_cli_collapsed_generator_recall_zero(run_cli, digit_dirs, tmp_path) -> None:
    gen = tmp_path / "collapsed"
    gen.mkdir()
    sources = sorted(digit_dirs["real"].glob("*.png"))[:5]
    for j in range(40):
        (gen / f"c{j:03d}.png").write_bytes(sources[j % 5].read_bytes())
    r = run_cli("metrics", digit_dirs["real"], gen, "--metrics", "pr,dc", "--json")
    (row,) = r.json_rows()
    assert row["recall"] == 0.0 and row["precision"] == 1.0


@pytest.fixture(scope="session")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weights Inception with recalibrated batch norm, built once per session (shared with test_features)."""
    path = tmp_path_factory.getbasetemp() / "random-inception" / INCEPTION_FILE
    return path if path.is_file() else write_random_inception_weights(path, seed=0, calibration_images=4, size=32)


@pytest.mark.slow
def test_cli_random_inception_end_to_end_with_cache(run_cli, random_inception, tmp_path, make_images, monkeypatch) -> None:
    real = tmp_path / "real"
    make_images(real, 6, size=16, seed=1)
    gen_same = tmp_path / "same"
    gen_same.mkdir()
    for p in sorted(real.glob("*.png")):
        shutil.copy2(p, gen_same / p.name)  # same names, sizes, mtimes: served from the cache
    gen_other = tmp_path / "other"
    make_images(gen_other, 4, size=16, channels=1, seed=2)
    args = ("metrics", real, gen_same, gen_other, "--features", "inception", "--features-weights", random_inception, "--json", "--device", "cpu", "--batch", "6")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    same, other = r.json_rows()
    assert same["extractor"] == "inception" and same["feature_dim"] == 2048 and "fid" in same and "fd_inception" not in same
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == same["recall"] == same["density"] == same["coverage"] == 1.0
    assert other["fid"] > 1e-3 and same["fid_real_split_half"] > 1e-3  # recalibrated: features do not vanish
    assert other["precision"] < 1.0
    again = run_cli(*args)
    assert again.json_rows() == [same, other]
    monkeypatch.setenv("COLUMNS", "250")
    table = run_cli(*[a for a in args if a != "--json"], "--metrics", "fid,kid")  # cached features, table output
    assert table.exit_code == 0 and "fid_real_split_half" in table.stdout and "kid_mean" in table.stdout and "precision" not in table.stdout


def test_cli_missing_inception_weights_names_file_folder_and_flag(run_cli, tmp_path, make_images, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    make_images(tmp_path / "a", 6)
    make_images(tmp_path / "b", 6, seed=1)
    r = run_cli("metrics", tmp_path / "a", tmp_path / "b", "--features", "inception")
    assert r.exit_code == 1
    assert INCEPTION_FILE in r.stderr and str(tmp_path / "torch-home" / "hub" / "checkpoints") in r.stderr and "--features-weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("features", ["vgg16", "clip-vit-b-32", "dinov2-vit-s-14"])
def test_cli_missing_other_torch_fidelity_weights(run_cli, tmp_path, make_images, monkeypatch, features) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    make_images(tmp_path / "a", 6)
    r = run_cli("metrics", tmp_path / "a", tmp_path / "a", "--features", features)
    assert r.exit_code == 1 and "--features-weights" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_bad_inputs_exit_1_with_one_line(run_cli, tmp_path, make_images, digit_dirs) -> None:
    (tmp_path / "empty").mkdir()
    make_images(tmp_path / "one", 1)
    make_images(tmp_path / "three", 3)
    make_images(tmp_path / "bad", 7)
    (tmp_path / "bad" / "img0003.png").write_bytes(b"not a png")
    real = digit_dirs["real"]
    cases = [
        (("metrics", real, tmp_path / "empty"), "no images"),
        (("metrics", real, tmp_path / "missing"), "does not exist"),
        (("metrics", real, tmp_path / "one", "--metrics", "fid"), "FID is undefined"),
        (("metrics", tmp_path / "one", real, "--metrics", "kid"), "KID"),
        (("metrics", real, tmp_path / "three", "--metrics", "pr"), "at least 4"),
        (("metrics", tmp_path / "three", real, "--metrics", "dc"), "at least 6 real"),
        (("metrics", real, tmp_path / "three", "--n", "10"), "--n 10"),
        (("metrics", real, tmp_path / "bad"), "img0003.png"),
        (("metrics", real, real, "--metrics", "fid,foo"), "--metrics"),
        (("metrics", real, real, "--features", "resnet"), "unknown extractor"),
        (("metrics", real, real, "--features-weights", tmp_path / "nope.pt"), "nope.pt"),
        (("metrics", real, real, "--k-pr", "0"), "--k-pr"),
        (("metrics", real, real, "--features", "inception", "--features-weights", DIGITS_WEIGHTS), "weights do not fit"),
    ]
    for args, needle in cases:
        r = run_cli(*args)
        assert r.exit_code == 1, (args, r.stdout, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stdout.strip() == ""


def test_counts_are_checked_before_any_feature_is_extracted(tmp_path, make_images, monkeypatch, digit_dirs) -> None:
    import mad_cli.features as F

    calls = []
    monkeypatch.setattr(F, "paths_features", lambda *a, **k: calls.append(1))
    make_images(tmp_path / "two", 2)
    from mad_cli.errors import MadError

    with pytest.raises(MadError, match="two: 2 image\\(s\\); precision/recall with --k-pr 3 need at least 4"):
        list(M.compare(digit_dirs["real"], [digit_dirs["close"], tmp_path / "two"], metrics="fid,pr"))
    with pytest.raises(MadError, match="at least 6 real"):
        list(M.compare(tmp_path / "two", [digit_dirs["close"]], metrics="dc"))
    with pytest.raises(MadError, match="--n 61"):
        list(M.compare(digit_dirs["real"], [digit_dirs["close"]], n=61))
    assert calls == []


def test_cli_help_ends_with_example(run_cli) -> None:
    r = run_cli("metrics", "--help")
    assert r.exit_code == 0 and r.stdout.rstrip().splitlines()[-1].strip().startswith("mad metrics")


def test_fid_small_n_path_equals_covariance_path() -> None:
    rng = np.random.default_rng(10)
    gen, real = rng.normal(size=(12, 40)) * 2.0, rng.normal(size=(9, 40)) + 0.3
    mu1, s1 = M.feature_statistics(gen)
    mu2, s2 = M.feature_statistics(real)
    assert M.fid_from_features(gen, real) == pytest.approx(M.fid_from_statistics(mu1, s1, mu2, s2), rel=1e-7)
