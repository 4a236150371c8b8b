"""The benchmark registry: one small module per task.

A task module defines
    NAME: str                       the name used on the command line
    SIZE: int                       how many examples the full benchmark has
    MAX_NEW_TOKENS: int             its default generation budget
    examples(limit=None) -> list[dict]
        the first `limit` examples (all when None), each a dict with at least "id"
    prompt(example) -> str | list[dict]
        a zero-shot user prompt (text, or chat messages), sent through the chat template
    evaluate(example, completion) -> (extracted_answer: str, correct: bool)
and optionally REFERENCE_SETTINGS, the paper's decoder settings for it.
Add a task with one file here plus one line in `TASKS`, or at run time with `register_task`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...errors import RefusionError

# name -> module path; modules are imported only when their task is used.
TASKS: dict[str, str] = {
    "gsm8k": "refusion.eval.tasks.gsm8k",
    "math500": "refusion.eval.tasks.math500",
    "humaneval": "refusion.eval.tasks.humaneval",
    "mbpp": "refusion.eval.tasks.mbpp",
    "arc-challenge": "refusion.eval.tasks.arc_challenge",
    "mini-gsm8k": "refusion.eval.tasks.mini_gsm8k",
    "mini-json": "refusion.eval.tasks.mini_json",
}

_REQUIRED = ("NAME", "MAX_NEW_TOKENS", "examples", "prompt", "evaluate")


def register_task(name: str, module: str | ModuleType) -> None:
    """Add a task: a module (or its import path) following the contract in this module's docstring."""
    if isinstance(module, ModuleType):
        _check(module)
        _LOADED[name] = module
        module = module.__name__
    TASKS[name] = module


def get_task(name: str) -> ModuleType:
    """The task module for `name`; an unknown name is a RefusionError listing the known ones."""
    if name not in TASKS:
        raise RefusionError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    if name not in _LOADED:
        _LOADED[name] = _check(importlib.import_module(TASKS[name]))
    return _LOADED[name]


def _check(module: ModuleType) -> ModuleType:
    missing = [attribute for attribute in _REQUIRED if not hasattr(module, attribute)]
    if missing:
        raise RefusionError(f"task module {module.__name__} lacks {', '.join(missing)}")
    return module


_LOADED: dict[str, ModuleType] = {}

__all__ = ["TASKS", "get_task", "register_task"]
