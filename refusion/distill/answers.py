"""Self-distillation: the base model answers each instruction; its own answers become training data.

Training on its own greedy answers keeps the model's quality and teaches it only the new way of
decoding. Answers are generated in batches with transformers' `generate` (left padding), appended
to a JSONL file as they finish, so an interrupted run resumes where it stopped. Answers that hit
the length limit without an EOS are dropped: appending EOS to them would teach the model to stop early.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..files import write_text
from ..special_tokens import eos_token_ids


def done_ids(path: Path) -> set[int]:
    """Ids already answered. A run interrupted mid-write can leave a torn last line: the file is
    rewritten (in one step) without it, so that appending starts on a clean line."""
    if not path.is_file():
        return set()
    raw = path.read_bytes()
    complete, ids = [], set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            ids.add(json.loads(line)["id"])
            complete.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    if raw != "".join(complete).encode():
        write_text(path, "".join(complete))
    return ids


@torch.no_grad()
def answer_instructions(model, tokenizer, instructions: list[dict], output: Path, *, max_new_tokens: int = 384,
                        batch_size: int = 32) -> dict:
    """Append {"id", "family", "query", "response", "finished"} records to `output`; returns counts."""
    output.parent.mkdir(parents=True, exist_ok=True)
    finished = done_ids(output)
    todo = [record for record in instructions if record["id"] not in finished]
    # Similar lengths together: less padding per batch.
    todo.sort(key=lambda record: len(record["query"]))
    eos = eos_token_ids(tokenizer, model)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    kept = dropped = 0
    with output.open("a") as sink, tqdm(total=len(todo), desc="answering", unit="q") as progress:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["query"]}], add_generation_prompt=True,
                                                   tokenize=False) for r in batch]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos))
            for record, row in zip(batch, generated[:, inputs["input_ids"].shape[1]:].tolist()):
                ends = [i for i, token in enumerate(row) if token in eos]
                response = tokenizer.decode(row[: ends[0]] if ends else row, skip_special_tokens=True).strip()
                kept, dropped = (kept + 1, dropped) if ends else (kept, dropped + 1)
                sink.write(json.dumps({**record, "response": response, "finished": bool(ends)}) + "\n")
            sink.flush()
            progress.update(len(batch))
    return {"answered": kept + dropped, "finished": kept, "unfinished": dropped, "already_done": len(finished)}


def training_records(answers: Path, destination: Path) -> int:
    """Keep the finished answers as {"query", "response"} training records; returns how many."""
    kept = []
    for line in answers.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["finished"] and record["response"]:
            kept.append(json.dumps({"query": record["query"], "response": record["response"]}) + "\n")
    write_text(destination, "".join(kept))
    return len(kept)
