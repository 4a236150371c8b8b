"""A large, varied set of instructions generated from templates, for self-distillation.

The default families mirror the *kinds* of questions the benchmarks ask (multi-step arithmetic, algebra,
Python functions, multiple choice, open questions) and reuse the benchmark prompts' instruction
lines, so that the converted model practises the answer formats it will be measured on. Two more,
chosen by name, are everyday requests (chat: advice, messages, descriptions; list), for instance for
a draft table of what the model writes in conversation. No text comes from any benchmark: every
question is built here from a seed. Knows nothing about models.
"""

from __future__ import annotations

import random
from typing import Callable

from ..eval.tasks import arc_challenge, gsm8k, humaneval, math500

NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Mateo", "Nora",
         "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
ITEMS = [("apples", "basket"), ("marbles", "jar"), ("stickers", "album"), ("books", "shelf"), ("cookies", "tray"),
         ("pencils", "box"), ("shells", "bucket"), ("coins", "purse"), ("cards", "deck"), ("eggs", "carton")]


def word_problem(rng: random.Random) -> str:
    """GSM8K-like: two to four arithmetic steps over a small story."""
    name, other = rng.sample(NAMES, 2)
    item, container = rng.choice(ITEMS)
    a, b, c = rng.randint(3, 40), rng.randint(2, 9), rng.randint(2, 30)
    price = rng.randint(2, 12)
    story = rng.choice([
        f"{name} has {a} {item}. {other} gives {name} {b} times as many {item} as {name} already has, and then {name} "
        f"gives away {c} {item}. How many {item} does {name} have now?",
        f"A {container} holds {a} {item}. {name} fills {b} {container}s and then buys {c} more {item}. Each {item[:-1]} "
        f"sells for ${price}. How much money does {name} make by selling all of them?",
        f"{name} reads {a} pages on Monday and {b} pages more than that on Tuesday. On Wednesday {name} reads half as many "
        f"pages as on Monday and Tuesday together, rounded down. How many pages did {name} read in the three days?",
        f"{name} earns ${a} a day for {b} days and spends ${c} on {item}. {other} earns ${price} less per day for the same "
        f"number of days. How much more money does {name} have left than {other} earned?",
        f"There are {a * b} {item} shared equally among {b} friends. Each friend then eats {min(c, a)} of their share if "
        f"they can. How many {item} are left in total?",
    ])
    return f"{story}\n\n{gsm8k.INSTRUCTION}"


def algebra_problem(rng: random.Random) -> str:
    """MATH-like short problems with one exact answer."""
    a, b, c, d = (rng.randint(2, 15) for _ in range(4))
    problem = rng.choice([
        f"Solve for $x$: ${a}x + {b} = {a * c + b}$.",
        f"What is the remainder when ${a * 97 + b * 13}$ is divided by ${c + 2}$?",
        f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$. Express your answer as a common fraction.",
        f"What is the sum of the first ${a + 5}$ positive integers?",
        f"If $f(x) = {a}x^2 - {b}x + {c}$, what is $f({d})$?",
        f"How many positive divisors does ${a * b * 6}$ have?",
        f"A rectangle has perimeter ${2 * (a + b)}$ and one side of length ${a}$. What is its area?",
        f"What is the greatest common divisor of ${a * c}$ and ${a * d}$?",
    ])
    return f"{problem}\n\n{math500.INSTRUCTION}"


FUNCTIONS = [
    ("sum_of_evens", "numbers: list", "int", "Return the sum of the even numbers in the list."),
    ("count_vowels", "text: str", "int", "Return how many vowels (a, e, i, o, u, either case) the text contains."),
    ("reverse_words", "sentence: str", "str", "Return the sentence with the order of its words reversed."),
    ("is_palindrome", "text: str", "bool", "Return True if the text reads the same backwards, ignoring case."),
    ("second_largest", "numbers: list", "int", "Return the second largest distinct number in the list."),
    ("running_total", "numbers: list", "list", "Return the list of running totals of the numbers."),
    ("char_frequency", "text: str", "dict", "Return a dict mapping each character to how often it occurs."),
    ("flatten", "nested: list", "list", "Flatten a list of lists into one list, keeping the order."),
    ("is_prime", "n: int", "bool", "Return True if n is a prime number."),
    ("fibonacci", "n: int", "int", "Return the n-th Fibonacci number, with fibonacci(0) = 0 and fibonacci(1) = 1."),
    ("merge_sorted", "a: list, b: list", "list", "Merge two sorted lists into one sorted list."),
    ("remove_duplicates", "items: list", "list", "Return the items without duplicates, keeping the first occurrences."),
    ("capitalize_words", "text: str", "str", "Capitalize the first letter of every word."),
    ("max_gap", "numbers: list", "int", "Return the largest difference between two consecutive numbers."),
    ("digit_sum", "n: int", "int", "Return the sum of the decimal digits of n."),
    ("count_words", "text: str", "int", "Return the number of words in the text."),
    ("rotate_list", "items: list, k: int", "list", "Rotate the list to the right by k places."),
    ("common_elements", "a: list, b: list", "list", "Return the sorted list of elements found in both lists."),
    ("to_binary", "n: int", "str", "Return the binary representation of a non-negative integer as a string."),
    ("longest_word", "sentence: str", "str", "Return the longest word in the sentence (the first one on ties)."),
]


def parametrized_function(rng: random.Random) -> tuple[str, str, str, str]:
    """A function spec with numbers in it, so that the family has thousands of distinct members."""
    k, lo, hi = rng.randint(2, 9), rng.randint(-10, 0), rng.randint(1, 50)
    char = rng.choice("aeioustxz")
    return rng.choice([
        (f"powers_of_{k}", "numbers: list", "list", f"Return each number raised to the power {k}."),
        (f"divisible_by_{k}", "numbers: list", "list", f"Return the numbers that are divisible by {k}, in order."),
        ("clamp_all", "numbers: list", "list", f"Clamp every number to the range [{lo}, {hi}]."),
        (f"first_{k}", "items: list", "list", f"Return the first {k} items (fewer if the list is shorter)."),
        (f"count_{char}", "text: str", "int", f"Return how many times the letter '{char}' occurs, ignoring case."),
        (f"repeat_{k}", "text: str", "str", f"Return the text repeated {k} times, separated by spaces."),
        (f"chunks_of_{k}", "items: list", "list", f"Split the list into consecutive chunks of {k} items."),
        (f"shift_{k}", "text: str", "str", f"Shift every lowercase letter {k} places forward in the alphabet, wrapping around."),
        (f"above_{hi}", "numbers: list", "int", f"Return how many numbers are greater than {hi}."),
        (f"mean_without_{k}_extremes", "numbers: list", "float",
         f"Return the mean after removing the {k} smallest and {k} largest numbers."),
    ])


def code_task(rng: random.Random) -> str:
    """HumanEval-like signatures with docstrings, or MBPP-like one-sentence tasks."""
    name, args, returns, doc = rng.choice(FUNCTIONS) if rng.random() < 0.3 else parametrized_function(rng)
    if rng.random() < 0.5:
        stub = f'def {name}({args}) -> {returns}:\n    """{doc}"""\n'
        return f"{humaneval.INSTRUCTION}\n\n```python\n{stub}```"
    task = f"Write a function named {name} that takes {args.replace(': ', ' (').replace(', ', '), ') + ')'}. {doc}"
    return f"You are an expert Python programmer, and here is your task: {task} Reply with the code in a ```python code block."


FACTS = [
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter"]),
    ("Which gas do plants take in for photosynthesis?", "carbon dioxide", ["oxygen", "nitrogen", "helium"]),
    ("What is the boiling point of water at sea level?", "100 degrees Celsius", ["50 degrees Celsius", "0 degrees Celsius", "212 degrees Celsius"]),
    ("Which of these animals is a mammal?", "a whale", ["a shark", "a trout", "a lizard"]),
    ("What force pulls objects toward the center of the Earth?", "gravity", ["magnetism", "friction", "tension"]),
    ("Which organ pumps blood through the body?", "the heart", ["the lungs", "the liver", "the kidney"]),
    ("What state of matter has a fixed shape?", "solid", ["liquid", "gas", "plasma"]),
    ("Which of these is a renewable energy source?", "wind", ["coal", "oil", "natural gas"]),
    ("What causes day and night on Earth?", "Earth rotating on its axis", ["Earth orbiting the Sun", "the Moon's phases", "the tilt of the Sun"]),
    ("Which simple machine is a ramp?", "an inclined plane", ["a lever", "a pulley", "a wheel and axle"]),
    ("Which part of a plant absorbs water from the soil?", "the roots", ["the leaves", "the flowers", "the stem tip"]),
    ("What is the main source of energy for Earth's water cycle?", "the Sun", ["the Moon", "volcanoes", "wind"]),
    ("Which property of a mineral describes how it reflects light?", "luster", ["hardness", "streak", "cleavage"]),
    ("What do we call animals that eat only plants?", "herbivores", ["carnivores", "omnivores", "decomposers"]),
    ("Which layer of the Earth is the outermost?", "the crust", ["the mantle", "the outer core", "the inner core"]),
    ("What is formed when water vapor cools and condenses in the sky?", "clouds", ["rivers", "glaciers", "soil"]),
]


def multiple_choice(rng: random.Random) -> str:
    """ARC-like four-option science questions, options shuffled."""
    question, right, wrong = rng.choice(FACTS)
    options = [right, *wrong]
    rng.shuffle(options)
    return arc_challenge.prompt({"question": question, "choices": options, "letters": "ABCD"})


TOPICS = ["photosynthesis", "compound interest", "the water cycle", "binary numbers", "recursion", "supply and demand",
          "the immune system", "plate tectonics", "machine learning", "the French Revolution", "black holes", "vaccines",
          "climate change", "prime numbers", "the internet", "electric circuits", "healthy sleep", "time management"]


def open_question(rng: random.Random) -> str:
    a, b = rng.sample(TOPICS, 2)
    return rng.choice([
        f"Explain {a} in simple terms.",
        f"Give three short tips for learning about {a}.",
        f"What is the difference between {a} and {b}?",
        f"Write a short paragraph about why {a} matters.",
        f"List four key facts about {a}.",
        f"Summarize {a} in two sentences.",
    ])


THINGS = ["rivers", "mountains", "musical instruments", "board games", "vegetables", "birds", "programming languages",
          "breakfast foods", "sports", "flowers", "insects", "kitchen tools", "famous painters", "desserts", "trees",
          "dog breeds", "cloud types", "renewable energy sources", "spices", "card games", "constellations",
          "ancient civilizations", "gemstones", "houseplants", "winter activities", "rainforest animals", "fabrics"]
TASKS = ["start running", "learn a new language", "keep a houseplant alive", "write a cover letter", "study for an exam",
         "make new friends in a new city", "cook rice", "save money on groceries", "prepare for a job interview",
         "stay focused while working from home", "plan a birthday party", "care for a goldfish", "clean a laptop keyboard",
         "start journaling", "reduce screen time", "organize a small closet", "give a short speech", "bake bread"]
SUBJECTS = ["a rainy afternoon in a city", "an old lighthouse", "a busy market", "a quiet library", "a snowy forest",
            "a mountain lake at dawn", "a train station at night", "a garden in spring", "a desert at noon",
            "a crowded concert", "a small fishing village", "a thunderstorm"]
PEOPLE = ["a friend", "a neighbour", "a teacher", "my team", "a cousin", "a coach", "my manager", "a classmate"]
REASONS = ["a new job", "watering my plants", "a great year", "finishing the project early", "a birthday gift",
           "extra practice", "a day off", "sharing notes"]
WHEN = ["on a budget", "in one week", "as a complete beginner", "without special equipment", "with a busy schedule",
        "in ten minutes a day"]
AUDIENCES = ["beginner", "child", "student", "retiree", "busy parent", "teenager"]


def chat_message(rng: random.Random) -> str:
    """Everyday assistant requests: advice, short messages, descriptions, recommendations."""
    task, subject, thing, topic = rng.choice(TASKS), rng.choice(SUBJECTS), rng.choice(THINGS), rng.choice(TOPICS)
    person, reason, when, audience = rng.choice(PEOPLE), rng.choice(REASONS), rng.choice(WHEN), rng.choice(AUDIENCES)
    return rng.choice([
        f"How do I {task} {when}?",
        f"I keep failing to {task}. Any advice for a {audience}?",
        f"Write a {rng.choice(['short', 'warm', 'two-line', 'brief'])} note to {person} about {reason}.",
        f"Draft a polite email to {person} about {reason}.",
        f"Paint a picture in words of {subject}, in {rng.choice(['two', 'three', 'four', 'five'])} sentences.",
        f"Suggest a hobby for a {audience} who likes {thing}.",
        f"What should a {audience} know about {topic}?",
        f"Explain {topic} to a {audience}.",
        f"Could you share a surprising detail about {thing}?",
        f"Give me advice: I need to {task} {when}.",
    ])


def list_request(rng: random.Random) -> str:
    """Requests whose answer is a list: numbered, bulleted, one per line."""
    count = rng.choice(["two", "three", "four", "five", "six", "seven", 3, 4, 5, 6, 8, 10])
    thing, task = rng.choice(THINGS), rng.choice(TASKS)
    return rng.choice([
        f"Name {count} {thing}.",
        f"Give {count} examples of {thing}, one per line.",
        f"Make a numbered list of {count} {thing}.",
        f"List the steps to {task}.",
        f"What do I need to {task}? Give a checklist.",
        f"Write {count} bullet points about {thing}.",
        f"Rank {count} {thing} from most to least common.",
    ])


FAMILIES: dict[str, tuple[float, Callable[[random.Random], str]]] = {
    "word_problem": (0.35, word_problem),
    "algebra": (0.15, algebra_problem),
    "code": (0.25, code_task),
    "multiple_choice": (0.15, multiple_choice),
    "open": (0.10, open_question),
    "chat": (0.0, chat_message),  # not in the default mix, which the shipped adapter was trained on: `families=`
    "list": (0.0, list_request),
}


def build_instructions(count: int, seed: int = 0, families: dict[str, float] | None = None) -> list[dict]:
    """`count` distinct instructions as {"id", "family", "query"} records, deterministic for a seed; `families`
    maps family names to weights (default: each family's weight in FAMILIES)."""
    weighting = families or {name: weight for name, (weight, _) in FAMILIES.items() if weight}
    unknown = sorted(set(weighting) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown instruction families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    rng = random.Random(seed)
    names = list(weighting)
    weights = [weighting[name] for name in names]
    seen: set[str] = set()
    records = []
    for _ in range(count * 50):
        if len(records) == count:
            break
        family = rng.choices(names, weights)[0]
        query = FAMILIES[family][1](rng)
        if query not in seen:
            seen.add(query)
            records.append({"id": len(records), "family": family, "query": query})
    return records
