"""The numbers the reproduction scripts print that no `mad` command computes; run by them, never alone:

    python examples/_tables.py summary ARM=LOOP [ARM=LOOP ...]
    python examples/_tables.py gaussian-strong --truth T.pt --source S.pt --truth-n 20000 N:P:SNAPSHOT ...
    python examples/_tables.py gaussian-loops --lam 1 --n 500 REPLACE_LOOP ACCUMULATE_LOOP
    python examples/_tables.py gaussian-fresh --truth T.pt ARM=LOOP ...

Why a helper: `mad metrics` compares image folders, but two of the findings are statements
about parameters (a Gaussian's mean and covariance against the true ones, the fitted
variance against a formula), and the sweeps want one table across many arms, averaged
over repeats. Everything here only reads what the loops left (`metrics.jsonl`, the
Gaussian's snapshots, loaded with `torch.load(weights_only=True)`); it trains nothing.

Each command prints a plain-text table on stdout; `--json FILE` also writes its rows as
JSON lines (what the tests read). A LOOP is a loop folder (`gen{t}/run/latest.pt`,
`metrics.jsonl`); the same ARM name given several times means repeats of one arm, shown
as mean ± standard deviation.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

#: Columns of `summary`, in order, when present in metrics.jsonl.
METRIC_COLUMNS = ("fd_digits", "fid", "precision", "recall", "density", "coverage")


# -- printing --------------------------------------------------------------------------------


def _fmt(values: list[float], digits: int = 3) -> str:
    """One number, or mean ± sd of several."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "-"
    mean = float(np.mean(finite))
    if len(finite) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {float(np.std(finite, ddof=1)):.2g}"


def _table(title: str, header: list[str], rows: list[list[str]], notes: list[str] = ()) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for note in notes:
        print(note)
    sys.stdout.flush()


def _write_json(path: str | None, rows: list[dict[str, Any]]) -> None:
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
        tmp.replace(path)


def _arms(specs: list[str]) -> dict[str, list[Path]]:
    """ARM=PATH arguments, grouped by ARM in the order first given."""
    arms: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, path = spec.rpartition("=")
        if not sep:
            raise SystemExit(f"_tables.py: {spec!r} is not ARM=PATH")
        arms.setdefault(name, []).append(Path(path))
    return arms


def _generations(loop: Path) -> list[int]:
    found = sorted(int(m.group(1)) for p in loop.glob("gen*") if (m := re.fullmatch(r"gen(\d+)", p.name)))
    return found


# -- summary: metrics across arms --------------------------------------------------------------


def _metrics_rows(loop: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl of one loop, by generation (the gen{t} component of each row's `gen`)."""
    rows = {}
    for line in (loop / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            t = next(int(m.group(1)) for part in Path(row["gen"]).parts if (m := re.fullmatch(r"gen(\d+)", part)))
            rows[t] = row
    return rows


def summary(args: argparse.Namespace) -> None:
    """One row per arm (its last generation, or every generation with --all), mean ± sd over repeats."""
    out: list[dict[str, Any]] = []
    table = []
    floor: list[float] = []
    columns: list[str] = []
    for name, loops in _arms(args.arms).items():
        per_loop = [_metrics_rows(loop) for loop in loops]
        gens = sorted(set.intersection(*(set(r) for r in per_loop)))
        for t in gens if args.all else gens[-1:]:
            rows = [r[t] for r in per_loop]
            present = [c for c in METRIC_COLUMNS if all(c in r and r[c] is not None for r in rows)]
            columns = columns or present
            values = {c: [float(r[c]) for r in rows] for c in present}
            floor += [float(r["fd_digits_real_split_half"]) for r in rows if r.get("fd_digits_real_split_half") is not None]
            out.append({"arm": name, "generation": t, "repeats": len(rows),
                        **{c: float(np.mean(v)) for c, v in values.items()},
                        **{f"{c}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None for c, v in values.items()}})
            table.append([name, str(t), str(len(rows))] + [_fmt(values.get(c, [])) for c in columns])
    notes = []
    if floor:
        notes.append(f"noise floor (mad metrics' split-half fd_digits of the held-out digits): {np.mean(floor):.3g}")
    if any(r["repeats"] > 1 for r in out):
        notes.append("mean ± sd over repeats (different mix and training seeds)")
    _table(args.title, ["arm", "gen", "runs"] + columns, table, notes)
    _write_json(args.json, out)


# -- the Gaussian's parameters -----------------------------------------------------------------


def _gaussian(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of a `mad train --model gaussian` snapshot or run folder, in float64."""
    import torch

    from mad_cli.models.gaussian.model import model_covariance

    if path.is_dir():
        path = path / "latest.pt"
    snap = torch.load(path, map_location="cpu", weights_only=True)
    if snap.get("format") != "mad.gaussian":
        raise SystemExit(f"_tables.py: {path} is a {snap.get('format')} snapshot, not a Gaussian (MODEL=gaussian)")
    model = snap["model"]
    return model["mean"].to(torch.float64).numpy(), model_covariance(model).numpy()


def _frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    from mad_cli.metrics import fid_from_statistics

    return fid_from_statistics(mu1, s1, mu2, s2)


def gaussian_strong(args: argparse.Namespace) -> None:
    """Error of each arm's fit against the true mean and covariance, with the mean's expected error.

    Training set: k = pN images from the source (mean μ_s, covariance Σ_s), N − k from the
    truth (μ*, Σ*), all independent. The fit's mean is the pooled average, so exactly

        E‖μ̂ − μ*‖² = p²‖μ_s − μ*‖² + ((1 − p) tr Σ* + p tr Σ_s) / N   (+ tr Σ*/T),

    where the last term is the error of the "truth" itself, fitted to T samples. As N → ∞
    only p²‖μ_s − μ*‖² stays: the plateau of strong model collapse, above zero for every
    p > 0. The covariance converges to the mixture's, (1 − p) Σ* + p Σ_s + p(1 − p) δδᵀ
    (δ = μ_s − μ*), so ‖Σ̂ − Σ*‖_F tends to ‖p (Σ_s − Σ*) + p(1 − p) δδᵀ‖_F.
    """
    mu_t, s_t = _gaussian(Path(args.truth))
    mu_s, s_s = _gaussian(Path(args.source))
    delta = mu_s - mu_t
    d2 = float(delta @ delta)
    tr_t, tr_s = float(np.trace(s_t)), float(np.trace(s_s))
    norm_t = float(np.linalg.norm(s_t))
    groups: dict[tuple[int, float], list[Path]] = defaultdict(list)
    for spec in args.arms:
        n, p, path = spec.split(":", 2)
        groups[(int(n), float(p))].append(Path(path))
    out, table = [], []
    for (n, p), paths in sorted(groups.items()):
        k = round(p * n)
        q = k / n
        fits = [_gaussian(path) for path in paths]
        mean_err = [float((mu - mu_t) @ (mu - mu_t)) for mu, _ in fits]
        cov_err = [float(np.linalg.norm(s - s_t)) / norm_t for _, s in fits]
        expected = q * q * d2 + ((1 - q) * tr_t + q * tr_s) / n + tr_t / args.truth_n
        plateau = q * q * d2
        bias = q * (s_s - s_t) + q * (1 - q) * np.outer(delta, delta)
        cov_plateau = float(np.linalg.norm(bias)) / norm_t
        out.append({"n": n, "p": p, "synthetic": k, "repeats": len(fits), "mean_error": float(np.mean(mean_err)),
                    "mean_error_sd": float(np.std(mean_err, ddof=1)) if len(fits) > 1 else None,
                    "mean_error_expected": expected, "mean_error_plateau": plateau,
                    "cov_error": float(np.mean(cov_err)), "cov_error_plateau": cov_plateau})
        table.append([str(n), f"{p:g}", str(k), str(len(fits)), _fmt(mean_err), f"{expected:.3g}", f"{plateau:.3g}",
                      _fmt(cov_err), f"{cov_plateau:.3g}"])
    notes = [
        f"truth: μ*, Σ* of {args.truth} (tr Σ* = {tr_t:.4g}); source: {args.source} (tr Σ_s = {tr_s:.4g}, ‖μ_s − μ*‖² = {d2:.4g})",
        "expected = p²‖μ_s − μ*‖² + ((1−p) tr Σ* + p tr Σ_s)/N + tr Σ*/T;  N→∞ = what remains with unlimited data (p²‖μ_s − μ*‖²);",
        "cov: ‖Σ̂ − Σ*‖_F / ‖Σ*‖_F, and its N→∞ limit ‖p(Σ_s − Σ*) + p(1−p)δδᵀ‖_F / ‖Σ*‖_F",
    ]
    _table("Gaussian: error of the fitted parameters against the truth",
           ["N", "p", "synth", "runs", "‖μ̂−μ*‖²", "expected", "N→∞", "cov err", "N→∞"], table, notes)
    _write_json(args.json, out)


def accumulate_factors(lam: float, n: int, generations: int) -> np.ndarray:
    """c_t = E[tr Σ_t] / tr Σ_0 of the accumulate loop, t = 0..generations.

    Pool at generation s−1: s·n points with scatter (s n − 1) Σ_{s−1}; generation s adds n
    samples of N(μ_{s−1}, λ Σ_{s−1}) (within-batch scatter of mean (n − 1) λ Σ_{s−1}, batch
    mean off by λ Σ_{s−1}/n, weighted s n·n/((s+1) n)), so
        r_s = ((s n − 1) + λ (n − 1 + s/(s+1))) / ((s + 1) n − 1),   c_t = Π_{s≤t} r_s.
    At λ = 1 this is tests/test_gaussian_theory.py's 1 − 1/((s+1)((s+1)n − 1)): bounded
    away from 0; for λ < 1 it falls like t^(λ−1), a power law instead of replace's λ^t.
    """
    c = [1.0]
    for s in range(1, generations + 1):
        c.append(c[-1] * ((s * n - 1) + lam * (n - 1 + s / (s + 1))) / ((s + 1) * n - 1))
    return np.array(c)


def gaussian_loops(args: argparse.Namespace) -> None:
    """Fitted variance and mean drift per generation, replace vs accumulate, next to the theory.

    Replace: E[tr Σ_t] = λ^t tr Σ_0 and E‖μ_t − μ_0‖² = (tr Σ_0 / n) Σ_{s=1..t} λ^s.
    Accumulate: E[tr Σ_t] = c_t tr Σ_0 (see `accumulate_factors`) and
    E‖μ_t − μ_0‖² = (tr Σ_0 / n) Σ_{s=1..t} λ c_{s−1}/(s + 1)², bounded by (π²/6 − 1) at λ = 1.
    Both are for the exact Gaussian. `mad sample` also clamps pixels to [-1, 1] (and rounds
    them), which on digits removes variance like an extra sampling bias; so the variance is
    also shown against the same formulas at the effective λ_eff that generation 0's samples
    had (tr of their covariance / tr Σ_0, i.e. replace's measured variance at t = 1): a
    prediction for every later generation of both arms.
    """
    loops = {"replace": Path(args.replace), "accumulate": Path(args.accumulate)}
    fits = {name: [_gaussian(loop / f"gen{t}" / "run") for t in _generations(loop)] for name, loop in loops.items()}
    generations = min(len(f) for f in fits.values())
    lam, n = args.lam, args.n
    tr0 = float(np.trace(fits["replace"][0][1]))
    mu0 = fits["replace"][0][0]
    lam_eff = float(np.trace(fits["replace"][1][1])) / tr0 if generations > 1 else lam
    c = accumulate_factors(lam, n, generations - 1)
    c_eff = accumulate_factors(lam_eff, n, generations - 1)
    drift_replace = np.concatenate([[0.0], np.cumsum([lam**s for s in range(1, generations)])])
    drift_acc = np.concatenate([[0.0], np.cumsum([lam * c[s - 1] / (s + 1) ** 2 for s in range(1, generations)])])
    out, table = [], []
    for t in range(generations):
        row: dict[str, Any] = {"generation": t, "lam_eff": lam_eff}
        cells = [str(t)]
        arms = (("replace", lam**t, lam_eff**t, drift_replace[t]), ("accumulate", c[t], c_eff[t], drift_acc[t]))
        for name, var_theory, var_eff, drift_theory in arms:
            mu, s = fits[name][t]
            var = float(np.trace(s)) / tr0
            drift = float((mu - mu0) @ (mu - mu0)) * n / tr0
            row.update({f"{name}_var": var, f"{name}_var_theory": float(var_theory), f"{name}_var_theory_eff": float(var_eff),
                        f"{name}_drift": drift, f"{name}_drift_theory": float(drift_theory)})
            cells += [f"{var:.3f}", f"{var_theory:.3f}", f"{var_eff:.3f}", f"{drift:.3g}", f"{drift_theory:.3g}"]
        out.append(row)
        table.append(cells)
    notes = [
        f"var = tr Σ_t / tr Σ_0 (tr Σ_0 = {tr0:.4g});  drift = ‖μ_t − μ_0‖² · n / tr Σ_0 (n = {n}; one run: a χ²-like quantity, noisy)",
        f"theory at λ = {lam:g}: replace var λ^t, drift Σ_s λ^s (grows without bound);"
        f" accumulate var c_t → {accumulate_factors(lam, n, 10_000)[-1]:.3f}, drift Σ_s λ c_(s−1)/(s+1)² → ≤ π²/6 − 1 = {math.pi**2 / 6 - 1:.3f}",
        f"at λ_eff = {lam_eff:.3f}: the same variance formulas at the bias generation 0's samples really had"
        " (`mad sample` clamps pixels to [-1, 1], which removes variance; the formulas assume no clamp)",
    ]
    _table("Gaussian: fitted variance and mean drift per generation, measured vs theory",
           ["gen", "replace var", "λ^t", "λ_eff^t", "drift", "theory", "accum. var", "c_t(λ)", "c_t(λ_eff)", "drift", "theory"], table, notes)
    _write_json(args.json, out)


def gaussian_fresh(args: argparse.Namespace) -> None:
    """Each arm's fits against the truth, per generation: mean error, variance ratio, Fréchet distance."""
    mu_t, s_t = _gaussian(Path(args.truth))
    tr_t = float(np.trace(s_t))
    out, table = [], []
    for name, loops in _arms(args.arms).items():
        loop = loops[0]
        for t in _generations(loop):
            mu, s = _gaussian(loop / f"gen{t}" / "run")
            row = {"arm": name, "generation": t, "mean_error": float((mu - mu_t) @ (mu - mu_t)),
                   "var_ratio": float(np.trace(s)) / tr_t, "frechet": _frechet(mu, s, mu_t, s_t)}
            out.append(row)
            table.append([name, str(t), f"{row['mean_error']:.3g}", f"{row['var_ratio']:.3f}", f"{row['frechet']:.3g}"])
    notes = [f"truth: the Gaussian fitted to every real digit ({args.truth}, tr Σ* = {tr_t:.4g});",
             "Fréchet = ‖μ−μ*‖² + tr(Σ + Σ* − 2(Σ^½ Σ* Σ^½)^½), in pixels: the FID formula applied to the parameters themselves"]
    _table("Gaussian: each generation's fit against the Gaussian of all real digits", ["arm", "gen", "‖μ−μ*‖²", "tr Σ/tr Σ*", "Fréchet"], table, notes)
    _write_json(args.json, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="examples/_tables.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="metrics.jsonl of several arms (and repeats) as one table")
    p.add_argument("arms", nargs="+", metavar="ARM=LOOP")
    p.add_argument("--all", action="store_true", help="every generation, not only the last")
    p.add_argument("--title", default="distance to the held-out real digits, per arm")
    p.add_argument("--json")
    p.set_defaults(func=summary)
    p = sub.add_parser("gaussian-strong", help="strong_collapse.sh: parameter error against the truth")
    p.add_argument("arms", nargs="+", metavar="N:P:SNAPSHOT")
    p.add_argument("--truth", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--truth-n", type=int, required=True)
    p.add_argument("--json")
    p.set_defaults(func=gaussian_strong)
    p = sub.add_parser("gaussian-loops", help="accumulate_vs_replace.sh: variance per generation vs theory")
    p.add_argument("replace")
    p.add_argument("accumulate")
    p.add_argument("--lam", type=float, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--json")
    p.set_defaults(func=gaussian_loops)
    p = sub.add_parser("gaussian-fresh", help="fresh_data_sweep.sh: each generation's fit against the truth")
    p.add_argument("arms", nargs="+", metavar="ARM=LOOP")
    p.add_argument("--truth", required=True)
    p.add_argument("--json")
    p.set_defaults(func=gaussian_fresh)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
