# shellcheck shell=bash
# The steps every example loop shares; sourced, never run:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"
#
# A loop script sets its own defaults (OUT, GENERATIONS, N, ...) first, sources this file,
# and keeps in its own text what makes its loop different: which images each generation
# trains on (`mad mix`) and what is filtered out (`mad filter`). Every function below is a
# thin wrapper of ONE `mad` command with the flags all loops pass the same way, so that the
# scripts still read as documentation of their loops.
#
# Conventions: generation T lives in $OUT/genT (run/ = its model, samples/, grid.png) and
# trains with seed SEED+T; $OUT/real holds the real digits and $OUT/real-test the held-out
# ones the results are measured against.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "examples/_loop.sh holds the loops' shared steps and is sourced by them;" \
        "run a loop instead, e.g. bash examples/fully_synthetic.sh" >&2
    exit 2
fi

# Settings every loop takes (environment variables; a default the script set before wins).
DEVICE=${DEVICE:-auto}
has_gpu() { [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
# ddpm learns the digits on a laptop CPU in minutes; StyleGAN2 stays the default on a GPU.
if [ -z "${MODEL:-}" ]; then
    if has_gpu; then MODEL=stylegan2; else MODEL=ddpm; fi
fi
CFG=${CFG:-}                   # the model's preset (default: mad's, e.g. tiny on CPU, auto/cifar32 on a GPU)
KIMG=${KIMG:-}                 # training length per generation in thousands of images (default: the preset's)
PSI=${PSI:-}                   # sampling bias of StyleGAN2/Gaussian: truncation psi (lambda = psi^2 for the Gaussian)
GUIDANCE=${GUIDANCE:-}         # sampling bias of ddpm: classifier-free guidance w (lambda = 1/(1+w))
RES=${RES:-8}                  # image size of the digits (8 is their native size; larger is a bicubic upscale)
SEED=${SEED:-0}
METRICS=${METRICS:-fid,kid,pr,dc}
JSON=${JSON:-1}                # 1: results as JSON lines in $OUT/*.jsonl (what `mad report` draws); 0: tables

samples=()  # every generation's samples folder, in order: sample_step appends, evaluate compares

# reproduction NAME WHY: what the reproduction scripts share. They set the sampling bias
# themselves and read their own JSON lines, so a GUIDANCE or PSI (refused with WHY) or
# JSON=0 from the caller would contradict them; PYTHON is the interpreter mad runs in, for
# examples/_tables.py.
reproduction() {
    if [ -n "$GUIDANCE" ] || [ -n "$PSI" ]; then
        echo "$1 $2; unset GUIDANCE and PSI" >&2
        exit 2
    fi
    if [ "$JSON" != 1 ]; then
        echo "JSON=${JSON}: $1's table and report read the JSON lines; leave JSON at 1" >&2
        exit 2
    fi
    PYTHON=${PYTHON:-$(dirname "$(command -v mad)")/python}
}

# lambda_bias L: the MAD paper's sampling bias λ as the model's own flag, in GUIDANCE
# (ddpm: λ = 1/(1+w)) or PSI (GMM, Gaussian, StyleGAN2: λ = ψ²), which sample_step passes.
lambda_bias() {
    if [ "$MODEL" = ddpm ]; then
        GUIDANCE=$(awk -v l="$1" 'BEGIN { printf "%.6g", 1 / l - 1 }')
    else
        PSI=$(awk -v l="$1" 'BEGIN { printf "%.6g", sqrt(l) }')
    fi
}

# train_step T TRAIN_DIR [RESUME]: `mad train` generation T's model on TRAIN_DIR into
# $OUT/genT/run, with `--resume RESUME` (default latest: continue this generation's run, or
# start it) and CFG/KIMG when they are set; anything in TRAIN_FLAGS is passed on as it is.
# Every model takes the same command, so a new backend needs nothing here.
train_step() {
    local t=$1 train_dir=$2 resume=${3:-latest}
    local flags=(--model "$MODEL" --seed "$((SEED + t))" --resume "$resume" --device "$DEVICE")
    if [ -n "$CFG" ]; then flags+=(--cfg "$CFG"); fi
    if [ -n "$KIMG" ]; then flags+=(--kimg "$KIMG"); fi
    local extra=()
    read -r -a extra <<<"${TRAIN_FLAGS:-}"
    echo "== generation $t: $MODEL on $train_dir" >&2
    mad train "$train_dir" --out "$OUT/gen$t/run" "${flags[@]}" "${extra[@]}"
}

# sample_step T: `mad sample` N images from generation T's latest snapshot into
# $OUT/genT/samples (tagged generation T, with the sampling bias PSI or GUIDANCE when set,
# and SAMPLE_FLAGS as they are) and a grid of them in $OUT/genT/grid.png; the folder is
# appended to `samples`.
sample_step() {
    local t=$1 gen="$OUT/gen$1"
    local bias=()
    if [ -n "$PSI" ]; then bias+=(--psi "$PSI"); fi
    if [ -n "$GUIDANCE" ]; then bias+=(--guidance "$GUIDANCE"); fi
    local extra=()
    read -r -a extra <<<"${SAMPLE_FLAGS:-}"
    mad sample "$gen/run/latest.pt" "$gen/samples" --n "$N" --generation "$t" "${bias[@]}" "${extra[@]}" \
        --grid "$gen/grid.png" --device "$DEVICE"
    samples+=("$gen/samples")
}

# report NAME CMD...: the result table on stdout, or with JSON=1 JSON lines in $OUT/NAME.jsonl.
report() {
    local name=$1
    shift
    if [ "$JSON" = 1 ]; then
        "$@" --json >"$OUT/$name.jsonl.tmp"
        mv "$OUT/$name.jsonl.tmp" "$OUT/$name.jsonl"
        echo "wrote $OUT/$name.jsonl" >&2
    else
        "$@"
    fi
}

# evaluate REF: the loop's results once every generation is sampled. `mad colorhist`: the
# colour drift of every generation's samples against $OUT/real (or REAL_DIR; called REF in
# the log), plot in $OUT/colorhist.png; `mad metrics`: their distance to the held-out digits
# in $OUT/real-test (or TEST_DIR) in the digits feature space (the METRICS chosen).
evaluate() {
    local real=${REAL_DIR:-$OUT/real} test=${TEST_DIR:-$OUT/real-test}
    echo "== colour drift of every generation against $1" >&2
    report colorhist mad colorhist "$real" "${samples[@]}" --plot "$OUT/colorhist.png"
    echo "== distance to held-out real digits (digits feature space)" >&2
    report metrics mad metrics "$test" "${samples[@]}" --features digits --metrics "$METRICS" \
        --device "$DEVICE"
}
