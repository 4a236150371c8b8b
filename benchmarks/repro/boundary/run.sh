#!/usr/bin/env bash
# boundary=free (the paper's) against boundary=check on the miniature's ReFusion-from-ARM model:
# the first 100 test problems of each task, the settings of benchmarks/repro/results.md, one thread.
#   bash benchmarks/repro/boundary/run.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
OUT=benchmarks/repro/boundary
: > "$OUT/results.jsonl"
for task in mini-json mini-gsm8k; do
  for setting in "0.9 0.4" "0.7 0.3" "0.5 0.1"; do
    set -- $setting
    for boundary in free check; do
      name="$task/t$1-$2-$boundary"
      .venv/bin/refusion eval --model benchmarks/repro/refusion-from-arm --task "$task" --limit 100 --max-new-tokens 64 \
        --decoder refusion --slot-size 4 --blocks 2 --slot-threshold "$1" --token-threshold "$2" --boundary "$boundary" \
        --threads 1 --no-progress --json --output "$OUT/$name" | tail -1 \
        | python3 -c "import json,sys; r=json.load(sys.stdin); r['row']='$name'; print(json.dumps(r))" >> "$OUT/results.jsonl"
    done
    python3 benchmarks/paired.py "$OUT/$task/t$1-$2-free" "$OUT/$task/t$1-$2-check" > "$OUT/$task/t$1-$2-paired.txt"
  done
done
python3 benchmarks/table.py "$OUT/results.jsonl" > "$OUT/table.md"
cat "$OUT/table.md" "$OUT"/*/*-paired.txt
