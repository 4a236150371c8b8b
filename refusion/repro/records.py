"""Task family (b): structured output, a JSON record written from a sentence, checked by parsing.

A record is {"name", "age", "city", "likes": [1-3 hobbies], "id"}; the prompt states its facts in a
shuffled order of clauses, and the response is the record as one line of JSON with the keys in a
fixed order. The check parses the first `{...}` of the completion with `json.loads` and compares
it to the record, so any well-formed JSON with the right values passes. Train and test never share
a record. Knows nothing about tokenizers or models.
"""

from __future__ import annotations

import json
import random

from .arithmetic import disjoint_split

NAMES = ["Alice", "Bruno", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena",
         "Marco", "Nadia", "Oscar", "Priya", "Quinn", "Rosa", "Soren", "Tara"]
CITIES = ["Oslo", "Paris", "Lima", "Cairo", "Tokyo", "Rome", "Seoul", "Quito", "Dublin", "Nairobi", "Madrid", "Hanoi"]
HOBBIES = ["chess", "tea", "jazz", "hiking", "poetry", "tennis", "cooking", "chemistry", "painting", "cycling",
           "gardening", "swimming"]
KEYS = ("name", "age", "city", "likes", "id")


def draw(rng: random.Random) -> dict:
    """One record, plus the clause order its prompt uses."""
    record = {"name": rng.choice(NAMES), "age": rng.randint(18, 90), "city": rng.choice(CITIES),
              "likes": rng.sample(HOBBIES, rng.randint(1, 3)), "id": rng.randint(100, 999)}
    order = [0, 1, 2, 3]
    rng.shuffle(order)
    return {"record": record, "order": order}


def _listing(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def question(item: dict) -> str:
    record = item["record"]
    clauses = [f"is {record['age']} years old", f"lives in {record['city']}", f"likes {_listing(record['likes'])}",
               f"has member number {record['id']}"]
    facts = "; ".join(clauses[i] for i in item["order"])
    return f"Write the JSON record for this person: {record['name']} {facts}."


def solution(item: dict) -> str:
    return json.dumps({k: item["record"][k] for k in KEYS})


def key(item: dict) -> str:
    return solution(item)


def parse_record(completion: str) -> tuple[str, dict | None]:
    """The first `{...}` span of a completion and its parsed value (None when it is not a JSON object)."""
    start = completion.find("{")
    end = completion.find("}", start)
    if start < 0 or end < 0:
        return completion.strip(), None
    text = completion[start:end + 1]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text, None
    return text, value if isinstance(value, dict) else None


def split(seed: int, test_size: int, train_size: int) -> tuple[list[dict], list[dict]]:
    """(train, test) items, disjoint by record."""
    return disjoint_split(random.Random(f"records-{seed}"), draw, key, test_size, train_size)
