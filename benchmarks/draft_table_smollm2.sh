#!/usr/bin/env bash
# The shipped model's draft table (refusion/checkpoints/refusion-smollm2-135m/draft_table.safetensors): every
# finished self-distilled answer it was trained on (benchmarks/smollm2/data/answers.jsonl.gz), counted by
# `refusion drafts`. None of the bench's built-in prompts is among their instructions.
#   bash benchmarks/draft_table_smollm2.sh
set -euo pipefail
cd "$(dirname "$0")/.."
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
python3 - "$data/answers.jsonl" <<'PY'
import gzip, json, sys
rows = [r for r in map(json.loads, gzip.open("benchmarks/smollm2/data/answers.jsonl.gz", "rt")) if r["finished"]]
with open(sys.argv[1], "w") as f:
    f.writelines(json.dumps({"query": r["query"], "response": r["response"]}) + "\n" for r in rows)
PY
.venv/bin/refusion drafts --model refusion-smollm2-135m --data "$data/answers.jsonl" --no-progress \
    --output refusion/checkpoints/refusion-smollm2-135m/draft_table.safetensors
