"""Answer extraction and scoring against hand-written completions."""

from __future__ import annotations

import pytest

from refusion.eval.metrics import (
    extract_choice, extract_code, extract_gsm8k, extract_math, gsm8k_reference, last_boxed, math_equal,
    normalize_final_answer,
)
from refusion.eval.tasks import get_task


@pytest.mark.parametrize("completion, expected", [
    ("She sells 9 eggs at $2 each, so 9 * 2 = 18.\n#### 18", "18"),
    ("9 * 2 = 18 dollars. The answer is $18.", "18"),
    ("So the total is \\boxed{1,080}.", "1080"),
    ("First 3 + 4 = 7, then 16 - 7 = 9, and 9 * 2 = 18", "18"),
    ("The answer is -3.", "-3"),
    ("It costs $12.50 in total.", "12.5"),
    ("The answer is 18.00", "18"),
    ("I don't know.", ""),
])
def test_gsm8k_extraction(completion, expected):
    assert extract_gsm8k(completion) == expected


def test_gsm8k_scoring_right_and_wrong():
    task = get_task("gsm8k")
    example = {"id": 0, "question": "?", "answer": gsm8k_reference("Janet sells 9 eggs.\n#### 1,018")}
    assert example["answer"] == "1018"
    assert task.evaluate(example, "So she makes $1,018.\n#### 1,018") == ("1018", True)
    assert task.evaluate(example, "#### 1017") == ("1017", False)
    assert task.evaluate(example, "The answer is 1018 dollars, from 2 steps") == ("1018", True)


def test_last_boxed_balances_braces():
    assert last_boxed("so $\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert last_boxed("no box here") is None
    assert last_boxed("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}") == "\\left( 3, \\frac{\\pi}{2} \\right)"


@pytest.mark.parametrize("raw, normalised", [
    ("\\boxed{90^\\circ}", "90"),
    ("\\text{Evelyn}", "Evelyn"),
    ("x = 5", "5"),
    ("\\$1,000", "1000"),
    ("\\frac12", "\\frac{1}{2}"),
    ("\\sqrt2", "\\sqrt{2}"),
    ("10 \\text{ inches}", "10"),
])
def test_minerva_normalisation(raw, normalised):
    assert normalize_final_answer(raw) == normalised


def test_math_scoring_right_wrong_and_formatting_variants():
    task = get_task("math500")
    example = {"answer": "\\frac{14}{3}"}
    assert task.evaluate(example, "Adding up, we get $\\boxed{\\frac{14}{3}}$.")[1]
    assert task.evaluate(example, "Adding up, we get $\\boxed{\\dfrac{14}{3}}$.") == ("\\dfrac{14}{3}", True)
    assert task.evaluate(example, "Final Answer: The final answer is $14/3$. I hope it is correct.")[1]
    assert task.evaluate(example, "So $\\boxed{4.6666667}$")[1]
    assert not task.evaluate(example, "So $\\boxed{\\frac{13}{3}}$")[1]
    assert task.evaluate(example, "I give up.") == ("", False)
    degrees = {"answer": "90"}
    assert task.evaluate(degrees, "the angle is $\\boxed{90^\\circ}$.") == ("90", True)
    # The wheel's reference answers were normalised the same way (even Minerva's '\left' -> '\le' quirk).
    polar = {"answer": "\\le(3,\\frac{\\pi}{2}\\right)"}
    assert task.evaluate(polar, "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$")[1]
    assert extract_math("$\\boxed{0.5}$") == "0.5" and math_equal("0.5", "\\frac{1}{2}")


@pytest.mark.parametrize("completion, expected", [
    ("C", "C"),
    ("C. Planetary days will become shorter.", "C"),
    ("The answer is (B).", "B"),
    ("Answer: d", "D"),
    ("Faster rotation shortens the day, so the correct option is (C).", "C"),
    ("**B**", "B"),
    ("None of these make sense", ""),
])
def test_arc_letter_extraction(completion, expected):
    assert extract_choice(completion, "ABCD") == expected


def test_arc_scoring_respects_the_number_of_options():
    task = get_task("arc-challenge")
    example = {"letters": "ABC", "answer": "B"}
    assert task.evaluate(example, "The answer is B.") == ("B", True)
    assert task.evaluate(example, "The answer is D.") == ("", False)


def test_code_extraction():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("def f():\n    return 2") == "def f():\n    return 2\n"
    assert extract_code("```python\ndef g():\n    pass") == "def g():\n    pass\n"  # unterminated fence
