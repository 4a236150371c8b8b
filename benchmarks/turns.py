"""What the benchmark scripts that time settings against each other in one process share: every setting decodes
every prompt, the settings taking turns prompt by prompt (a slow spell of the machine then falls on all of them
alike), and the report printed and written."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import time
from typing import Callable, Hashable, Iterable

from refusion.files import write_text


@dataclass
class Totals:
    """One setting's decodes, summed over the prompts."""

    seconds: float = 0.0
    tokens: int = 0
    forwards: int = 0
    counters: Counter = field(default_factory=Counter)
    texts: list = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def identical(self, other: "Totals") -> int:
        """Prompts whose text equals the other setting's."""
        return sum(a == b for a, b in zip(self.texts, other.texts))


def take_turns(prompts: list, settings: Iterable[Hashable], decode: Callable) -> dict[Hashable, Totals]:
    """`decode(setting, prompt)` -> a `Generation`, for every prompt and setting, the settings taking turns prompt by
    prompt; a line of progress a prompt."""
    settings = list(settings)
    totals = {setting: Totals() for setting in settings}
    for index, prompt in enumerate(prompts):
        for setting in settings:
            started = time.perf_counter()
            result = decode(setting, prompt)
            total = totals[setting]
            total.seconds += time.perf_counter() - started
            total.tokens += len(result.tokens)
            total.forwards += result.forward_passes
            total.counters.update(result.counters)
            total.texts.append(result.tokens)
        print(f"prompt {index + 1}/{len(prompts)}", flush=True)
    return totals


def report(lines: list[str], output: str | None) -> None:
    """Print the report's lines, and write them to `output` where one is given."""
    text = "\n".join(lines)
    print(text)
    if output:
        write_text(output, text + "\n")
