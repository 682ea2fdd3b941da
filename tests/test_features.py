"""Feature extractors (digits, random-weights Inception, TorchScript), folder features and their cache."""

from __future__ import annotations

import csv
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mad_cli.features as F
from mad_cli.errors import MadError
from mad_cli.imagedir import sha256_file, write_png


def test_digits_extractor_contract() -> None:
    ex = F.get_extractor("digits")
    assert ex.name == "digits" and ex.dim == 128 and ex.weights_sha256 == sha256_file(F.DIGITS_WEIGHTS)
    x = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    out = ex.extract(x)
    assert out.shape == (5, 128) and out.dtype == torch.float32
    # Grey repeated as RGB gives the same features as grey.
    assert torch.allclose(ex.extract(x.expand(-1, 3, -1, -1).contiguous()), out, atol=1e-5)
    for size in (8, 17, 64, 256):
        assert ex.extract(torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)).shape == (2, 128)
    with pytest.raises(ValueError):
        ex.extract(torch.zeros(2, 1, 8, 8))


def test_bundled_digits_weights_are_a_plain_small_state_dict() -> None:
    state = torch.load(F.DIGITS_WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert 100_000 < F.DIGITS_WEIGHTS.stat().st_size < 1_000_000


@pytest.mark.parametrize("resolution,channels", [(32, 1), (8, 1), (128, 3)])
def test_digits_classifier_held_out_accuracy_on_written_test_split(tmp_path: Path, resolution: int, channels: int) -> None:
    from mad_cli.datasets import write_digits

    out = tmp_path / "test"
    write_digits(out, resolution=resolution, channels=channels, split="test")
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    probs = F.digits_probabilities([out / r["file"] for r in rows])
    assert probs.shape == (len(rows), 10)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    accuracy = float((probs.argmax(1) == np.array([int(r["label"]) for r in rows])).mean())
    assert accuracy >= 0.97, accuracy
    # A folder gives the same rows in sorted order.
    assert np.allclose(F.digits_probabilities(out), probs, atol=1e-6)


def _count_calls(ex: F.Extractor) -> list[int]:
    calls: list[int] = []
    original = ex.extract

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return original(images)

    ex.extract = counting  # type: ignore[method-assign]
    return calls


def test_folder_features_cache_hit_and_invalidation(tmp_path: Path, make_images) -> None:
    folder = tmp_path / "imgs"
    paths = make_images(folder, 12, size=16, channels=1)
    ex = F.get_extractor("digits")
    calls = _count_calls(ex)
    cache = tmp_path / "cache"
    first = F.folder_features(folder, ex, batch=5, cache_dir=cache)
    assert first.shape == (12, 128) and sum(calls) == 12 and len(calls) == 3
    second = F.folder_features(folder, ex, batch=5, cache_dir=cache)
    assert sum(calls) == 12, "cache hit must not call the extractor"
    assert np.array_equal(first, second)
    # One changed file: the cache entry no longer matches, features are recomputed.
    write_png(paths[4], np.full((16, 16), 255, np.uint8))
    os.utime(paths[4], ns=(paths[4].stat().st_atime_ns, paths[4].stat().st_mtime_ns + 1_000_000_000))
    third = F.folder_features(folder, ex, batch=5, cache_dir=cache)
    assert sum(calls) == 24
    assert not np.allclose(third[4], first[4]) and np.allclose(np.delete(third, 4, 0), np.delete(first, 4, 0), atol=1e-5)
    # A different n is a different entry; n rows are the first n in sorted order.
    sub = F.folder_features(folder, ex, n=5, cache_dir=cache)
    assert np.allclose(sub, third[:5], atol=1e-5)


def _same_size_images(folder: Path, seeds: list[int], size: int = 16) -> list[Path]:
    """BMPs: uncompressed, so every image of one size has the same byte count."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seed in enumerate(seeds):
        arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
        path = folder / f"img{i:04d}.bmp"
        Image.fromarray(arr).save(path, format="BMP")
        paths.append(path)
    return paths


def test_cache_is_keyed_by_content_not_by_size_and_mtime(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "imgs"
    paths = _same_size_images(folder, [0, 1, 2, 3])
    other = _same_size_images(tmp_path / "other", [10, 11, 12, 13])
    stamp = 1_700_000_000_000_000_000
    for p in paths + other:
        os.utime(p, ns=(stamp, stamp))  # as after rsync -a of files made in the same second
    ex = F.get_extractor("digits")
    cache = tmp_path / "cache"
    before = F.folder_features(folder, ex, cache_dir=cache)
    shutil.copy2(other[2], paths[2])  # cp -p: a different image, same size, same mtime, same name
    assert paths[2].stat().st_size == other[2].stat().st_size and paths[2].stat().st_mtime_ns == stamp
    calls = _count_calls(ex)
    after = F.folder_features(folder, ex, cache_dir=cache)
    fresh = F.folder_features(folder, ex, cache_dir=False)
    assert sum(calls) == 4 + 4, "the replaced folder must be extracted, not served from the cache"
    assert np.allclose(after, fresh, atol=1e-6) and not np.allclose(after[2], before[2])
    # Content, not names or places: a copy of the folder elsewhere is a hit.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for p in copy.iterdir():
        os.utime(p, ns=(stamp + 5, stamp + 5))
    calls.clear()
    assert np.array_equal(F.folder_features(copy, ex, cache_dir=cache), after) and calls == []


def test_cache_with_n_keys_exactly_the_first_n_images(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "imgs"
    paths = _same_size_images(folder, [0, 1, 2, 3, 4, 5])
    spare = _same_size_images(tmp_path / "spare", [20, 21])
    ex = F.get_extractor("digits")
    cache = tmp_path / "cache"
    first3 = F.folder_features(folder, ex, n=3, cache_dir=cache)
    calls = _count_calls(ex)
    shutil.copy2(spare[0], paths[4])  # outside the first 3: their entry still holds
    assert np.array_equal(F.folder_features(folder, ex, n=3, cache_dir=cache), first3) and calls == []
    stat = paths[1].stat()
    shutil.copy2(spare[1], paths[1])  # inside: recomputed, even with the old mtime
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = F.folder_features(folder, ex, n=3, cache_dir=cache)
    assert sum(calls) == 3 and np.allclose(again, F.folder_features(folder, ex, n=3, cache_dir=False), atol=1e-6)
    assert not np.allclose(again[1], first3[1]) and np.allclose(again[[0, 2]], first3[[0, 2]], atol=1e-6)


def test_feature_cache_never_imports_features() -> None:
    """The cache knows extractors only by their identity: no import of mad_cli.features, not even a lazy one."""
    import ast

    import mad_cli.feature_cache as cache_module

    tree = ast.parse(Path(cache_module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert all(not alias.name.startswith("mad_cli.features") for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module != "mad_cli.features" and not (node.module == "mad_cli" and any(a.name == "features" for a in node.names))
    code = "import sys, mad_cli.feature_cache; assert 'mad_cli.features' not in sys.modules"
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)


def test_identity_changes_with_everything_that_shapes_features(tmp_path: Path) -> None:
    ex = F.get_extractor("digits")
    other_weights = tmp_path / "digits-copy.pt"
    state = torch.load(F.DIGITS_WEIGHTS, weights_only=True)
    state["fc1.bias"] = state["fc1.bias"] + 1.0
    torch.save(state, other_weights)
    changed = F.get_extractor("digits", weights=other_weights)
    assert ex.identity != changed.identity and ex.weights_sha256 in ex.identity
    assert ex.identity == F.get_extractor("digits").identity
    script = _script_module(tmp_path, "mean")
    ts = F.get_extractor(f"torchscript:{script}")
    assert "pil-bicubic" in ts.identity and ts.identity != ex.identity


def test_extractor_table_is_the_one_place_an_extractor_is_defined(tmp_path: Path, monkeypatch) -> None:
    names = [spec.name for spec in F.EXTRACTORS]
    assert len(set(names)) == len(names)
    assert F.extractor_help() == ", ".join(spec.spelled for spec in F.EXTRACTORS)
    assert F.find_spec("inception-v3-compat").name == "inception" and F.metric_prefix("inception-v3-compat") == "fid"
    assert F.metric_prefix("vgg16") == "fd_vgg16" and F.metric_prefix(f"torchscript:{tmp_path}/x.pt") == "fd_torchscript"
    for spec in F.EXTRACTORS:
        assert spec.name in F.extractor_help()
        if spec.weights_file:  # every torch-fidelity entry says which file it needs
            assert spec.tf_name and spec.tf_layer and spec.dim and spec.construct is not None
    # One entry is all a new extractor needs: get_extractor, the help, the column name see it.
    def build(spec, weights, device):
        return F.Extractor(spec.name, "0" * 64, 2, 1, 8, device, lambda x: x.float().mean((2, 3)).repeat(1, 2), always_resize=True)

    monkeypatch.setattr(F, "EXTRACTORS", (*F.EXTRACTORS, F.ExtractorSpec("mean-grey", "mean grey level, twice", build, dim=2, channels=1, input_size=8)))
    ex = F.get_extractor("mean-grey")
    assert ex.extract(torch.full((3, 1, 8, 8), 10, dtype=torch.uint8)).tolist() == [[10.0, 10.0]] * 3
    assert "mean-grey" in F.extractor_help() and F.metric_prefix("mean-grey") == "fd_mean_grey"
    with pytest.raises(MadError, match="unknown extractor .*mean-grey"):
        F.get_extractor("nonsense")


def test_cache_disabled_writes_nothing_and_default_dir_comes_from_env(tmp_path: Path, make_images, monkeypatch) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 4, size=8)
    ex = F.get_extractor("digits")
    monkeypatch.setenv("MAD_FEATURE_CACHE", str(tmp_path / "env-cache"))
    F.folder_features(folder, ex, cache_dir=False)
    assert not (tmp_path / "env-cache").exists()
    F.folder_features(folder, ex)
    assert len(list((tmp_path / "env-cache").rglob("*.npy"))) == 1


def test_corrupt_cache_entry_is_discarded_with_warning(tmp_path: Path, make_images, capsys) -> None:
    folder = tmp_path / "imgs"
    make_images(folder, 4, size=8)
    ex = F.get_extractor("digits")
    cache = tmp_path / "cache"
    good = F.folder_features(folder, ex, cache_dir=cache)
    (entry,) = list(cache.rglob("*.npy"))
    entry.write_bytes(b"\x93NUMPY garbage")
    calls = _count_calls(ex)
    again = F.folder_features(folder, ex, cache_dir=cache)
    assert sum(calls) == 4 and np.allclose(again, good, atol=1e-6)
    assert "corrupt feature cache entry discarded" in capsys.readouterr().err
    assert np.allclose(np.load(entry), good, atol=1e-6)  # rewritten


def test_mixed_sizes_are_resized_not_a_crash(tmp_path: Path, make_images) -> None:
    folder = tmp_path / "mixed"
    make_images(folder, 3, size=16, prefix="a")
    make_images(folder, 3, size=40, prefix="b", channels=1)
    ex = F.get_extractor("digits")
    assert F.folder_features(folder, ex, cache_dir=False).shape == (6, 128)
    script = _script_module(tmp_path, "mean")
    ts = F.get_extractor(f"torchscript:{script}")
    paths = sorted(folder.glob("*.png"))
    assert F.preprocessing_for(paths, ts).startswith("pil-bicubic-16x16")
    assert F.folder_features(folder, ts, cache_dir=False).shape == (6, 3)


def test_select_paths_rejects_n_larger_than_folder(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "f", 3)
    with pytest.raises(MadError, match="--n 4: .* has only 3 images"):
        F.select_paths(tmp_path / "f", 4)


def test_unreadable_image_is_named(tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "f", 3)
    (tmp_path / "f" / "zz.png").write_bytes(b"garbage")
    with pytest.raises(MadError, match="zz.png"):
        F.folder_features(tmp_path / "f", F.get_extractor("digits"), cache_dir=False)


# ---------------------------------------------------------------------------------------
# TorchScript


class _Mean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def _script_module(tmp_path: Path, kind: str) -> Path:
    module = {"mean": _Mean, "identity": _Identity}[kind]()
    path = tmp_path / f"{kind}.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream but is what users have
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_torchscript_extractor_works_and_validates(tmp_path: Path, make_images) -> None:
    ex = F.get_extractor(f"torchscript:{_script_module(tmp_path, 'mean')}")
    assert ex.name == "torchscript" and ex.dim == 3 and ex.metric_prefix == "fd_torchscript"
    make_images(tmp_path / "f", 4, size=8)
    feats = F.folder_features(tmp_path / "f", ex, cache_dir=False)
    assert feats.shape == (4, 3) and 50 < feats.mean() < 200
    with pytest.raises(MadError, match="returned \\(2, 3, 32, 32\\)"):
        F.get_extractor(f"torchscript:{_script_module(tmp_path, 'identity')}")
    not_module = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, not_module)
    with pytest.raises(MadError, match="not a TorchScript module"):
        F.get_extractor(f"torchscript:{not_module}")
    with pytest.raises(MadError, match="file not found"):
        F.get_extractor(f"torchscript:{tmp_path / 'missing.ts'}")


def test_cli_torchscript_bad_files_exit_1_one_line(run_cli, tmp_path: Path, make_images) -> None:
    make_images(tmp_path / "a", 8)
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"definitely not a zip archive")
    for spec in (f"torchscript:{junk}", f"torchscript:{_script_module(tmp_path, 'identity')}"):
        r = run_cli("metrics", tmp_path / "a", tmp_path / "a", "--features", spec)
        assert r.exit_code == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    ok = run_cli("metrics", tmp_path / "a", tmp_path / "a", "--features", f"torchscript:{_script_module(tmp_path, 'mean')}", "--json")
    assert ok.exit_code == 0, ok.stderr
    (row,) = ok.json_rows()
    assert "fd_torchscript" in row and row["fd_torchscript"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------
# Weights: never downloaded, never unpickled as code


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_weights_that_pickle_code_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    for name in ("inception", "digits"):
        with pytest.raises(MadError, match="refusing to load: .*nothing in it was run") as info:
            F.get_extractor(name, weights=evil)
        assert "weights_only" not in str(info.value)  # torch's advice to load unsafely is never passed on
    assert not (tmp_path / "PWNED").exists()


def test_missing_inception_weights_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MadError) as info:
        F.get_extractor("inception")
    message = str(info.value)
    assert F.INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints") in message and "--features-weights" in message


def test_inception_found_in_torch_home_without_flag(tmp_path: Path, monkeypatch, random_inception_weights: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / F.INCEPTION_FILE
    target.parent.mkdir(parents=True)
    os.symlink(random_inception_weights, target)
    ex = F.get_extractor("inception")
    assert ex.name == "inception" and ex.dim == 2048 and ex.metric_prefix == "fid"


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once per session (test_metrics reuses the same file)."""
    path = tmp_path_factory.getbasetemp() / "random-inception" / F.INCEPTION_FILE
    return path if path.is_file() else F.write_random_inception_weights(path, seed=0, calibration_images=4, size=32)


def test_random_inception_has_torch_fidelity_keys_and_non_vanishing_features(random_inception_weights: Path) -> None:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ex = F.get_extractor("inception", weights=random_inception_weights)
    x = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ours = ex.extract(x)
    assert ours.shape == (2, 2048)
    assert ours.std() > 1e-2, "batch-norm recalibration failed: features vanish"
    assert (ours[0] - ours[1]).abs().max() > 1e-3
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(random_inception_weights)).eval()
    with torch.no_grad():
        assert torch.allclose(theirs(x)[0], ours, rtol=1e-4, atol=1e-5)
