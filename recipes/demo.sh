#!/usr/bin/env bash
# The demo pipeline on the built-in `synthetic` data (no files, no downloads), CPU-friendly.
# Run it with `make demo`. Each stage writes files that the next stage reads.
set -euo pipefail
ADVCLI=${ADVCLI:-advcli}
OUT=${DEMO_DIR:-demo-out}
mkdir -p "$OUT"

echo "== train: tiny-cnn on synthetic ==" >&2
"$ADVCLI" train --arch tiny-cnn --dataset synthetic --epochs 4 --batch-size 128 --lr 0.1 \
  --augment none --out "$OUT/standard.safetensors" --label Standard
