#!/usr/bin/env bash
# The README's main command (`make demo`): a real self-consuming loop on the bundled digits.
#
#   real digits ─ train ─ sample ─ mix ─ train ─ sample ─ mix ─ train ─ sample
#        gen0 ────────────────┘ gen1 ────────────────┘ gen2 ─────────────┘
#
# Fully synthetic (Alemohammad et al. 2023, Sec. 3): generation 0 trains on the real digits,
# every later generation only on the samples of the one before. On a CPU the model is a
# class-conditional DDPM at the digits' native 8×8, which learns them in two minutes
# (generation 0 is measured against held-out digits like the real training set is), and
# every generation samples with classifier-free guidance w = GUIDANCE: the MAD paper's
# sampling bias, lambda = 1/(1+w). The bias is what makes the collapse show within three
# generations: each generation keeps its most typical digits and drops the rest, so recall
# and coverage of the real digits fall from one generation to the next while precision
# stays high. With GUIDANCE=0 the loss is much slower (the paper's unbiased loop).
#
# At the end it prints the colour drift of each generation's samples and their distance to
# held-out real digits (fd_digits, precision, recall, ...), with the real training digits
# as a baseline row, leaves a sample grid per generation in $OUT/gen*/grid.png, and draws
# the loop with `mad report` ($OUT/report.html, $OUT/report.png).
#
# MODEL=stylegan2 (the default on a GPU) or MODEL=gaussian run the same loop with another
# model (PSI is then their bias). Re-running the script resumes: finished steps are kept,
# interrupted ones completed.
set -euo pipefail

OUT=${OUT:-demo-out}
GENERATIONS=${GENERATIONS:-3}
N=${N:-1000}                   # samples per generation = the next generation's training set
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps
if [ "$MODEL" = ddpm ]; then
    KIMG=${KIMG:-40}           # about two minutes of training per generation on two CPU cores at 8²
    GUIDANCE=${GUIDANCE:-0.3}  # lambda = 1/(1+w) = 0.77
    SAMPLE_FLAGS=${SAMPLE_FLAGS:---steps 25}
fi

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

# JSON lines for the report, then the same results as tables on stdout (the README shows
# them; the second pass reads the features from the cache).
JSON=1 evaluate "the real digits"
echo "== colour drift of every generation against the real digits" >&2
mad colorhist "$OUT/real" "${samples[@]}"
echo "== distance to held-out real digits (digits feature space), the real training digits first" >&2
mad metrics "$OUT/real-test" "$OUT/real" "${samples[@]}" --features digits --device "$DEVICE"
mad report "$OUT" --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: grids in $OUT/gen*/grid.png, the loop in $OUT/report.html and $OUT/report.png" >&2
