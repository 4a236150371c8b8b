#!/usr/bin/env bash
# The shipped model's draft table (refusion/checkpoints/refusion-smollm2-135m/draft_table.safetensors), counted by
# `refusion drafts` from
# - every finished self-distilled answer the adapter was trained on (benchmarks/smollm2/data/answers.jsonl.gz), and
# - every answer of the base model to everyday requests (benchmarks/smollm2/data/everyday-answers.jsonl.gz, greedy,
#   at most 256 tokens, finished or not: what the model writes), made by
#     refusion build-data --output DIR --count 2000 --seed S --families chat,list --max-new-tokens 256 \
#         --batch-size 16 --dtype bfloat16
#   for seeds 1 and 2 (one core, about 35 minutes a seed; the file keeps seed 2's answers to instructions seed 1
#   had not drawn, 495 of its 2,000).
# - every answer of the shipped model itself, with `ar` decoding (HF generate, bf16), to the everyday requests of
#   seed 1 and to 1,500 instructions of the benchmark-shaped mix (benchmarks/smollm2/data/own-answers.jsonl.gz,
#   finished or not), made on one core each, side by side, by
#     refusion build-data --model refusion-smollm2-135m --output DIR --count 2000 --seed 1 --families chat,list \
#         --max-new-tokens 256 --batch-size 16 --dtype bfloat16
#     refusion build-data --model refusion-smollm2-135m --output DIR --count 1500 --seed 0 \
#         --max-new-tokens 256 --batch-size 16 --dtype bfloat16
#   Its text parts from the base model's early (5 of 2,000 everyday answers alike: `python3
#   benchmarks/own_answers.py`), and the lossless decoder drafts what this model writes.
# None of the bench's built-in prompts is among their instructions (`python3 benchmarks/own_answers.py`).
#   bash benchmarks/draft_table_smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
python3 - "$data/answers.jsonl" <<'PY'
import gzip, json, sys
rows = [r for r in map(json.loads, gzip.open("benchmarks/smollm2/data/answers.jsonl.gz", "rt")) if r["finished"]]
for name in ("everyday-answers", "own-answers"):  # finished or not: what the models write
    rows += list(map(json.loads, gzip.open(f"benchmarks/smollm2/data/{name}.jsonl.gz", "rt")))
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps({"query": r["query"], "response": r["response"]}) + "\n" for r in rows)
PY
.venv/bin/refusion drafts --model refusion-smollm2-135m --data "$data/answers.jsonl" --no-progress \
    --output refusion/checkpoints/refusion-smollm2-135m/draft_table.safetensors
