"""`evaluate`: run one benchmark task with one decoder and report accuracy and speed.

For each example: build the task's zero-shot prompt, send it through the chat template, generate
with `refusion.generate`, score the completion with the task. Speed is summed over samples: TPS =
all new tokens / all decode seconds, TPF = all new tokens / all forward passes. Knows nothing about
any particular benchmark (see `refusion.eval.tasks`) or about the command line.

With `batch_size` N > 1, N examples at a time go to `generate` as one list; each sample's text is
the one it gets alone. A record's `batch_size` is how many samples shared its forwards (N, or
fewer in the last batch) and its `seconds` are
that whole batch's wall time (what it waited for); its forward passes are those it took part in
(as alone), so TPF and forwards per sample match batch 1. The summary counts each batch's wall
time once (the sum of `seconds / batch_size` over samples), so its TPS is the run's throughput.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..errors import RefusionError
from ..files import write_text
from .tasks import get_task

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
PARTIAL_FILE = "samples.partial.jsonl"
"""Written as the run goes (its settings, then a record per finished example); `resume` continues from it."""


@dataclass
class EvalResult:
    summary: dict
    """task, model, decoder, accuracy, tokens_per_second, tokens_per_forward, forward_passes, samples, ..."""
    records: list[dict] = field(default_factory=list)
    """One dict per sample: prompt, output, extracted answer, correct, speed statistics."""


def with_reference_settings(task: ModuleType, options: dict) -> dict:
    """`options` with every knob left as None (max_new_tokens included) set to the paper's value for the task."""
    if options.get("decoder") not in (None, "refusion"):
        raise RefusionError(f"--reference-settings are the paper's plan-and-infill settings; "
                            f"they do not apply to --decoder {options['decoder']}")
    paper = getattr(task, "REFERENCE_SETTINGS", None)
    if not paper:
        raise RefusionError(f"task {task.NAME} has no reference settings")
    filled = {**options, "decoder": "refusion"}
    for name, value in paper.items():
        if filled.get(name) is None:
            filled[name] = value
    return filled


def summarize(records: list[dict], task: str, decoder: str, model_name: str | None, settings: dict,
              batch_size: int = 1) -> dict:
    samples = len(records)
    tokens = sum(record["new_tokens"] for record in records)
    seconds = sum(record["seconds"] / record.get("batch_size", 1) for record in records)  # each batch's time once
    forwards = sum(record["forward_passes"] for record in records)
    correct = sum(record["correct"] for record in records)
    return {
        "task": task, "model": model_name, "decoder": decoder,
        "accuracy": round(correct / samples, 4) if samples else 0.0,
        "correct": correct, "samples": samples,
        "tokens_per_second": round(tokens / seconds, 3) if seconds else 0.0,
        "tokens_per_forward": round(tokens / forwards, 4) if forwards else 0.0,
        "forward_passes": round(forwards / samples, 2) if samples else 0.0,
        "new_tokens": round(tokens / samples, 2) if samples else 0.0,
        "seconds": round(seconds, 3),
        "batch_size": batch_size,
        "settings": settings,
    }


def merge_shards(shards: list[list[dict]]) -> list[dict]:
    """Records of `shard=(i, n)` runs, i = 0..n-1, back in the task's order (shard i holds examples i, i+n, ...)."""
    count = len(shards)
    ordered = sorted((position * count + index, record) for index, records in enumerate(shards)
                     for position, record in enumerate(records))
    return [record for _, record in ordered]


def write_results(directory: str | Path, records: list[dict], summary: dict) -> None:
    """samples.jsonl, then summary.json, each replacing an earlier run's in one step."""
    directory = Path(directory)
    write_text(directory / SAMPLES_FILE, "".join(json.dumps(record) + "\n" for record in records))
    write_text(directory / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def evaluate(
    model,
    tokenizer,
    task: str | ModuleType,
    *,
    decoder: str = "refusion",
    limit: int | None = None,
    max_new_tokens: int | None = None,
    chat: bool = True,
    reference_settings: bool = False,
    output: str | Path | None = None,
    progress: bool = True,
    model_name: str | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 1,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    **decoder_options,
) -> EvalResult:
    """Evaluate `model` on a task (its name or module) with one decoder; see the module docstring.

    `max_new_tokens=None` uses the task's default budget; `reference_settings=True` fills knobs
    left as None with the paper's settings for that task. With `output`, the per-sample records go to
    `output/samples.jsonl` and the summary to `summary.json` when the run ends, each replacing an
    earlier run's whole (an interrupted run leaves the earlier results as they were).
    `batch_size` examples at a time are generated together (see the module docstring).
    `shard=(i, n)` evaluates every n-th example from the i-th (one of n processes; see `merge_shards`).
    With `output`, each finished example is also appended to `output/samples.partial.jsonl` at once; `resume=True`
    keeps the examples an interrupted run with the same settings finished there and generates only the rest.
    """
    from tqdm.auto import tqdm

    from ..decoding import generate
    from ..prompting import encode_prompt

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RefusionError(f"--batch-size must be a positive integer, got {batch_size}")
    task_module = get_task(task) if isinstance(task, str) else task
    options = {**decoder_options, "decoder": decoder, "max_new_tokens": max_new_tokens}
    if reference_settings:
        options = with_reference_settings(task_module, options)
    decoder = options.pop("decoder")
    budget = options.pop("max_new_tokens") or task_module.MAX_NEW_TOKENS
    knobs = {name: value for name, value in options.items() if value is not None}
    index, count = shard
    examples = task_module.examples(limit)[index::count]
    run = {"task": task_module.NAME, "model": model_name, "decoder": decoder, "max_new_tokens": budget, "options": knobs,
           "limit": limit, "chat": chat, "temperature": temperature, "seed": seed, "shard": list(shard)}
    partial = Partial(Path(output) / PARTIAL_FILE, run, resume) if output is not None else None
    records: list[dict] = list(partial.done.values()) if partial else []
    settings: dict = records[-1].get("settings", {}) if records else {}
    todo = [example for example in examples if not partial or example["id"] not in partial.done]
    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=task_module.NAME, unit="sample",
               disable=not progress, dynamic_ncols=True)
    with bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [task_module.prompt(example) for example in batch]
            input_ids = [encode_prompt(tokenizer, prompt, chat=chat) for prompt in prompts]  # [1, P] each
            # One prompt goes alone, as it always has; several go as a list and come back as one.
            results = generate(model, tokenizer, input_ids[0] if batch_size == 1 else [ids[0] for ids in input_ids],
                               decoder=decoder, max_new_tokens=budget, temperature=temperature, seed=seed, **knobs)
            for example, prompt, result in zip(batch, prompts, results if isinstance(results, list) else [results]):
                extracted, correct = task_module.evaluate(example, result.text)
                settings = result.settings
                record = {"id": example["id"], "prompt": prompt, "output": result.text, "extracted": extracted,
                          "reference": example.get("answer"), "correct": bool(correct), **result.stats(),
                          "prompt_tokens": result.prompt_tokens, "batch_size": result.batch_size}
                records.append(record)
                if partial:
                    partial.add({**record, "settings": settings})
                running = summarize(records, task_module.NAME, decoder, model_name, settings, batch_size)
                bar.update(1)
                bar.set_postfix(acc=f"{running['accuracy']:.3f}", tps=f"{running['tokens_per_second']:.1f}")

    order = {example["id"]: position for position, example in enumerate(examples)}
    records = sorted((record for record in records if record["id"] in order), key=lambda record: order[record["id"]])
    records = [{key: value for key, value in record.items() if key != "settings"} for record in records]
    summary = summarize(records, task_module.NAME, decoder, model_name, settings, batch_size)
    if output is not None:
        write_results(output, records, summary)
        partial.path.unlink(missing_ok=True)
    return EvalResult(summary, records)


class Partial:
    """samples.partial.jsonl: the run's settings on the first line, then one record per finished example."""

    def __init__(self, path: Path, run: dict, resume: bool):
        self.path, self.done = path, {}
        if resume and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            try:
                earlier = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                earlier = None
            if earlier != run:
                raise RefusionError(f"{path} is from a run with other settings ({_differences(earlier, run)}); "
                                    "run without --resume to start over")
            for line in lines[1:]:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # the line an interrupted write left unfinished: that example runs again
                self.done[record["id"]] = record
            self._write("".join(json.dumps(r) + "\n" for r in [run, *self.done.values()]), "w")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(json.dumps(run) + "\n", "w")

    def add(self, record: dict) -> None:
        self._write(json.dumps(record) + "\n", "a")

    def _write(self, text: str, mode: str) -> None:
        with open(self.path, mode, encoding="utf-8") as file:
            file.write(text)
            file.flush()


def _differences(earlier: dict | None, run: dict) -> str:
    if not isinstance(earlier, dict):
        return "unreadable"
    changed = [f"{key} {earlier.get(key)!r} -> {value!r}" for key, value in run.items() if earlier.get(key) != value]
    return ", ".join(changed) or "unreadable"
