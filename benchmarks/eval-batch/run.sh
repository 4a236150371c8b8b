#!/usr/bin/env bash
# Does `refusion eval --batch-size 16` give the samples of batch 1? ARC-Challenge's first 160 problems,
# the shipped model in bf16, ar and lossless, each at batch 1 and 16; compared with benchmarks/paired.py.
#   bash benchmarks/eval-batch/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUT=benchmarks/eval-batch
for decoder in ar lossless; do
  for batch in 1 16; do
    .venv/bin/refusion eval --task arc-challenge --limit 160 --max-new-tokens 32 --decoder "$decoder" --dtype bfloat16 \
      --batch-size "$batch" --no-progress --json --output "$OUT/$decoder-b$batch" | tail -1 > "$OUT/$decoder-b$batch.json"
  done
  python3 benchmarks/paired.py "$OUT/$decoder-b1" "$OUT/$decoder-b16" | tee "$OUT/$decoder-paired.txt"
done
