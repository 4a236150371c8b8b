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
# None of the bench's built-in prompts is among their instructions.
#   bash benchmarks/draft_table_smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
python3 - "$data/answers.jsonl" <<'PY'
import gzip, json, sys
rows = [r for r in map(json.loads, gzip.open("benchmarks/smollm2/data/answers.jsonl.gz", "rt")) if r["finished"]]
rows += list(map(json.loads, gzip.open("benchmarks/smollm2/data/everyday-answers.jsonl.gz", "rt")))
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps({"query": r["query"], "response": r["response"]}) + "\n" for r in rows)
PY
.venv/bin/refusion drafts --model refusion-smollm2-135m --data "$data/answers.jsonl" --no-progress \
    --output refusion/checkpoints/refusion-smollm2-135m/draft_table.safetensors
