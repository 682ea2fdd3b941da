"""Compile the CUDA plugins on first use and cache them.

How it works (the README describes the same for users):

* Each plugin (`bias_act`, `upfirdn2d`) is a `.cpp` binding plus a `.cu` kernel in
  `stylegan2_ops/csrc/`. The first time an op meets a CUDA tensor we build it with
  `torch.utils.cpp_extension.load` (ninja) into
  `$MAD_CACHE_DIR/<plugin>-<key>/` (default `~/.cache/mad/torch_extensions`).
* `<key>` hashes the sources, the torch version, torch's CUDA version, the Python
  version and the GPU architecture list, so a changed `.cu`, a torch upgrade or a
  different GPU builds into a fresh folder and never loads a mismatched binary.
* A finished build writes `built.json`; later runs import the `.so` directly
  (well under a second, no nvcc needed).
* Builds run under `BuildLock`, so DDP ranks or two shells starting together
  build once; a lock left by a killed build is removed (see build_lock.py).
* The architecture list is `TORCH_CUDA_ARCH_LIST` when set, else the visible
  GPUs' compute capabilities, else `DEFAULT_ARCH_LIST` so that a machine
  without a GPU (CI, a login node) can still compile.
* nvcc needs `CUDA_HOME` to link; when it is unset we use `/usr/local/cuda`
  if it holds `bin/nvcc` (torch itself would guess from `which nvcc`, and a
  `/usr/local/bin/nvcc` symlink makes it guess `/usr/local`, which fails to link).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Iterator

import torch

from .build_lock import BuildLock

CSRC = Path(__file__).resolve().parent / "csrc"
PLUGINS: dict[str, tuple[str, ...]] = {
    "bias_act": ("bias_act.cpp", "bias_act.cu"),
    "upfirdn2d": ("upfirdn2d.cpp", "upfirdn2d.cu"),
}
# nvcc 13 dropped everything below compute 7.5; Ampere and Hopper cover the
# GPUs people train StyleGAN2 on today. Only used with no GPU and no env list.
DEFAULT_ARCH_LIST = "8.0;9.0"
DEFAULT_CACHE_DIR = "~/.cache/mad/torch_extensions"
CUDA_CFLAGS = ("-O3",)
CXX_CFLAGS = ("-O3",)


class PluginBuildError(RuntimeError):
    """The plugin could not be built or loaded; `log_path` holds the details."""

    def __init__(self, plugin: str, reason: str, log_path: Path | None) -> None:
        self.plugin, self.reason, self.log_path = plugin, reason, log_path
        where = f"; build log: {log_path}" if log_path else ""
        super().__init__(f"could not build stylegan2_ops.{plugin}: {reason}{where}")


def cache_dir() -> Path:
    return Path(os.environ.get("MAD_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def find_cuda_home() -> str | None:
    """The CUDA toolkit root nvcc and the linker should use."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        return str(Path(nvcc).resolve().parent.parent)
    return None


def nvcc_version(cuda_home: str | None = None) -> str | None:
    """'13.0.88'-style version of the nvcc we would use, or None."""
    home = cuda_home or find_cuda_home()
    if not home:
        return None
    nvcc = Path(home) / "bin" / "nvcc"
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for token in out.replace(",", " ").split():
        if token.startswith("V") and token[1:2].isdigit():
            return token[1:]
    return None


def arch_list() -> str:
    """Architectures to compile for: env list, else visible GPUs, else the default."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env and env != "native":
        return env
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return DEFAULT_ARCH_LIST


def arch_label(archs: str) -> str:
    """'8.0;9.0+PTX' -> 'sm_80, sm_90+PTX' for the one-line build message."""
    labels = []
    for a in archs.replace(",", ";").replace(" ", ";").split(";"):
        if not a:
            continue
        base, ptx = (a[:-4], "+PTX") if a.endswith("+PTX") else (a, "")
        labels.append(("sm_" + base.replace(".", "") if base[:1].isdigit() else base) + ptx)
    return ", ".join(labels)


@dataclass(frozen=True)
class PluginSpec:
    plugin: str
    sources: tuple[Path, ...]
    archs: str
    key: str
    root: Path  # the cache directory when the spec was made (MAD_CACHE_DIR may change later)

    @property
    def module_name(self) -> str:
        return f"stylegan2_ops_{self.plugin}_{self.key[:12]}"

    @property
    def build_dir(self) -> Path:
        return self.root / f"{self.plugin}-{self.key[:16]}"

    @property
    def library(self) -> Path:
        return self.build_dir / f"{self.module_name}.so"

    @property
    def marker(self) -> Path:
        return self.build_dir / "built.json"

    @property
    def log_path(self) -> Path:
        return self.build_dir / "build.log"


def plugin_spec(plugin: str, archs: str | None = None) -> PluginSpec:
    if plugin not in PLUGINS:
        raise ValueError(f"plugin: expected one of {', '.join(PLUGINS)}, got {plugin!r}")
    archs = archs or arch_list()
    sources = tuple(CSRC / name for name in PLUGINS[plugin])
    h = hashlib.sha256()
    for part in (plugin, torch.__version__, str(torch.version.cuda), f"py{sys.version_info[0]}.{sys.version_info[1]}",
                 archs, " ".join(CUDA_CFLAGS + CXX_CFLAGS)):
        h.update(part.encode() + b"\0")
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return PluginSpec(plugin, sources, archs, h.hexdigest(), cache_dir())


def _say(msg: str, end: str = "\n") -> None:
    sys.stderr.write(msg + end)
    sys.stderr.flush()


@contextmanager
def _build_environment(archs: str, log_lines: list[str]) -> Iterator[None]:
    """CUDA_HOME and TORCH_CUDA_ARCH_LIST for this build only; torch's chatter goes to the log."""
    saved = {k: os.environ.get(k) for k in ("CUDA_HOME", "TORCH_CUDA_ARCH_LIST")}
    home = find_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs

    class _ToLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log_lines.append(f"[torch {record.levelname.lower()}] {record.getMessage()}")

    tlog = logging.getLogger("torch.utils.cpp_extension")
    handler, old_propagate = _ToLog(), tlog.propagate
    tlog.addHandler(handler)
    tlog.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from torch.utils import cpp_extension

            if home:
                cpp_extension.CUDA_HOME = home  # read at import time from the env; refresh it
            yield
        log_lines.extend(f"[warning] {w.message}" for w in caught)
    finally:
        tlog.removeHandler(handler)
        tlog.propagate = old_propagate
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _reason(text: str) -> str:
    """The most telling line of a failed build, for the one-line warning."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for needle in ("error:", "Error", "fatal", "not found", "No such file"):
        for ln in lines:
            if needle in ln and not ln.startswith("FAILED:"):
                return ln[:240]
    return (lines[-1] if lines else "unknown error")[:240]


def _log_header(spec: PluginSpec) -> list[str]:
    return [f"plugin {spec.plugin}, key {spec.key}", f"torch {torch.__version__} (CUDA {torch.version.cuda})",
            f"archs {spec.archs}", f"CUDA_HOME {find_cuda_home()}"]


def check_toolchain(spec: PluginSpec) -> None:
    """Fail fast, before announcing a build, when nvcc or ninja is missing."""
    home = find_cuda_home()
    reason = None
    if home is None or not (Path(home) / "bin" / "nvcc").exists():
        reason = "nvcc not found (set CUDA_HOME to the CUDA toolkit, e.g. /usr/local/cuda)"
    elif shutil.which("ninja") is None and not (Path(sys.executable).parent / "ninja").exists():
        reason = "ninja not found (pip install ninja)"
    if reason:
        spec.build_dir.mkdir(parents=True, exist_ok=True)
        spec.log_path.write_text("\n".join(_log_header(spec) + [reason]) + "\n")
        raise PluginBuildError(spec.plugin, reason, spec.log_path)


def compile_plugin(spec: PluginSpec) -> ModuleType | None:
    """Run nvcc/ninja for `spec` (caller holds the lock); the module, or None when
    the library was built but cannot be imported here. Raises PluginBuildError."""
    spec.build_dir.mkdir(parents=True, exist_ok=True)
    log_lines = _log_header(spec)
    check_toolchain(spec)
    # ninja installed in the venv is found by torch through PATH.
    path_saved = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path_saved}"
    try:
        with _build_environment(spec.archs, log_lines):
            from torch.utils.cpp_extension import load

            module = load(name=spec.module_name, sources=[str(s) for s in spec.sources],
                          build_directory=str(spec.build_dir), extra_cflags=list(CXX_CFLAGS),
                          extra_cuda_cflags=list(CUDA_CFLAGS), verbose=False)
    except Exception as exc:  # the build's output is in the exception text
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, (ImportError, OSError)) and spec.library.exists():
            # Compiled and linked, but this machine cannot import it (no driver): the caller decides.
            spec.log_path.write_text("\n".join(log_lines + ["build ok", f"import failed: {text}"]) + "\n")
            return None
        spec.log_path.write_text("\n".join(log_lines + [text]) + "\n")
        raise PluginBuildError(spec.plugin, _reason(text), spec.log_path) from exc
    finally:
        os.environ["PATH"] = path_saved
    spec.log_path.write_text("\n".join(log_lines + ["build ok"]) + "\n")
    return module


def _import_library(spec: PluginSpec) -> ModuleType:
    import importlib.util

    s = importlib.util.spec_from_file_location(spec.module_name, spec.library)
    if s is None or s.loader is None:
        raise ImportError(f"cannot load {spec.library}")
    module = importlib.util.module_from_spec(s)
    s.loader.exec_module(module)
    return module


def build_plugin(plugin: str, *, archs: str | None = None, load: bool = True,
                 stale_after: float | None = None) -> tuple[PluginSpec, ModuleType | None]:
    """Make sure `plugin` is built in the cache; import it unless `load=False`.

    `load=False` is for machines without a GPU (CI): the `.so` links against
    the CUDA runtime and may not import there, but compiling and linking is
    still worth proving. Raises PluginBuildError.
    """
    spec = plugin_spec(plugin, archs)
    if spec.marker.exists() and spec.library.exists():
        return spec, (_import_library(spec) if load else None)
    spec.build_dir.mkdir(parents=True, exist_ok=True)
    lock_kwargs = {} if stale_after is None else {"stale_after": stale_after}
    lock = BuildLock(spec.build_dir / "mad.lock",
                     on_wait=lambda who: _say(f"waiting for {who} building stylegan2_ops.{plugin}…"),
                     on_stale=lambda why: _say(f"removed stale build lock of stylegan2_ops.{plugin} ({why})"),
                     **lock_kwargs)
    with lock:
        if not (spec.marker.exists() and spec.library.exists()):  # nobody finished it while we waited
            check_toolchain(spec)
            _say(f"building stylegan2_ops.{plugin} for {arch_label(spec.archs)} (first use, ~1 min)…")
            t0 = time.monotonic()
            module = compile_plugin(spec)
            if not spec.library.exists():
                raise PluginBuildError(plugin, f"build finished but {spec.library.name} is missing", spec.log_path)
            tmp = spec.marker.with_suffix(".tmp")
            tmp.write_text(json.dumps({"key": spec.key, "archs": spec.archs, "torch": torch.__version__,
                                       "cuda": torch.version.cuda, "nvcc": nvcc_version(),
                                       "seconds": round(time.monotonic() - t0, 1), "built_at": time.time()}))
            os.replace(tmp, spec.marker)
            _say(f"done in {time.monotonic() - t0:.0f} s")
            if module is None and load:
                raise PluginBuildError(plugin, "built, but the library cannot be imported on this machine",
                                       spec.log_path)
            return spec, (module if load else None)
    return spec, (_import_library(spec) if load else None)


# ---- in-process registry used by the ops -------------------------------------------------------

_loaded: dict[str, ModuleType] = {}
_failed: dict[str, PluginBuildError] = {}
_mutex = threading.Lock()


def get_plugin(plugin: str) -> ModuleType:
    """The loaded plugin module; builds on first call. Raises PluginBuildError (remembered)."""
    with _mutex:
        if plugin in _loaded:
            return _loaded[plugin]
        if plugin in _failed:
            raise _failed[plugin]
        try:
            _, module = build_plugin(plugin)
            assert module is not None
        except PluginBuildError as exc:
            _failed[plugin] = exc
            raise
        except Exception as exc:  # an import error of a built library, an OS error in the cache, ...
            err = PluginBuildError(plugin, f"{type(exc).__name__}: {exc}", None)
            _failed[plugin] = err
            raise err from exc
        _loaded[plugin] = module
        return module


def try_get_plugin(plugin: str) -> ModuleType | None:
    """`get_plugin`, or None after one warning line on stderr (impl='auto')."""
    warned = plugin in _failed
    try:
        return get_plugin(plugin)
    except PluginBuildError as exc:
        if not warned:
            _say(f"stylegan2_ops: warning: {exc}; using the reference implementation")
        return None


def forget_plugins() -> None:
    """Drop the in-process registry (tests; a user fixing CUDA_HOME in a notebook)."""
    with _mutex:
        _loaded.clear()
        _failed.clear()
