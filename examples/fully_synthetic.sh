#!/usr/bin/env bash
# Fully synthetic loop (Alemohammad et al. 2023, "Self-Consuming Generative Models Go MAD", Sec. 3).
#
# Generation 0 trains on real data only. Every later generation t trains ONLY on the samples
# of generation t-1: no real image ever comes back. The paper shows that quality (precision)
# or diversity (recall) then degrades from generation to generation: the model goes MAD.
# Sampling with bias (psi < 1) keeps quality longer but loses diversity faster.
#
# For now this script only prints the `mad mix` calls that compose each generation's
# training folder; the train/sample steps join it once those subcommands exist.
set -euo pipefail

OUT=${OUT:-runs/fully-synthetic}
GENERATIONS=${GENERATIONS:-5}
N=${N:-1000}          # training-set size per generation
SEED=${SEED:-0}

echo "mad dataset digits $OUT/data --resolution 32 --split train"
echo "mad mix --out $OUT/gen0/train --real $OUT/data:$N --seed $SEED"
for ((t = 1; t < GENERATIONS; t++)); do
  echo "mad mix --out $OUT/gen$t/train --synthetic $OUT/gen$((t - 1))/samples:$N --seed $((SEED + t))"
done
