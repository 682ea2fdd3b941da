#!/usr/bin/env bash
# Fresh data loop (Alemohammad et al. 2023, Sec. 5).
#
# Every generation trains on real images NEVER seen by an earlier generation plus the
# samples of the previous generation. `--exclude-manifest` lists the manifest.csv of every
# earlier training folder, so `mad mix` refuses to draw a real image again (matched by
# source path and sha256); when the real pool runs dry it exits 1 saying how many were
# asked and how many are left. The paper finds that with enough fresh real data per
# generation the loop does not go MAD: quality and diversity stay bounded.
#
# For now this script only prints the `mad mix` calls that compose each generation's
# training folder; the train/sample steps join it once those subcommands exist.
set -euo pipefail

OUT=${OUT:-runs/fresh-data}
GENERATIONS=${GENERATIONS:-4}
N_REAL=${N_REAL:-300}   # fresh real images per generation (digits train split has 1,438)
N_SYN=${N_SYN:-300}     # synthetic images per generation
SEED=${SEED:-0}

echo "mad dataset digits $OUT/data --resolution 32 --split all"
echo "mad mix --out $OUT/gen0/train --real $OUT/data:$N_REAL --seed $SEED"
excludes=""
for ((t = 1; t < GENERATIONS; t++)); do
  excludes+=" --exclude-manifest $OUT/gen$((t - 1))/train/manifest.csv"
  echo "mad mix --out $OUT/gen$t/train --real $OUT/data:$N_REAL --synthetic $OUT/gen$((t - 1))/samples:$N_SYN$excludes --seed $((SEED + t))"
done
