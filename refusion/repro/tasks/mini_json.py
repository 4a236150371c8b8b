"""mini-json: the held-out test split of the synthetic JSON-record family (`refusion.repro.records`).

200 sentences (seed 0) to be written as one JSON record; a completion passes when its first
`{...}` parses with `json.loads` and equals the record. Generated in memory, no data files.
"""

from __future__ import annotations

from .. import records

NAME = "mini-json"
SIZE = 200
SEED = 0
MAX_NEW_TOKENS = 64


def examples(limit: int | None = None) -> list[dict]:
    _, test = records.split(SEED, SIZE, 0)
    rows = test if limit is None else test[:limit]
    return [{"id": index, "question": records.question(item), "answer": records.solution(item), "record": item["record"]}
            for index, item in enumerate(rows)]


def prompt(example: dict) -> str:
    return example["question"]


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    text, value = records.parse_record(completion)
    return text, value == example["record"]
