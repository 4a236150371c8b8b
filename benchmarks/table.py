"""Render `refusion eval --json` lines (with a "row" name) as a Markdown table, ratios against each task's base AR row.

    python3 benchmarks/table.py benchmarks/smollm2/results.jsonl > benchmarks/smollm2/table.md
"""

import json
import sys

# benchmarks/smollm2.sh's rows, in the order they are read; rows appended by parallel runs are put back in it.
ROW_ORDER = ["base-ar", "refusion-ar", "refusion-k4", "refusion-k8-loose"]


def row_key(row: dict, tasks: list[str]) -> tuple[int, int]:
    name = row["row"].split("/", 1)[1]
    return tasks.index(row["task"]), ROW_ORDER.index(name) if name in ROW_ORDER else len(ROW_ORDER)


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    rows.sort(key=lambda r: row_key(r, tasks))
    print("| task | model / decoder | settings | samples | accuracy | tokens/s | tokens/forward | forwards/sample | speed vs base AR |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_speed = {r["task"]: r["tokens_per_second"] for r in rows if r["row"].endswith("/base-ar")}
    for r in rows:
        settings = r.get("settings", {})
        knobs = ", ".join(f"{k}={settings[k]}" for k in ("slot_size", "blocks", "slot_threshold", "token_threshold") if k in settings)
        ratio = r["tokens_per_second"] / base_speed[r["task"]] if base_speed.get(r["task"]) else float("nan")
        print(f"| {r['task']} | {r['row'].split('/', 1)[1]} | {knobs or '-'} | {r['samples']} | {100 * r['accuracy']:.1f} | "
              f"{r['tokens_per_second']:.2f} | {r['tokens_per_forward']:.2f} | {r['forward_passes']:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main(sys.argv[1])
