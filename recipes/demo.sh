#!/usr/bin/env bash
# The demo pipeline on the built-in `synthetic` data (no files, no downloads), sized for 2 CPU
# cores (a few minutes). Run it with `make demo`. Each stage writes files the next stage reads:
#
#   check-loader -> train (Standard) -> adv-train (Robust, PGD Linf 8/255) -> attack -> eval -> compare
#   -> audit (can the Robust model's evaluation be trusted?)
#
# Knobs (environment): ADVCLI (the advcli executable), DEMO_DIR (output folder), DEMO_N (test
# examples evaluated), DEMO_EPOCHS (training epochs of each model), DEMO_N_TRAIN (training images).
set -euo pipefail
ADVCLI=${ADVCLI:-advcli}
OUT=${DEMO_DIR:-demo-out}
N=${DEMO_N:-500}
EPOCHS=${DEMO_EPOCHS:-4}
# Training images used (synthetic has 10,000); tests shrink it.
NTRAIN=${DEMO_N_TRAIN:-10000}
mkdir -p "$OUT/results"
step() { printf '\n== %s ==\n' "$*" >&2; }

step "check-loader: is each augment mode's randomness what it claims? (buggy must be flagged)"
"$ADVCLI" check-loader --all-modes --workers 2 --samples 32

step "train: Standard tiny-cnn on synthetic ($EPOCHS epochs)"
"$ADVCLI" train --arch tiny-cnn --dataset synthetic --epochs "$EPOCHS" --batch-size 128 --lr 0.1 \
  --augment none --n-train "$NTRAIN" --label Standard --out "$OUT/standard.safetensors" -q

step "adv-train: Robust tiny-cnn, PGD-5 Linf eps 8/255, fraction 1.0 ($EPOCHS epochs)"
"$ADVCLI" adv-train --arch tiny-cnn --dataset synthetic --epochs "$EPOCHS" --batch-size 128 --lr 0.1 \
  --augment none --n-train "$NTRAIN" --norm linf --eps 8/255 --attack pgd --steps 5 --fraction 1.0 \
  --label Robust --out "$OUT/robust.safetensors" -q

step "attack: PGD-10 on the Robust model, adversarial set + picture"
"$ADVCLI" attack "$OUT/robust.safetensors" --attack pgd --eps 8/255 --steps 10 --n "$N" \
  --out "$OUT/robust-pgd.safetensors" --grid "$OUT/robust-pgd.png" --format yaml > /dev/null

for model in standard robust; do
  step "eval: $model: clean, PGD-10 and AutoAttack (APGD-CE + APGD-T) at Linf 8/255 on $N test images"
  "$ADVCLI" eval "$OUT/$model.safetensors" --n "$N" --norm linf --eps 8/255 --pgd-steps 10 \
    --autoattack --aa-version custom --aa-attacks apgd-ce,apgd-t -o "$OUT/results/$model.yaml" -q > /dev/null
done

step "compare"
"$ADVCLI" compare "$OUT"/results/*.yaml --baseline Standard

step "audit --quick: can the Robust model's evaluation be trusted? (curve, FGSM vs PGD, gradients; Linf 8/255, $N test images)"
# The quick tier takes seconds here; all seven checks (drop --quick) take minutes on a CPU,
# most of it Square's 5,000 queries. Exit 1 is a failed check (the table says which): the demo
# shows it and ends there. Anything else (a crash, a usage error) stops the demo as an error.
rm -f "$OUT/robust-audit.yaml"
status=0
"$ADVCLI" audit "$OUT/robust.safetensors" --quick --n "$N" --norm linf --eps 8/255 \
  -o "$OUT/robust-audit.yaml" --plot "$OUT/robust-audit.png" -q || status=$?
if [ "$status" -ne 0 ] && ! { [ "$status" -eq 1 ] && [ -s "$OUT/robust-audit.yaml" ]; }; then
  exit "$status"
fi
