#!/usr/bin/env bash
# How much synthetic data a fresh-data loop can take (Alemohammad et al. 2023, "Self-Consuming
# Generative Models Go MAD", Sec. 5: the fresh data loop).
#
#   real pool ─ N_REAL new ─┬─ N_REAL new ──────────────────┬─ N_REAL new ─ ...
#               train ─ sample ─ mix (+ n_s samples) ─ train ─ sample ─ mix (+ n_s) ─ train ...
#
# Every generation trains on N_REAL real digits never seen before plus n_s samples of the
# previous generation (examples/fresh_data.sh with the proportions as a setting). The paper:
# the loop converges to a point that does not depend on generation 0; a little synthetic
# data helps, beyond a threshold n_s it hurts (the converged model is worse than one trained
# on the N_REAL real images alone), and the threshold is lower when the samples are drawn
# with sampling bias (λ < 1). Here N_REAL is fixed and n_s swept over N_SYNS, once per λ in
# LAMBDAS: one loop per (λ, n_s) in $OUT/lam<λ>-ns<n_s>. The n_s = 0 arm of each λ is its
# baseline (real data only); the threshold is the largest n_s whose last generation is
# still no worse than that baseline.
#
# Every generation draws N samples whatever its n_s (the next generation takes n_s of them),
# so that every arm is measured on the same number of images.
#
# Settings (environment variables):
#   MODEL=gmm|gaussian|ddpm   gmm (default: learns the digits in seconds), the Gaussian (also
#                             prints each fit's distance to the Gaussian of all real digits),
#                             ddpm (hours: one training per arm and generation)
#   N_REAL=200                fresh real digits per generation (GENERATIONS × N_REAL ≤ 1,438)
#   N_SYNS="0 200 800 3200"   synthetic images per generation, one arm each
#   LAMBDAS="1 0.5"           sampling bias λ (ddpm --guidance 1/λ − 1; gmm, Gaussian --psi √λ)
#   GENERATIONS=5 N           generations per arm; samples per generation (default: the largest n_s, ≥ 1,000)
#   STEPS=25                  ddpm: DDIM steps
#   OUT RES SEED DEVICE KIMG CFG TRAIN_FLAGS METRICS   as in the other loops
#
# At the end: the last generation of every arm in one table, each arm's metrics.jsonl, and
# `mad report` overlaying the arms: $OUT/report.html and $OUT/report.png. Re-running resumes.
set -euo pipefail

OUT=${OUT:-runs/fresh-data-sweep}
MODEL=${MODEL:-gmm}
GENERATIONS=${GENERATIONS:-5}
N_REAL=${N_REAL:-200}
N_SYNS=${N_SYNS:-0 200 800 3200}
LAMBDAS=${LAMBDAS:-1 0.5}
STEPS=${STEPS:-25}
largest=$(tr ' ' '\n' <<<"$N_SYNS" | sort -n | tail -1)
N=${N:-$((largest > 1000 ? largest : 1000))}
if ((largest > N)); then
    echo "N_SYNS=\"$N_SYNS\": every n_s must be at most N=$N (the samples per generation)" >&2
    exit 2
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/_loop.sh"  # the other settings and the shared steps
reproduction fresh_data_sweep.sh "sets the sampling bias from LAMBDAS"
if [ "$MODEL" = ddpm ]; then SAMPLE_FLAGS="--steps $STEPS ${SAMPLE_FLAGS:-}"; fi

root=$OUT
REAL_DIR=$root/real
TEST_DIR=$root/real-test
mad dataset digits "$root/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$root/real-test" --resolution "$RES" --split test --seed "$SEED" --force

arms=() names=() table=()
for lam in $LAMBDAS; do
    lambda_bias "$lam"
    for ns in $N_SYNS; do
        OUT=$root/lam$lam-ns$ns
        samples=()
        excludes=()
        echo "== λ = $lam, n_s = $ns: $GENERATIONS generations of $N_REAL fresh real + $ns synthetic" >&2
        for ((t = 0; t < GENERATIONS; t++)); do
            gen=$OUT/gen$t
            synthetic=()
            if ((t > 0 && ns > 0)); then synthetic=(--synthetic "$OUT/gen$((t - 1))/samples:$ns"); fi
            mad mix --out "$gen/train" --real "$root/real:$N_REAL" "${synthetic[@]}" "${excludes[@]}" \
                --seed "$((SEED + t))" --force
            excludes+=(--exclude-manifest "$gen/train/manifest.csv")  # its real images are spent
            train_step "$t" "$gen/train"
            sample_step "$t"
        done
        evaluate "the real pool"
        arms+=("$OUT") && names+=(--name "λ=$lam n_s=$ns") && table+=("λ=$lam n_s=$ns=$OUT")
    done
done
OUT=$root

"$PYTHON" "$HERE/_tables.py" summary "${table[@]}" --json "$OUT/summary.jsonl" \
    --title "fresh data, N_REAL = $N_REAL per generation ($MODEL): generation $((GENERATIONS - 1)) against the held-out digits"
if [ "$MODEL" = gaussian ]; then
    # The exact view: every fit against the Gaussian of all 1,797 real digits.
    mad dataset digits "$root/digits-all" --resolution "$RES" --split all --seed "$SEED" --force
    OUT=$root/truth train_step 0 "$root/digits-all"
    "$PYTHON" "$HERE/_tables.py" gaussian-fresh "${table[@]}" --truth "$root/truth/gen0/run" --json "$root/gaussian.jsonl"
fi
mad report "${arms[@]}" "${names[@]}" --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: one loop per arm in $OUT/lam*-ns*/, the comparison in $OUT/report.html" >&2
