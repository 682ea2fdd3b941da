#!/usr/bin/env bash
# Fully synthetic loop (Alemohammad et al. 2023, "Self-Consuming Generative Models Go MAD", Sec. 3).
#
#   real ─ mix ─ train ─ sample ─ mix ─ train ─ sample ─ mix ─ train ─ sample ...
#          gen0 ───────────┘ gen1 ──────────────┘ gen2 ──────────────┘
#
# Generation 0 trains on N real digits. Every later generation t trains ONLY on the N samples
# of generation t-1: no real image ever comes back. The paper shows that quality (precision)
# or diversity (recall) then degrades from generation to generation: the model goes MAD.
# Sampling with bias (PSI < 1, GUIDANCE > 0) keeps quality longer but loses diversity faster.
#
# At the end: the colour drift of every generation's samples against the real digits, and
# their distance to the held-out test digits in the digits feature space (fd_digits, KID,
# precision, recall, density, coverage). Look at $OUT/gen*/grid.png to see diversity vanish.
#
# Settings (environment variables):
#   MODEL=ddpm|stylegan2|gaussian   default ddpm on a CPU, stylegan2 on a GPU; gaussian fits a
#                             Gaussian to pixels in seconds (the paper's theory)
#   OUT GENERATIONS N RES SEED DEVICE   as their names say; N = samples per generation
#                             = the next generation's training set (at most 1,438 for gen 0)
#   KIMG CFG TRAIN_FLAGS      training length per generation, preset, other `mad train` flags
#   PSI | GUIDANCE            sampling bias: --psi (StyleGAN2, Gaussian) or --guidance (ddpm)
#   METRICS=fid,kid,pr,dc     which `mad metrics` to compute (KID is the slowest)
#   JSON=1 (default)          write the final colour/metrics results to $OUT/colorhist.jsonl
#                             and $OUT/metrics.jsonl (one JSON object per folder); JSON=0: tables
#
# Re-running with the same settings resumes: dataset and mix are redone (same seeds, same
# result), training continues from its latest snapshot, sampling completes only
# the missing images.
set -euo pipefail

OUT=${OUT:-runs/fully-synthetic}
GENERATIONS=${GENERATIONS:-5}
N=${N:-1000}                   # samples per generation = the next generation's training set
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

mad dataset digits "$OUT/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$OUT/real-test" --resolution "$RES" --split test --seed "$SEED" --force
mad mix --out "$OUT/gen0/train" --real "$OUT/real:$N" --seed "$SEED" --force

for ((t = 0; t < GENERATIONS; t++)); do
    gen="$OUT/gen$t"
    train_step "$t" "$gen/train"
    sample_step "$t"
    if ((t + 1 < GENERATIONS)); then
        # Only the last generation's samples: the fully synthetic loop forgets everything older.
        mad mix --out "$OUT/gen$((t + 1))/train" --synthetic "$gen/samples:$N" --seed "$((SEED + t + 1))" --force
    fi
done

evaluate "the real digits"
echo "== done: grids in $OUT/gen*/grid.png, colour plot in $OUT/colorhist.png" >&2
mad report "$OUT" --out "$OUT/report.html" --png "$OUT/report.png"
