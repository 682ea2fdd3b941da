#!/usr/bin/env bash
# Replace loops at several classifier-free guidance scales (Martínez et al. 2023: DDIM loops
# with classifier-free guidance on MNIST, Oxford Flowers and CUB, nine generations).
#
#   real ─ train ─ gen0 ─┬─ sample (w=0) ─ train ─ sample (w=0) ─ train ─ ...   $OUT/w0
#                        ├─ sample (w=1) ─ train ─ sample (w=1) ─ train ─ ...   $OUT/w1
#                        └─ sample (w=3) ─ train ─ sample (w=3) ─ train ─ ...   $OUT/w3
#
# Generation 0 is one class-conditional ddpm trained on the real digits, shared by every arm.
# Each arm samples N labelled images with its guidance w, and every later generation trains
# only on the previous generation's samples (the replace loop). Their finding: high guidance
# keeps the digits legible while diversity falls. In the MAD paper's terms the sampling bias
# is lambda = 1/(1+w): w=0 is unbiased, w=1 is lambda=0.5, w=3 is lambda=0.25.
#
# At the end, per arm, the colour drift and the distance to the held-out digits
# ($OUT/wW/metrics.jsonl: fd_digits, KID, precision, recall, density, coverage), and one
# `mad report` page overlaying the arms: $OUT/report.html and $OUT/report.png.
#
# Settings (environment variables):
#   GUIDANCES="0 1 3"         the guidance scales w, one arm each
#   GENERATIONS=9             as the paper; on a laptop CPU use 3 (about N/1000 × 3 min a generation)
#   OUT N RES SEED DEVICE     as their names say; N = samples per generation = training-set size
#   KIMG CFG TRAIN_FLAGS      ddpm training length per generation, preset, other `mad train` flags
#   STEPS=50                  DDIM steps per sample
#   METRICS JSON              as in the other loops (JSON=1: results as JSON lines for the report)
#
# Re-running with the same settings resumes: finished runs are kept, sampling completes only
# the missing images.
set -euo pipefail

OUT=${OUT:-runs/guidance-loop}
GENERATIONS=${GENERATIONS:-9}
N=${N:-1000}
GUIDANCES=${GUIDANCES:-0 1 3}
STEPS=${STEPS:-50}
MODEL=${MODEL:-ddpm}
if [ "$MODEL" != ddpm ]; then
    echo "MODEL=$MODEL: guidance_loop.sh needs MODEL=ddpm (classifier-free guidance is a diffusion sampler's bias)" >&2
    exit 2
fi
if [ -n "${GUIDANCE:-}" ] || [ -n "${PSI:-}" ]; then
    echo "guidance_loop.sh sets the guidance of each arm from GUIDANCES; unset GUIDANCE and PSI" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

root=$OUT
REAL_DIR=$root/real
TEST_DIR=$root/real-test
SAMPLE_FLAGS="--steps $STEPS ${SAMPLE_FLAGS:-}"
mad dataset digits "$root/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$root/real-test" --resolution "$RES" --split test --seed "$SEED" --force
mad mix --out "$root/gen0-train" --real "$root/real:$N" --seed "$SEED" --force
OUT=$root/shared train_step 0 "$root/gen0-train"   # generation 0, shared by every arm

arms=()
for w in $GUIDANCES; do
    OUT="$root/w$w"
    arms+=("$OUT")
    GUIDANCE=$w
    samples=()
    mkdir -p "$OUT/gen0"
    ln -sfn ../../shared/gen0/run "$OUT/gen0/run"        # the arm's generation 0 is the shared model
    for ((t = 0; t < GENERATIONS; t++)); do
        if ((t > 0)); then
            mad mix --out "$OUT/gen$t/train" --synthetic "$OUT/gen$((t - 1))/samples" --seed "$((SEED + t))" --force
            train_step "$t" "$OUT/gen$t/train"
        fi
        echo "== arm w=$w, generation $t: sampling with --guidance $w" >&2
        sample_step "$t"
    done
    evaluate "the real digits"
done
OUT=$root

names=()
for w in $GUIDANCES; do names+=(--name "w=$w"); done
mad report "${arms[@]}" "${names[@]}" --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: one arm per guidance in $OUT/w*/, the comparison in $OUT/report.html" >&2
