"""Task family (a): GSM8K-like multi-step arithmetic word problems with a short worked solution.

A problem is a person, an item, a starting count and 2-4 operations (buy, give away, multiply,
share equally); the response walks through each operation as one equation and ends with
`The answer is N.`, so `refusion.eval.metrics.extract_gsm8k` scores it exactly. Problems are drawn
from a seeded `random.Random`; the test split comes first and the train split skips every problem
whose numbers (start and operations) appear in the test split, so the two never share an answer
path. Knows nothing about tokenizers or models.
"""

from __future__ import annotations

import random

PEOPLE = [("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Mia", "she"), ("Sam", "he"), ("Lily", "she"),
          ("Max", "he"), ("Zoe", "she"), ("Leo", "he"), ("Emma", "she"), ("Jack", "he"), ("Ella", "she"),
          ("Noah", "he"), ("Ava", "she"), ("Omar", "he"), ("Nina", "she")]
ITEMS = ["apples", "pencils", "stickers", "cookies", "marbles", "books", "cards", "shells", "coins", "stamps"]
TIMES = {2: "twice", 3: "three times", 4: "four times"}
MAX_VALUE = 99


def _operation(rng: random.Random, value: int, last: bool) -> tuple[str, int] | None:
    """One operation applicable to `value`: ("buy"|"give"|"times"|"share", operand), or None."""
    kinds = ["buy", "give", "times"] + (["share"] if last else [])
    kind = rng.choice(kinds)
    if kind == "buy" and value < MAX_VALUE:
        return kind, rng.randint(1, min(20, MAX_VALUE - value))
    if kind == "give" and value > 1:
        return kind, rng.randint(1, min(20, value - 1))
    if kind == "times" and value * 2 <= MAX_VALUE:
        return kind, rng.choice([c for c in TIMES if value * c <= MAX_VALUE])
    if kind == "share":
        divisors = [d for d in range(2, 6) if value % d == 0 and value // d > 1]
        return (kind, rng.choice(divisors)) if divisors else None
    return None


def apply(value: int, kind: str, operand: int) -> int:
    return {"buy": value + operand, "give": value - operand, "times": value * operand, "share": value // operand}[kind]


def draw(rng: random.Random) -> dict:
    """One problem: {"name", "pronoun", "item", "start", "operations": [(kind, operand), ...], "answer"}."""
    name, pronoun = rng.choice(PEOPLE)
    item = rng.choice(ITEMS)
    value = start = rng.randint(2, 40)
    operations: list[tuple[str, int]] = []
    steps = rng.randint(2, 4)
    while len(operations) < steps:
        found = _operation(rng, value, last=len(operations) == steps - 1)
        if found is not None:
            operations.append(found)
            value = apply(value, *found)
    return {"name": name, "pronoun": pronoun, "item": item, "start": start, "operations": operations, "answer": value}


def question(problem: dict) -> str:
    name, he, item = problem["name"], problem["pronoun"].capitalize(), problem["item"]
    sentences = [f"{name} has {problem['start']} {item}."]
    for kind, operand in problem["operations"]:
        if kind == "buy":
            sentences.append(f"{he} buys {operand} more {item}.")
        elif kind == "give":
            sentences.append(f"{he} gives {operand} {item} to a friend.")
        elif kind == "times":
            sentences.append(f"Then {he.lower()} ends up with {TIMES[operand]} as many {item}.")
        else:
            sentences.append(f"{he} shares them equally among {operand} boxes.")
    last = problem["operations"][-1][0]
    sentences.append(f"How many {item} are in each box?" if last == "share" else f"How many {item} does {name} have now?")
    return " ".join(sentences)


def solution(problem: dict) -> str:
    value, lines = problem["start"], []
    for kind, operand in problem["operations"]:
        result = apply(value, kind, operand)
        symbol = {"buy": "+", "give": "-", "times": "*", "share": "/"}[kind]
        lines.append(f"{value} {symbol} {operand} = {result}.")
        value = result
    return " ".join(lines) + f" The answer is {value}."


def key(problem: dict) -> tuple:
    """What train and test must never share: the numbers of the problem."""
    return problem["start"], tuple(problem["operations"])


def split(seed: int, test_size: int, train_size: int) -> tuple[list[dict], list[dict]]:
    """(train, test) problems, disjoint by `key`, each split free of duplicates."""
    return disjoint_split(random.Random(f"arithmetic-{seed}"), draw, key, test_size, train_size)


def disjoint_split(rng: random.Random, draw_one, key_of, test_size: int, train_size: int) -> tuple[list[dict], list[dict]]:
    """Draw `test_size` distinct items, then `train_size` distinct items whose keys are not in the test set."""
    test, seen = [], set()
    while len(test) < test_size:
        item = draw_one(rng)
        if key_of(item) not in seen:
            seen.add(key_of(item))
            test.append(item)
    train, attempts = [], 0
    while len(train) < train_size:
        attempts += 1
        if attempts > 50 * (train_size + test_size):
            raise ValueError(f"cannot draw {train_size} distinct training items; the family is too small")
        item = draw_one(rng)
        if key_of(item) not in seen:
            seen.add(key_of(item))
            train.append(item)
    return train, test
