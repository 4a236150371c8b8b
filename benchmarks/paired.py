"""Accuracy difference of two `refusion eval --output` runs on the same problems, problem by problem.

    python3 benchmarks/paired.py benchmarks/smollm2-arc-full/arc-challenge/base-ar benchmarks/smollm2-arc-full/arc-challenge/refusion-k4

Prints B's accuracy minus A's in points with a 95% normal interval of the paired difference, and how
often the two extracted the same answer. Both runs must cover the same problem ids.
"""

import argparse
import json
import math
from pathlib import Path


def load(run: str) -> dict:
    path = Path(run) / "samples.jsonl" if Path(run).is_dir() else Path(run)
    return {row["id"]: row for row in map(json.loads, filter(str.strip, path.read_text().splitlines()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the reference run: an eval --output directory or its samples.jsonl")
    parser.add_argument("b", help="the compared run")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    if set(a) != set(b):
        parser.error(f"the runs cover different problems ({len(a)} and {len(b)}, {len(set(a) ^ set(b))} not shared)")
    diffs = [int(b[i]["correct"]) - int(a[i]["correct"]) for i in a]
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else float("nan")
    same = sum(a[i]["extracted"] == b[i]["extracted"] for i in a) / n
    print(f"{n} problems: B - A = {100 * mean:+.2f} points (95% interval {100 * (mean - 1.96 * se):+.2f} to "
          f"{100 * (mean + 1.96 * se):+.2f}); same extracted answer on {100 * same:.1f}%")


if __name__ == "__main__":
    main()
