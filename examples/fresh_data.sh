#!/usr/bin/env bash
# Fresh data loop (Alemohammad et al. 2023, "Self-Consuming Generative Models Go MAD", Sec. 5).
#
#   real pool ─ N_REAL new ─┬─ N_REAL new ───────────────┬─ N_REAL new ───────────────┬─ ...
#               mix ─ train ─ sample ─ mix ─ train ─ sample ─ mix ─ train ─ sample
#              gen0 ───────────────┘ gen1 ───────────────┘ gen2
#
# Every generation trains on N_REAL real digits NEVER seen by an earlier generation plus
# N - N_REAL samples of the previous generation. `--exclude-manifest` lists the manifest.csv
# of every earlier training folder, so `mad mix` never draws a real image again (matched by
# source path and sha256); when the pool runs dry it exits 1 saying how many were asked and
# how many are left (the digits train split has 1,438: GENERATIONS x N_REAL must fit).
# The paper finds that with enough fresh real data per generation the loop does not go MAD:
# quality and diversity stay bounded instead of degrading generation after generation.
#
# At the end: the colour drift of every generation's samples against the real pool, and
# their distance to the held-out test digits in the digits feature space (fd_digits, KID,
# precision, recall, density, coverage). Sample grids in $OUT/gen*/grid.png.
#
# Settings (environment variables):
#   MODEL=ddpm|stylegan2|gaussian   default ddpm on a CPU, stylegan2 on a GPU; gaussian fits a
#                             Gaussian to pixels in seconds (the paper's theory)
#   OUT GENERATIONS N RES SEED DEVICE   as their names say; N = samples per generation
#                             = the training-set size of generations >= 1
#   N_REAL                    fresh real images per generation (default N/2); generation 0
#                             trains on these alone
#   KIMG CFG TRAIN_FLAGS      training length per generation, preset, other `mad train` flags
#   PSI | GUIDANCE            sampling bias: --psi (StyleGAN2, Gaussian) or --guidance (ddpm)
#   METRICS=fid,kid,pr,dc     which `mad metrics` to compute (KID is the slowest)
#   JSON=1 (default)          write the final colour/metrics results to $OUT/colorhist.jsonl
#                             and $OUT/metrics.jsonl (one JSON object per folder); JSON=0: tables
#
# Re-running with the same settings resumes: dataset and mix are redone (same seeds, same
# exclusions, same result), training continues from its latest snapshot, sampling
# completes only the missing images.
set -euo pipefail

OUT=${OUT:-runs/fresh-data}
GENERATIONS=${GENERATIONS:-4}
N=${N:-600}                    # samples per generation = training-set size from generation 1 on
N_REAL=${N_REAL:-$((N / 2))}   # fresh real images per generation
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

N_SYN=$((N - N_REAL))          # samples of the previous generation per training set
if ((N_REAL < 1 || N_SYN < 0)); then
    echo "N_REAL=$N_REAL: must be between 1 and N=$N" >&2
    exit 2
fi

# The pool of real images the generations draw from without replacement.
mad dataset digits "$OUT/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$OUT/real-test" --resolution "$RES" --split test --seed "$SEED" --force
mad mix --out "$OUT/gen0/train" --real "$OUT/real:$N_REAL" --seed "$SEED" --force

excludes=()
for ((t = 0; t < GENERATIONS; t++)); do
    gen="$OUT/gen$t"
    train_step "$t" "$gen/train"
    sample_step "$t"
    # Every real image generations 0..t trained on is spent.
    excludes+=(--exclude-manifest "$gen/train/manifest.csv")
    next=$((t + 1))
    if ((next < GENERATIONS)); then
        synthetic=()
        if ((N_SYN > 0)); then synthetic=(--synthetic "$gen/samples:$N_SYN"); fi
        mad mix --out "$OUT/gen$next/train" --real "$OUT/real:$N_REAL" "${synthetic[@]}" "${excludes[@]}" \
            --seed "$((SEED + next))" --force
    fi
done

evaluate "the real pool"
echo "== done: grids in $OUT/gen*/grid.png, colour plot in $OUT/colorhist.png" >&2
mad report "$OUT" --out "$OUT/report.html" --png "$OUT/report.png"
