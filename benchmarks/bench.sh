#!/usr/bin/env bash
# The decoder comparison in BENCHMARKS.md: refusion bench on the shipped model (bf16, then float32)
# and on the miniature ReFusion-from-ARM model (mini-json; float32, then bf16), each in one process.
# About 40 minutes on a 2-core CPU; run nothing else meanwhile (timings are ratios within one run,
# but load skews them).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-benchmarks/bench}
LIMIT=${LIMIT:-}

"$BIN/refusion" bench --model refusion-smollm2-135m --dtype bfloat16 --threads 2 --max-new-tokens 96 ${LIMIT:+--limit $LIMIT} \
  --decoders ar,lossless,lossless:draft_table=off,lossless:lookup=0,draft_table=off,lossless:branches=1,depth=1,refusion,refusion:kv=exact,refusion:kv=recompute,refusion:slot_size=8,slot_threshold=0.5,token_threshold=0.2 \
  --output "$OUT/smollm2-bf16" --no-progress
"$BIN/refusion" bench --model refusion-smollm2-135m --dtype float32 --threads 2 --max-new-tokens 96 --limit ${LIMIT:-20} \
  --decoders ar,lossless,refusion --output "$OUT/smollm2-fp32" --no-progress
# The miniature: the paper's conversion recipe and the prefix-layout one (benchmarks/repro/analysis.md), on both tasks.
for model in refusion-from-arm refusion-from-arm-prefix-across; do
  "$BIN/refusion" bench --model benchmarks/repro/$model --prompts benchmarks/bench/mini-json-prompts.jsonl \
    --dtype float32 --threads 1 --max-new-tokens 64 ${LIMIT:+--limit $LIMIT} \
    --decoders ar,lossless,refusion:blocks=2,slot_threshold=0.7,token_threshold=0.3 --output "$OUT/miniature-$model" --no-progress
  "$BIN/refusion" bench --model benchmarks/repro/$model --prompts benchmarks/bench/mini-gsm8k-prompts.jsonl \
    --dtype float32 --threads 1 --max-new-tokens 64 ${LIMIT:+--limit $LIMIT} \
    --decoders ar,lossless --output "$OUT/miniature-gsm8k-$model" --no-progress
done
# The miniature in bfloat16 on mini-json: on this CPU wide forwards cost relatively less in bf16 than in float32
# (while a one-token forward of this 2M-parameter model costs more), so the lossless mode's ratio rises.
for model in refusion-from-arm refusion-from-arm-longer-prefix-across; do
  "$BIN/refusion" bench --model benchmarks/repro/$model --prompts benchmarks/bench/mini-json-prompts.jsonl \
    --dtype bfloat16 --threads 1 --max-new-tokens 64 ${LIMIT:+--limit $LIMIT} \
    --decoders ar,lossless --output "$OUT/miniature-bf16-$model" --no-progress
done
