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
Add a task with one file here plus one line in `TASKS`, at run time with `register_task`, or from
any installed package as an entry point in the group `refusion.tasks` (name = module path), as
the miniature's tasks in `refusion.repro.tasks` do.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from types import ModuleType

from ...errors import RefusionError

# name -> module path; modules are imported only when their task is used.
TASKS: dict[str, str] = {
    "gsm8k": "refusion.eval.tasks.gsm8k",
    "math500": "refusion.eval.tasks.math500",
    "humaneval": "refusion.eval.tasks.humaneval",
    "mbpp": "refusion.eval.tasks.mbpp",
    "arc-challenge": "refusion.eval.tasks.arc_challenge",
}
TASKS.update({entry.name: entry.value for entry in entry_points(group="refusion.tasks") if entry.name not in TASKS})

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
