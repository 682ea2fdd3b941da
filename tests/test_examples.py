"""The loops in examples/ run end to end, as a user runs them: `bash examples/X.sh`.

The scripts are the toolkit's promise that the subcommands compose into the MAD paper's
loops; a flag renamed in one subcommand breaks them silently unless they are run. So every
examples/*.sh runs here with the Gaussian model (seconds instead of hours), and the folders
they leave are checked for the shape of their loop: which images each generation trained
on (manifest.csv), what was sampled (provenance tags), and the final metrics (JSON lines).

The scripts are independent, so the module fixture runs them side by side, one per CPU core:
they are mostly separate Python start-ups and small numpy jobs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mad_cli.imagedir import list_images, read_tags

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VENV_BIN = Path(sys.executable).parent  # the `mad` of the interpreter running the tests

N = 200
N_REAL = 100  # synthetic_augmentation's fixed real set, fresh_data's fresh reals per generation

# Settings per script on top of COMMON; every examples/*.sh runs, with GENERATIONS=2 if not listed.
COMMON = {"MODEL": "gaussian", "N": str(N), "RES": "16", "SEED": "0", "DEVICE": "cpu", "JSON": "1", "METRICS": "fid,pr"}
SETTINGS: dict[str, dict[str, str]] = {
    "demo": {"GENERATIONS": "2"},
    "fully_synthetic": {"GENERATIONS": "3"},
    "synthetic_augmentation": {"GENERATIONS": "3", "N_REAL": str(N_REAL)},
    "fresh_data": {"GENERATIONS": "3", "N_REAL": str(N_REAL)},
    "human_filter": {"GENERATIONS": "2"},
    # Classifier-free guidance needs the diffusion model: a toy-sized ddpm (seconds of training).
    "guidance_loop": {"MODEL": "ddpm", "GENERATIONS": "2", "GUIDANCES": "0 2", "KIMG": "0.016", "STEPS": "3", "TRAIN_FLAGS": "--batch 8"},
    # The reproductions (README, "Reproductions"). Neon fine-tunes and merges, which the
    # Gaussian cannot: the GMM, one component per class in a 12-dimensional PCA, so that 50
    # self-samples per class keep the extrapolated covariances positive definite.
    "neon": {"MODEL": "gmm", "N_SELF": "500", "WS": "1", "TRAIN_FLAGS": "--components 1 --pca-dims 12"},
    "strong_collapse": {"N_TRAINS": "100", "PS": "0 0.5", "REPEATS": "2", "SOURCE_N": "50", "TRUTH_N": "1000"},
    "accumulate_vs_replace": {"GENERATIONS": "3"},
    "fresh_data_sweep": {"GENERATIONS": "2", "N_REAL": "50", "N_SYNS": "0 100", "LAMBDAS": "1 0.5"},
}


@dataclass
class Run:
    name: str
    out: Path
    generations: int
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def check_ok(self) -> None:
        assert self.returncode == 0, f"{self.name}.sh exited {self.returncode}\n--- stderr (tail) ---\n{self.stderr[-3000:]}"


def _env(out: Path, cache: Path, settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(COMMON)
    env.update(settings)
    env["OUT"] = str(out)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MAD_FEATURE_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"  # several scripts share the cores: no thread oversubscription
    return env


def _run_script(script: Path, out: Path, cache: Path, settings: dict[str, str]) -> Run:
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(script)], env=_env(out, cache, settings), capture_output=True, text=True, timeout=600)
    generations = int(settings.get("GENERATIONS", "2"))
    return Run(script.stem, out, generations, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def _scripts() -> list[Path]:
    return sorted(s for s in EXAMPLES.glob("*.sh") if not s.name.startswith("_"))  # _loop.sh: sourced steps


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every examples/*.sh, run once with the Gaussian model; name -> Run."""
    root = tmp_path_factory.mktemp("examples")
    cache = tmp_path_factory.mktemp("examples-feature-cache")
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {
            s.stem: pool.submit(_run_script, s, root / s.stem, cache, {"GENERATIONS": "2", **SETTINGS.get(s.stem, {})})
            for s in _scripts()
        }
        return {name: f.result() for name, f in futures.items()}


# -- readers -------------------------------------------------------------------------------


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _generation_of(folder: str) -> int:
    """.../gen3/samples -> 3"""
    name = Path(folder).parent.name
    assert name.startswith("gen"), folder
    return int(name[3:])


def _check_generations(run: Run, n_samples: int = N) -> None:
    """Every generation left a run, N tagged samples and a grid."""
    for t in range(run.generations):
        gen = run.out / f"gen{t}"
        assert (gen / "run" / "latest.pt").is_file()
        assert (gen / "grid.png").stat().st_size > 0
        samples = list_images(gen / "samples")
        assert len(samples) == n_samples
        for path in (samples[0], samples[-1]):
            tags = read_tags(path)
            assert tags["origin"] == "synthetic"
            assert tags["generation"] == str(t)
            assert float(tags["psi"]) == 1.0
    assert not (run.out / f"gen{run.generations}").exists()  # no extra generation


def _check_results(run: Run) -> list[dict]:
    """metrics.jsonl: one row per generation, in order, with sane numbers; colorhist.jsonl: ref + one per generation."""
    rows = _jsonl(run.out / "metrics.jsonl")
    assert [_generation_of(r["gen"]) for r in rows] == list(range(run.generations))
    for r in rows:
        assert Path(r["real"]) == run.out / "real-test"
        assert r["n_gen"] == N
        assert math.isfinite(r["fd_digits"]) and r["fd_digits"] >= 0
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    colour = _jsonl(run.out / "colorhist.jsonl")
    assert len(colour) == run.generations + 1
    assert colour[0]["is_ref"] and Path(colour[0]["folder"]) == run.out / "real"
    assert all(0 <= c["tv_vs_ref_pct"] <= 100 for c in colour)
    assert (run.out / "colorhist.png").stat().st_size > 0
    return rows



def _check_report(run: Run) -> list[dict]:
    """The script's last line drew the loop (report.html, report.png), and `mad report`'s numbers are the loop's own."""
    from mad_cli.report import report

    assert (run.out / "report.html").stat().st_size > 0 and (run.out / "report.png").stat().st_size > 0
    assert "wrote" in run.stderr and "report.html" in run.stderr
    result = report([run.out], run.out / "report-check.html")
    gens = [o for o in result.objects if o["generation"] is not None]
    assert [o["generation"] for o in gens] == list(range(run.generations))
    metric_rows = _jsonl(run.out / "metrics.jsonl")
    colour_rows = _jsonl(run.out / "colorhist.jsonl")[1:]  # after the reference row
    for o, m, c in zip(gens, metric_rows, colour_rows):
        assert (o["metrics"]["fd_digits"], o["metrics"]["recall"]) == (m["fd_digits"], m["recall"])
        assert o["colour"]["tv_vs_ref_pct"] == c["tv_vs_ref_pct"]
        assert o["n_samples"] == len(list_images(run.out / f"gen{o['generation']}" / "samples"))
        assert (o["model"], o["psi"]) == ("gaussian", 1.0)
        assert o["strip"] == gens[0]["strip"]  # the same seeds in every generation
    assert result.plotted == ["fd_digits", "precision", "recall"]  # COMMON's METRICS=fid,pr
    return gens

# -- the tests -----------------------------------------------------------------------------


def test_every_example_is_covered() -> None:
    """Every script has toy settings here: one without them would run at full size in CI."""
    assert {s.stem for s in _scripts()} == set(SETTINGS)


@pytest.mark.slow
def test_demo(runs: dict[str, Run]) -> None:
    run = runs["demo"]
    run.check_ok()
    _check_generations(run)
    assert "fd_digits" in run.stdout and "precision" in run.stdout  # the metrics table of the README's command
    assert (run.out / "colorhist.png").stat().st_size > 0
    assert (run.out / "report.html").stat().st_size > 0 and (run.out / "report.png").stat().st_size > 0


@pytest.mark.slow
def test_fully_synthetic_trains_each_generation_on_the_last_ones_samples_only(runs: dict[str, Run]) -> None:
    run = runs["fully_synthetic"]
    run.check_ok()
    _check_generations(run)
    gen0 = _manifest(run.out / "gen0" / "train")
    assert len(gen0) == N and {r["origin"] for r in gen0} == {"real"}
    for t in range(1, run.generations):
        rows = _manifest(run.out / f"gen{t}" / "train")
        assert len(rows) == N
        assert {r["origin"] for r in rows} == {"synthetic"}
        assert {r["generation"] for r in rows} == {str(t - 1)}
        assert all(Path(r["source"]).parent == run.out / f"gen{t - 1}" / "samples" for r in rows)
    rows = _check_results(run)
    # The loop's signature, loud enough for a Gaussian even at N=200: diversity drains away.
    assert rows[-1]["recall"] < rows[0]["recall"]
    gens = _check_report(run)
    assert [(o["n_real"], o["n_synthetic"]) for o in gens] == [(N, 0)] + [(0, N)] * (run.generations - 1)


@pytest.mark.slow
def test_synthetic_augmentation_keeps_the_real_set_and_accumulates_generations(runs: dict[str, Run]) -> None:
    run = runs["synthetic_augmentation"]
    run.check_ok()
    _check_generations(run)
    fixed: set[str] | None = None
    for t in range(run.generations):
        rows = _manifest(run.out / f"gen{t}" / "train")
        real = {r["sha256"] for r in rows if r["origin"] == "real"}
        synthetic = [r for r in rows if r["origin"] == "synthetic"]
        assert sum(r["origin"] == "real" for r in rows) == N_REAL
        fixed = real if fixed is None else fixed
        assert real == fixed, f"gen{t} trained on other real images than gen0"
        assert len(synthetic) == (0 if t == 0 else N - N_REAL)
        assert {int(r["generation"]) for r in synthetic} == set(range(t))  # every earlier generation contributes
    _check_results(run)


@pytest.mark.slow
def test_fresh_data_never_reuses_a_real_image(runs: dict[str, Run]) -> None:
    run = runs["fresh_data"]
    run.check_ok()
    _check_generations(run)
    seen_paths: set[str] = set()
    seen_hashes: set[str] = set()
    for t in range(run.generations):
        rows = _manifest(run.out / f"gen{t}" / "train")
        real = [r for r in rows if r["origin"] == "real"]
        synthetic = [r for r in rows if r["origin"] == "synthetic"]
        assert len(real) == N_REAL
        paths = {r["source"] for r in real}
        hashes = {r["sha256"] for r in real}
        assert not paths & seen_paths and not hashes & seen_hashes, f"gen{t} re-used real images"
        seen_paths |= paths
        seen_hashes |= hashes
        assert len(synthetic) == (0 if t == 0 else N - N_REAL)
        assert {r["generation"] for r in synthetic} <= {str(t - 1)}  # the previous generation only
    _check_results(run)
    gens = _check_report(run)
    assert [(o["n_real"], o["n_synthetic"]) for o in gens] == [(N_REAL, 0)] + [(N_REAL, N - N_REAL)] * (run.generations - 1)


@pytest.mark.slow
def test_human_filter_feeds_only_kept_samples_forward(runs: dict[str, Run]) -> None:
    run = runs["human_filter"]
    run.check_ok()
    _check_generations(run)
    for t in range(run.generations - 1):
        gen = run.out / f"gen{t}"
        with open(gen / "kept" / "decisions.csv", newline="") as fh:
            decisions = list(csv.DictReader(fh))
        assert len(decisions) == N
        kept = {d["file"] for d in decisions if d["kept"] == "1"}
        assert 0 < len(kept) <= math.ceil(0.8 * N)  # the artifacts stand-in always drops at least a fifth
        assert len(list_images(gen / "rejected")) == N - len(kept)
        rows = _manifest(run.out / f"gen{t + 1}" / "train")
        assert {Path(r["source"]).name for r in rows} == kept
        assert {r["origin"] for r in rows} == {"synthetic"} and {r["generation"] for r in rows} == {str(t)}
    last = run.out / f"gen{run.generations - 1}"
    assert not (last / "kept").exists()  # nobody trains on the last generation: nothing to filter
    _check_results(run)
    gens = _check_report(run)
    for t in range(run.generations - 1):
        kept = len(list_images(run.out / f"gen{t}" / "kept"))
        assert (gens[t]["filter"]["kept"], gens[t]["filter"]["rejected"]) == (kept, N - kept)
        assert gens[t]["artifacts_mean"] is not None
    assert gens[-1]["filter"] is None


def test_human_filter_refuses_finetune_with_the_gaussian(tmp_path: Path) -> None:
    """FINETUNE=1 means `--resume` from the previous weights: not for a closed-form fit; say so before any work."""
    settings = {"FINETUNE": "1", "GENERATIONS": "2"}
    run = _run_script(EXAMPLES / "human_filter.sh", tmp_path / "out", tmp_path / "cache", settings)
    assert run.returncode == 2
    assert "FINETUNE=1 needs a trained model (ddpm or stylegan2)" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_rerun_resumes_without_redoing_samples(runs: dict[str, Run], tmp_path: Path) -> None:
    """Re-running a finished loop with the same settings succeeds and keeps every sample file."""
    first = runs["human_filter"]
    first.check_ok()
    stamps = {p: p.stat().st_mtime_ns for t in range(first.generations) for p in list_images(first.out / f"gen{t}" / "samples")}
    again = _run_script(EXAMPLES / "human_filter.sh", first.out, tmp_path / "cache", SETTINGS["human_filter"])
    again.check_ok()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(_jsonl(first.out / "metrics.jsonl")) == first.generations


def test_bad_settings_stop_before_any_work(tmp_path: Path) -> None:
    """N_REAL larger than N cannot be split into real + synthetic: exit 2 with the reason."""
    for name in ("synthetic_augmentation", "fresh_data"):
        out = tmp_path / name
        run = _run_script(EXAMPLES / f"{name}.sh", out, tmp_path / "cache", {"N": "10", "N_REAL": "20"})
        assert run.returncode == 2, run.stderr
        assert "N_REAL=20" in run.stderr
        assert not out.exists()


@pytest.mark.slow
def test_human_filter_with_a_person_in_the_loop(tmp_path: Path) -> None:
    """REVIEW=1: the script waits on the review page; a "person" (this test, through the page's
    HTTP API) marks every other image bad and presses Finish; the loop then goes on with
    exactly the images marked good."""
    import re
    import threading
    import urllib.request

    out = tmp_path / "out"
    settings = {"REVIEW": "1", "REVIEWER": "tester", "PORT": "0", "N": "20", "GENERATIONS": "2"}
    proc = subprocess.Popen(
        ["bash", str(EXAMPLES / "human_filter.sh")], env=_env(out, tmp_path / "cache", settings),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    stderr: list[str] = []
    try:
        assert proc.stderr is not None
        match = None
        for line in proc.stderr:
            stderr.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
            if match:
                break
        assert match, "the review page never started:\n" + "".join(stderr[-40:])
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        drain.start()
        base, token = match.group(1), match.group(2)

        def api(path: str, body: dict | None = None) -> dict:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(base + path, data=data, headers={"X-Mad-Token": token, "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        images = api("/api/state")["images"]
        assert len(images) == 20
        good = set(images[::2])
        for name in images:
            api("/api/label", {"file": name, "label": "good" if name in good else "bad"})
        assert api("/api/finish", {})["summary"]["kept"] == len(good)
        assert proc.wait(timeout=300) == 0, "".join(stderr[-40:])
        drain.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gen0 = out / "gen0"
    assert (gen0 / "samples-review" / "labels-tester.csv").is_file()
    assert {p.name for p in list_images(gen0 / "kept")} == good
    assert {Path(r["source"]).name for r in _manifest(out / "gen1" / "train")} == good
    assert len(list_images(out / "gen1" / "samples")) == 20
    assert len(_jsonl(out / "metrics.jsonl")) == 2


@pytest.mark.slow
def test_guidance_loop_runs_one_arm_per_guidance_from_a_shared_generation_0(runs: dict[str, Run]) -> None:
    run = runs["guidance_loop"]
    run.check_ok()
    shared = run.out / "shared" / "gen0" / "run" / "latest.pt"
    assert shared.is_file() and not (run.out / "w0" / "gen0" / "train").exists()
    for w in ("0", "2"):
        arm = run.out / f"w{w}"
        assert (arm / "gen0" / "run" / "latest.pt").samefile(shared)
        for t in range(run.generations):
            samples = list_images(arm / f"gen{t}" / "samples")
            assert len(samples) == N
            tags = read_tags(samples[-1])
            assert (tags["guidance"], tags["steps"], tags["generation"]) == (f"{float(w)}", "3", str(t))
            assert tags["label"] == str((N - 1) % 10)  # class-conditional: seed i draws class i mod 10
        rows = _manifest(arm / "gen1" / "train")
        assert {r["generation"] for r in rows} == {"0"} and all(r["label"] for r in rows)
        assert (arm / "gen1" / "train" / "labels.csv").is_file()  # labels carried: gen1 trains conditionally
        metrics = _jsonl(arm / "metrics.jsonl")
        assert [_generation_of(r["gen"]) for r in metrics] == list(range(run.generations))
    from mad_cli.report import report

    result = report([run.out / "w0", run.out / "w2"], run.out / "check.html", names=["w=0", "w=2"])
    guidance = {(o["loop"], o["generation"]): o["guidance"] for o in result.objects if o["generation"] is not None}
    assert guidance == {("w=0", 0): 0.0, ("w=0", 1): 0.0, ("w=2", 0): 2.0, ("w=2", 1): 2.0}
    assert (run.out / "report.html").stat().st_size > 0


# -- the reproductions -----------------------------------------------------------------------


def _one_generation_arm(arm: Path, n: int = N) -> list[Path]:
    """A one-generation loop folder of a sweep: gen0/samples (N, tagged), metrics.jsonl, colorhist.jsonl."""
    samples = list_images(arm / "gen0" / "samples")
    assert len(samples) == n, arm
    rows = _jsonl(arm / "metrics.jsonl")
    assert len(rows) == 1 and _generation_of(rows[0]["gen"]) == 0
    assert math.isfinite(rows[0]["fd_digits"]) and 0 <= rows[0]["recall"] <= 1
    assert len(_jsonl(arm / "colorhist.jsonl")) == 2  # the reference and generation 0
    return samples


def _report_of(run: Run, loops: list[Path]) -> list[dict]:
    """The script drew report.html/.png; `mad report` reads every arm it compared."""
    from mad_cli.report import report

    assert (run.out / "report.html").stat().st_size > 0 and (run.out / "report.png").stat().st_size > 0
    result = report(loops, run.out / "report-check.html")
    return [o for o in result.objects if o["generation"] is not None]


@pytest.mark.slow
def test_neon_fine_tunes_on_self_samples_and_extrapolates_away(runs: dict[str, Run]) -> None:
    import torch

    from mad_cli.models.snapshot import snapshot_id

    run = runs["neon"]
    run.check_ok()
    theta_r = run.out / "theta_r" / "gen0" / "run" / "latest.pt"
    theta_s = run.out / "theta_s" / "gen0" / "run" / "latest.pt"
    theta_c = run.out / "theta_c" / "gen0" / "run" / "latest.pt"
    psi = round(math.sqrt(0.5), 6)  # LAMBDA=0.5 by default: the GMM samples with psi = sqrt(lambda)
    # The self-samples: theta_r's own, biased, on seeds the arms never use.
    self_samples = list_images(run.out / "self-samples")
    assert len(self_samples) == 500 and self_samples[0].name == f"seed{N:06d}.png"
    tags = read_tags(self_samples[0])
    assert (tags["generator"], float(tags["psi"])) == (snapshot_id(theta_r), psi)
    # theta_s fine-tuned from theta_r on exactly them; the control from theta_r on real digits.
    rows = _manifest(run.out / "theta_s" / "gen0" / "train")
    assert len(rows) == 500 and {r["origin"] for r in rows} == {"synthetic"}
    assert json.loads((theta_s.parent / "config.json").read_text())["init_from"] == str(theta_r)
    assert {r["origin"] for r in _manifest(run.out / "theta_c" / "gen0" / "train")} == {"real"}
    assert json.loads((theta_c.parent / "config.json").read_text())["init_from"] == str(theta_r)
    # Each merge is theta_r - w (theta_other - theta_r), recorded in the snapshot.
    for kind, other in (("neon", theta_s), ("control", theta_c)):
        merged = run.out / f"{kind}-w1" / "merged.pt"
        record = torch.load(merged, weights_only=True)["merge"]
        assert record["weight"] == -1.0
        assert (record["base_generator"], record["other_generator"]) == (snapshot_id(theta_r), snapshot_id(other))
        tags = read_tags(_one_generation_arm(run.out / f"{kind}-w1")[-1])
        assert (tags["generator"], float(tags["psi"])) == (snapshot_id(merged), psi)
    # Every arm is scored with the same sampler, on the same seeds; theta_r also without bias.
    for arm, generator, arm_psi in (("theta_r", theta_r, psi), ("theta_r-lambda1", theta_r, 1.0), ("theta_s", theta_s, psi)):
        samples = _one_generation_arm(run.out / arm)
        assert samples[0].name == "seed000000.png"
        tags = read_tags(samples[-1])
        assert (tags["generator"], float(tags["psi"])) == (snapshot_id(generator), arm_psi)
    # The table is the arms' own metrics, and the report overlays every arm.
    arms = ["theta_r", "theta_r-lambda1", "theta_s", "neon-w1", "control-w1"]
    summary = _jsonl(run.out / "summary.jsonl")
    assert [r["arm"] for r in summary] == ["θ_r (w=0)", "θ_r at λ=1", "θ_s (w=-1)", "neon w=1", "control w=1"]
    for row, arm in zip(summary, arms):
        assert row["fd_digits"] == _jsonl(run.out / arm / "metrics.jsonl")[0]["fd_digits"]
    assert "Neon at λ = 0.5" in run.stdout
    gens = _report_of(run, [run.out / a for a in arms])
    assert len(gens) == len(arms) and {o["generation"] for o in gens} == {0}
    # What the finding rests on, loud even at toy size: self-training on biased samples
    # loses recall (the MAD direction).
    assert summary[2]["recall"] < summary[0]["recall"]


def test_neon_refuses_the_gaussian(tmp_path: Path) -> None:
    """Neon fine-tunes: the closed-form Gaussian cannot; say so before any work."""
    run = _run_script(EXAMPLES / "neon.sh", tmp_path / "out", tmp_path / "cache", {})
    assert run.returncode == 2 and "neon.sh needs ddpm or gmm" in run.stderr
    assert not (tmp_path / "out").exists()


def _gaussian_params(run_dir: Path) -> tuple:
    import numpy as np
    import torch

    from mad_cli.models.gaussian.model import model_covariance

    model = torch.load(run_dir / "latest.pt", weights_only=True)["model"]
    return model["mean"].numpy(), model_covariance(model).numpy(), np


@pytest.mark.slow
def test_strong_collapse_mixes_a_fixed_synthetic_fraction_and_scores_parameters(runs: dict[str, Run]) -> None:
    run = runs["strong_collapse"]
    run.check_ok()
    n, repeats = 100, 2
    # Disjoint seeds of the true Gaussian: per-repeat real pools, the test set, the truth's sample.
    names = [{p.name for p in list_images(run.out / d)} for d in ("real-pool-r0", "real-pool-r1", "real-test", "truth/samples")]
    assert [len(x) for x in names] == [n, n, N, 1000]
    assert all(not (a & b) for i, a in enumerate(names) for b in names[i + 1:])
    for p, k in (("0", 0), ("0.5", 50)):
        for r in range(repeats):
            rows = _manifest(run.out / f"n{n}" / f"p{p}" / f"r{r}" / "gen0" / "train")
            synthetic = [x for x in rows if x["origin"] == "synthetic"]
            real = [x for x in rows if x["origin"] == "real"]
            assert (len(real), len(synthetic)) == (n - k, k)
            assert all(Path(x["source"]).parent == run.out / f"real-pool-r{r}" for x in real)
            assert all(Path(x["source"]).parent == run.out / "source" / f"pool-r{r}" for x in synthetic)
    # The table's errors are the snapshots' own, against the truth's.
    mu_t, s_t, np = _gaussian_params(run.out / "truth" / "gen0" / "run")
    mu_s, _, _ = _gaussian_params(run.out / "source" / "moments" / "gen0" / "run")
    table = {(r["n"], r["p"]): r for r in _jsonl(run.out / "summary.jsonl")}
    assert set(table) == {(n, 0.0), (n, 0.5)}
    for p in (0.0, 0.5):
        errors = []
        for r in range(repeats):
            mu, _, _ = _gaussian_params(run.out / f"n{n}" / f"p{p:g}" / f"r{r}" / "gen0" / "run")
            errors.append(float(((mu - mu_t) ** 2).sum()))
        assert table[(n, p)]["mean_error"] == pytest.approx(np.mean(errors), rel=1e-9)
        assert table[(n, p)]["repeats"] == repeats
    # What remains with unlimited data: nothing without synthetic data, p²‖μ_s − μ*‖² with it.
    assert table[(n, 0.0)]["mean_error_plateau"] == 0
    assert table[(n, 0.5)]["mean_error_plateau"] == pytest.approx(0.25 * float(((mu_s - mu_t) ** 2).sum()), rel=1e-9)
    assert table[(n, 0.5)]["mean_error_expected"] > table[(n, 0.5)]["mean_error_plateau"]
    assert "‖μ̂−μ*‖²" in run.stdout
    # Scored and reported: the first repeat of each p at the largest N, against G*'s held-out images.
    for p in ("0", "0.5"):
        _one_generation_arm(run.out / f"n{n}" / f"p{p}" / "r0")
    gens = _report_of(run, [run.out / f"n{n}" / f"p{p}" / "r0" for p in ("0", "0.5")])
    assert [o["n_synthetic"] for o in gens] == [0, 50]


@pytest.mark.slow
def test_strong_collapse_with_two_gmm_sizes(tmp_path: Path) -> None:
    """The learning mode: components per class as the model size, scored against the test digits."""
    settings = {"MODEL": "gmm", "SIZES": "1 3", "PS": "0 0.1", "REPEATS": "1", "N_TRAIN": "300", "SOURCE_N": "100", "N": "100", "RES": "8"}
    run = _run_script(EXAMPLES / "strong_collapse.sh", tmp_path / "out", tmp_path / "cache", settings)
    run.check_ok()
    table = _jsonl(run.out / "summary.jsonl")
    assert [r["arm"] for r in table] == ["size 1 p=0", "size 1 p=0.1", "size 3 p=0", "size 3 p=0.1"]
    for size in ("1", "3"):
        for p, k in (("0", 0), ("0.1", 30)):
            arm = run.out / size / f"p{p}" / "r0"
            rows = _manifest(arm / "gen0" / "train")
            assert sum(r["origin"] == "synthetic" for r in rows) == k and len(rows) == 300
            assert json.loads((arm / "gen0" / "run" / "config.json").read_text())["components"] == int(size)
            _one_generation_arm(arm, n=100)
            assert Path(_jsonl(arm / "metrics.jsonl")[0]["real"]) == run.out / "real-test"
    assert len(_report_of(run, [run.out / s / f"p{p}" / "r0" for s in ("1", "3") for p in ("0", "0.1")])) == 4


@pytest.mark.slow
def test_accumulate_vs_replace_share_generation_0_and_differ_in_what_they_keep(runs: dict[str, Run]) -> None:
    run = runs["accumulate_vs_replace"]
    run.check_ok()
    real = {p.name for p in list_images(run.out / "real")}
    assert len(real) == N
    for mode in ("replace", "accumulate"):
        assert (run.out / mode / "gen0").resolve() == (run.out / "shared" / "gen0").resolve()
        for t in range(1, run.generations):
            rows = _manifest(run.out / mode / f"gen{t}" / "train")
            synthetic = [r for r in rows if r["origin"] == "synthetic"]
            if mode == "replace":
                assert len(rows) == N and {r["generation"] for r in synthetic} == {str(t - 1)} and len(synthetic) == N
            else:  # every real image, and every earlier generation's N samples
                assert {Path(r["source"]).name for r in rows if r["origin"] == "real"} == real
                assert sorted(int(r["generation"]) for r in synthetic) == sorted(list(range(t)) * N)
            assert len(list_images(run.out / mode / f"gen{t}" / "samples")) == N
        assert [_generation_of(r["gen"]) for r in _jsonl(run.out / mode / "metrics.jsonl")] == list(range(run.generations))
    # The variance table: measured from the snapshots, next to the formulas.
    table = _jsonl(run.out / "variance.jsonl")
    assert [r["generation"] for r in table] == list(range(run.generations))
    _, s0, np = _gaussian_params(run.out / "shared" / "gen0" / "run")
    for t, row in enumerate(table):
        for mode in ("replace", "accumulate"):
            _, s, _ = _gaussian_params(run.out / mode / f"gen{t}" / "run")
            assert row[f"{mode}_var"] == pytest.approx(np.trace(s) / np.trace(s0), rel=1e-9)
        # λ = 1: replace's expectation stays put; accumulate's is test_gaussian_theory's product.
        assert row["replace_var_theory"] == 1.0
        assert row["accumulate_var_theory"] == pytest.approx(np.prod([1 - 1 / ((s + 1) * ((s + 1) * N - 1)) for s in range(1, t + 1)]))
    # Loud at any size on digits: the sampler's clamp drains replace's variance, accumulating dilutes it.
    assert table[-1]["replace_var"] < table[-1]["accumulate_var"] < 1
    assert "λ_eff" in run.stdout
    gens = _report_of(run, [run.out / "replace", run.out / "accumulate"])
    counts = {(o["loop"], o["generation"]): (o["n_real"], o["n_synthetic"]) for o in gens}
    assert counts[("accumulate", 2)] == (N, 2 * N) and counts[("replace", 2)] == (0, N)


@pytest.mark.slow
def test_fresh_data_sweep_runs_one_fresh_data_loop_per_arm(runs: dict[str, Run]) -> None:
    run = runs["fresh_data_sweep"]
    run.check_ok()
    n_real = 50
    arms = [(lam, ns) for lam in ("1", "0.5") for ns in (0, 100)]
    for lam, ns in arms:
        arm = run.out / f"lam{lam}-ns{ns}"
        seen: set[str] = set()
        for t in range(run.generations):
            rows = _manifest(arm / f"gen{t}" / "train")
            real = {r["sha256"] for r in rows if r["origin"] == "real"}
            synthetic = [r for r in rows if r["origin"] == "synthetic"]
            assert len(real) == n_real and not real & seen, f"{arm.name} gen{t} re-used real images"
            seen |= real
            assert len(synthetic) == (ns if t else 0) and {r["generation"] for r in synthetic} <= {str(t - 1)}
            samples = list_images(arm / f"gen{t}" / "samples")
            assert len(samples) == N and float(read_tags(samples[0])["psi"]) == round(math.sqrt(float(lam)), 6)
    summary = _jsonl(run.out / "summary.jsonl")
    assert [(r["arm"], r["generation"]) for r in summary] == [(f"λ={lam} n_s={ns}", run.generations - 1) for lam, ns in arms]
    # Without synthetic data the bias never feeds back: both λ's n_s = 0 loops fit the same Gaussians.
    exact = {(r["arm"], r["generation"]): r for r in _jsonl(run.out / "gaussian.jsonl")}
    for t in range(run.generations):
        assert exact[("λ=1 n_s=0", t)]["frechet"] == exact[("λ=0.5 n_s=0", t)]["frechet"]
    assert exact[("λ=1 n_s=100", 1)]["frechet"] != exact[("λ=0.5 n_s=100", 1)]["frechet"]
    assert len(_report_of(run, [run.out / f"lam{lam}-ns{ns}" for lam, ns in arms])) == len(arms) * run.generations
