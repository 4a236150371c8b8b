"""Benchmarks: accuracy and speed of a decoder on GSM8K, MATH-500, HumanEval, MBPP, ARC-Challenge.

    >>> from refusion.eval import evaluate
    >>> result = evaluate(model, tokenizer, "gsm8k", decoder="refusion", limit=20)   # doctest: +SKIP
    >>> result.summary["accuracy"], result.summary["tokens_per_second"]              # doctest: +SKIP
"""

from .runner import EvalResult, evaluate
from .tasks import TASKS, get_task, register_task

__all__ = ["TASKS", "EvalResult", "evaluate", "get_task", "register_task"]
