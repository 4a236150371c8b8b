#!/usr/bin/env bash
# Rebuild refusion-smollm2-135m from nothing: self-distilled data, then the conversion with the refusion objective.
# The defaults are the shipped model's recipe (model card), meant for a GPU; every step resumes where it stopped,
# so the script can be run again after an interruption.
#   bash benchmarks/convert_smollm2.sh                      the shipped recipe (DEVICE=cuda)
#   STEPS=6000 TARGETS=all-linear bash benchmarks/convert_smollm2.sh   a longer run, LoRA on every linear layer
#   SHIP=1 bash benchmarks/convert_smollm2.sh               also copy the result over refusion/checkpoints/refusion-smollm2-135m
#   RECIPE="--prefix-share 0.5 --ar-across-slots" bash benchmarks/convert_smollm2.sh
#                                                           the conversion that kept the AR skill in the miniature
#                                                           (benchmarks/repro/analysis.md); empty = the paper's recipe
# Knobs: DEVICE, COUNT (instructions), MAX_NEW (answer length), STEPS, BATCH, LR, RANK (empty = full fine-tune),
# TARGETS (LoRA layers), RECIPE (more `refusion train` options), DATA and OUT (directories).
set -euo pipefail
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-8000}
MAX_NEW=${MAX_NEW:-384}
STEPS=${STEPS:-1600}
BATCH=${BATCH:-32}
LR=${LR:-3e-4}
RANK=${RANK-32}
TARGETS=${TARGETS:-q_proj,k_proj,v_proj,o_proj}
DATA=${DATA:-runs/smollm2-data}
OUT=${OUT:-runs/refusion-smollm2-135m}
SHIP=${SHIP:-}
read -r -a recipe <<< "${RECIPE:-}"
dtype=float32; [ "$DEVICE" = cpu ] || dtype=bfloat16

# 1. The base model answers COUNT templated instructions (answers.jsonl is resumed; unfinished answers are dropped).
.venv/bin/refusion build-data --output "$DATA" --count "$COUNT" --max-new-tokens "$MAX_NEW" \
    --batch-size "$([ "$DEVICE" = cpu ] && echo 8 || echo 512)" --dtype "$dtype" --device "$DEVICE"

# 2. The conversion; a second run continues from the last checkpoint.
lora=(); [ -z "$RANK" ] || lora=(--lora-rank "$RANK" --lora-targets "$TARGETS")
resume=(); compgen -G "$OUT/checkpoint-*" > /dev/null && resume=(--resume)
.venv/bin/refusion train --model smollm2-135m-instruct --data "$DATA/train.jsonl" --objective refusion --output "$OUT" \
    "${lora[@]}" "${recipe[@]}" --max-steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-ratio 0.03 --max-length 640 \
    --save-every 200 "${resume[@]}"

# 3. Optionally replace the shipped model (its model card, README.md, is kept: update its numbers by hand).
if [ -n "$SHIP" ]; then
  [ -n "$RANK" ] || { echo "a full fine-tune (~270 MB) is too large to ship in the repository; set RANK" >&2; exit 2; }
  ship=refusion/checkpoints/refusion-smollm2-135m
  find "$OUT" -maxdepth 1 -type f ! -name README.md ! -name training_args.bin -exec cp {} "$ship/" \;
  echo "copied $OUT into $ship"
fi
echo "try it: refusion generate \"What is 7 * 8?\" --model $OUT"
