#!/usr/bin/env bash
# The SmolLM2 table of BENCHMARKS.md: every row is one `refusion eval` run, all on one machine, in one go.
#   bash benchmarks/smollm2.sh            (LIMIT=10 examples per task by default; LIMIT= for the full sets)
#   ROWS="base-ar refusion-k4" ...        runs only those rows and appends them to OUT/results.jsonl, so
#                                         that two processes can share one OUT (one core each)
#   BATCH=16 DTYPE=bfloat16 ...           examples generated together, and the weights' dtype (default 1, auto)
# An interrupted row continues where it stopped when run again (`refusion eval --resume`).
set -euo pipefail
# One thread per process: on a shared 2-core machine, two OpenMP threads per process fight for cores and run 10x slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/.."
LIMIT=${LIMIT-10}  # LIMIT= (empty) means the whole test set
OUT=${OUT:-benchmarks/smollm2}
TASKS=${TASKS:-"gsm8k math500 humaneval mbpp arc-challenge"}
mkdir -p "$OUT"
ROWS=${ROWS:-}
BATCH=${BATCH:-1}
DTYPE=${DTYPE:-auto}
[ -n "$ROWS" ] || : > "$OUT/results.jsonl"

run() {  # run NAME ARGS...: one eval, its summary appended to results.jsonl with the row's name
  local name=$1; shift
  [ -z "$ROWS" ] || [[ " $ROWS " == *" ${name#*/} "* ]] || return 0
  .venv/bin/refusion eval ${LIMIT:+--limit $LIMIT} --json --no-progress --output "$OUT/$name" --resume \
    --batch-size "$BATCH" --dtype "$DTYPE" "$@" \
    | tail -1 | python3 -c "import json,sys; r=json.load(sys.stdin); r['row']='$name'; print(json.dumps(r))" \
    | tee -a "$OUT/results.jsonl"
}

for task in $TASKS; do
  tokens=${TOKENS:-256}; [ "$task" = arc-challenge ] && tokens=${ARC_TOKENS:-64}
  common=(--task "$task" --max-new-tokens "$tokens")
  run "$task/base-ar" --model smollm2-135m-instruct --decoder ar "${common[@]}"
  run "$task/refusion-ar" --model refusion-smollm2-135m --decoder ar "${common[@]}"
  run "$task/refusion-lossless" --model refusion-smollm2-135m --decoder lossless "${common[@]}"
  run "$task/refusion-k4" --model refusion-smollm2-135m --decoder refusion --slot-size 4 --slot-threshold 0.6 --token-threshold 0.3 "${common[@]}"
  run "$task/refusion-k8-loose" --model refusion-smollm2-135m --decoder refusion --slot-size 8 --slot-threshold 0.5 --token-threshold 0.2 "${common[@]}"
done
.venv/bin/refusion plot "$OUT/results.jsonl" --output "$OUT/accuracy_vs_speed.png"
python3 benchmarks/table.py "$OUT/results.jsonl" > "$OUT/table.md"
