"""Decoder options, declared once: name, default, range, one-line help.

Each decoder module lists its `OPTIONS` as `Option`s. The command-line flags, the server's extra
body fields, the lm-eval model arguments and the validation that all of them share are derived
from these declarations, so that one bad value gets the same one-line error everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import RefusionError


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    kind: type = int  # int, float or str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    auto: bool = False  # "auto" is also a value (the decoder decides)
    none_means: str = ""  # what the default None stands for, for --help

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value in its proper type, or a RefusionError naming the option."""
        if self.auto and value == "auto":
            return value
        if self.choices:
            if value not in self.choices:
                raise RefusionError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
            return value
        expected = {int: "a whole number", float: "a number"}.get(self.kind, "text")
        if self.auto:
            expected = f"'auto' or {expected}"
        if isinstance(value, bool):
            raise RefusionError(f"{self.flag} must be {expected}, got {value!r}")
        try:
            if self.kind is int:
                number = int(value) if isinstance(value, int) else int(str(value).strip())
            else:
                number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise RefusionError(f"{self.flag} must be {expected}, got {value!r}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise RefusionError(f"{self.flag} must be a finite number, got {value!r}")
        if self.low is not None and number < self.low or self.high is not None and number > self.high:
            if self.kind is int and self.low == 1 and self.high is None:
                bounds = "be a positive integer"
            elif self.low is not None and self.high is not None:
                bounds = f"lie in [{self.low:g}, {self.high:g}]"
            else:
                bounds = f"be >= {self.low:g}" if self.low is not None else f"be <= {self.high:g}"
            raise RefusionError(f"{self.flag} must {bounds}, got {value!r}")
        return number

    def describe(self) -> str:
        default = self.none_means or self.default
        return f"{self.help} (default {default})"


# Options of `generate` itself, shared by every decoder.
MAX_NEW_TOKENS = Option("max_new_tokens", 256, "generation budget in tokens", int, low=1)
TEMPERATURE = Option("temperature", 0.0, "0 = greedy; > 0 samples", float, low=0.0)
SEED = Option("seed", None, "random seed for sampling", int, low=0, high=2**63 - 1, none_means="unseeded")


def options_of(module) -> dict[str, Option]:
    return {option.name: option for option in module.OPTIONS}


def all_options(decoders: dict) -> dict[str, tuple[Option, list[str]]]:
    """Every option any decoder takes, with the decoders that take it (first declaration wins)."""
    found: dict[str, tuple[Option, list[str]]] = {}
    for decoder, module in decoders.items():
        for option in module.OPTIONS:
            found.setdefault(option.name, (option, []))[1].append(decoder)
    return found
