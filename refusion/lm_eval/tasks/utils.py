"""Dataset and scoring hooks that the task YAMLs beside this file name with `!function utils.*`.

lm-eval loads this file by path; it only bridges to `refusion.eval.tasks`, which holds the data
loading, prompts and scoring.
"""

from __future__ import annotations

import json


def load_dataset(refusion_task: str, limit: int | None = None, **metadata):
    """A DatasetDict with one "test" split: prompt, answer and the example itself (as JSON) per row."""
    import datasets

    from refusion.eval.tasks import get_task

    task = get_task(refusion_task)
    rows = []
    for example in task.examples(limit):
        prompt = task.prompt(example)
        rows.append({"task": refusion_task, "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt),
                     "answer": str(example.get("answer", "")), "example": json.dumps(example)})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict:
    """Score the first generation with the task's own `evaluate`."""
    from refusion.eval.tasks import get_task

    _, correct = get_task(doc["task"]).evaluate(json.loads(doc["example"]), results[0])
    return {"acc": float(correct)}
