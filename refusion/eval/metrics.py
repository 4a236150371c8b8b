"""Answer extraction and scoring, the way lm-evaluation-harness scores these benchmarks.

Pure string functions: a completion goes in, an extracted answer comes out, and a comparison with
the reference says whether it is correct. Knows nothing about models, prompts or data files.

- GSM8K: lm-eval's "flexible-extract" (last number in the text), preferring an explicit
  `#### N`, `\\boxed{N}` or "the answer is N"; compared after removing `,` `$` and a trailing `.`.
- MATH: the last `\\boxed{...}` (else "final answer is ..."), normalised with Minerva's
  `normalize_final_answer` (as lm-eval's minerva_math), compared for equality, numbers numerically.
- ARC-Challenge: the option letter ("answer is C", "C.", "(C)").
- Code: the first fenced code block (else the whole completion).
"""

from __future__ import annotations

import re

# --- GSM8K -------------------------------------------------------------------------------------

_FLEXIBLE_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval gsm8k flexible-extract
_EXPLICIT_ANSWER = [
    re.compile(r"####\s*(-?[$0-9.,]+)"),
    re.compile(r"\\boxed\{\s*\\?\$?(-?[0-9.,]+)\s*\}"),
    re.compile(r"answer is:?\s*\\?\$?\s*(-?[0-9.,]+)", re.IGNORECASE),
]


def clean_number(text: str) -> str:
    """'$1,000.' -> '1000'; '18.00' -> '18' (lm-eval's regexes_to_ignore, plus trailing zeros)."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if re.fullmatch(r"-?\d+\.\d*", text):
        text = text.rstrip("0").rstrip(".")
    return text


def extract_gsm8k(completion: str) -> str:
    """The final number of a GSM8K solution, '' when there is none."""
    for pattern in _EXPLICIT_ANSWER:
        found = pattern.findall(completion)
        if found and clean_number(found[-1]):
            return clean_number(found[-1])
    for groups in reversed(_FLEXIBLE_NUMBER.findall(completion)):
        number = clean_number(groups[0] or groups[1])
        if re.fullmatch(r"-?\d+(\.\d+)?", number):
            return number
    return ""


def gsm8k_reference(answer: str) -> str:
    """The number after '####' in a GSM8K reference solution."""
    return clean_number(answer.split("####")[-1])


# --- MATH --------------------------------------------------------------------------------------

# Minerva (Lewkowycz et al., 2022, appendix D.1), as in lm-eval's minerva_math/utils.py.
SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
REMOVED_EXPRESSIONS = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;", r",\!", "{,}", '"',
    "\\dots",
]


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalisation of a final answer: '\\boxed{90^\\circ}' -> '90'."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)  # \fracab -> \frac{a}{b}
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)  # \sqrta -> \sqrt{a}
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer.strip()


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed"):]
        return rest.split("$")[0].strip() if rest.startswith(" ") else None
    depth = 0
    for index in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[brace + 1:index]
    return None


def extract_math(completion: str) -> str:
    """The normalised final answer of a MATH solution, '' when there is none."""
    boxed = last_boxed(completion)
    if boxed is None:
        found = re.findall(r"final answer is:?\s*\$?(.+?)\$?(?:\. I hope|\.?\s*$)", completion, re.IGNORECASE | re.MULTILINE)
        if not found:
            return ""
        boxed = found[-1]
    return normalize_final_answer(boxed)


def _as_number(text: str) -> float | None:
    text = text.replace(",", "")
    fraction = re.fullmatch(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", text)
    if fraction:
        sign, top, bottom = fraction.groups()
        return (-1 if sign else 1) * int(top) / int(bottom) if int(bottom) else None
    if re.fullmatch(r"-?\d+/\d+", text):
        top, bottom = text.split("/")
        return int(top) / int(bottom) if int(bottom) else None
    try:
        return float(text)
    except ValueError:
        return None


def math_equal(predicted: str, reference: str) -> bool:
    """Equal after normalisation, or equal as numbers (0.5 == \\frac{1}{2} == 1/2)."""
    if not predicted:
        return False
    if predicted == reference:
        return True
    a, b = _as_number(predicted), _as_number(reference)
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


# --- ARC-Challenge -----------------------------------------------------------------------------


def extract_choice(completion: str, letters: str) -> str:
    """The option letter a completion picks among `letters` ('ABCD'), '' when none is clear."""
    options = f"[{letters}]"
    patterns = [
        rf"answer(?: is)?\s*[:\-]?\s*(?:option\s*)?\(?\**({options})\b",
        rf"^\s*\(?\**({options})\**\s*(?:[.):]|$)",
        rf"\(({options})\)",
        rf"\b({options})\b",
    ]
    for index, pattern in enumerate(patterns):
        found = re.findall(pattern, completion, re.IGNORECASE if index == 0 else re.MULTILINE)
        if found:
            return (found[-1] if index == 0 else found[0]).upper()  # "answer is X": the last one said
    return ""


# --- Code --------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced code block of a completion, or the whole completion when it has none."""
    found = _FENCE.search(completion)
    return (found.group(1) if found else completion).rstrip() + "\n"
