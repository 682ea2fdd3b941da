#!/usr/bin/env bash
# Neon: negative extrapolation from self-training (Alemohammad et al. 2025, "Neon: Negative
# Extrapolation From Self-Training Improves Image Generation").
#
#   real ─ train ─ θ_r ─ sample (λ) ─ self-samples ─ fine-tune briefly ─ θ_s
#                   │                                                    │
#                   └──────── mad merge θ_r θ_s --weight -w ─────────────┴─ θ_neon = θ_r − w (θ_s − θ_r)
#
# A model θ_r trained on the real digits draws N_SELF images with the usual mode-seeking
# sampler (sampling bias λ < 1: classifier-free guidance for ddpm, ψ < 1 for the GMM).
# Fine-tuning θ_r briefly on them gives θ_s, which has moved towards the modes (a step of
# the self-consuming loop, the MAD direction). Neon steps the other way, θ_r − w (θ_s − θ_r)
# for w > 0, with no new real data. The paper reports higher recall and lower FID for the
# same sampler, for diffusion, flow and autoregressive models.
#
# Every arm is scored with the same sampler (the same λ and N seeds) against the held-out
# digits; each arm is a one-generation loop folder:
#   $OUT/theta_r           θ_r itself (w = 0)              $OUT/theta_s     θ_s (w = −1)
#   $OUT/neon-wW           θ_r − W (θ_s − θ_r), W in WS    $OUT/theta_r-lambda1   θ_r sampled without bias
#   $OUT/control-wW        (CONTROL=1) the same extrapolation away from θ_c, θ_r fine-tuned as
#                          briefly on N_SELF *real* digits: does the gain need the self-samples,
#                          or does stepping back along any fine-tuning direction do it?
# The GMM's fine-tune is EM started from θ_r's mixture; a merge whose covariance is no longer
# positive semi-definite is refused by `mad merge` and that arm left out (said on stderr).
#
# Settings (environment variables):
#   MODEL=ddpm|gmm            ddpm (default; the paper's diffusion setting) or the GMM (seconds)
#   LAMBDA=0.5                the sampler's bias, for the self-samples and every arm:
#                             ddpm --guidance 1/λ − 1 (0.5 → w_cfg = 1), GMM --psi √λ
#   WS="0.5 1 2"              Neon's extrapolation weights w (merge --weight −w)
#   N=1000 N_SELF=1000        samples per arm (seeds 0..N−1), self-samples (seeds N..N+N_SELF−1)
#   N_REAL                    θ_r's real training set (default: the whole train split, 1,438)
#   KIMG=40 FT_KIMG=4         ddpm: θ_r's training, the fine-tune (10 % more compute)
#   STEPS=25                  ddpm: DDIM steps of every sample
#   CONTROL=1                 also the control arms (0: leave them out)
#   OUT RES SEED DEVICE CFG TRAIN_FLAGS METRICS   as in the other loops
#
# At the end: one table over the arms (fd_digits, precision, recall, ... against the
# held-out digits) and `mad report` overlaying them: $OUT/report.html, $OUT/report.png.
# Re-running resumes: finished runs are kept, sampling completes only the missing images.
set -euo pipefail

OUT=${OUT:-runs/neon}
MODEL=${MODEL:-ddpm}
LAMBDA=${LAMBDA:-0.5}
WS=${WS:-0.5 1 2}
N=${N:-1000}
N_SELF=${N_SELF:-1000}
N_REAL=${N_REAL:-}
STEPS=${STEPS:-25}
CONTROL=${CONTROL:-1}
case "$MODEL" in
    ddpm) KIMG=${KIMG:-40}; FT_KIMG=${FT_KIMG:-4} ;;
    # One component per class: EM on the self-samples re-weights several components so much
    # that extrapolated mixture weights turn negative (mad merge refuses them).
    gmm) FT_KIMG=${FT_KIMG:-}; TRAIN_FLAGS=${TRAIN_FLAGS:---components 1} ;;
    *) echo "MODEL=$MODEL: neon.sh needs ddpm or gmm (a model it can fine-tune and merge; the Gaussian has nothing to fine-tune)" >&2; exit 2 ;;
esac
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/_loop.sh"  # the other settings and the shared steps
reproduction neon.sh "sets the sampler's bias from LAMBDA"

# The sampler: λ as the model's own flag (ddpm: λ = 1/(1+w); GMM, StyleGAN2: λ = ψ²).
bias_flags() {
    local GUIDANCE="" PSI=""
    lambda_bias "$1"
    if [ "$MODEL" = ddpm ]; then echo "--guidance $GUIDANCE --steps $STEPS"; else echo "--psi $PSI"; fi
}
read -r -a BIAS <<<"$(bias_flags "$LAMBDA")"

# sample_arm ARM SNAPSHOT [FLAGS...]: N images (seeds 0..N−1) of SNAPSHOT into ARM/gen0/samples.
sample_arm() {
    local arm=$1 snapshot=$2
    shift 2
    mad sample "$snapshot" "$arm/gen0/samples" --n "$N" --generation 0 "$@" --grid "$arm/gen0/grid.png" --device "$DEVICE"
}

# finetune ARM DATA: θ_r fine-tuned on DATA into ARM/gen0/run (FT_KIMG); a re-run continues it.
finetune() {
    local arm=$1 data=$2 resume="$theta_r"
    if [ -f "$arm/gen0/run/latest.pt" ]; then resume=latest; fi
    OUT=$arm KIMG=$FT_KIMG train_step 0 "$data" "$resume"
}

root=$OUT
TEST_DIR=$root/real-test
REAL_DIR=$root/real
mad dataset digits "$root/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$root/real-test" --resolution "$RES" --split test --seed "$SEED" --force

# θ_r: the base model, trained on the real digits.
mad mix --out "$root/theta_r/gen0/train" --real "$root/real${N_REAL:+:$N_REAL}" --seed "$SEED" --force
OUT=$root/theta_r train_step 0 "$root/theta_r/gen0/train"
theta_r=$root/theta_r/gen0/run/latest.pt

# θ_s: θ_r fine-tuned on N_SELF of its own samples, drawn with the biased sampler.
echo "== self-samples of θ_r at λ = $LAMBDA (${BIAS[*]})" >&2
mad sample "$theta_r" "$root/self-samples" --seeds "$N-$((N + N_SELF - 1))" --generation 0 "${BIAS[@]}" --device "$DEVICE"
mad mix --out "$root/theta_s/gen0/train" --synthetic "$root/self-samples" --seed "$SEED" --force
finetune "$root/theta_s" "$root/theta_s/gen0/train"

# θ_c (control): θ_r fine-tuned as briefly on N_SELF real digits.
if [ "$CONTROL" = 1 ]; then
    mad mix --out "$root/theta_c/gen0/train" --real "$root/real:$N_SELF" --seed "$((SEED + 1))" --force
    finetune "$root/theta_c" "$root/theta_c/gen0/train"
fi

arms=() names=()
add_arm() { arms+=("$1"); names+=(--name "$2"); }
evaluate_arm() {
    local arm=$1
    samples=("$arm/gen0/samples")
    OUT=$arm evaluate "the real digits"
}

echo "== θ_r (w = 0) and θ_s (w = -1) with the same sampler" >&2
sample_arm "$root/theta_r" "$theta_r" "${BIAS[@]}"
evaluate_arm "$root/theta_r"
add_arm "$root/theta_r" "θ_r (w=0)"
if [ "$LAMBDA" != 1 ]; then
    read -r -a UNBIASED <<<"$(bias_flags 1)"
    sample_arm "$root/theta_r-lambda1" "$theta_r" "${UNBIASED[@]}"
    evaluate_arm "$root/theta_r-lambda1"
    add_arm "$root/theta_r-lambda1" "θ_r at λ=1"
fi
sample_arm "$root/theta_s" "$root/theta_s/gen0/run/latest.pt" "${BIAS[@]}"
evaluate_arm "$root/theta_s"
add_arm "$root/theta_s" "θ_s (w=-1)"

kinds=(neon)
if [ "$CONTROL" = 1 ]; then kinds+=(control); fi
for kind in "${kinds[@]}"; do
    other=$root/theta_s/gen0/run/latest.pt
    if [ "$kind" = control ]; then other=$root/theta_c/gen0/run/latest.pt; fi
    for w in $WS; do
        arm=$root/$kind-w$w
        echo "== $kind, w = $w: θ_r − $w (θ_other − θ_r)" >&2
        mkdir -p "$arm"
        if ! mad merge "$theta_r" "$other" --out "$arm/merged.pt" --weight "-$w"; then
            echo "== $kind w = $w left out: mad merge refused it (above)" >&2
            continue
        fi
        sample_arm "$arm" "$arm/merged.pt" "${BIAS[@]}"
        evaluate_arm "$arm"
        add_arm "$arm" "$kind w=$w"
    done
done

OUT=$root
summary_args=()
for i in "${!arms[@]}"; do summary_args+=("${names[$((2 * i + 1))]}=${arms[$i]}"); done
"$PYTHON" "$HERE/_tables.py" summary "${summary_args[@]}" --json "$OUT/summary.jsonl" \
    --title "Neon at λ = $LAMBDA ($MODEL): each arm's ${N} samples against the held-out digits"
mad report "${arms[@]}" "${names[@]}" --out "$OUT/report.html" --png "$OUT/report.png"
echo "== done: arms in $OUT/*/, table in $OUT/summary.jsonl, comparison in $OUT/report.html" >&2
