#!/usr/bin/env bash
# The README's main command (`make demo`): a real self-consuming loop on the bundled digits.
#
#   real digits ─ train ─ sample ─ mix ─ train ─ sample ─ mix ─ train ─ sample
#        gen0 ────────────────┘ gen1 ────────────────┘ gen2 ─────────────┘
#
# Fully synthetic (Alemohammad et al. 2023, Sec. 3): generation 0 trains on real digits,
# every later generation only on the samples of the one before. At the end it prints the
# colour drift of each generation's samples and their distance to held-out real digits
# (fd_digits, precision, recall, ...), and leaves a sample grid per generation in
# $OUT/gen*/grid.png: look at them to see the loop lose diversity.
#
# MODEL=gaussian runs the same loop with a Gaussian on pixels in seconds (the CI smoke test).
# Re-running the script resumes: finished steps are kept, interrupted ones completed.
set -euo pipefail

OUT=${OUT:-demo-out}
GENERATIONS=${GENERATIONS:-3}
KIMG=${KIMG:-8}                # StyleGAN2 training length per generation (thousands of images shown)
CFG=tiny                       # always the CPU-sized StyleGAN2 preset (CFG is not a demo setting)
N=${N:-1000}                   # samples per generation = the next generation's training set
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

mad dataset digits "$OUT/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$OUT/real-test" --resolution "$RES" --split test --seed "$SEED" --force

train_dir="$OUT/real"
for ((t = 0; t < GENERATIONS; t++)); do
    train_step "$t" "$train_dir"
    sample_step "$t"
    if ((t + 1 < GENERATIONS)); then
        mad mix --out "$OUT/gen$((t + 1))/train" --synthetic "$OUT/gen$t/samples" --seed "$((SEED + t))" --force
        train_dir="$OUT/gen$((t + 1))/train"
    fi
done

# Always tables on stdout (the README shows them), with the real train digits as a baseline row.
echo "== colour drift of every generation against the real digits" >&2
mad colorhist "$OUT/real" "${samples[@]}" --plot "$OUT/colorhist.png"
echo "== distance to held-out real digits (digits feature space)" >&2
mad metrics "$OUT/real-test" "$OUT/real" "${samples[@]}" --features digits --device "$DEVICE"
echo "== done: grids in $OUT/gen*/grid.png, colour plot in $OUT/colorhist.png" >&2
