#!/usr/bin/env bash
# Human-filtered loop: people choose what the next generation trains on (the thesis behind
# this toolkit; the MAD paper models such cherry-picking as sampling bias, Sec. 3).
#
#   real ─ mix ─ train ─ sample ─ filter ─ mix ─ train ─ sample ─ filter ─ mix ─ train ─ sample
#          gen0 ────────────────────┘ gen1 ───────────────────────┘ gen2
#
# A fully synthetic loop with one extra step: each generation's N samples are filtered and
# only the kept ones feed the next generation (so later training sets are smaller than N).
#
#   REVIEW=1   a person decides: `mad filter SAMPLES KEPT --review --reviewer $REVIEWER`
#              serves a page on 127.0.0.1 (its URL with a token is printed; OPEN=1 opens a
#              browser); mark each image good/bad/skip (keys G/B/S), press Finish, and the
#              loop goes on with the kept images. Decisions are flushed to
#              SAMPLES-review/labels-$REVIEWER.csv as they are made: stopping the server
#              without Finish ends the script, and re-running it resumes the review where it
#              stopped. A finished review is not asked again (delete gen*/kept to redo it).
#   otherwise  an automatic stand-in so the script runs unattended, AUTO_FILTER (default
#              `--by classifier --by artifacts:keep=0.8`): first the bundled digits network
#              drops images it cannot read as a digit with confidence >= 0.9 (what a person
#              rejects as "not a digit"), then the artifacts rule keeps the 80 % with the
#              weakest cross-hatching peaks in the spectrum (what a person rejects as
#              "artifacts"). Rejected images go to gen*/rejected for a look.
#
#   FINETUNE=1 (ddpm, StyleGAN2) each generation starts from the previous generation's
#              weights (`mad train --resume genT-1/run/latest.pt`), as the thesis did; by
#              default every generation trains from scratch, as the MAD paper did.
#
# At the end: the colour drift of every generation's samples (before filtering, i.e. what
# the model makes) against the real digits, and their distance to the held-out test digits
# in the digits feature space. Sample grids in $OUT/gen*/grid.png.
#
# Settings (environment variables):
#   MODEL=ddpm|stylegan2|gaussian   default ddpm on a CPU, stylegan2 on a GPU; gaussian fits a
#                             Gaussian to pixels in seconds (the paper's theory)
#   OUT GENERATIONS N RES SEED DEVICE   as their names say; N = samples per generation
#                             (gen 0 trains on N real digits, at most 1,438)
#   KIMG CFG TRAIN_FLAGS      training length per generation, preset, other `mad train` flags
#   PSI | GUIDANCE            sampling bias: --psi (StyleGAN2, Gaussian) or --guidance (ddpm)
#   REVIEW REVIEWER PORT OPEN EXAMPLES   the review page (EXAMPLES: folder with good/ and bad/)
#   AUTO_FILTER FINETUNE      see above
#   METRICS=fid,kid,pr,dc     which `mad metrics` to compute (KID is the slowest)
#   JSON=1 (default)          write the final colour/metrics results to $OUT/colorhist.jsonl
#                             and $OUT/metrics.jsonl (one JSON object per folder); JSON=0: tables
#
# Re-running with the same settings resumes: dataset, mix and automatic filters are redone
# (same seeds, same result), training continues from its latest snapshot,
# sampling completes only the missing images, finished reviews are kept.
set -euo pipefail

OUT=${OUT:-runs/human-filter}
GENERATIONS=${GENERATIONS:-5}
N=${N:-400}                    # samples per generation (the thesis' participants saw 400)
REVIEW=${REVIEW:-0}            # 1: a person filters in the browser
REVIEWER=${REVIEWER:-${USER:-$(id -un)}}
PORT=${PORT:-8765}
OPEN=${OPEN:-0}
EXAMPLES=${EXAMPLES:-}
AUTO_FILTER=${AUTO_FILTER:---by classifier --by artifacts:keep=0.8}
FINETUNE=${FINETUNE:-0}        # 1: initialise each generation from the previous one (ddpm, StyleGAN2)
source "$(dirname "${BASH_SOURCE[0]}")/_loop.sh"  # the other settings and the shared steps

if [ "$FINETUNE" = 1 ] && [ "$MODEL" = gaussian ]; then
    echo "FINETUNE=1 needs a trained model (ddpm or stylegan2): a Gaussian is fitted in closed form, nothing to fine-tune" >&2
    exit 2
fi
read -r -a auto_filter <<<"$AUTO_FILTER"
review_flags=(--reviewer "$REVIEWER" --port "$PORT")
if [ "$OPEN" = 1 ]; then review_flags+=(--open); fi
if [ -n "$EXAMPLES" ]; then review_flags+=(--examples "$EXAMPLES"); fi

mad dataset digits "$OUT/real" --resolution "$RES" --split train --seed "$SEED" --force
mad dataset digits "$OUT/real-test" --resolution "$RES" --split test --seed "$SEED" --force
mad mix --out "$OUT/gen0/train" --real "$OUT/real:$N" --seed "$SEED" --force

for ((t = 0; t < GENERATIONS; t++)); do
    gen="$OUT/gen$t"
    resume=latest  # continue this generation's run (or start it)
    if [ "$FINETUNE" = 1 ] && ((t > 0)) && [ ! -f "$gen/run/latest.pt" ]; then
        resume="$OUT/gen$((t - 1))/run/latest.pt"  # start from the previous generation's weights
    fi
    train_step "$t" "$gen/train" "$resume"
    sample_step "$t"
    next=$((t + 1))
    if ((next >= GENERATIONS)); then break; fi  # nobody trains on the last generation: no filter

    if [ "$REVIEW" = 1 ]; then
        if [ -f "$gen/kept/decisions.csv" ]; then
            echo "== generation $t: review already finished, keeping $gen/kept" >&2
        else
            echo "== generation $t: review $gen/samples in the browser, then press Finish" >&2
            mad filter "$gen/samples" "$gen/kept" --review "${review_flags[@]}"
            if [ ! -f "$gen/kept/decisions.csv" ]; then
                echo "review of $gen/samples stopped before Finish; the decisions so far are in" \
                    "$gen/samples-review/labels-$REVIEWER.csv: re-run this script to go on" >&2
                exit 1
            fi
        fi
    else
        mad filter "$gen/samples" "$gen/kept" "${auto_filter[@]}" --rejected "$gen/rejected" \
            --device "$DEVICE" --force
    fi
    if ! compgen -G "$gen/kept/*.png" >/dev/null; then
        echo "the filter kept none of $gen/samples: nothing for generation $next to train on" \
            "(see $gen/kept/decisions.csv; loosen AUTO_FILTER or keep more in the review)" >&2
        exit 1
    fi
    # Only the kept samples of this generation: a fully synthetic loop with curation.
    mad mix --out "$OUT/gen$next/train" --synthetic "$gen/kept" --seed "$((SEED + next))" --force
done

evaluate "the real digits"
echo "== done: grids in $OUT/gen*/grid.png, kept/rejected in $OUT/gen*/kept|rejected" >&2
mad report "$OUT" --out "$OUT/report.html" --png "$OUT/report.png"
