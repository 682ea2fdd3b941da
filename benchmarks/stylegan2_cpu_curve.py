"""What a CPU StyleGAN2 preset reaches on the digits in a few minutes: fd_digits and recall
against training minutes and kimg.

Why: the CPU presets exist so that a self-consuming loop runs on a laptop, and the question
a user has is "how good is generation 0 after N minutes?". This trains one run with a
snapshot every `--every` kimg, then scores every snapshot exactly as a user would: `mad
sample SNAPSHOT --n 1000` and `mad metrics REAL_TEST SAMPLES --features digits` against the
held-out test split of the digits (359 images), which the model never saw.

Time is the run's own record (log.jsonl): `train_seconds` (wall clock of the training
steps: no start-up, snapshots or grids) and `cpu_seconds` (CPU time of the same steps).
On a shared machine the wall clock depends on the neighbours; the CPU time much less, so
compare settings by CPU minutes and kimg (with `--threads 1`, an idle machine's wall clock
is close to the CPU time). The issue's goal: fd_digits ≤ 10 and recall ≥ 0.4 within 5
minutes on 2 cores.

    .venv/bin/python benchmarks/stylegan2_cpu_curve.py                       # tiny, 16², 1 thread
    .venv/bin/python benchmarks/stylegan2_cpu_curve.py --cfg small --kimg 24 --every 4
    .venv/bin/python benchmarks/stylegan2_cpu_curve.py --train-args "--aug noaug" --json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mad import mad  # noqa: E402

GOAL_FD, GOAL_RECALL, GOAL_MINUTES = 10.0, 0.4, 5.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="tiny")
    ap.add_argument("--kimg", type=float, default=40.0)
    ap.add_argument("--every", type=float, default=4.0, help="snapshot (and score) every KIMG")
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training run (and of the scoring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=1000, help="samples per snapshot")
    ap.add_argument("--train-args", default="", help="more `mad train` flags, e.g. \"--aug noaug\"")
    ap.add_argument("--out", type=Path, help="keep the data, run and samples here (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="rows as JSON lines")
    args = ap.parse_args(argv)

    from mad_cli.datasets import write_digits
    from mad_cli.models.runfolder import snapshot_name
    from mad_cli.output import Results

    with tempfile.TemporaryDirectory(prefix="mad-cpu-curve-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        train, test, run = work / "train", work / "test", work / "run"
        for folder, split in ((train, "train"), (test, "test")):
            if not folder.exists():
                write_digits(folder, resolution=args.resolution, channels=1, split=split, seed=0)
        extra = shlex.split(args.train_args)
        print(f"{args.cfg} at {args.resolution}², {args.kimg:g} kimg, {args.threads} thread(s), {' '.join(extra) or 'preset defaults'}; "
              f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}", file=sys.stderr)
        t0 = time.perf_counter()
        mad("train", str(train), "--out", str(run), "--cfg", args.cfg, "--kimg", str(args.kimg), "--snap-every", str(args.every),
            "--device", "cpu", "--seed", str(args.seed), "--resume", "latest", *extra, threads=args.threads)
        print(f"trained in {time.perf_counter() - t0:.0f} s wall; scoring every snapshot", file=sys.stderr)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        every_nimg = int(round(args.every * 1000))
        marks = sorted({r["nimg"] for r in log if r["nimg"] % every_nimg == 0} | {log[-1]["nimg"]})
        columns = ["kimg", "train_min", "cpu_min", "fd_digits", "precision", "recall", "coverage", "augment_p"]
        with Results(args.json, title=f"{args.cfg} on {args.resolution}² digits: fd_digits and recall against time", columns=columns) as results:
            best = None
            for nimg in marks:
                tick = [r for r in log if r["nimg"] == nimg][-1]
                samples = work / f"samples-{nimg:07d}"
                mad("sample", str(run / snapshot_name(nimg)), str(samples), "--n", str(args.n), "--device", "cpu", threads=args.threads)
                m = json.loads(mad("metrics", str(test), str(samples), "--features", "digits", "--device", "cpu", "--json",
                                   threads=args.threads).splitlines()[-1])
                row = {
                    "kimg": nimg / 1000, "train_min": round(tick["train_seconds"] / 60, 2),
                    "cpu_min": round(tick["cpu_seconds"] / 60, 2) if tick.get("cpu_seconds") is not None else None,
                    "fd_digits": m.get("fd_digits"), "precision": m.get("precision"), "recall": m.get("recall"),
                    "coverage": m.get("coverage"), "augment_p": tick.get("augment_p"),
                }
                results.row(row)
                minutes = row["cpu_min"] if row["cpu_min"] is not None else row["train_min"]
                if minutes <= GOAL_MINUTES and row["fd_digits"] is not None:
                    best = row
        if best is not None:
            reached = best["fd_digits"] <= GOAL_FD and best["recall"] >= GOAL_RECALL
            print(f"within {GOAL_MINUTES:g} CPU minutes: {best['kimg']:g} kimg, fd_digits {best['fd_digits']:.2f}, recall {best['recall']:.3f} "
                  f"(goal fd_digits ≤ {GOAL_FD:g} and recall ≥ {GOAL_RECALL:g}: {'met' if reached else 'not met'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
