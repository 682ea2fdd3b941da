#!/usr/bin/env bash
# Synthetic augmentation loop (Alemohammad et al. 2023, "Self-Consuming Generative Models Go MAD", Sec. 4).
#
#   fixed real ─┬──────────────┬───────────────────┬─ ...
#               mix ─ train ─ sample   mix ─ train ─ sample   mix ─ train ─ sample
#              gen0 ───────────┴─────────┤gen1 ───────────┴─────────┤gen2
#                                        (all earlier generations' samples)
#
# Every generation trains on the SAME fixed set of N_REAL real digits plus N - N_REAL
# synthetic images drawn from the samples of ALL earlier generations (accumulate: one
# `--synthetic` per earlier generation, the synthetic share split evenly between them;
# generation 0 trains on the real set alone). Because the real data never changes, the
# paper finds this only delays MAD: with enough synthetic data the loop still drifts away
# from the real distribution, more slowly than the fully synthetic loop.
#
# At the end: the colour drift of every generation's samples against the fixed real set,
# and their distance to the held-out test digits in the digits feature space (fd_digits,
# KID, precision, recall, density, coverage). Sample grids in $OUT/gen*/grid.png.
#
# Settings (environment variables):
#   MODEL=ddpm|stylegan2|gaussian   default ddpm on a CPU, stylegan2 on a GPU; gaussian fits a
#                             Gaussian to pixels in seconds (the paper's theory)
#   OUT GENERATIONS N RES SEED DEVICE   as their names say; N = samples per generation
#                             = the training-set size of generations >= 1
#   N_REAL                    size of the fixed real set (default N/2, at most 1,438)
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

OUT=${OUT:-runs/synthetic-augmentation}
GENERATIONS=${GENERATIONS:-5}
N=${N:-1000}                   # samples per generation = training-set size from generation 1 on
N_REAL=${N_REAL:-$((N / 2))}   # the fixed real set, the same images in every generation
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

N_SYN=$((N - N_REAL))          # synthetic images per training set, over all earlier generations
if ((N_REAL < 1 || N_SYN < 0)); then
    echo "N_REAL=$N_REAL: must be between 1 and N=$N" >&2
    exit 2
fi

# The fixed real set: the first N_REAL digits of the train split in a seeded order, written once.
mad dataset digits "$OUT/real" --resolution "$RES" --split train --limit "$N_REAL" --seed "$SEED" --force
mad dataset digits "$OUT/real-test" --resolution "$RES" --split test --seed "$SEED" --force
mad mix --out "$OUT/gen0/train" --real "$OUT/real" --seed "$SEED" --force

for ((t = 0; t < GENERATIONS; t++)); do
    train_step "$t" "$OUT/gen$t/train"
    sample_step "$t"
    next=$((t + 1))
    if ((next < GENERATIONS)); then
        # The whole real set, plus N_SYN synthetic split evenly over generations 0..t
        # (the most recent one takes the remainder).
        synthetic=()
        share=$((N_SYN / next))
        for ((s = 0; s < next; s++)); do
            count=$share
            if ((s == t)); then count=$((N_SYN - share * t)); fi
            if ((count > 0)); then synthetic+=(--synthetic "$OUT/gen$s/samples:$count"); fi
        done
        mad mix --out "$OUT/gen$next/train" --real "$OUT/real" "${synthetic[@]}" --seed "$((SEED + next))" --force
    fi
done

evaluate "the fixed real set"
echo "== done: grids in $OUT/gen*/grid.png, colour plot in $OUT/colorhist.png" >&2
mad report "$OUT" --out "$OUT/report.html" --png "$OUT/report.png"
