#!/usr/bin/env bash
# Full fine-tuning against LoRA, per hour of CPU: both convert SmolLM2-135M-Instruct with the refusion
# objective on the same self-distilled data, side by side on one CPU core each, and log the held-out
# loss (same masks every time) against wall-clock time. Results: benchmarks/full_vs_lora/{table.md,loss_vs_time.png}.
#   bash benchmarks/full_vs_lora.sh            (STEPS=60, EVAL_EVERY=20, every HOLDOUT_EVERY=128th answer held out)
#   CONFIGS="lora-all-linear" bash benchmarks/full_vs_lora.sh   re-runs only the named configurations (full, lora,
#                                                lora-all-linear; default "full lora"), one process each, in parallel;
#                                                the table and figure cover every configuration with results in OUT
set -euo pipefail
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
cd "$(dirname "$0")/.."
STEPS=${STEPS:-60}
EVAL_EVERY=${EVAL_EVERY:-20}
HOLDOUT_EVERY=${HOLDOUT_EVERY:-128}
FULL_LR=${FULL_LR:-1e-4}
LORA_LR=${LORA_LR:-5e-4}
OUT=${OUT:-benchmarks/full_vs_lora}
RUNS=${RUNS:-/tmp/refusion-full-vs-lora}
mkdir -p "$OUT" "$RUNS"

# Every HOLDOUT_EVERY-th finished answer is held out; the rest is training data.
python3 - "$RUNS" "$HOLDOUT_EVERY" <<'PY'
import gzip, json, sys
every = int(sys.argv[2])
rows = [r for r in map(json.loads, gzip.open("benchmarks/smollm2/data/answers.jsonl.gz", "rt")) if r["finished"]]
for name, keep in (("train", lambda i: i % every), ("heldout", lambda i: not i % every)):
    with open(f"{sys.argv[1]}/{name}.jsonl", "w") as f:
        f.writelines(json.dumps({"query": r["query"], "response": r["response"]}) + "\n" for i, r in enumerate(rows) if keep(i))
PY

common=(--model smollm2-135m-instruct --data "$RUNS/train.jsonl" --eval-data "$RUNS/heldout.jsonl" --objective refusion
        --max-steps "$STEPS" --eval-every "$EVAL_EVERY" --batch-size 8 --max-length 512 --warmup-ratio 0.05
        --log-every 5 --save-every 1000 --seed 0)
CONFIGS=${CONFIGS:-"full lora"}
declare -A ARGS=([full]="--lr $FULL_LR" [lora]="--lr $LORA_LR --lora-rank 32"
                 [lora-all-linear]="--lr $LORA_LR --lora-rank 32 --lora-targets all-linear")
declare -A LABELS=([full]="full (lr $FULL_LR)" [lora]="LoRA r=32 q,k,v,o (lr $LORA_LR)"
                   [lora-all-linear]="LoRA r=32 all linear (lr $LORA_LR)")
for config in $CONFIGS; do
  [ -n "${ARGS[$config]:-}" ] || { echo "unknown configuration $config (full, lora, lora-all-linear)" >&2; exit 2; }
  rm -rf "${RUNS:?}/$config"
  # shellcheck disable=SC2086  # ARGS holds several options
  .venv/bin/refusion train "${common[@]}" --output "$RUNS/$config" ${ARGS[$config]} > "$RUNS/$config.log" 2>&1 &
done
wait
for config in $CONFIGS; do cp "$RUNS/$config/loss.json" "$OUT/$config.json"; done
files=() labels=()
for config in full lora lora-all-linear; do
  if [ -f "$OUT/$config.json" ]; then files+=("$OUT/$config.json"); labels+=("${LABELS[$config]}"); fi
done
.venv/bin/python benchmarks/loss_vs_time.py "${files[@]}" --labels "${labels[@]}" --output "$OUT/loss_vs_time.png" > "$OUT/table.md"
cat "$OUT/table.md"
