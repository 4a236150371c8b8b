"""mini-gsm8k: the held-out test split of the synthetic arithmetic family (`refusion.repro.arithmetic`).

200 GSM8K-like word problems (seed 0), each answered with worked equations ending in
`The answer is N.`; scored like GSM8K by the final number. Generated in memory, no data files.
"""

from __future__ import annotations

from ...eval.metrics import extract_gsm8k
from .. import arithmetic

NAME = "mini-gsm8k"
SIZE = 200
SEED = 0
MAX_NEW_TOKENS = 64


def examples(limit: int | None = None) -> list[dict]:
    _, test = arithmetic.split(SEED, SIZE, 0)
    rows = test if limit is None else test[:limit]
    return [{"id": index, "question": arithmetic.question(problem), "answer": str(problem["answer"])}
            for index, problem in enumerate(rows)]


def prompt(example: dict) -> str:
    return example["question"]


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    answer = extract_gsm8k(completion)
    return answer, answer == example["answer"]
