#!/usr/bin/env bash
# One prepared check of the GPU path, for an H100/H200 lent for minutes without network.
#
#   PYTHONPATH=/path/to/mad benchmarks/gpu_check.sh [WORK_DIR]
#
# Needs only the machine's python3 with torch (e.g. torch 2.11 + CUDA 13); no pip, no
# network. Python packages the machine lacks (typer, rich, pillow for the mad CLI;
# torch-fidelity and scipy for the Inception line) can come along as wheels:
#   MAD_WHEELS=/path/to/wheels-folder-or-file.whl   (several: separated by ':')
# they are installed offline into WORK/site (pip --no-index --no-deps, or unzipped where
# pip is missing) and put on PYTHONPATH. Other settings:
#   PYTHON=python3            the interpreter
#   GPU_CHECK_SECONDS=465     budget of the steps (with the table, the script stays under 8 minutes)
#   GPU_CHECK_ON_CPU=1        run every GPU step on the CPU with CPU-sized settings: a test
#                             of this script's plumbing, never GPU figures (budgets ×6: a
#                             small shared CPU is slow to even start each step)
#   GPU_CHECK_SKIP="ops_check pytest_gpu"   steps to leave out (names as in the list below)
#
# Steps, in order, each with its own timeout; a step that fails or times out never stops
# the next one, and a step that would not fit into what is left of the budget is skipped
# with that reason:
#   1. ops_check    python -m stylegan2_ops check: environment, plugin build, CUDA vs reference
#   2. pytest_gpu   pytest -m gpu (when pytest is importable)
#   3. ops_compare  CUDA vs reference for every op: max error, float32/float16, channels-last
#   4. ops_timing   op timings, CUDA vs reference, at StyleGAN2's shapes (benchmarks/ops.py)
#   5. train_auto, train_ref   mad train --cfg auto at 256² RGB: sec/kimg and peak memory,
#                   custom ops on, then off (MAD_OPS=ref)
#   6. sample       mad sample images/s
#   7. inception    Inception feature extraction images/s (random weights: speed only)
#   8. ddpm         a short --model ddpm --cfg faces64 training at 64², mad sample --steps 50
# and prints ONE markdown table last, with the issue's goals next to the figures. Logs and
# per-step JSON stay in WORK_DIR (default: a new folder under /tmp).
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/mad-gpu-check.XXXXXX")}
TOTAL=${GPU_CHECK_SECONDS:-465}
RESERVE=10                       # kept back for the table
SCALE=1
mkdir -p "$WORK/logs" "$WORK/status" "$WORK/results"
HELPER=("$PY" benchmarks/gpu_check.py)    # the measuring half: one subcommand per step
COMMON=(--work "$WORK")
if [ "${GPU_CHECK_ON_CPU:-0}" = 1 ]; then
    COMMON+=(--cpu)
    SCALE=6
    TOTAL=$((TOTAL * SCALE))
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
START=$SECONDS
cd "$ROOT" || exit 1

say() { echo "[gpu_check $((SECONDS - START)) s] $*" >&2; }

# record NAME JSON-FIELDS: what the shell saw of a step (the table reads it).
record() { printf '{%s}\n' "$2" > "$WORK/status/$1.json"; }

# step NAME BUDGET CMD...: run CMD with timeout min(BUDGET, what is left); log to WORK/logs/NAME.log.
# CMD may contain @BUDGET@, replaced by the granted seconds (helper steps stop their children in time).
step() {
    local name=$1 budget=$(($2 * SCALE))
    shift 2
    if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then
        say "$name: skipped (GPU_CHECK_SKIP)"
        record "$name" "\"skipped\": \"left out by GPU_CHECK_SKIP\""
        return
    fi
    local left=$((TOTAL - (SECONDS - START) - RESERVE))
    if ((left < 15)); then
        say "$name: skipped (the ${TOTAL} s budget is used up)"
        record "$name" "\"skipped\": \"the ${TOTAL} s budget was used up by the steps before\""
        return
    fi
    local t=$((budget < left ? budget : left))
    local args=()
    for a in "$@"; do args+=("${a//@BUDGET@/$t}"); done
    say "$name: up to $t s"
    local t0=$SECONDS
    timeout -k 5 "$t" "${args[@]}" > "$WORK/logs/$name.log" 2>&1
    local rc=$?
    local last
    last=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | tr -d '"\\' | cut -c1-200)
    record "$name" "\"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"timeout\": $t, \"last_line\": \"$last\""
    say "$name: exit $rc after $((SECONDS - t0)) s"
}

if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch; set PYTHON= to an interpreter that has it" >&2
    exit 1
fi

if [ -n "${MAD_WHEELS:-}" ]; then
    step wheels 60 "${HELPER[@]}" wheels "$MAD_WHEELS" --target "$WORK/site" "${COMMON[@]}"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
step env 30 "${HELPER[@]}" env "${COMMON[@]}"

# 1. The plugin check (builds into the plugin cache, so the later steps only load).
step ops_check 100 "$PY" -m stylegan2_ops check

# 2. The GPU tests.
if "$PY" -c 'import pytest' 2>/dev/null; then
    step pytest_gpu 70 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
else
    say "pytest_gpu: skipped (pytest is not importable)"
    record pytest_gpu "\"skipped\": \"pytest is not importable by $PY (pass its wheel in MAD_WHEELS)\""
fi

# 3.-8.
step ops_compare 30 "${HELPER[@]}" ops-compare --budget @BUDGET@ "${COMMON[@]}"
step ops_timing 25 "${HELPER[@]}" ops-timing --budget @BUDGET@ "${COMMON[@]}"
step train_auto 110 "${HELPER[@]}" train --ops auto --budget @BUDGET@ "${COMMON[@]}"
step train_ref 110 "${HELPER[@]}" train --ops ref --budget @BUDGET@ "${COMMON[@]}"
step sample 20 "${HELPER[@]}" sample --budget @BUDGET@ "${COMMON[@]}"
step inception 25 "${HELPER[@]}" inception --budget @BUDGET@ "${COMMON[@]}"
step ddpm 70 "${HELPER[@]}" ddpm --budget @BUDGET@ "${COMMON[@]}"

say "done in $((SECONDS - START)) s; logs and results in $WORK"
timeout 20 "${HELPER[@]}" table "${COMMON[@]}"
