"""What every decoder returns, and the events it reports while it runs.

Events are plain dicts so that a CLI, a server or a web page can consume them without importing
torch. Positions in events are offsets into the generated text (0 = first new token).

    {"event": "plan",   "step": s, "block": b, "slots": [start, ...], "selected": [start, ...]}
    {"event": "commit", "step": s, "positions": [p, ...], "tokens": [id, ...], "phase": "verify"|"complete"|"ar"}
    {"event": "drop",   "step": s, "positions": [p, ...]}   # positions after an EOS, removed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

EventCallback = Callable[[dict], None]


@dataclass
class Generation:
    """The result of one prompt's generation, alone or as one row of a batch (see `batch_size`)."""

    tokens: list[int]
    """New token ids in text order, ending with EOS when one was generated."""
    text: str
    """`tokens` decoded, special tokens skipped, cut before the first stop string."""
    decoder: str
    forward_passes: int
    """Every model forward counted: prefill, plan, verify, draft, recompute. In a batch, the forwards this
    row took part in (what it would have cost alone), not the batch's total."""
    seconds: float
    """Wall time of the decode loop. In a batch, the whole batch's (the caller waits for all rows), so a
    row's share of the machine is `seconds / batch_size`."""
    prompt_tokens: int = 0
    finish_reason: str = "length"
    """"stop" when an EOS or a stop string ended the text, "length" when the token budget did."""
    trace: list[dict] | None = None
    """Per-step events (see module docstring) when asked for with `trace=True`."""
    settings: dict = field(default_factory=dict)
    """The decoder settings actually used (after defaults and rounding)."""
    forward_seconds: float = 0.0
    """Wall time spent inside the model's forward; the rest of `seconds` is the decoder's own work.
    In a batch, like `seconds`, the whole batch's."""
    forward_profile: dict = field(default_factory=dict)
    """{tokens fed: [forwards, seconds]}: how many forwards fed that many new tokens, and their time.
    In a batch, the whole batch's forwards, tokens summed over its rows."""
    counters: dict = field(default_factory=dict)
    """Decoder-specific counts, e.g. lossless `drafts_offered` and `drafts_accepted`."""
    batch_size: int = 1
    """How many prompts shared the forwards timed in `seconds` (1: decoded alone)."""

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_forward(self) -> float:
        return self.new_tokens / self.forward_passes if self.forward_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def stats(self) -> dict:
        """The numbers a benchmark row or an API response reports."""
        return {
            "decoder": self.decoder,
            "new_tokens": self.new_tokens,
            "forward_passes": self.forward_passes,
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "seconds": round(self.seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 3),
            "finish_reason": self.finish_reason,
            **self.counters,
        }
