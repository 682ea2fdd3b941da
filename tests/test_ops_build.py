"""Building the CUDA plugins: cache keys, architecture lists, the build lock (incl. stale
locks left by killed builds), failure reporting, and a real nvcc compile + link."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from stylegan2_ops import build
from stylegan2_ops.build_lock import BuildLock, stale_reason

LOCK_MODULE = Path(build.__file__).with_name("build_lock.py")
NVCC = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "bin" / "nvcc"
HAVE_NVCC = NVCC.exists() or shutil.which("nvcc") is not None


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MAD_OPS", raising=False)
    monkeypatch.setenv("MAD_CACHE_DIR", str(tmp_path / "cache"))
    build.forget_plugins()
    yield
    build.forget_plugins()


# ---- configuration ----------------------------------------------------------------------------------


def test_cache_dir_default_and_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert build.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("MAD_CACHE_DIR")
    assert build.cache_dir() == Path("~/.cache/mad/torch_extensions").expanduser()


def test_arch_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6;9.0+PTX")
    assert build.arch_list() == "8.6;9.0+PTX"
    assert build.arch_label("8.6;9.0+PTX") == "sm_86, sm_90+PTX"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build.arch_list() == build.DEFAULT_ARCH_LIST


@pytest.mark.skipif(not HAVE_NVCC, reason="no nvcc on this machine")
def test_default_arch_list_is_supported_by_nvcc() -> None:
    """nvcc 13 dropped the old architectures; the no-GPU default must still compile."""
    out = subprocess.run([str(Path(build.find_cuda_home()) / "bin" / "nvcc"), "--list-gpu-arch"],
                         capture_output=True, text=True, timeout=60).stdout
    for arch in build.DEFAULT_ARCH_LIST.split(";"):
        assert f"compute_{arch.replace('.', '')}" in out


def test_cuda_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    assert build.find_cuda_home() == str(tmp_path)
    monkeypatch.delenv("CUDA_HOME")
    monkeypatch.delenv("CUDA_PATH", raising=False)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        assert build.find_cuda_home() == "/usr/local/cuda"


def test_key_follows_sources_arch_and_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = build.plugin_spec("bias_act", "9.0")
    assert a.key == build.plugin_spec("bias_act", "9.0").key
    assert a.key != build.plugin_spec("bias_act", "8.0").key
    assert a.key != build.plugin_spec("upfirdn2d", "9.0").key
    assert a.build_dir.parent == tmp_path / "cache"
    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    assert build.plugin_spec("bias_act", "9.0").key == a.key
    with open(csrc / "bias_act.cu", "a") as fh:
        fh.write("\n// edited\n")
    assert build.plugin_spec("bias_act", "9.0").key != a.key  # a changed .cu builds into a new folder
    with pytest.raises(ValueError, match="^plugin:"):
        build.plugin_spec("nope")


def test_key_changes_with_torch_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = build.plugin_spec("upfirdn2d", "9.0").key
    monkeypatch.setattr(torch, "__version__", "0.0.0+test")
    assert build.plugin_spec("upfirdn2d", "9.0").key != before


# ---- failures -------------------------------------------------------------------------------------


def test_missing_nvcc_is_a_build_error_with_a_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda-here"))
    with pytest.raises(build.PluginBuildError) as err:
        build.get_plugin("bias_act")  # what impl='cuda' / MAD_OPS=cuda call: loud
    assert "nvcc not found" in str(err.value) and err.value.log_path.exists()
    assert "nvcc not found" in err.value.log_path.read_text()
    assert not (err.value.log_path.parent / "mad.lock").exists()  # the lock is released on failure
    capsys.readouterr()
    # impl='auto': one warning line with the reason and the log, then None (= reference), never twice.
    assert build.try_get_plugin("upfirdn2d") is None
    assert build.try_get_plugin("upfirdn2d") is None
    lines = capsys.readouterr().err.strip().splitlines()
    warnings = [ln for ln in lines if "warning" in ln]
    assert len(warnings) == 1
    assert "nvcc not found" in warnings[0] and "build.log" in warnings[0] and "reference" in warnings[0]


def test_compiler_error_reason_is_the_error_line() -> None:
    text = "RuntimeError: Error building extension\n[1/3] c++ ...\nFAILED: x.o\nfoo.cu:3:1: error: expected ';'\n"
    assert build._reason(text) == "foo.cu:3:1: error: expected ';'"


# ---- the lock ---------------------------------------------------------------------------------------


def test_lock_excludes_and_releases(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    waits: list[str] = []
    with BuildLock(path):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(TimeoutError):
            BuildLock(path, timeout=0.3, poll=0.05, on_wait=waits.append).acquire()
    assert not path.exists()
    assert waits == [f"pid {os.getpid()} on {socket.gethostname()}"]


def test_lock_serialises_threads(tmp_path: Path) -> None:
    path, inside, overlaps = tmp_path / "x.lock", [], []

    def work() -> None:
        with BuildLock(path, poll=0.01):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps and not path.exists()


def test_lock_of_killed_builder_is_removed(tmp_path: Path) -> None:
    """The NVIDIA hang: a build killed with SIGKILL leaves its lock behind."""
    path = tmp_path / "x.lock"
    code = ("import importlib.util, sys, time; s = importlib.util.spec_from_file_location('bl', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "m.BuildLock(__import__('pathlib').Path(sys.argv[2])).acquire(); print('locked', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(LOCK_MODULE), str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        assert stale_reason(path) is None  # alive: a real lock
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.exists()
    assert "not running" in (stale_reason(path) or "")
    removed: list[str] = []
    t0 = time.monotonic()
    with BuildLock(path, on_stale=removed.append, timeout=10):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - t0 < 5
    assert removed and "not running" in removed[0]


def test_lock_without_heartbeat_is_stale(tmp_path: Path) -> None:
    """A holder on another host cannot be asked about its pid; a stopped heartbeat tells."""
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": 1, "host": "some-other-node", "since": 0}))
    assert stale_reason(path, stale_after=60) is None  # fresh: maybe building right now
    old = time.time() - 600
    os.utime(path, (old, old))
    assert "no heartbeat" in (stale_reason(path, stale_after=60) or "")
    with BuildLock(path, stale_after=60, timeout=5):
        pass


def test_lock_heartbeat_keeps_long_builds_fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stylegan2_ops.build_lock as bl

    monkeypatch.setattr(bl, "HEARTBEAT_S", 0.05)
    path = tmp_path / "x.lock"
    with BuildLock(path):
        old = time.time() - 600
        os.utime(path, (old, old))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


# ---- real compilation with nvcc (slow; deselect with -m 'not compile') ---------------------------------


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory):
    """Compile and link both plugins once per test session, as CI would on a GPU-less runner."""
    if not HAVE_NVCC:
        pytest.skip("no nvcc on this machine")
    cache = tmp_path_factory.mktemp("ops-cache")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAD_CACHE_DIR", str(cache))
        mp.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
        mp.setenv("CUDA_HOME", build.find_cuda_home() or "/usr/local/cuda")
        for plugin in build.PLUGINS:
            t0 = time.monotonic()
            spec, _ = build.build_plugin(plugin, load=False)
            results[plugin] = (spec, time.monotonic() - t0)
    return cache, results


@pytest.mark.compile
@pytest.mark.slow
@pytest.mark.parametrize("plugin", list(build.PLUGINS))
def test_plugin_compiles_and_links(compiled, plugin: str, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    cache, results = compiled
    spec, seconds = results[plugin]
    assert spec.build_dir.parent == cache and spec.archs == "9.0"
    assert spec.library.exists() and spec.library.stat().st_size > 10_000
    info = json.loads(spec.marker.read_text())
    assert info["key"] == spec.key and info["archs"] == "9.0"
    assert "build ok" in spec.log_path.read_text()
    # The second time it is a cache hit: no compiler, no build message, well under a second.
    monkeypatch.setenv("MAD_CACHE_DIR", str(cache))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    capfd.readouterr()
    t0 = time.monotonic()
    again, _ = build.build_plugin(plugin, load=False)
    assert time.monotonic() - t0 < 1.0
    assert again.library == spec.library and "building" not in capfd.readouterr().err
    # Importing needs the CUDA runtime, not a GPU; where it imports, the binding must be there.
    try:
        _, module = build.build_plugin(plugin, load=True)
    except ImportError as exc:
        pytest.skip(f"built library does not import on this machine: {exc}")
    assert callable(getattr(module, plugin))


def test_check_command_reports_environment_and_failures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from stylegan2_ops.__main__ import main

    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda-here"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")  # so that --arch's change is undone after the test
    assert main(["check", "--arch", "9.0"]) == 1
    out = capsys.readouterr().out
    for key in ("torch", "CUDA_HOME", "nvcc", "GPU", "architectures", "cache", "MAD_OPS"):
        assert f"  {key} " in out
    assert "9.0 (sm_90)" in out and str(tmp_path / "cache") in out
    assert out.count("FAILED: nvcc not found") == 2 and "build.log" in out
    assert "comparison skipped" in out
    with pytest.raises(SystemExit):
        main([])  # a subcommand is required
