#!/usr/bin/env bash
# Train the shipped adapter (refusion-smollm2-135m) further for the lossless decoder's drafts, on a CPU, resumable:
# run it again after an interruption and it continues from the last checkpoint. Then the draft probe
# (benchmarks/model_probe.py: how often the mask head guesses the AR text 1, 2, 3 tokens ahead) of the kept
# checkpoints and of the result, one JSON line each in $OUT/probe.jsonl.
#   bash benchmarks/continue_smollm2.sh                     400 steps of batch 8, bf16 mixed precision, one core
#   STEPS=900 OUT=runs/drafts-900 bash benchmarks/continue_smollm2.sh
#   ANSWERS="answers everyday-answers" DATA=runs/drafts-everyday OUT=runs/drafts-everyday/out bash benchmarks/continue_smollm2.sh
# The recipe: 80% of the examples in the prefix layout that lossless decoding sees (a clean prefix, then masks),
# with only the first 8 masks kept (the drafts it reads); 20% in the paper's layout, which the `refusion` decoder reads.
# Knobs: STEPS, BATCH, LR, PREFIX (share), HORIZON (masks kept), THREADS, DATA and OUT (directories), ANSWERS (which
# files of benchmarks/smollm2/data to train on, without .jsonl.gz).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
STEPS=${STEPS:-400}
BATCH=${BATCH:-8}
LR=${LR:-6e-5}
PREFIX=${PREFIX:-0.8}
HORIZON=${HORIZON:-8}
DATA=${DATA:-runs/drafts}
OUT=${OUT:-runs/drafts/out}
ANSWERS=${ANSWERS:-answers}
mkdir -p "$DATA"

# The self-distilled answers; every 128th finished one held out (as benchmarks/full_vs_lora.sh).
python3 - "$DATA" $ANSWERS <<'PY'
import gzip, json, sys
rows = [r for name in sys.argv[2:] for r in map(json.loads, gzip.open(f"benchmarks/smollm2/data/{name}.jsonl.gz", "rt"))
        if r["finished"]]
for name, keep in (("train", lambda i: i % 128), ("heldout", lambda i: not i % 128)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        f.writelines(json.dumps({"query": r["query"], "response": r["response"]}) + "\n" for i, r in enumerate(rows) if keep(i))
PY

resume=(); compgen -G "$OUT/checkpoint-*" > /dev/null && resume=(--resume)
if [ ! -f "$OUT/adapter_config.json" ]; then
  .venv/bin/refusion train --model refusion-smollm2-135m --continue-adapter --data "$DATA/train.jsonl" \
      --eval-data "$DATA/heldout.jsonl" --eval-every 100 --output "$OUT" --prefix-share "$PREFIX" --draft-horizon "$HORIZON" \
      --max-steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup-ratio 0.02 --max-length 640 --save-every 50 \
      --log-every 10 --precision bfloat16 "${resume[@]}"
fi

for model in $(ls -d "$OUT"/checkpoint-* 2>/dev/null | sort -t- -k2 -n) "$OUT"; do
  .venv/bin/python benchmarks/model_probe.py --model "$model" --dtype bfloat16 --threads "$THREADS" --json | tail -n 1
done >> "$OUT/probe.jsonl"
echo "draft probes in $OUT/probe.jsonl; compare with the shipped model: bash benchmarks/bench.sh (MODEL=$OUT)"
