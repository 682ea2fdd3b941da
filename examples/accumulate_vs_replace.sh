#!/usr/bin/env bash
# Accumulate vs replace (Gerstgrasser et al. 2024, "Is Model Collapse Inevitable? Breaking the
# Curse of Recursion by Accumulating Real and Synthetic Data").
#
#                   ┌─ replace:    gen1 ← gen0's samples      gen2 ← gen1's samples       ...   $OUT/replace
#   real ─ gen0 ────┤
#                   └─ accumulate: gen1 ← real + gen0's      gen2 ← real + gen0's + gen1's ...   $OUT/accumulate
#
# The same self-consuming loop twice from one shared generation 0 (a model of N real digits,
# $OUT/shared/gen0, linked into both arms). Replace: every generation trains only on the N
# samples of the previous one (MAD's fully synthetic loop). Accumulate: every generation
# trains on the real set and the N samples of EVERY earlier generation, so generation t
# sees (t + 1)·N images. The paper's claim: replacing lets the error grow without bound,
# accumulating keeps it bounded. For a Gaussian fitted by maximum likelihood the bound is
# explicit, and with MODEL=gaussian examples/_tables.py prints the fitted variance
# tr Σ_t / tr Σ_0 and the mean's drift ‖μ_t − μ_0‖² per generation next to the theory:
# replace E[tr Σ_t] = λ^t tr Σ_0; accumulate E[tr Σ_t] = c_t tr Σ_0 with c_t → a constant
# at λ = 1 (the derivation is in _tables.py and tests/test_gaussian_theory.py).
#
# Settings (environment variables):
#   MODEL=gmm|gaussian|ddpm   gmm (default, seconds a generation), the Gaussian (the theory),
#                             ddpm (minutes a generation: the accumulate arm's data grow)
#   GENERATIONS=6             generations per arm, 0 included
#   N=500                     the real set (the first N of the train split) = samples per generation
#   LAMBDA=1                  sampling bias λ (ddpm --guidance 1/λ − 1; gmm, Gaussian --psi √λ)
#   STEPS=25                  ddpm: DDIM steps
#   OUT RES SEED DEVICE KIMG CFG TRAIN_FLAGS METRICS   as in the other loops
#
# At the end: per arm, the colour drift and the distance to the held-out digits
# ($OUT/<arm>/metrics.jsonl), a table of both per generation, and `mad report` overlaying the
# two: $OUT/report.html and $OUT/report.png. Re-running resumes: mixes are redone (same
# seeds, same result), finished runs kept, sampling completes only the missing images.
set -euo pipefail

OUT=${OUT:-runs/accumulate-vs-replace}
MODEL=${MODEL:-gmm}
GENERATIONS=${GENERATIONS:-6}
N=${N:-500}
LAMBDA=${LAMBDA:-1}
STEPS=${STEPS:-25}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/_loop.sh"  # the other settings and the shared steps
reproduction accumulate_vs_replace.sh "sets the sampling bias from LAMBDA"
lambda_bias "$LAMBDA"
if [ "$MODEL" = ddpm ]; then SAMPLE_FLAGS="--steps $STEPS ${SAMPLE_FLAGS:-}"; fi

root=$OUT
REAL_DIR=$root/real
TEST_DIR=$root/real-test
# The fixed real set: the first N digits of the train split in a seeded order.
mad dataset digits "$root/real" --resolution "$RES" --split train --limit "$N" --seed "$SEED" --force
mad dataset digits "$root/real-test" --resolution "$RES" --split test --seed "$SEED" --force

# Generation 0, shared: one model of the real set and its N samples.
mad mix --out "$root/shared/gen0/train" --real "$root/real" --seed "$SEED" --force
OUT=$root/shared train_step 0 "$root/shared/gen0/train"
OUT=$root/shared sample_step 0

for mode in replace accumulate; do
    OUT=$root/$mode
    mkdir -p "$OUT"
    ln -sfn ../shared/gen0 "$OUT/gen0"  # the arm's generation 0 is the shared one
    samples=("$OUT/gen0/samples")
    for ((t = 1; t < GENERATIONS; t++)); do
        sources=()
        if [ "$mode" = replace ]; then
            # Only the last generation's samples.
            sources=(--synthetic "$OUT/gen$((t - 1))/samples")
        else
            # The real set and every earlier generation's samples, all of them.
            sources=(--real "$root/real")
            for ((s = 0; s < t; s++)); do sources+=(--synthetic "$OUT/gen$s/samples"); done
        fi
        echo "== $mode, generation $t" >&2
        mad mix --out "$OUT/gen$t/train" "${sources[@]}" --seed "$((SEED + t))" --force
        train_step "$t" "$OUT/gen$t/train"
        sample_step "$t"
    done
    evaluate "the real set"
done
OUT=$root

"$PYTHON" "$HERE/_tables.py" summary --all "replace=$OUT/replace" "accumulate=$OUT/accumulate" \
    --json "$OUT/summary.jsonl" --title "replace vs accumulate ($MODEL, λ = $LAMBDA): each generation against the held-out digits"
if [ "$MODEL" = gaussian ]; then
    "$PYTHON" "$HERE/_tables.py" gaussian-loops "$OUT/replace" "$OUT/accumulate" --lam "$LAMBDA" --n "$N" \
        --json "$OUT/variance.jsonl"
fi
mad report "$OUT/replace" "$OUT/accumulate" --name replace --name accumulate --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: the arms in $OUT/replace and $OUT/accumulate, the comparison in $OUT/report.html" >&2
