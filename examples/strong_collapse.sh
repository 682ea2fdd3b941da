#!/usr/bin/env bash
# Strong model collapse (Dohmatob et al. 2024, "Strong Model Collapse").
#
#   real ─ mix ─ train ─ source (a fixed earlier generation) ─ sample ─ synthetic pool
#                                                                          │ p N
#   real ───────────────────────────────────────────────────── (1−p) N ── mix ─ train ─ score
#
# Every arm trains ONE model from scratch on a training set of fixed size N_TRAIN: a
# fraction p drawn from the samples of one fixed earlier model (the source, fitted to only
# SOURCE_N real digits, so its distribution is off), the rest real. The paper's claims:
# even a small synthetic fraction (1 %) can stop the test error from improving as the data
# grow, and a larger model can be hurt more. Each arm is scored against held-out real data.
#
# Two modes:
#
# * MODEL=gmm (default) or ddpm: the real digits; two model sizes, SIZES: the GMM's
#   components per class (default "1 10": one Gaussian per digit, or ten; more components
#   is more capacity, and 10 fit the digits clearly better, fd 1.4 against 2.7, so it is
#   the "larger model" of the paper), or ddpm presets ("tiny small"; hours on a CPU).
#   Arms: $OUT/<size>/p<p>/r<repeat>, each a one-generation loop folder, scored by
#   `mad metrics` against the held-out test digits (fd_digits, precision, recall, ...).
#
# * MODEL=gaussian: the error is computed exactly. The true distribution is a Gaussian G*
#   fitted to all 1,797 real digits; "real" images are its samples, the source is a
#   Gaussian fitted to SOURCE_N of them. `mad sample` clamps and rounds pixels, so the true
#   parameters (μ*, Σ*) are those of G*'s *images*: a Gaussian fitted to TRUTH_N of them.
#   The sweep is over the training size N_TRAINS (Gaussians have no size to choose; the
#   paper's point is that with p > 0 the error stops falling as N grows), and
#   examples/_tables.py prints ‖μ̂ − μ*‖² and ‖Σ̂ − Σ*‖ against their exact expectation and
#   their limit N → ∞. Arms: $OUT/n<N>/p<p>/r<repeat>.
#
# Settings (environment variables):
#   PS="0 0.01 0.1 0.5"       synthetic fractions p
#   REPEATS=3                 runs per arm (other mix and training seeds, other synthetic draws)
#   N_TRAIN=1000              fixed training size (gmm, ddpm; at most 1,438 real digits)
#   SIZES                     model sizes (gmm: "1 10" components per class; ddpm: "tiny small")
#   N_TRAINS="300 1000 3000"  training sizes (gaussian)
#   SOURCE_N=200              real images the source model was fitted to
#   TRUTH_N=20000             gaussian: images of G* (and of the source) the true moments come from
#   N=1000                    samples per scored arm
#   OUT RES SEED DEVICE KIMG CFG TRAIN_FLAGS METRICS   as in the other loops
#
# At the end: the table of every arm (mean ± sd over repeats), and `mad report` overlaying
# the first repeat of each arm (gaussian: at the largest N): $OUT/report.html, report.png.
# Re-running resumes: mixes are redone (same seeds, same result), finished runs kept.
set -euo pipefail

OUT=${OUT:-runs/strong-collapse}
MODEL=${MODEL:-gmm}
PS=${PS:-0 0.01 0.1 0.5}
REPEATS=${REPEATS:-3}
N_TRAIN=${N_TRAIN:-1000}
N_TRAINS=${N_TRAINS:-300 1000 3000}
SOURCE_N=${SOURCE_N:-200}
TRUTH_N=${TRUTH_N:-20000}
N=${N:-1000}
case "$MODEL" in
    gmm) SIZES=${SIZES:-1 10} ;;
    ddpm) SIZES=${SIZES:-tiny small} ;;
    gaussian) SIZES="" ;;
    *) echo "MODEL=$MODEL: strong_collapse.sh runs gmm, ddpm or gaussian" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/_loop.sh"  # the other settings and the shared steps
reproduction strong_collapse.sh "samples without bias (the source's own distribution is what is off)"

root=$OUT
max_n=$N_TRAIN
if [ "$MODEL" = gaussian ]; then max_n=$(tr ' ' '\n' <<<"$N_TRAINS" | sort -n | tail -1); fi
max_p=$(tr ' ' '\n' <<<"$PS" | sort -g | tail -1)
synthetic_count() { awk -v p="$1" -v n="$2" 'BEGIN { printf "%d", p * n + 0.5 }'; }  # round(pN)
pool=$(synthetic_count "$max_p" "$max_n")  # synthetic images one repeat may need

# seeds FIRST COUNT: the `mad sample --seeds` range FIRST..FIRST+COUNT−1.
seeds() { echo "$1-$(($1 + $2 - 1))"; }

# arm DIR REAL N_REAL REPEAT K: mix N_REAL images of REAL and K of repeat REPEAT's synthetic
# pool, then train one model (seed SEED+REPEAT) on them into DIR/gen0/run.
arm() {
    local dir=$1 real=$2 n_real=$3 r=$4 k=$5
    local synthetic=()
    if ((k > 0)); then synthetic=(--synthetic "$root/source/pool-r$r:$k"); fi
    mad mix --out "$dir/gen0/train" --real "$real:$n_real" "${synthetic[@]}" --seed "$((SEED + r))" --force
    SEED=$((SEED + r)) OUT=$dir train_step 0 "$dir/gen0/train"
}

# score DIR: N unbiased samples of DIR's model, measured against the held-out set.
score() {
    OUT=$1 sample_step 0
    samples=("$1/gen0/samples")
    OUT=$1 evaluate "the real images"
}

if [ "$MODEL" = gaussian ]; then
    # The true distribution G*: a Gaussian fitted to every real digit; "real" images are its samples.
    mad dataset digits "$root/digits-all" --resolution "$RES" --split all --seed "$SEED" --force
    OUT=$root/gstar train_step 0 "$root/digits-all"
    gstar=$root/gstar/gen0/run/latest.pt
    # Disjoint seed ranges of G*: one real pool per repeat, held-out test images, the truth's
    # sample, the source's training data.
    for ((r = 0; r < REPEATS; r++)); do
        mad sample "$gstar" "$root/real-pool-r$r" --seeds "$(seeds $((r * max_n)) "$max_n")" --device "$DEVICE"
    done
    mad sample "$gstar" "$root/real-test" --seeds "$(seeds 10000000 "$N")" --device "$DEVICE"
    mad sample "$gstar" "$root/truth/samples" --seeds "$(seeds 20000000 "$TRUTH_N")" --device "$DEVICE"
    mad sample "$gstar" "$root/source-data" --seeds "$(seeds 30000000 "$SOURCE_N")" --device "$DEVICE"
    OUT=$root/truth train_step 0 "$root/truth/samples"       # (μ*, Σ*): the moments of G*'s images
    REAL_DIR=$root/real-pool-r0
else
    mad dataset digits "$root/real" --resolution "$RES" --split train --seed "$SEED" --force
    mad dataset digits "$root/real-test" --resolution "$RES" --split test --seed "$SEED" --force
    mad mix --out "$root/source-data" --real "$root/real:$SOURCE_N" --seed "$SEED" --force
    REAL_DIR=$root/real
fi
TEST_DIR=$root/real-test

# The source: one earlier model, fitted to SOURCE_N real images; its samples are the synthetic data.
echo "== the source: $MODEL fitted to $SOURCE_N real images" >&2
OUT=$root/source train_step 0 "$root/source-data"
source_model=$root/source/gen0/run/latest.pt
for ((r = 0; r < REPEATS; r++)); do
    if ((pool > 0)); then
        mad sample "$source_model" "$root/source/pool-r$r" --seeds "$(seeds $((r * pool)) "$pool")" --device "$DEVICE"
    fi
done

arms=() names=() table=()
if [ "$MODEL" = gaussian ]; then
    # The source's own moments (μ_s, Σ_s), from as many of its images as the truth's.
    mad sample "$source_model" "$root/source/moments/samples" --seeds "$(seeds 20000000 "$TRUTH_N")" --device "$DEVICE"
    OUT=$root/source/moments train_step 0 "$root/source/moments/samples"
    for n in $N_TRAINS; do
        for p in $PS; do
            k=$(synthetic_count "$p" "$n")
            for ((r = 0; r < REPEATS; r++)); do
                dir=$root/n$n/p$p/r$r
                echo "== N = $n, p = $p ($k synthetic), repeat $r" >&2
                arm "$dir" "$root/real-pool-r$r" "$((n - k))" "$r" "$k"   # repeat r: its own real and synthetic pools
                table+=("$n:$p:$dir/gen0/run/latest.pt")
            done
            if [ "$n" = "$max_n" ]; then
                score "$root/n$n/p$p/r0"
                arms+=("$root/n$n/p$p/r0") && names+=(--name "N=$n p=$p")
            fi
        done
    done
    "$PYTHON" "$HERE/_tables.py" gaussian-strong "${table[@]}" --truth "$root/truth/gen0/run" \
        --source "$root/source/moments/gen0/run" --truth-n "$TRUTH_N" --json "$root/summary.jsonl"
else
    for size in $SIZES; do
        for p in $PS; do
            k=$(synthetic_count "$p" "$N_TRAIN")
            for ((r = 0; r < REPEATS; r++)); do
                dir=$root/$size/p$p/r$r
                echo "== size $size, p = $p ($k synthetic of $N_TRAIN), repeat $r" >&2
                if [ "$MODEL" = gmm ]; then
                    TRAIN_FLAGS="--components $size ${TRAIN_FLAGS:-}" arm "$dir" "$root/real" "$((N_TRAIN - k))" "$r" "$k"
                else
                    CFG=$size arm "$dir" "$root/real" "$((N_TRAIN - k))" "$r" "$k"
                fi
                score "$dir"
                table+=("size $size p=$p=$dir")
            done
            arms+=("$root/$size/p$p/r0") && names+=(--name "size $size p=$p")
        done
    done
    "$PYTHON" "$HERE/_tables.py" summary "${table[@]}" --json "$root/summary.jsonl" \
        --title "$MODEL trained on $N_TRAIN images, a fraction p from the source: against the held-out digits"
fi

OUT=$root
mad report "${arms[@]}" "${names[@]}" --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: arms in $OUT/, table in $OUT/summary.jsonl, comparison in $OUT/report.html" >&2
