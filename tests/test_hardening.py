"""The classes of hostile or unlucky input, across every command (issue 11's "done means").

Each class is run over every command it applies to, not only the example that found it:

* every numeric flag of every command with NaN, ±inf, -1 and huge values, the table of
  flags generated from the Typer app itself, so a new flag without an entry fails here;
* every command with a full disk (the write path raising ENOSPC, naming no file, as a
  real `write()` does), through the CLI: exit 1, one line naming where, no partial output;
* every writing command twice at once: the second gets one line, nothing mixes;
* decompression bombs and symlink loops in every command that reads a folder;
* malformed snapshots that still load, and `--resume` on the wrong kind of snapshot.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import subprocess
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer

from mad_cli import imagedir
from mad_cli.cli import app
from mad_cli.imagedir import list_images, read_image, write_png

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:`torch.jit:FutureWarning")


# ---------------------------------------------------------------------------------------
# Fixtures: small folders and one snapshot of every backend, made once


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data (16² grey, 12 images), data2, and snapshots of the gaussian, stylegan2 and ddpm backends."""
    from mad_cli.models.ddpm.configs import resolve_config
    from mad_cli.models.ddpm.unet import UNet
    from mad_cli.models.snapshot import save_snapshot
    from mad_cli.models.stylegan2.networks import Generator
    from mad_cli.train import train

    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    for folder in ("data", "data2"):
        for i in range(12):
            write_png(root / folder / f"img{i:03d}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8), {"origin": "real"})
    torch.manual_seed(0)
    train(root / "data", root / "gauss", model="gaussian")
    g_kwargs = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=1,
                    mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 128, "channel_max": 16})
    G = Generator(**g_kwargs)
    save_snapshot(root / "sg2.pt", {"format": "mad.stylegan2", "version": 1, "config": {"G_kwargs": g_kwargs},
                                    "G_ema": G.state_dict(), "progress": {}})
    config = resolve_config("tiny", resolution=16, channels=1)
    config["unet"].update(model_channels=8, num_head_channels=8)
    save_snapshot(root / "ddpm.pt", {"format": "mad.ddpm", "version": 1, "config": config, "ema": UNet(**config["unet"]).state_dict()})
    return {"root": root, "data": root / "data", "data2": root / "data2", "gaussian": root / "gauss" / "latest.pt",
            "stylegan2": root / "sg2.pt", "ddpm": root / "ddpm.pt"}


def _run(*args: Any) -> Any:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    try:
        result.err = result.stderr
    except ValueError:
        result.err = ""
    return result


def _one_line_error(result: Any, *needles: str) -> str:
    """Exit 1, no traceback, and the error is one stderr line `mad: error: ...` holding every
    needle (the last line; only warnings said on the way may come before it)."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.err, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("mad: error: "), result.err
    assert all(line.startswith("mad: warning: ") for line in lines[:-1]), result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def _files(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones too) with its sha256: equal = untouched."""
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# ---------------------------------------------------------------------------------------
# 1. Every numeric flag: NaN, ±inf, negative, huge


HUGE_INT = str(2**64)
VALUES = ("nan", "inf", "-inf", "-1", "1e30", HUGE_INT)
NEVER_VALID = {"nan", "inf", "-inf"}

#: (command, flag) -> the values of VALUES beyond NaN/±inf that must be refused too. Values
#: not listed may be accepted (then the command must succeed, cheaply, with the base args).
REFUSED: dict[tuple[str, str], set[str]] = {
    ("dataset digits", "--resolution"): {"-1", "1e30", HUGE_INT},
    ("dataset digits", "--channels"): {"-1", "1e30", HUGE_INT},
    ("dataset digits", "--limit"): {"-1", "1e30", HUGE_INT},
    ("dataset digits", "--seed"): {"-1", "1e30", HUGE_INT},
    ("mix", "--total"): {"-1", "1e30", HUGE_INT},
    ("mix", "--seed"): {"-1", "1e30", HUGE_INT},
    ("colorhist", "--bins"): {"-1", "1e30", HUGE_INT},
    ("colorhist", "--workers"): {"-1", "1e30", HUGE_INT},
    ("metrics", "--n"): {"-1", "1e30", HUGE_INT},
    ("metrics", "--k-pr"): {"-1", "1e30", HUGE_INT},
    ("metrics", "--k-dc"): {"-1", "1e30", HUGE_INT},
    ("metrics", "--batch"): {"-1", "1e30", HUGE_INT},
    ("metrics", "--seed"): {"-1", "1e30", HUGE_INT},
    ("filter", "--keep"): {"-1", "1e30", HUGE_INT},
    ("filter", "--threshold"): set(),  # any finite cut-off is a cut-off
    ("filter", "--port"): {"-1", "1e30", HUGE_INT},
    ("sample", "--n"): {"-1", "1e30", HUGE_INT},
    ("sample", "--batch"): {"-1", "1e30", HUGE_INT},
    ("sample", "--generation"): {"-1", "1e30", HUGE_INT},
    ("sample", "--psi"): {"1e30", HUGE_INT},
    ("sample", "--psi-cutoff"): {"-1", "1e30", HUGE_INT},
    ("sample", "--class"): {"-1", "1e30", HUGE_INT},
    ("sample", "--guidance"): {"-1", "1e30", HUGE_INT},
    ("sample", "--steps"): {"-1", "1e30", HUGE_INT},
    ("sample", "--eta"): {"-1", "1e30", HUGE_INT},
    ("train", "--seed"): {"-1", "1e30", HUGE_INT},
    ("train", "--kimg"): {"-1", "1e30", HUGE_INT},
    ("train", "--batch"): {"-1", "1e30", HUGE_INT},
    ("train", "--batch-gpu"): {"-1", "1e30", HUGE_INT},
    ("train", "--gamma"): {"-1", "1e30", HUGE_INT},
    ("train", "--snap-every"): {"-1", "1e30", HUGE_INT},
    ("train", "--p"): {"-1", "1e30", HUGE_INT},
    ("train", "--target"): {"-1", "1e30", HUGE_INT},
    ("train", "--ada-kimg"): {"-1", "1e30", HUGE_INT},
    ("train", "--lr"): {"-1", "1e30", HUGE_INT},
    ("train", "--p-uncond"): {"-1", "1e30", HUGE_INT},
    ("train", "--pca-dims"): {"-1", "1e30", HUGE_INT},
    ("train", "--components"): {"-1", "1e30", HUGE_INT},
    ("report", "--strip"): {"-1", "1e30", HUGE_INT},
    ("merge", "--weight"): set(),  # any finite W: -1 is Neon, huge only scales a difference
}


def _commands() -> Iterator[tuple[str, Any]]:
    """(command path, command) of every leaf command of the Typer app, walked like the CLI does."""

    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, cmd

    yield from walk(typer.main.get_command(app), "")


def _annotation(param: Any) -> Any:
    ann = param.type_descriptor.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def numeric_flags() -> list[tuple[str, str]]:
    """(command, flag) of every int or float option of every command."""
    return sorted(
        (path, max(param.opts, key=len))
        for path, cmd in _commands()
        for param in cmd.params
        if type(param).__name__ == "TyperOption" and _annotation(param) in (int, float)
    )


def test_the_table_covers_every_numeric_flag() -> None:
    assert sorted(REFUSED) == numeric_flags()


def _model_for(flag: str, kind: str) -> str:
    from mad_cli.models import union_specs

    models = next(models for spec, models in union_specs(kind) if spec.flag == flag)
    for preferred in ("gaussian", "stylegan2", "ddpm", "gmm"):
        if preferred in models:
            return preferred
    raise AssertionError(models)


def _args(world: dict[str, Path], out: Path, command: str, flag: str, value: str) -> list[Any]:
    """Base arguments with which the command succeeds quickly, plus `flag value`."""
    data, data2 = world["data"], world["data2"]
    if command == "dataset digits":
        base = ["dataset", "digits", out, "--resolution", "8", "--limit", "2"]
    elif command == "mix":
        base = ["mix", "--out", out, "--real", f"{data}:3"]
    elif command == "colorhist":
        base = ["colorhist", data, "--workers", "0"]
    elif command == "metrics":
        base = ["metrics", data, data2, "--metrics", "fid", "--no-cache", "--device", "cpu"]
    elif command == "filter":
        base = ["filter", data, out, "--by", "artifacts"] + ([] if flag in ("--keep", "--threshold") else ["--keep", "0.5"])
    elif command == "report":
        base = ["report", world["root"] / "loop", "--out", out.with_suffix(".html")]
    elif command == "merge":
        base = ["merge", world["gaussian"], world["gaussian"], "--out", out.with_suffix(".pt")]
    elif command == "sample":
        model = "gaussian" if flag in ("--n", "--batch", "--generation") else _model_for(flag, "sample")
        base = ["sample", world[model], out, "--device", "cpu"] + ([] if flag == "--n" else ["--n", "1"])
        if model == "ddpm" and flag != "--steps":
            base += ["--steps", "2"]
    elif command == "train":
        model = "gaussian" if flag == "--seed" else _model_for(flag, "train")
        base = ["train", data, "--out", out, "--model", model, "--device", "cpu", "--dry-run"]
        if model == "stylegan2":
            base += ["--cfg", "tiny"]
    else:
        raise AssertionError(f"no base arguments for {command}: add them here")
    return [*base, flag, value]


@pytest.fixture(scope="module")
def report_loop(world: dict[str, Path]) -> Path:
    loop = world["root"] / "loop"
    for t in range(2):
        for i in range(3):
            write_png(loop / f"gen{t}" / "samples" / f"seed{i:06d}.png", np.full((8, 8), 40 * t + i, np.uint8))
    return loop


@pytest.mark.parametrize(("command", "flag"), sorted(REFUSED))
def test_every_numeric_flag_refuses_nan_inf_negative_and_huge_in_one_line(world, report_loop, tmp_path: Path, command: str, flag: str) -> None:
    torch.set_num_threads(1)
    for value in VALUES:
        out = tmp_path / f"out{VALUES.index(value)}"
        result = _run(*_args(world, out, command, flag, value))
        must_refuse = value in NEVER_VALID or value in REFUSED[(command, flag)]
        where = (command, flag, value, result.exit_code, result.err[-600:], repr(result.exception))
        assert "Traceback" not in result.err and (result.exception is None or isinstance(result.exception, SystemExit)), where
        if result.exit_code == 2:  # click's own type check (an integer flag given "nan"): a usage error naming the flag
            lines = result.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"mad: error: Invalid value for '{flag}'"), where
        elif result.exit_code == 1:
            lines = result.err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("mad: error: ") and flag in lines[0], where
        else:
            assert result.exit_code == 0 and not must_refuse, where
        if must_refuse:
            assert result.exit_code in (1, 2), where
            assert not out.exists(), where  # refused before any folder was made


# ---------------------------------------------------------------------------------------
# 2. Every command with a full disk


@contextlib.contextmanager
def full_disk(monkeypatch: pytest.MonkeyPatch, after: int = 0) -> Iterator[dict[str, int]]:
    """The disk fills after `after` files: every later write raises ENOSPC without a file name,
    exactly as `write()` does. Patched wherever a module imported the two write paths."""
    real_open, real_place = imagedir.atomic_open, imagedir.place_file
    state = {"files": 0}

    class Full(io.RawIOBase):
        """A file whose every write fails as on a full disk; no fileno, so that writers that
        would write to the descriptor directly (Pillow, torch.save) write through here too."""

        def __init__(self, fh: Any):
            super().__init__()
            self._fh = fh

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def tell(self) -> int:
            return self._fh.tell()

        def seek(self, *args: Any) -> int:
            return self._fh.seek(*args)

        def seekable(self) -> bool:
            return True

    @contextlib.contextmanager
    def atomic_open(path: Any, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
        state["files"] += 1
        with real_open(path, mode, **kwargs) as fh:
            yield Full(fh) if state["files"] > after else fh

    def place_file(src: Path, dst: Path, link: str = "copy") -> None:
        state["files"] += 1
        if state["files"] > after:
            with real_open(dst, "wb") as fh:  # through the real writer, so its clean-up runs
                Full(fh).write(b"x")
        real_place(src, dst, link)

    for module in [m for name, m in list(sys.modules.items()) if name.startswith("mad_cli") and m is not None]:
        if getattr(module, "atomic_open", None) is real_open:
            monkeypatch.setattr(module, "atomic_open", atomic_open)
        if getattr(module, "place_file", None) is real_place:
            monkeypatch.setattr(module, "place_file", place_file)
    yield state


def _no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == ".mad-staging"]


def _import_writers() -> None:
    """Import every module that writes, so that full_disk finds the names they imported."""
    import importlib

    for name in ("colorhist", "datasets", "filtering", "mix", "models.runfolder", "models.snapshot", "report", "sampling", "feature_cache", "merge"):
        importlib.import_module(f"mad_cli.{name}")


FULL_DISK_COMMANDS = ["dataset", "mix", "mix-hardlink", "filter", "sample", "train", "colorhist", "report", "merge"]


#: Commands that write more than three files are also run with the disk filling mid-way.
FULL_DISK_CASES = [(c, 0) for c in FULL_DISK_COMMANDS] + [(c, 3) for c in ("dataset", "mix", "mix-hardlink", "filter", "sample", "train")]


@pytest.mark.parametrize(("command", "after"), FULL_DISK_CASES)
def test_every_command_on_a_full_disk_is_one_line_and_leaves_no_partial_output(world, report_loop, tmp_path: Path, monkeypatch, command: str, after: int) -> None:
    _import_writers()
    torch.set_num_threads(1)
    out = tmp_path / "out"
    args = {
        "dataset": ["dataset", "digits", out, "--resolution", "8", "--limit", "6"],
        "mix": ["mix", "--out", out, "--real", f"{world['data']}:6"],
        "mix-hardlink": ["mix", "--out", out, "--real", f"{world['data']}:6", "--link", "hardlink"],
        "filter": ["filter", world["data"], out, "--by", "provenance", "--rejected", tmp_path / "rejected"],
        "sample": ["sample", world["gaussian"], out, "--n", "6", "--device", "cpu"],
        "train": ["train", world["data"], "--out", out, "--model", "gaussian"],
        "colorhist": ["colorhist", world["data"], "--workers", "0", "--plot", out / "plot.png"],
        "report": ["report", report_loop, "--out", out / "report.html"],
        "merge": ["merge", world["gaussian"], world["gaussian"], "--out", out / "merged.pt", "--weight", "0.5"],
    }[command]
    inputs = _files(world["root"])
    with full_disk(monkeypatch, after):
        result = _run(*args)
    line = _one_line_error(result)
    assert "no space left" in line.lower() and str(tmp_path) in line  # says what, and where: the file or the output folder
    assert result.stdout == ""  # exit 1 means no result
    assert _files(world["root"]) == inputs  # the inputs were only read
    assert _no_temp_files(tmp_path)
    if command == "sample":  # finished images stay (a re-run completes the rest), each one whole
        done = list_images(out) if out.exists() else []
        assert len(done) <= after and all(read_image(p).shape == (16, 16) for p in done)
    elif command == "train":  # a run folder: nothing, or a complete snapshot that --resume latest continues
        from mad_cli.models.snapshot import load_snapshot

        assert not out.exists() or sorted(os.listdir(out)) == ["config.json"] or load_snapshot(out / "latest.pt")["format"] == "mad.gaussian"
    elif command in ("colorhist", "report", "merge"):
        assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    else:  # whole-folder outputs and a run folder: complete or absent
        assert not out.exists() or not [p for p in out.iterdir() if p.name != "config.json"], sorted(os.listdir(out))
        assert not (tmp_path / "rejected").exists()


def test_metrics_on_a_full_disk_still_answers_and_says_the_cache_was_not_written(world, monkeypatch, tmp_path: Path) -> None:
    """The feature cache is an optimisation: a full disk costs the cache, not the result."""
    _import_writers()
    with full_disk(monkeypatch, 0):
        result = _run("metrics", world["data"], world["data2"], "--metrics", "fid", "--cache-dir", tmp_path / "cache", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.err
    assert "could not write feature cache" in result.err and "No space left on device" in result.err
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 1
    assert _no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------
# 3. Every writing command twice at once


@contextlib.contextmanager
def paused_in(monkeypatch: pytest.MonkeyPatch, first: Callable[[], Any]) -> Iterator[dict[str, Any]]:
    """Run `first` in a thread that stops at its first file write until the block ends (the
    second command runs meanwhile in the main thread)."""
    real_open = imagedir.atomic_open
    reached, resume = threading.Event(), threading.Event()
    worker: dict[str, Any] = {}

    @contextlib.contextmanager
    def gated(path: Any, mode: str = "wb", **kwargs: Any) -> Iterator[Any]:
        if threading.current_thread() is not threading.main_thread():  # the first command's threads (and its writer pool)
            reached.set()
            assert resume.wait(60)
        with real_open(path, mode, **kwargs) as fh:
            yield fh

    for module in [m for name, m in list(sys.modules.items()) if name.startswith("mad_cli") and m is not None]:
        if getattr(module, "atomic_open", None) is real_open:
            monkeypatch.setattr(module, "atomic_open", gated)

    def target() -> None:
        try:
            worker["result"] = first()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            worker["error"] = exc

    thread = threading.Thread(target=target)
    worker["thread"] = thread
    thread.start()
    try:
        assert reached.wait(60), worker.get("error")
        yield worker
    finally:
        resume.set()
        thread.join(60)
    assert "error" not in worker, worker.get("error")


def _second_is_refused(result: Any, flag: str, folder: Path) -> None:
    _one_line_error(result, f"{flag} {folder}: another mad command is writing there (`mad ")


def test_dataset_twice_at_once(tmp_path: Path, monkeypatch) -> None:
    import mad_cli.datasets as datasets

    out = tmp_path / "out"
    with paused_in(monkeypatch, lambda: datasets.write_digits(out, resolution=8, limit=6)):
        _second_is_refused(_run("dataset", "digits", out, "--resolution", "8", "--limit", "3", "--force"), "OUT", out)
    datasets.write_digits(tmp_path / "alone", resolution=8, limit=6)
    assert _files(out) == _files(tmp_path / "alone")  # exactly what one run writes: nothing mixed


def test_mix_twice_at_once(world, tmp_path: Path, monkeypatch) -> None:
    import mad_cli.mix as mix_module

    out = tmp_path / "out"
    with paused_in(monkeypatch, lambda: mix_module.mix(out, real=[f"{world['data']}:5"], seed=1)):
        _second_is_refused(_run("mix", "--out", out, "--real", f"{world['data2']}:3", "--force"), "--out", out)
    mix_module.mix(tmp_path / "alone", real=[f"{world['data']}:5"], seed=1)
    assert set(_files(out)) == set(_files(tmp_path / "alone")) and len(list_images(out)) == 5
    assert all("data2" not in line for line in (out / "manifest.csv").read_text().splitlines())


def test_filter_twice_at_once(world, tmp_path: Path, monkeypatch) -> None:
    from mad_cli.filtering import Rule, filter_folder

    out = tmp_path / "out"
    with paused_in(monkeypatch, lambda: filter_folder(world["data"], out, [Rule("provenance", "provenance")])):
        _second_is_refused(_run("filter", world["data2"], out, "--by", "provenance", "--force"), "OUT", out)
    assert sorted(p.name for p in list_images(out)) == sorted(p.name for p in list_images(world["data"]))
    assert all(read_image(p).tobytes() == read_image(world["data"] / p.name).tobytes() for p in list_images(out))


def test_sample_twice_at_once(world, tmp_path: Path, monkeypatch) -> None:
    from mad_cli.sampling import sample_snapshot

    out = tmp_path / "out"
    with paused_in(monkeypatch, lambda: sample_snapshot(world["gaussian"], out, n=4, psi=0.7, device="cpu")):
        _second_is_refused(_run("sample", world["gaussian"], out, "--n", "4", "--psi", "0.3", "--device", "cpu"), "OUT", out)
    from mad_cli.imagedir import read_tags

    assert sorted(p.name for p in list_images(out)) == [f"seed{i:06d}.png" for i in range(4)]
    assert {read_tags(p)["psi"] for p in list_images(out)} == {"0.7"}  # §1 item 4: never 0.7 and 0.3 mixed


def test_train_twice_at_once(world, tmp_path: Path, monkeypatch) -> None:
    from mad_cli.train import train

    run = tmp_path / "run"
    with paused_in(monkeypatch, lambda: train(world["data"], run, model="gaussian")):
        _second_is_refused(_run("train", world["data2"], "--out", run, "--model", "gaussian", "--resume", "latest"), "--out", run)
    train(world["data"], tmp_path / "alone", model="gaussian")
    assert sorted(os.listdir(run)) == sorted(os.listdir(tmp_path / "alone"))
    assert (run / "config.json").read_text() == (tmp_path / "alone" / "config.json").read_text().replace(str(tmp_path / "alone"), str(run))
    assert (run / "log.jsonl").read_text().count("\n") == (tmp_path / "alone" / "log.jsonl").read_text().count("\n")  # §1 item 5: not every line twice


def test_review_twice_for_one_reviewer(world, tmp_path: Path) -> None:
    """A second review server for the same reviewer (another process) is refused before it serves."""
    from mad_cli.review.server import ReviewSession

    src = tmp_path / "samples"
    for p in list_images(world["data"])[:3]:
        write_png(src / p.name, read_image(p))
    session = ReviewSession(src, "alice")
    session.log.append("img000.png", "good")
    command = [sys.executable, "-m", "mad_cli", "filter", str(src), str(tmp_path / "out"), "--review", "--reviewer", "alice", "--port", "0"]
    second = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mad: error: --reviewer alice ") and "another mad command is writing there (`mad filter --review`" in lines[0]
    code = f"from mad_cli.review.server import ReviewSession; s = ReviewSession({str(src)!r}, 'bob'); s.log.append('img001.png', 'bad'); print('recorded')"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.stdout.strip() == "recorded", other.stderr  # another reviewer of the same SRC is not blocked
    session.log.close()
    assert (src.parent / "samples-review" / "labels-alice.csv").read_text().count("good") == 1


# ---------------------------------------------------------------------------------------
# 4. Decompression bombs and symlink loops, in every command that reads a folder


def _bomb(path: Path, side: int = 16000) -> Path:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    body = zlib.compressobj(9)
    data = b"".join(body.compress(b"\x00" * (side + 1)) for _ in range(16)) + body.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _readers(world: dict[str, Path], src: Path, tmp_path: Path) -> dict[str, list[Any]]:
    return {
        "colorhist": ["colorhist", src, "--workers", "0"],
        "mix": ["mix", "--out", tmp_path / "mixed", "--real", src],
        "metrics": ["metrics", world["data"], src, "--metrics", "fid", "--no-cache", "--device", "cpu"],
        "filter": ["filter", src, tmp_path / "kept", "--by", "artifacts", "--keep", "0.5"],
        "train": ["train", src, "--out", tmp_path / "run", "--model", "stylegan2", "--cfg", "tiny", "--dry-run", "--device", "cpu"],
        "train-gaussian": ["train", src, "--out", tmp_path / "run", "--model", "gaussian"],
    }


@pytest.mark.parametrize("command", ["colorhist", "mix", "metrics", "filter", "train", "train-gaussian"])
def test_a_decompression_bomb_is_one_line_naming_it_in_every_reader(world, tmp_path: Path, command: str) -> None:
    src = tmp_path / "src"
    for p in list_images(world["data"])[:4]:
        write_png(src / p.name, read_image(p))
    bomb = _bomb(src / "zz-bomb.png")
    assert bomb.stat().st_size < 50_000
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = _run(*_readers(world, src, tmp_path)[command])
    _one_line_error(result, str(bomb), "256,000,000 pixels is over the limit", "MAD_MAX_PIXELS")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb  # 16000² grey decoded would be 256 MB
    assert not [p for p in tmp_path.iterdir() if p.name in ("mixed", "kept", "run")]


@pytest.mark.parametrize("command", ["colorhist", "mix", "metrics", "filter", "train", "train-gaussian"])
def test_a_symlink_loop_is_one_line_in_every_reader(world, tmp_path: Path, command: str) -> None:
    """§1 item 6: `ln -s . src/loop` multiplied every image 41× in every command."""
    src = tmp_path / "src"
    for p in list_images(world["data"])[:4]:
        write_png(src / p.name, read_image(p))
    (src / "loop").symlink_to(".")
    _one_line_error(_run(*_readers(world, src, tmp_path)[command]), f"{src / 'loop'}: symlink loop")


def test_review_server_refuses_a_bomb_listing_loop_too(world, tmp_path: Path) -> None:
    from mad_cli.errors import MadError
    from mad_cli.review.server import ReviewSession

    src = tmp_path / "samples"
    write_png(src / "a.png", np.zeros((4, 4), np.uint8))
    (src / "loop").symlink_to(".")
    with pytest.raises(MadError, match="symlink loop"):
        ReviewSession(src, "alice")


# ---------------------------------------------------------------------------------------
# 5. Snapshots: malformed ones that still load, the wrong kind on --resume, hostile configs


def _save(path: Path, snap: dict[str, Any]) -> Path:
    from mad_cli.models.snapshot import save_snapshot

    save_snapshot(path, snap)
    return path


def _sg2(world: dict[str, Path]) -> dict[str, Any]:
    from mad_cli.models.snapshot import load_snapshot

    return load_snapshot(world["stylegan2"])


def test_a_tiny_snapshot_asking_for_a_huge_network_is_refused_before_allocating(world, tmp_path: Path) -> None:
    """1.6 KB asking for a 1024² generator with 16k channels: refused from the shapes, in milliseconds."""
    import resource
    import time

    good = _sg2(world)
    kwargs = dict(good["config"]["G_kwargs"], img_resolution=1024, synthesis_kwargs={"channel_base": 2**24, "channel_max": 2**14})
    tiny = {"format": "mad.stylegan2", "version": 1, "config": {"G_kwargs": kwargs}, "G_ema": {"mapping.fc0.weight": torch.zeros(16, 16)}}
    path = _save(tmp_path / "huge.pt", tiny)
    assert path.stat().st_size < 4000
    before, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    line = _one_line_error(_run("sample", path, tmp_path / "out", "--n", "1", "--device", "cpu"), str(path), "config.G_kwargs")
    assert "do not fit" in line or "far larger" in line
    assert time.perf_counter() - t0 < 20 and (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 300
    # The same for fine-tuning and for a config asking for endless layers.
    _one_line_error(_run("train", world["data"], "--out", tmp_path / "run", "--resume", path, "--dry-run", "--device", "cpu"), "--resume", "config.G_kwargs")
    deep = dict(tiny, config={"G_kwargs": dict(good["config"]["G_kwargs"], mapping_kwargs={"num_layers": 10**7})}, G_ema=good["G_ema"])
    t0 = time.perf_counter()
    _one_line_error(_run("sample", _save(tmp_path / "deep.pt", deep), tmp_path / "out", "--n", "1", "--device", "cpu"), "far larger generator")
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_a_ddpm_snapshot_asking_for_a_huge_unet_is_refused_before_allocating(world, tmp_path: Path) -> None:
    from mad_cli.models.snapshot import load_snapshot

    snap = load_snapshot(world["ddpm"])
    snap["config"]["unet"]["channel_mult"] = [1, 4096, 4096]
    path = _save(tmp_path / "huge.pt", snap)
    _one_line_error(_run("sample", path, tmp_path / "out", "--n", "1", "--device", "cpu"), "U-Net (ema) weight", "config.unet")
    snap["config"]["unet"]["channel_mult"] = [1, 2]
    snap["config"]["unet"]["num_res_blocks"] = 10**7
    _one_line_error(_run("sample", _save(tmp_path / "deep.pt", snap), tmp_path / "out", "--n", "1", "--device", "cpu"), "far larger U-Net")
    snap = load_snapshot(world["ddpm"])
    snap["config"]["diffusion"]["timesteps"] = 10**12
    _one_line_error(_run("sample", _save(tmp_path / "steps.pt", snap), tmp_path / "out", "--n", "1", "--device", "cpu"), "config.diffusion.timesteps")


@pytest.mark.parametrize("case", ["config-string", "kwargs-wrong-types", "kwargs-unknown", "weights-list", "weights-not-tensors",
                                  "weights-wrong-shape", "format-list", "version-string", "recursive", "gaussian-strings", "gaussian-shapes"])
def test_malformed_snapshots_that_still_load_are_one_line(world, tmp_path: Path, case: str) -> None:
    from mad_cli.models.snapshot import load_snapshot

    good = _sg2(world)
    kwargs = good["config"]["G_kwargs"]
    gauss = load_snapshot(world["gaussian"])
    snaps = {
        "config-string": dict(good, config="x"),
        "kwargs-wrong-types": dict(good, config={"G_kwargs": dict(kwargs, img_resolution="16")}),
        "kwargs-unknown": dict(good, config={"G_kwargs": dict(kwargs, colour="blue")}),
        "weights-list": dict(good, G_ema=[1, 2]),
        "weights-not-tensors": dict(good, G_ema={"mapping.fc0.weight": 1}),
        "weights-wrong-shape": dict(good, G_ema={**good["G_ema"], "mapping.fc0.weight": torch.zeros(3, 3)}),
        "format-list": dict(good, format=["mad.stylegan2"]),
        "version-string": dict(good, version="1"),
        "gaussian-strings": dict(gauss, config={**gauss["config"], "height": "tall"}),
        "gaussian-shapes": dict(gauss, model={**gauss["model"], "mean": torch.zeros(3)}),
    }
    path = tmp_path / "bad.pt"
    if case == "recursive":
        loop: list[Any] = []
        loop.append(loop)
        torch.save(dict(good, config={"G_kwargs": kwargs, "notes": loop}), path)
    elif case in ("format-list", "version-string"):
        torch.save(snaps[case], path)  # save_snapshot refuses to write these; a hand-made file may hold them
    else:
        _save(path, snaps[case])
    _one_line_error(_run("sample", path, tmp_path / "out", "--n", "1", "--device", "cpu"), str(path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("model", "snapshot"), [("stylegan2", "gaussian"), ("stylegan2", "ddpm"), ("ddpm", "stylegan2"), ("ddpm", "gaussian"), ("gaussian", "stylegan2")])
def test_resume_from_the_wrong_kind_of_snapshot_is_one_line(world, tmp_path: Path, model: str, snapshot: str) -> None:
    run = tmp_path / "run"
    _one_line_error(_run("train", world["data"], "--out", run, "--model", model, "--resume", world[snapshot], "--device", "cpu", "--dry-run"), "--resume")
    # The same snapshot as RUN/latest.pt, continued with --resume latest.
    run.mkdir()
    (run / "latest.pt").write_bytes(world[snapshot].read_bytes())
    _one_line_error(_run("train", world["data"], "--out", run, "--model", model, "--resume", "latest", "--device", "cpu", "--dry-run"), "--resume")


def test_a_recursive_network_pickle_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """NVIDIA's pickles go through a restricted unpickler; a network whose kwargs contain themselves recursed."""
    import pickle
    import types

    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta: Any) -> Any:  # only named by the pickle, never called by it here
        raise AssertionError("not called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    class Network:
        def __init__(self, meta: dict[str, Any]):
            self.meta = meta

        def __reduce__(self) -> Any:
            return (_reconstruct_persistent_obj, (self.meta,))

    loop: list[Any] = []
    loop.append(loop)
    meta = {"type": "class", "version": 0, "class_name": "Generator", "module_src": "", "state": {"_init_kwargs": {"z_dim": loop}}}
    path = tmp_path / "rec.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Network(meta)}, protocol=4))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # as on a user's machine: not importable
    _one_line_error(_run("sample", path, tmp_path / "out", "--n", "1", "--device", "cpu"), str(path), "nest")


def test_torch_advice_to_load_unsafely_is_never_passed_on(tmp_path: Path) -> None:
    """torch's weights-only refusal opens with advice to set weights_only=False (run the file's code)."""
    import fractions

    path = tmp_path / "evil.pt"
    torch.save({"format": "mad.stylegan2", "version": 1, "config": fractions.Fraction(1, 3)}, path)
    line = _one_line_error(_run("sample", path, tmp_path / "out", "--n", "1", "--device", "cpu"), str(path), "nothing in it was run")
    assert "weights_only" not in line and "trust" not in line


# ---------------------------------------------------------------------------------------
# 6. Smaller items: --force advice only where --force exists


def test_no_command_without_force_advises_force(world, tmp_path: Path) -> None:
    commands_with_force = {path for path, flag in _all_flags() if flag == "--force"}
    assert commands_with_force == {"dataset digits", "mix", "filter", "sample"}
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    line = _one_line_error(_run("train", world["data"], "--out", busy, "--model", "gaussian"), "not empty")
    assert "--force" not in line
    for args, needle in ((["dataset", "digits", busy, "--limit", "2", "--resolution", "8"], "use --force"),
                         (["mix", "--out", busy, "--real", world["data"]], "use --force"),
                         (["filter", world["data"], busy, "--by", "provenance"], "use --force")):
        _one_line_error(_run(*args), needle)


def _all_flags() -> list[tuple[str, str]]:
    return [(path, opt) for path, cmd in _commands() for p in cmd.params for opt in p.opts]
