#!/usr/bin/env bash
# Synthetic augmentation loop (Alemohammad et al. 2023, Sec. 4).
#
# Every generation trains on the SAME fixed real set plus synthetic samples of earlier
# generations: here half real, half synthetic, the synthetic half drawn from all earlier
# generations' samples (accumulate: one --synthetic per earlier generation). Because the
# real data never changes, the paper finds this only delays MAD: with enough synthetic
# data the loop still drifts away from the real distribution.
#
# For now this script only prints the `mad mix` calls that compose each generation's
# training folder; the train/sample steps join it once those subcommands exist.
set -euo pipefail

OUT=${OUT:-runs/synthetic-augmentation}
GENERATIONS=${GENERATIONS:-5}
N=${N:-1000}          # training-set size per generation
SEED=${SEED:-0}

HALF=$((N / 2))
# The fixed real set: the same HALF real images in every generation (no count = all of them).
echo "mad dataset digits $OUT/data --resolution 32 --split train --limit $HALF"
echo "mad mix --out $OUT/gen0/train --real $OUT/data --seed $SEED"
for ((t = 1; t < GENERATIONS; t++)); do
  # The synthetic half is split evenly over generations 0..t-1 (the last one takes the rest).
  synth=""
  for ((s = 0; s < t; s++)); do
    share=$(((N - HALF) / t))
    if ((s == t - 1)); then share=$((N - HALF - share * (t - 1))); fi
    synth+=" --synthetic $OUT/gen$s/samples:$share"
  done
  echo "mad mix --out $OUT/gen$t/train --real $OUT/data$synth --total $N --seed $((SEED + t))"
done
