"""Bench prompts: a built-in varied set (chat, lists, math, code, multiple choice, open questions), or a user's file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import RefusionError

BUILTIN = Path(__file__).with_name("prompts.jsonl")


def read_prompts(path: str | Path) -> list[str]:
    """The `prompt` of every `{"prompt": ...}` line of a JSON-lines file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise RefusionError(f"prompts file not found: {path}")
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise RefusionError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise RefusionError(f"{path}:{number}: not a JSON object") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise RefusionError(f'{path}:{number}: expected {{"prompt": "non-empty text"}}')
        prompts.append(record["prompt"])
    if not prompts:
        raise RefusionError(f"{path}: no prompts in it")
    return prompts


def builtin_prompts() -> list[str]:
    """About 40 varied held-out prompts (none from the training templates or any benchmark)."""
    return read_prompts(BUILTIN)


def five_word_runs(text: str) -> set[tuple[str, ...]]:
    """Every run of five words in a text (lowercased letters and digits): an instruction sharing one with a bench
    prompt shares a phrase with it (a template's, such as "what is the difference between")."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}
