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
MODEL=${MODEL:-stylegan2}      # stylegan2 or gaussian
KIMG=${KIMG:-12}               # StyleGAN2 training length per generation (thousands of images shown)
CFG=${CFG:-tiny}               # StyleGAN2 preset: tiny/small on CPU, auto on a GPU
PSI=${PSI:-1.0}                # sampling bias λ (truncation psi); < 1 trades diversity for quality
RES=${RES:-16}                 # image size of the digits
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
METRICS=${METRICS:-fid,kid,pr,dc}
JSON=${JSON:-0}

samples=()  # every generation's samples folder, in order: sample_step appends, evaluate compares

# train_step T TRAIN_DIR [RESUME]: `mad train` generation T's model on TRAIN_DIR into
# $OUT/genT/run. StyleGAN2 also gets its preset, length, device and `--resume RESUME`
# (default latest: continue this generation's run, or start it); `mad train --model gaussian`
# refuses those flags.
train_step() {
    local t=$1 train_dir=$2 resume=${3:-latest}
    local stylegan2_flags=()
    if [ "$MODEL" = stylegan2 ]; then
        stylegan2_flags=(--cfg "$CFG" --kimg "$KIMG" --resume "$resume" --device "$DEVICE")
    fi
    echo "== generation $t: $MODEL on $train_dir" >&2
    mad train "$train_dir" --out "$OUT/gen$t/run" --model "$MODEL" --seed "$((SEED + t))" "${stylegan2_flags[@]}"
}

# sample_step T: `mad sample` N images from generation T's latest snapshot into
# $OUT/genT/samples (tagged generation T, sampling bias PSI) and a grid of them in
# $OUT/genT/grid.png; the folder is appended to `samples`.
sample_step() {
    local t=$1 gen="$OUT/gen$1"
    mad sample "$gen/run/latest.pt" "$gen/samples" --n "$N" --psi "$PSI" --generation "$t" \
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
# colour drift of every generation's samples against $OUT/real (called REF in the log), plot
# in $OUT/colorhist.png; `mad metrics`: their distance to the held-out digits in
# $OUT/real-test in the digits feature space (the METRICS chosen).
evaluate() {
    echo "== colour drift of every generation against $1" >&2
    report colorhist mad colorhist "$OUT/real" "${samples[@]}" --plot "$OUT/colorhist.png"
    echo "== distance to held-out real digits (digits feature space)" >&2
    report metrics mad metrics "$OUT/real-test" "${samples[@]}" --features digits --metrics "$METRICS" \
        --device "$DEVICE"
}
