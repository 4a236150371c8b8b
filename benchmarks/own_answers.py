"""How the shipped model's own answers (benchmarks/smollm2/data/own-answers.jsonl.gz) relate to the base model's and
to the bench's built-in prompts: the figures BENCHMARKS.md and benchmarks/draft_table_smollm2.sh cite.

    python3 benchmarks/own_answers.py > benchmarks/bench/own-answers.txt

- Where both models answered the same everyday request: how many answers are alike, and how much of the base
  model's answer they share before they part (mean share of its characters).
- Per answers file: instructions equal to a built-in bench prompt, and those sharing a run of five words with one
  (`five_word_runs`: a template's phrasing, such as "what is the difference between").
"""

import gzip
import json
import os

from refusion.bench import builtin_prompts
from refusion.bench.prompts import five_word_runs

DATA = "benchmarks/smollm2/data"


def records(name: str) -> list[dict]:
    with gzip.open(os.path.join(DATA, name), "rt") as lines:
        return [json.loads(line) for line in lines]


def shared_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    base = {r["query"]: r["response"] for r in records("everyday-answers.jsonl.gz")}
    own = records("own-answers.jsonl.gz")
    pairs = [(base[r["query"]], r["response"]) for r in own if r["query"] in base]
    alike = sum(b == o for b, o in pairs)
    share = sum(shared_prefix(b, o) / max(1, len(b)) for b, o in pairs) / max(1, len(pairs))
    print(f"everyday requests both models answered: {len(pairs)}; answers alike: {alike}; "
          f"mean share of the base answer before they part: {share:.1%}")
    prompts = builtin_prompts()
    exact = {p.strip().lower() for p in prompts}
    runs = set().union(*map(five_word_runs, prompts))
    for name in ("answers.jsonl.gz", "everyday-answers.jsonl.gz", "own-answers.jsonl.gz"):
        queries = [r["query"] for r in records(name)]
        equal = sum(q.strip().lower() in exact for q in queries)
        sharing = sum(bool(five_word_runs(q) & runs) for q in queries)
        print(f"{name}: {len(queries)} instructions, {equal} equal to a bench prompt, "
              f"{sharing} sharing a run of five words with one")


if __name__ == "__main__":
    main()
