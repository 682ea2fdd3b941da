#!/usr/bin/env bash
# Fully synthetic loop (Alemohammad et al. 2023, "Self-Consuming Generative Models Go MAD", Sec. 3).
#
#   real ─ mix ─ train ─ sample ─ mix ─ train ─ sample ─ mix ─ train ─ sample ...
#          gen0 ───────────┘ gen1 ──────────────┘ gen2 ──────────────┘
#
# Generation 0 trains on N real digits. Every later generation t trains ONLY on the N samples
# of generation t-1: no real image ever comes back. The paper shows that quality (precision)
# or diversity (recall) then degrades from generation to generation: the model goes MAD.
# Sampling with bias (PSI < 1) keeps quality longer but loses diversity faster.
#
# At the end: the colour drift of every generation's samples against the real digits, and
# their distance to the held-out test digits in the digits feature space (fd_digits, KID,
# precision, recall, density, coverage). Look at $OUT/gen*/grid.png to see diversity vanish.
#
# Settings (environment variables):
#   MODEL=stylegan2|gaussian  gaussian fits a Gaussian to pixels in seconds (the theory: its
#                             variance shrinks generation by generation)
#   OUT GENERATIONS N PSI RES SEED DEVICE   as their names say; N = samples per generation
#                             = the next generation's training set (at most 1,438 for gen 0)
#   KIMG CFG                  StyleGAN2 only: training length per generation, --cfg preset
#   METRICS=fid,kid,pr,dc     which `mad metrics` to compute (KID is the slowest)
#   JSON=1                    write the final colour/metrics results to $OUT/colorhist.jsonl
#                             and $OUT/metrics.jsonl (one JSON object per folder) instead of tables
#
# Re-running with the same settings resumes: dataset and mix are redone (same seeds, same
# result), StyleGAN2 training continues from its latest snapshot, sampling completes only
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
