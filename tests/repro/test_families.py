"""The synthetic task families: exact answers, determinism, train/test disjointness, scoring."""

from __future__ import annotations

import json
import re

import pytest

from refusion.eval.tasks import get_task
from refusion.repro import arithmetic, records


def _replay(problem: dict) -> int:
    value = problem["start"]
    for kind, operand in problem["operations"]:
        value = {"buy": value + operand, "give": value - operand, "times": value * operand}.get(kind)\
            if kind != "share" else value // operand
    return value


def test_arithmetic_solution_is_a_correct_chain_ending_in_the_answer():
    train, test = arithmetic.split(3, 50, 200)
    for problem in train + test:
        text = arithmetic.solution(problem)
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)\.", text)
        assert len(equations) == len(problem["operations"])
        for a, op, b, result in equations:
            expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b), "/": int(a) / int(b)}[op]
            assert expected == int(result)
        assert equations[0][0] == str(problem["start"])
        assert all(later[0] == earlier[3] for earlier, later in zip(equations, equations[1:]))
        assert text.endswith(f"The answer is {problem['answer']}.")
        assert problem["answer"] == _replay(problem) and 0 < problem["answer"] <= arithmetic.MAX_VALUE
        assert str(problem["start"]) in arithmetic.question(problem)
        assert 2 <= len(problem["operations"]) <= 4


def test_share_only_ends_a_problem_and_divides_exactly():
    train, _ = arithmetic.split(1, 10, 500)
    shares = [p for p in train if any(kind == "share" for kind, _ in p["operations"])]
    assert shares, "the family should contain sharing problems"
    for problem in shares:
        assert [kind for kind, _ in problem["operations"]].index("share") == len(problem["operations"]) - 1
        assert "each box" in arithmetic.question(problem)


@pytest.mark.parametrize("family", [arithmetic, records])
def test_splits_are_deterministic_and_disjoint(family):
    train, test = family.split(0, 100, 1000)
    again_train, again_test = family.split(0, 100, 1000)
    assert [family.solution(x) for x in train] == [family.solution(x) for x in again_train]
    assert [family.question(x) for x in test] == [family.question(x) for x in again_test]
    train_keys, test_keys = {family.key(x) for x in train}, {family.key(x) for x in test}
    assert len(train_keys) == 1000 and len(test_keys) == 100
    assert not train_keys & test_keys
    # the test split does not depend on how much training data is drawn after it
    assert [family.key(x) for x in family.split(0, 100, 0)[1]] == [family.key(x) for x in test]
    assert [family.key(x) for x in family.split(1, 100, 0)[1]] != [family.key(x) for x in test]


def test_record_prompt_states_every_fact_and_solution_is_its_json():
    _, test = records.split(2, 30, 0)
    for item in test:
        record, prompt = item["record"], records.question(item)
        assert json.loads(records.solution(item)) == record
        assert list(json.loads(records.solution(item))) == list(records.KEYS)
        for fact in (record["name"], str(record["age"]), record["city"], str(record["id"]), *record["likes"]):
            assert fact in prompt


def test_parse_record_takes_the_first_object():
    assert records.parse_record('sure: {"a": 1} and {"b": 2}') == ('{"a": 1}', {"a": 1})
    assert records.parse_record("no json here") == ("no json here", None)
    assert records.parse_record('{"a": 1,}')[1] is None
    assert records.parse_record("[1] {2}")[1] is None


def test_eval_tasks_score_reference_solutions_as_correct_and_others_wrong():
    gsm, mini_json = get_task("mini-gsm8k"), get_task("mini-json")
    examples = gsm.examples(20)
    assert len(examples) == 20 and len(gsm.examples()) == gsm.SIZE
    _, test = arithmetic.split(gsm.SEED, gsm.SIZE, 0)
    for example, problem in zip(examples, test):
        assert gsm.prompt(example) == arithmetic.question(problem)
        assert gsm.evaluate(example, arithmetic.solution(problem)) == (str(problem["answer"]), True)
        assert gsm.evaluate(example, f"The answer is {problem['answer'] + 1}.")[1] is False
    for example in mini_json.examples(20):
        assert mini_json.evaluate(example, example["answer"])[1] is True
        reordered = json.dumps(dict(reversed(list(example["record"].items()))))
        assert mini_json.evaluate(example, f"Here it is: {reordered}")[1] is True  # any key order parses equal
        wrong = dict(example["record"], age=example["record"]["age"] + 1)
        assert mini_json.evaluate(example, json.dumps(wrong))[1] is False
        assert mini_json.evaluate(example, example["answer"][:-1])[1] is False  # truncated: not JSON
