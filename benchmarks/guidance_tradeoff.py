"""Classifier-free guidance on a trained digits DDPM: precision up, recall down as w grows.

Why: the MAD paper's sampling bias λ = 1/(1+w) is only a bias if raising w trades
diversity for typicality on a model that has learned the data. This trains (or takes) one
class-conditional ddpm on the 8² training digits, samples N images at each guidance w
with the same seeds, and scores every set with `mad metrics --features digits` against
the held-out test digits, exactly as a user would. It then says whether precision rose
and recall fell from the smallest to the largest w (the issue's check), and whether both
moved monotonically across the whole sweep.

    .venv/bin/python benchmarks/guidance_tradeoff.py                          # trains 40 kimg first (~2-5 min)
    .venv/bin/python benchmarks/guidance_tradeoff.py --snapshot RUN/latest.pt --ws 0 0.3 1 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mad import mad  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", type=Path, help="a trained class-conditional ddpm (default: train one)")
    ap.add_argument("--ws", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0], help="guidance scales w")
    ap.add_argument("--n", type=int, default=1000, help="samples per w")
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--kimg", type=float, default=40.0, help="training length when no --snapshot is given")
    ap.add_argument("--resolution", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="rows as JSON lines")
    args = ap.parse_args(argv)

    from mad_cli.datasets import write_digits
    from mad_cli.output import Results

    with tempfile.TemporaryDirectory(prefix="mad-guidance-") as tmp:
        work = Path(tmp)
        test = work / "test"
        write_digits(test, resolution=args.resolution, channels=1, split="test", seed=0)
        snapshot = args.snapshot
        if snapshot is None:
            train = work / "train"
            write_digits(train, resolution=args.resolution, channels=1, split="train", seed=0)
            mad("train", str(train), "--out", str(work / "run"), "--model", "ddpm", "--kimg", str(args.kimg), "--device", "cpu")
            snapshot = work / "run" / "latest.pt"
        print(f"snapshot {snapshot}; {args.n} samples per w, DDIM {args.steps} steps, seeds 0..{args.n - 1}", file=sys.stderr)
        rows = []
        columns = ["w", "lambda", "fd_digits", "precision", "recall", "density", "coverage"]
        with Results(args.json, title="guidance against precision and recall (held-out digits)", columns=columns) as results:
            for w in args.ws:
                out = work / f"samples-w{w:g}"
                mad("sample", str(snapshot), str(out), "--n", str(args.n), "--guidance", f"{w:g}", "--steps", str(args.steps), "--device", "cpu")
                m = json.loads(mad("metrics", str(test), str(out), "--features", "digits", "--device", "cpu", "--json").splitlines()[-1])
                row = {"w": w, "lambda": round(1 / (1 + w), 3), **{k: m.get(k) for k in columns[2:]}}
                rows.append(row)
                results.row(row)
    first, last = rows[0], rows[-1]
    ends = last["precision"] > first["precision"] and last["recall"] < first["recall"]
    prec = [r["precision"] for r in rows]
    rec = [r["recall"] for r in rows]
    monotone = all(a <= b for a, b in zip(prec, prec[1:])) and all(a >= b for a, b in zip(rec, rec[1:]))
    print(f"w {first['w']:g} → {last['w']:g}: precision {first['precision']:.3f} → {last['precision']:.3f}, "
          f"recall {first['recall']:.3f} → {last['recall']:.3f}: {'precision up and recall down' if ends else 'NOT the expected trade-off'}; "
          f"{'monotone' if monotone else 'not monotone'} across the sweep", file=sys.stderr)
    return 0 if ends else 1


if __name__ == "__main__":
    sys.exit(main())
