"""The measuring half of `benchmarks/gpu_check.sh`: one subcommand per step, one JSON file each.

Why a helper: the shell script owns the order, the per-step `timeout` and the rule that a
failed step never stops the next one; this file owns what each step measures and the final
table. Each step writes WORK/results/STEP.json (status ok / skipped / failed, the reason,
the figures); `table` reads them all, plus the shell's record of each step (exit code,
seconds, timeout) and the logs of the two steps the shell runs directly (the plugin check
and pytest), and prints one markdown table with the issue's goals next to the figures.

Without a GPU every GPU step writes "skipped" with the reason. `--cpu` (the shell's
GPU_CHECK_ON_CPU=1) instead runs every step on the CPU with CPU-sized settings, to test
the plumbing of this script on a machine without a GPU; those figures are CPU figures and
the table says so, they are never GPU numbers.

    python3 benchmarks/gpu_check.py STEP --work DIR [--budget SECONDS] [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

T0 = time.monotonic()  # the step's budget counts from the start of this process
ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PY = sys.executable

#: The issue's goals (issue 10, §5).
GOAL_SEC_PER_KIMG = 8.0  # auto at 256² on one H100/H200 (NVIDIA published 12.53 on an A100)
GOAL_BIAS_ACT = 3.0  # CUDA bias_act ≥ 3× the reference
GOAL_UPFIRDN2D = 2.0  # CUDA upfirdn2d ≥ 2× the reference
#: Modules the steps need, and what for (reported by `env`; a missing one skips its steps).
MODULES = {
    "numpy": "everything", "PIL": "image folders", "typer": "the mad CLI", "rich": "the mad CLI",
    "pytest": "pytest -m gpu", "torch_fidelity": "Inception features", "scipy": "torch-fidelity",
}


# ---------------------------------------------------------------------------------------
# Results


def write_result(work: Path, step: str, status: str, reason: str = "", **fields: Any) -> dict[str, Any]:
    """WORK/results/STEP.json, written atomically (a killed step leaves no half file)."""
    out = work / "results"
    out.mkdir(parents=True, exist_ok=True)
    row = {"step": step, "status": status, "reason": reason, **fields}
    tmp = out / f".{step}.json.tmp"
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(out / f"{step}.json")
    print(json.dumps(row), flush=True)
    return row


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def missing(*modules: str) -> list[str]:
    import importlib.util

    return [m for m in modules if importlib.util.find_spec(m) is None]


def device_or_skip(args: argparse.Namespace, step: str) -> Any:
    """cuda, cpu (with --cpu), or None after writing "skipped" with the reason."""
    import torch

    if args.cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    write_result(args.work, step, "skipped", "no CUDA GPU visible (torch.cuda.is_available() is False)")
    return None


def left(args: argparse.Namespace, reserve: float = 4.0) -> float:
    """Seconds this step may still spend, keeping `reserve` to write its result."""
    return args.budget - (time.monotonic() - T0) - reserve


def mad(args: list[str], *, env: dict[str, str] | None = None, timeout: float, log: Path | None = None) -> tuple[subprocess.CompletedProcess[str] | None, float]:
    """`python -m mad_cli ARGS` from the repository root; (result or None on timeout, seconds).

    With `log`, stdout and stderr also go to that file as they come, so a run that times
    out still shows how far it got."""
    t0 = time.perf_counter()
    if log is None:
        try:
            done = subprocess.run([PY, "-m", "mad_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            return None, time.perf_counter() - t0
        return done, time.perf_counter() - t0
    log.parent.mkdir(parents=True, exist_ok=True)
    out, err = log.with_suffix(".stdout"), log
    # On a timeout the child gets SIGABRT first: with PYTHONFAULTHANDLER set it writes every
    # thread's stack into the log, which says where a slow or stuck run was.
    env = {**(env if env is not None else os.environ), "PYTHONFAULTHANDLER": "1", "PYTHONUNBUFFERED": "1"}
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen([PY, "-m", "mad_cli", *args], cwd=ROOT, env=env, stdout=fo, stderr=fe, text=True)
        try:
            proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return None, time.perf_counter() - t0
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(errors="replace"), err.read_text(errors="replace"))
    return done, time.perf_counter() - t0


def last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def json_rows(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


# ---------------------------------------------------------------------------------------
# Data


def rgb_folder(folder: Path, resolution: int, n: int, seed: int = 0) -> Path:
    """Smooth random colour images (sums of sinusoids): cheap to make, not constant, RGB."""
    import numpy as np

    from mad_cli.imagedir import write_png

    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:resolution, :resolution] / resolution
    for i in range(n):
        f = rng.uniform(1, 5, (3, 2))
        ph = rng.uniform(0, 2 * np.pi, 3)
        arr = np.stack([np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c]) for c in range(3)], -1)
        write_png(folder / f"{i:05d}.png", ((arr + 1) * 127.5).astype(np.uint8))
    done.write_text("")
    return folder


# ---------------------------------------------------------------------------------------
# Steps


def step_wheels(args: argparse.Namespace) -> None:
    """Install the wheels in MAD_WHEELS (files or folders) into --target, offline.

    pip with --no-index --no-deps when pip exists (nothing is resolved or downloaded),
    else the wheels are unpacked (a wheel is a zip of its site-packages entries).
    """
    target = Path(args.target)
    target.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for part in args.paths:
        for item in filter(None, part.split(os.pathsep)):
            p = Path(item)
            wheels += sorted(p.glob("*.whl")) if p.is_dir() else [p]
    bad = [str(w) for w in wheels if not (w.is_file() and w.suffix == ".whl")]
    if bad or not wheels:
        write_result(args.work, "wheels", "failed", f"not a wheel or folder of wheels: {bad[0] if bad else ' '.join(args.paths)}")
        return
    how = "pip --no-index --no-deps"
    done = subprocess.run([PY, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target", str(target), *map(str, wheels)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        how = f"unzipped (pip unavailable: {last_error(done.stderr)[:120]})"
        for w in wheels:
            with zipfile.ZipFile(w) as z:
                z.extractall(target)
    write_result(args.work, "wheels", "ok", how, wheels=[w.name for w in wheels], target=str(target))


def step_env(args: argparse.Namespace) -> None:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [],
        "cpus": os.cpu_count(), "mode": "cpu plumbing test" if args.cpu else "gpu",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["capability"] = f"{props.major}.{props.minor}"
    try:
        from stylegan2_ops import build

        info["nvcc"] = build.nvcc_version(build.find_cuda_home()) or "not found"
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        info["nvcc"] = f"unknown ({exc})"
    info["missing_modules"] = {m: MODULES[m] for m in missing(*MODULES)}
    write_result(args.work, "env", "ok", **info)


def _rel(got: Any, want: Any) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-6))


def step_ops_compare(args: argparse.Namespace) -> None:
    """Every op, CUDA against the reference on the same (rounded) inputs in float64: forward
    and input gradient, float32 and float16, contiguous and channels-last."""
    dev = device_or_skip(args, "ops_compare")
    if dev is None:
        return
    import torch

    from stylegan2_ops import ACTIVATIONS, bias_act, conv2d_resample, downsample2d, setup_filter, upfirdn2d, upsample2d

    if dev.type == "cpu":
        write_result(args.work, "ops_compare", "skipped", "CPU plumbing run: there are no CUDA kernels to compare on a CPU")
        return
    torch.backends.cudnn.allow_tf32 = False  # the reference is partly a convolution: compare kernels, not TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    f4 = setup_filter([1, 3, 3, 1], device=dev)
    f8 = setup_filter([1, 2, 4, 6, 6, 4, 2, 1], device=dev)  # 8 taps: separable
    w3 = torch.randn(32, 48, 3, 3, device=dev) / (48 * 9) ** 0.5
    w1 = torch.randn(32, 48, 1, 1, device=dev) / 48**0.5
    b = torch.randn(48, device=dev)

    def away_from_kinks(x: Any, act: str, clamp: float | None) -> Any:
        """Inputs off relu's kink and the clamp edge, where float16 rounding flips a gradient."""
        for _ in range(20):
            s = x.double() + b.double()[None, :, None, None]
            y = bias_act(s, act=act, impl="ref")
            bad = s.abs() < 0.05
            if clamp is not None:
                bad |= (y.abs() - clamp).abs() < 0.05
            if not bad.any():
                break
            x = torch.where(bad, x + 0.2, x)
        return x

    case_dtype = {"dtype": torch.float32}

    def rounded(t: Any, like: Any) -> Any:
        """A parameter as the kernel sees it (rounded to the case's dtype), in `like`'s dtype."""
        return t.to(case_dtype["dtype"]).to(like.dtype)

    ops: dict[str, list[Any]] = {"bias_act": [], "upfirdn2d": [], "upsample2d": [], "downsample2d": [], "conv2d_resample": []}
    for act in ACTIVATIONS:
        for clamp in (None, 2.0):
            ops["bias_act"].append((f"{act} clamp={clamp}", lambda x, impl, act=act, clamp=clamp: bias_act(x, rounded(b, x), act=act, clamp=clamp, impl=impl),
                                    lambda x, act=act, clamp=clamp: away_from_kinks(x, act, clamp)))
    for up, down, pad in ((1, 1, [1, 1, 1, 1]), (2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (3, 2, [-1, 2, 0, 1])):
        for name, f in (("4-tap", f4), ("8-tap separable", f8)):
            ops["upfirdn2d"].append((f"{name} up={up} down={down}", lambda x, impl, f=f, up=up, down=down, pad=pad: upfirdn2d(x, f, up=up, down=down, padding=pad, impl=impl), None))
    ops["upsample2d"].append(("x2", lambda x, impl: upsample2d(x, f4, impl=impl), None))
    ops["downsample2d"].append(("x2", lambda x, impl: downsample2d(x, f4, impl=impl), None))
    for up, down, w in ((2, 1, w3), (1, 2, w3), (1, 1, w3), (2, 1, w1), (1, 2, w1)):
        k = w.shape[-1]
        ops["conv2d_resample"].append((f"{k}x{k} up={up} down={down}", lambda x, impl, w=w, up=up, down=down, k=k: conv2d_resample(
            x, rounded(w, x), f4, up=up, down=down, padding=k // 2, impl=impl), None))

    rows = []
    for op, cases in ops.items():
        for dtype in (torch.float32, torch.float16):
            case_dtype["dtype"] = dtype
            for layout in ("contiguous", "channels_last"):
                tol_f = 1e-5 if dtype == torch.float32 else (5e-3 if op == "conv2d_resample" else 2e-3)
                tol_g = 1e-4 if dtype == torch.float32 else 3e-2
                worst_f = worst_g = 0.0
                error = ""
                for case, fn, prep in cases:
                    x = torch.randn(4, 48, 24, 24, device=dev) * 3
                    if prep is not None:
                        x = prep(x)
                    x64 = x.to(dtype).double()  # the reference sees the rounded inputs
                    xt = x.to(dtype)
                    xt = (xt.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else xt).requires_grad_()
                    try:
                        got = fn(xt, "cuda")
                        (g_got,) = torch.autograd.grad((got.float() * got.float().cos()).sum(), [xt])
                    except Exception as exc:  # noqa: BLE001 - a kernel that fails is a result
                        error = f"{case}: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"
                        break
                    xr = x64.clone().requires_grad_()
                    want = fn(xr, "ref")
                    (g_want,) = torch.autograd.grad((want * want.cos()).sum(), [xr])
                    worst_f = max(worst_f, _rel(got, want))
                    worst_g = max(worst_g, _rel(g_got, g_want))
                ok = not error and worst_f <= tol_f and worst_g <= tol_g
                rows.append({"op": op, "dtype": str(dtype).split(".")[-1], "layout": layout, "cases": len(cases),
                             "max_rel_err_forward": worst_f, "max_rel_err_grad": worst_g, "tol_forward": tol_f, "tol_grad": tol_g,
                             "ok": ok, "error": error})
    failed = [r for r in rows if not r["ok"]]
    write_result(args.work, "ops_compare", "ok" if not failed else "failed",
                 "" if not failed else f"{len(failed)} of {len(rows)} op/dtype/layout rows off tolerance", rows=rows)


def step_ops_timing(args: argparse.Namespace) -> None:
    """benchmarks/ops.py's cases (StyleGAN2's shapes at 256² and 1024²), forward, median ms."""
    dev = device_or_skip(args, "ops_timing")
    if dev is None:
        return
    import torch

    sys.path.insert(0, str(BENCH))
    import ops as opsbench  # benchmarks/ops.py

    small = dev.type == "cpu"
    impls = ["ref"] if small else ["ref", "cuda"]
    dtypes = [torch.float32] if small else [torch.float32, torch.float16]
    deadline = time.monotonic() + left(args)
    rows = []
    for op, res, shape, fn, _ in opsbench.cases(small):
        for dtype in dtypes:
            ms: dict[str, float] = {}
            for impl in impls:
                if time.monotonic() > deadline:
                    break
                x = torch.randn(shape, device=dev, dtype=dtype)

                def run(x: Any = x, impl: str = impl, fn: Any = fn) -> Any:
                    with torch.no_grad():
                        return fn(x, impl)

                try:
                    ms[impl] = opsbench.measure(run, dev, 10 if not small else 3)[0]
                except Exception as exc:  # noqa: BLE001
                    ms[impl] = float("nan")
                    rows.append({"op": op, "res": res, "error": f"{impl}: {type(exc).__name__}: {str(exc)[:150]}"})
                del x
            if "ref" in ms:
                rows.append({"op": op, "res": res, "shape": "x".join(map(str, shape)), "dtype": str(dtype).split(".")[-1],
                             "ref_ms": round(ms["ref"], 3), "cuda_ms": round(ms["cuda"], 3) if "cuda" in ms else None,
                             "speedup": round(ms["ref"] / ms["cuda"], 2) if ms.get("cuda") else None})
    write_result(args.work, "ops_timing", "ok" if time.monotonic() <= deadline else "partial",
                 "" if time.monotonic() <= deadline else "budget ran out before every case", rows=rows, small_shapes=small)


def _train_figures(run: Path) -> dict[str, Any]:
    """sec/kimg over the ticks after the first (warm-up: plugin load, cuDNN autotuning), peak GPU memory."""
    rows = []
    if (run / "log.jsonl").exists():
        for line in (run / "log.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    out: dict[str, Any] = {"ticks": len(rows)}
    if not rows:
        return out
    prev = [0] + [r["nimg"] for r in rows[:-1]]
    spans = [((r["nimg"] - p) / 1000, r["sec_per_kimg"]) for r, p in zip(rows, prev)]
    steady = spans[1:] or spans
    kimg = sum(k for k, _ in steady)
    out["sec_per_kimg"] = sum(k * s for k, s in steady) / kimg if kimg else None
    out["steady_kimg"] = kimg
    out["warmup_tick_included"] = len(spans) == 1
    mem = [r.get("gpu_mem_gb") for r in rows if r.get("gpu_mem_gb") is not None]
    out["peak_gpu_gb"] = max(mem) if mem else None
    out["kimg_done"] = rows[-1]["nimg"] / 1000
    return out


def step_train(args: argparse.Namespace) -> None:
    """`mad train --cfg auto` at 256² RGB, custom ops on (MAD_OPS unset) or off (ref)."""
    step = f"train_{args.ops}"
    dev = device_or_skip(args, step)
    if dev is None:
        return
    if missing("numpy", "PIL", "typer", "rich"):
        write_result(args.work, step, "skipped", f"not importable: {', '.join(missing('numpy', 'PIL', 'typer', 'rich'))} (pass their wheels in MAD_WHEELS)")
        return
    cpu = dev.type == "cpu"
    res, cfg, kimg, snap = (16, "tiny", 0.032, 0.016) if cpu else (256, "auto", 2.0, 0.5)
    data = rgb_folder(args.work / f"data{res}", res, 64 if cpu else 512)
    run = args.work / step
    shutil.rmtree(run, ignore_errors=True)
    env = dict(os.environ)
    env.pop("MAD_OPS", None)
    if args.ops == "ref":
        env["MAD_OPS"] = "ref"
    done, seconds = mad(["train", str(data), "--out", str(run), "--cfg", cfg, "--kimg", str(kimg), "--snap-every", str(snap),
                         "--device", dev.type, "--json"], env=env, timeout=left(args), log=args.work / "logs" / f"{step}-mad-train.log")
    figures = {**_train_figures(run), "cfg": cfg, "resolution": res, "kimg": kimg, "wall_s": round(seconds, 1), "ops": args.ops}
    if done is None:
        write_result(args.work, step, "partial" if figures.get("sec_per_kimg") else "failed", f"mad train timed out after {seconds:.0f} s", **figures)
    elif done.returncode != 0:
        write_result(args.work, step, "failed", last_error(done.stderr), **figures)
    else:
        write_result(args.work, step, "ok", **figures)


def step_sample(args: argparse.Namespace) -> None:
    dev = device_or_skip(args, "sample")
    if dev is None:
        return
    snaps = [args.work / f"train_{o}" / "latest.pt" for o in ("auto", "ref")]
    snap = next((s for s in snaps if s.exists()), None)
    if snap is None:
        write_result(args.work, "sample", "skipped", "no snapshot: the train steps did not finish one")
        return
    n = 32 if dev.type == "cpu" else 1000
    out = args.work / "samples"
    shutil.rmtree(out, ignore_errors=True)
    done, seconds = mad(["sample", str(snap), str(out), "--n", str(n), "--device", dev.type, "--json"], timeout=left(args), log=args.work / "logs" / "sample-mad-sample.log")
    if done is None or done.returncode != 0:
        write_result(args.work, "sample", "failed", f"timed out after {seconds:.0f} s" if done is None else last_error(done.stderr))
        return
    row = (json_rows(done.stdout) or [{}])[-1]
    write_result(args.work, "sample", "ok", n=n, images_per_s=row.get("images_per_s"), seconds=row.get("seconds"),
                 wall_s=round(seconds, 1), snapshot=str(snap), resolution=256 if dev.type != "cpu" else 16)


def step_inception(args: argparse.Namespace) -> None:
    """Inception (torch-fidelity's network) feature extraction images/s, random weights."""
    dev = device_or_skip(args, "inception")
    if dev is None:
        return
    lacking = missing("torch_fidelity", "scipy", "numpy", "PIL")
    if lacking:
        write_result(args.work, "inception", "skipped", f"not importable: {', '.join(lacking)} (pass torch-fidelity's wheel, and scipy's, in MAD_WHEELS)")
        return
    import torch

    from mad_cli.features import get_extractor, write_random_inception_weights

    weights = write_random_inception_weights(args.work / "inception-random-weights.pth")
    ex = get_extractor("inception", weights=str(weights), device=dev)
    size, batch, n = (64, 4, 8) if dev.type == "cpu" else (256, 64, 2048)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ex.extract(x)  # warm-up: builds the network, cuDNN autotuning
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n // batch):
        ex.extract(x)  # extract returns features on the host: the copy-back is part of the figure
    rate = n / (time.perf_counter() - t0)
    figures: dict[str, Any] = {"images_per_s": round(rate, 1), "n": n, "input": f"{size}x{size} uint8", "batch": batch, "weights": "random (speed only)"}
    write_result(args.work, "inception", "ok", **figures)  # the figure is in, whatever happens next
    # The whole command once, on the sample step's images against the training folder.
    samples, real = args.work / "samples", args.work / ("data16" if dev.type == "cpu" else "data256")
    if samples.exists() and real.exists() and not missing("typer", "rich") and left(args) > 10:
        done, seconds = mad(["metrics", str(real), str(samples), "--features", "inception", "--features-weights", str(weights),
                             "--device", dev.type, "--no-cache", "--n", "32" if dev.type == "cpu" else "1000", "--json"],
                            timeout=left(args))
        if done is None:
            figures["mad_metrics_error"] = f"`mad metrics` timed out after {seconds:.0f} s"
        elif done.returncode != 0:
            figures["mad_metrics_error"] = last_error(done.stderr)
        else:
            figures["mad_metrics_wall_s"] = round(seconds, 1)
        write_result(args.work, "inception", "ok", **figures)


def step_ddpm(args: argparse.Namespace) -> None:
    """One short `--model ddpm --cfg faces64` run at 64² and `mad sample --steps 50`."""
    dev = device_or_skip(args, "ddpm")
    if dev is None:
        return
    if missing("numpy", "PIL", "typer", "rich"):
        write_result(args.work, "ddpm", "skipped", f"not importable: {', '.join(missing('numpy', 'PIL', 'typer', 'rich'))}")
        return
    cpu = dev.type == "cpu"
    res, cfg, kimg, snap, n = (16, "tiny", 0.016, 0.016, 8) if cpu else (64, "faces64", 2.0, 1.0, 256)
    data = rgb_folder(args.work / f"data{res}", res, 64 if cpu else 512)
    run = args.work / "ddpm_run"
    shutil.rmtree(run, ignore_errors=True)
    done, seconds = mad(["train", str(data), "--out", str(run), "--model", "ddpm", "--cfg", cfg, "--kimg", str(kimg),
                         "--snap-every", str(snap), "--device", dev.type, "--json"], timeout=left(args) * 0.75,
                        log=args.work / "logs" / "ddpm-mad-train.log")
    figures: dict[str, Any] = {**_train_figures(run), "cfg": cfg, "resolution": res, "kimg": kimg, "train_wall_s": round(seconds, 1)}
    if done is None or done.returncode != 0 or not (run / "latest.pt").exists():
        write_result(args.work, "ddpm", "failed", f"mad train timed out after {seconds:.0f} s" if done is None else last_error(done.stderr), **figures)
        return
    out = args.work / "ddpm_samples"
    shutil.rmtree(out, ignore_errors=True)
    done, seconds = mad(["sample", str(run / "latest.pt"), str(out), "--n", str(n), "--steps", "50", "--device", dev.type, "--json"],
                        timeout=left(args), log=args.work / "logs" / "ddpm-mad-sample.log")
    if done is None or done.returncode != 0:
        write_result(args.work, "ddpm", "partial", f"mad sample {'timed out' if done is None else 'failed: ' + last_error(done.stderr)}", **figures)
        return
    row = (json_rows(done.stdout) or [{}])[-1]
    write_result(args.work, "ddpm", "ok", **figures, sample_images_per_s=row.get("images_per_s"), sample_n=n, sample_steps=50)


# ---------------------------------------------------------------------------------------
# The table


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-2 and x != 0 else f"{x:,.{digits}f}"
    return str(x)


def _status(work: Path, step: str) -> tuple[dict[str, Any] | None, str]:
    """The step's JSON, and a note from the shell's record when the step left none or failed."""
    res = read_json(work / "results" / f"{step}.json")
    shell = read_json(work / "status" / f"{step}.json") or {}
    note = ""
    if shell.get("skipped"):
        note = f"skipped: {shell['skipped']}"
    elif shell.get("rc") in (124, 137):
        note = f"timed out after {shell.get('timeout')} s"
    elif shell.get("rc") not in (None, 0) and res is None:
        note = f"exit {shell.get('rc')}: {shell.get('last_line', '')}"
    return res, note


def _check_log(work: Path) -> tuple[str, str]:
    log = work / "logs" / "ops_check.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    plugins = [line.strip() for line in text.splitlines() if line.strip().startswith(("bias_act ", "upfirdn2d "))]
    built = sum(" ok (" in p for p in plugins)
    compared = [line for line in text.splitlines() if line.strip().startswith(("ok  ", "FAIL"))]
    fails = sum(line.strip().startswith("FAIL") for line in compared)
    value = f"plugins built {built}/2"
    if compared:
        value += f"; CUDA vs ref {len(compared) - fails}/{len(compared)} within tolerance"
    elif "no GPU visible" in text:
        value += "; comparison skipped (no GPU)"
    failed = [p for p in plugins if "FAILED" in p]
    return value, (failed[0][:160] if failed else "")


def _pytest_log(work: Path) -> str:
    log = work / "logs" / "pytest_gpu.log"
    if not log.exists():
        return ""
    lines = [line.strip("= ").strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    summary = [line for line in lines if (" passed" in line or " failed" in line or " skipped" in line or " deselected" in line or "error" in line) and " in " in line]
    return summary[-1] if summary else (lines[-1][:200] if lines else "")


def step_table(args: argparse.Namespace) -> None:
    work = args.work
    env = read_json(work / "results" / "env.json") or {}
    rows: list[tuple[str, str, str, str]] = []  # (check, figure, goal, verdict/notes)

    def add(check: str, figure: str, goal: str = "—", verdict: str = "") -> None:
        rows.append((check, figure, goal, verdict))

    def met(value: float | None, goal: float, higher: bool) -> str:
        if value is None:
            return "not measured"
        return "**met**" if (value >= goal if higher else value <= goal) else "**missed**"

    shell = read_json(work / "status" / "ops_check.json") or {}
    value, failure = _check_log(work)
    if shell.get("rc") in (124, 137):
        failure = f"timed out after {shell.get('timeout')} s"
    if shell.get("skipped"):
        add("`python -m stylegan2_ops check`", "—", "all ok", f"skipped: {shell['skipped']}")
    else:
        add("`python -m stylegan2_ops check`", value, "all ok", "ok" if shell.get("rc") == 0 else (failure or f"exit {shell.get('rc')}"))

    shell = read_json(work / "status" / "pytest_gpu.json") or {}
    summary = _pytest_log(work)
    if shell.get("skipped"):
        add("`pytest -m gpu`", "—", "0 failed", f"skipped: {shell['skipped']}")
    else:
        if shell.get("rc") in (124, 137):
            note = f"timed out after {shell.get('timeout')} s" + (" (while exiting: the summary is complete)" if " in " in summary else "")
        else:
            note = "ok" if shell.get("rc") == 0 else f"exit {shell.get('rc')}"
        add("`pytest -m gpu`", summary or "—", "0 failed", note)

    res, note = _status(work, "ops_compare")
    if res and res.get("rows"):
        for op in dict.fromkeys(r["op"] for r in res["rows"]):
            mine = [r for r in res["rows"] if r["op"] == op]
            parts = []
            for dt in ("float32", "float16"):
                sel = [r for r in mine if r["dtype"] == dt]
                if sel:
                    parts.append(f"{dt} fwd {_fmt(max(r['max_rel_err_forward'] for r in sel))} / grad {_fmt(max(r['max_rel_err_grad'] for r in sel))}")
            bad = [r for r in mine if not r["ok"]]
            tol = "fp32 ≤ 1e-5 fwd, 1e-4 grad; fp16 ≤ 2e-3, 3e-2"
            add(f"CUDA vs ref: {op} (max rel. error, contiguous + channels-last)", "; ".join(parts), tol,
                "ok" if not bad else f"FAIL {bad[0]['dtype']} {bad[0]['layout']} {bad[0]['error']}".strip())
    else:
        add("CUDA vs ref: every op (max error, fp32/fp16, channels-last)", "—", "within tolerance", note or (res or {}).get("reason", "no result"))

    res, note = _status(work, "ops_timing")
    if res and res.get("rows") and any(r.get("speedup") for r in res["rows"]):
        for label, prefixes, goal in (("bias_act", ("bias_act",), GOAL_BIAS_ACT), ("upfirdn2d", ("upsample2d", "downsample2d"), GOAL_UPFIRDN2D),
                                      ("conv2d_resample", ("conv2d_resample",), None)):
            sel = [r for r in res["rows"] if r.get("speedup") and r["op"].startswith(prefixes)]
            if not sel:
                continue
            worst = min(sel, key=lambda r: r["speedup"])
            fig = f"min {worst['speedup']:.2f}× ({worst['op']} {worst['shape']} {worst['dtype']}: {worst['ref_ms']} → {worst['cuda_ms']} ms), median {statistics.median(r['speedup'] for r in sel):.2f}× over {len(sel)} cases"
            add(f"timing: {label} CUDA vs ref (fwd)", fig, f"≥ {goal:g}×" if goal else "—", met(worst["speedup"], goal, True) if goal else "")
    elif res and res.get("rows"):
        ref = [r for r in res["rows"] if r.get("ref_ms") is not None]
        add("timing: ops CUDA vs ref", f"reference only (CPU, small shapes): {len(ref)} cases, e.g. {ref[0]['op']} {ref[0]['ref_ms']} ms" if ref else "—",
            f"bias_act ≥ {GOAL_BIAS_ACT:g}×, upfirdn2d ≥ {GOAL_UPFIRDN2D:g}×", "not measured (no GPU)")
    else:
        add("timing: ops CUDA vs ref", "—", f"bias_act ≥ {GOAL_BIAS_ACT:g}×, upfirdn2d ≥ {GOAL_UPFIRDN2D:g}×", note or (res or {}).get("reason", "no result"))

    for ops, label in (("auto", "custom ops on"), ("ref", "custom ops off, MAD_OPS=ref")):
        res, note = _status(work, f"train_{ops}")
        title = f"`mad train --cfg auto` 256² RGB, {label}"
        if res and res.get("sec_per_kimg") is not None:
            title = f"`mad train --cfg {res['cfg']}` {res['resolution']}² RGB, {label}"
            fig = f"{res['sec_per_kimg']:.2f} s/kimg over {res['steady_kimg']:.2f} kimg; peak {_fmt(res.get('peak_gpu_gb'))} GB"
            goal = f"≤ {GOAL_SEC_PER_KIMG:g} s/kimg (A100: 12.53)" if ops == "auto" else "—"
            verdict = met(res["sec_per_kimg"], GOAL_SEC_PER_KIMG, False) if ops == "auto" and res["cfg"] == "auto" else ""
            add(title, fig, goal, " ".join(filter(None, [verdict, res.get("reason", ""), note])))
        else:
            add(title, "—", f"≤ {GOAL_SEC_PER_KIMG:g} s/kimg" if ops == "auto" else "—", note or (res or {}).get("reason", "no result"))
    a, r = read_json(work / "results" / "train_auto.json") or {}, read_json(work / "results" / "train_ref.json") or {}
    if a.get("sec_per_kimg") and r.get("sec_per_kimg") and env.get("mode") != "cpu plumbing test":  # on a CPU both run the reference
        add("training speed-up from the custom ops", f"{r['sec_per_kimg'] / a['sec_per_kimg']:.2f}×", "—")

    res, note = _status(work, "sample")
    if res and res.get("status") == "ok":
        add(f"`mad sample` {res['resolution']}² (PNG writing included)", f"{_fmt(res.get('images_per_s'), 1)} images/s ({res['n']} images)", "—", "")
    else:
        add("`mad sample` 256²", "—", "—", note or (res or {}).get("reason", "no result"))

    res, note = _status(work, "inception")
    if res and res.get("status") == "ok":
        extra = f"; whole `mad metrics` run {res['mad_metrics_wall_s']} s" if res.get("mad_metrics_wall_s") else ""
        add("Inception features (torch-fidelity network, **random weights: speed only**)",
            f"{res['images_per_s']} images/s ({res['input']}, batch {res['batch']}){extra}", "—", res.get("mad_metrics_error", ""))
    else:
        add("Inception features (random weights: speed only)", "—", "—", note or (res or {}).get("reason", "no result"))

    res, note = _status(work, "ddpm")
    if res and res.get("status") in ("ok", "partial"):
        fig = f"train {_fmt(res.get('sec_per_kimg'))} s/kimg, peak {_fmt(res.get('peak_gpu_gb'))} GB; sample {_fmt(res.get('sample_images_per_s'), 1)} images/s at 50 steps"
        add(f"ddpm `--cfg {res['cfg']}` {res['resolution']}²", fig, "—", res.get("reason", ""))
    else:
        add("ddpm `--cfg faces64` 64²", "—", "—", note or (res or {}).get("reason", "no result"))

    gpus = ", ".join(env.get("gpus") or []) or "no GPU"
    mode = " — **CPU plumbing test: these are not GPU figures**" if env.get("mode") == "cpu plumbing test" else ""
    lacking = env.get("missing_modules") or {}
    print()
    print(f"## gpu_check: {gpus}, torch {env.get('torch', '?')} (CUDA {env.get('torch_cuda')}), nvcc {env.get('nvcc', '?')}, "
          f"python {env.get('python', '?')}{mode}")
    if lacking:
        print(f"Missing modules: {', '.join(f'{m} ({why})' for m, why in lacking.items())}")
    print()
    print("| check | figure | goal | verdict / notes |")
    print("|---|---|---|---|")
    for check, fig, goal, verdict in rows:
        cells = [c.replace("|", "\\|").replace("\n", " ") for c in (check, fig, goal, verdict or "")]
        print("| " + " | ".join(cells) + " |")


STEPS = {
    "wheels": step_wheels, "env": step_env, "ops-compare": step_ops_compare, "ops-timing": step_ops_timing,
    "train": step_train, "sample": step_sample, "inception": step_inception, "ddpm": step_ddpm, "table": step_table,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=list(STEPS))
    ap.add_argument("paths", nargs="*", help="wheels: wheel files or folders of wheels")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds this step may take (its subprocesses stop before)")
    ap.add_argument("--cpu", action="store_true", help="run the GPU steps on the CPU with CPU-sized settings (plumbing test)")
    ap.add_argument("--ops", choices=["auto", "ref"], default="auto", help="train: custom ops on (auto) or off (ref)")
    ap.add_argument("--target", help="wheels: folder to install into")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    STEPS[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
