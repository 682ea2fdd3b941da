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


# -- the tests -----------------------------------------------------------------------------


def test_every_example_is_covered() -> None:
    """A new example gets run by the fixture anyway; these five are the ones the README names."""
    assert {s.stem for s in _scripts()} >= set(SETTINGS)


@pytest.mark.slow
def test_demo(runs: dict[str, Run]) -> None:
    run = runs["demo"]
    run.check_ok()
    _check_generations(run)
    assert "fd_digits" in run.stdout and "precision" in run.stdout  # the metrics table of the README's command
    assert (run.out / "colorhist.png").stat().st_size > 0


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


def test_human_filter_refuses_finetune_with_the_gaussian(tmp_path: Path) -> None:
    """FINETUNE=1 means `--resume` from the previous weights: StyleGAN2 only; say so before any work."""
    settings = {"FINETUNE": "1", "GENERATIONS": "2"}
    run = _run_script(EXAMPLES / "human_filter.sh", tmp_path / "out", tmp_path / "cache", settings)
    assert run.returncode == 2
    assert "FINETUNE=1 needs MODEL=stylegan2" in run.stderr
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
