"""Training data: JSON / JSONL files of `{"query", "response"}` or `{"messages": [...]}` records.

Each record becomes an `Example` of prompt ids and response ids. The query goes through the
tokenizer's chat template with the generation prompt (text as is when the tokenizer has none); the
response is followed by EOS. Knows nothing about objectives or masking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RefusionError


@dataclass
class Example:
    prompt_ids: list[int]
    response_ids: list[int]
    """The response tokens, EOS included."""


@dataclass
class Dataset:
    examples: list[Example]
    skipped_too_long: int = 0
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {"prompt_ids": example.prompt_ids, "response_ids": example.response_ids}


def read_records(path: Path) -> list[tuple[str, object]]:
    """(where, record) for every record of a .json file (a list) or a .jsonl file; where = "FILE:LINE"."""
    if not path.is_file():
        raise RefusionError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise RefusionError(f"{path}: not UTF-8 text (byte {error.start})") from None
    stripped = text.lstrip()
    if path.suffix != ".jsonl" and stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise RefusionError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
        if not isinstance(records, list):
            raise RefusionError(f"{path}: a .json data file must hold a list of records")
        return [(f"{path} (record {i})", record) for i, record in enumerate(records, start=1)]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise RefusionError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    if not found:
        raise RefusionError(f"{path}: no records in it")
    return found


def split_record(record, where: str) -> tuple[str | list[dict], str]:
    """A record -> (query text or the chat messages before the answer, response text)."""
    if not isinstance(record, dict):
        raise RefusionError(f"{where}: expected an object with 'query' and 'response' or 'messages', got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages)):
            raise RefusionError(f"{where}: 'messages' must be a list of {{'role', 'content'}} objects")
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise RefusionError(f"{where}: 'messages' needs an assistant message after at least one other message")
        return messages[:last], messages[last]["content"]
    if isinstance(record.get("query"), str) and isinstance(record.get("response"), str):
        return record["query"], record["response"]
    raise RefusionError(f"{where}: expected string fields 'query' and 'response', or 'messages'")


def encode_example(tokenizer, query: str | list[dict], response: str, eos_id: int) -> Example:
    """Token ids of the templated query and of the response followed by EOS."""
    from ..prompting import prompt_token_ids

    prompt = prompt_token_ids(tokenizer, query)  # exactly as `refusion generate` will build it
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return Example(list(map(int, prompt)), [*map(int, response_ids), eos_id])


def read_pairs(paths: list[str | Path]) -> list[tuple[str | list[dict], str]]:
    """(query or chat messages, response) for every record of every file; no tokenizer needed."""
    return [split_record(record, where) for path in map(Path, paths) for where, record in read_records(path)]


def encode_pairs(pairs: list[tuple[str | list[dict], str]], tokenizer, max_length: int, paths: list[str | Path]) -> Dataset:
    """Tokenize (query, response) pairs read from `paths`; examples longer than `max_length` tokens are skipped and counted."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise RefusionError("the tokenizer has no EOS token; responses must end with one")
    examples, skipped = [], 0
    for query, response in pairs:
        example = encode_example(tokenizer, query, response, eos_id)
        if len(example.prompt_ids) + len(example.response_ids) > max_length:
            skipped += 1
            continue
        examples.append(example)
    if not examples:
        raise RefusionError(f"no training examples of at most {max_length} tokens in {', '.join(map(str, paths))}")
    return Dataset(examples, skipped, [str(p) for p in paths])


def load_dataset(paths: list[str | Path], tokenizer, max_length: int) -> Dataset:
    """Read and tokenize every file; examples longer than `max_length` tokens are skipped and counted."""
    return encode_pairs(read_pairs(paths), tokenizer, max_length, paths)
