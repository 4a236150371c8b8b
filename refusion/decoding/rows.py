"""One prompt's bookkeeping while a decoder runs, the same whether it is decoded alone or in a batch.

A decoder reports each prompt's progress through that prompt's `emit` and asks its `stop_now`
between steps; the `Row` keeps the final left-to-right text (stop strings, EOS, budget), the
trace, the streamed text, and at the end turns the decoder's output into a `Generation`. Keeping
this per prompt is what lets rows of one batch finish independently. Knows nothing about models.
"""

from __future__ import annotations

from typing import Callable

from .generation import EventCallback, Generation
from .runner import DecodeOutput, ForwardStats
from .streaming import FinalText, cut_at_stop


class Row:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_new_tokens: int, stop: list[str], *, trace: bool = False,
                 on_event: EventCallback | None = None, on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.trace = trace
        self.on_event = on_event
        self.on_text = on_text
        self.should_stop = should_stop
        self.final = FinalText(self.decode_text, eos_token_ids, max_new_tokens, stop, text=on_text is not None)
        self.events: list[dict] = []
        self.shown = ""
        self.cancelled = False

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def emit(self, event: dict) -> None:
        """A decoder event for this prompt: kept, passed on, and the final text (and stream) moved on."""
        if self.trace:
            self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        if self.final(event) and self.on_text is not None and len(self.final.ready) > len(self.shown):
            self.on_text(self.final.ready[len(self.shown):])
            self.shown = self.final.ready

    def stop_now(self) -> bool:
        """Asked by decoders between steps: the text is complete (a decoder that writes past the budget or
        out of order may still hold work it need not do), or the caller cancelled."""
        if self.final.complete:
            return True
        self.cancelled = self.cancelled or (self.should_stop is not None and bool(self.should_stop()))
        return self.cancelled

    def result(self, output: DecodeOutput, *, decoder: str, prompt_tokens: int, seconds: float, stats: ForwardStats,
               settings: dict, batch_size: int = 1, return_state: bool = False) -> Generation:
        """The `Generation` for this prompt once the decoder returned `output`."""
        # Stopped early, a decoder may hold tokens ahead of a gap: the text is the final left-to-right prefix.
        complete = self.final.complete or self.cancelled
        tokens = self.final.tokens if complete else output.tokens[: self.max_new_tokens]
        text, stopped_at_string = cut_at_stop(self.decode_text(tokens), self.stop)
        if self.on_text is not None and len(text) > len(self.shown) and text.startswith(self.shown):
            self.on_text(text[len(self.shown):])  # the tail held back while it could still have become a stop string
        stopped = stopped_at_string or (bool(tokens) and tokens[-1] in self.eos_token_ids)
        result = Generation(
            tokens=tokens,
            text=text,
            decoder=decoder,
            forward_passes=output.forward_passes,
            seconds=seconds,
            prompt_tokens=prompt_tokens,
            finish_reason="stop" if stopped else "cancelled" if self.cancelled else "length",
            trace=self.events if self.trace else None,
            settings={**settings, **output.settings, **({"stop": self.stop} if self.stop else {})},
            forward_seconds=stats.seconds,
            forward_profile={width: list(entry) for width, entry in sorted(stats.by_width.items())},
            counters=dict(output.counters),
            batch_size=batch_size,
        )
        if return_state:
            result.state = output  # internal: cache and decode order, for tests and diagnostics
        return result
