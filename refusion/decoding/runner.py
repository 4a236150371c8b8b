"""Calling the model: one place that builds the forward's keyword arguments, counts forwards and times them.

Works with any object that behaves like a transformers causal-LM forward: keyword arguments
`input_ids`, `position_ids`, `past_key_values`, `use_cache`, `attention_mask` (None = causal over
the cache order, or an additive float mask [B, 1, S, cache + S]) and `logits_to_keep`; it returns
`.logits` and updates the cache it was given. Knows nothing about decoding strategies.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@dataclass
class ForwardStats:
    """Forwards counted and timed by the number of new tokens they fed (summed over the batch)."""

    seconds: float = 0.0
    by_width: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))  # width -> [count, seconds]

    def add(self, width: int, seconds: float) -> None:
        self.seconds += seconds
        entry = self.by_width[width]
        entry[0] += 1
        entry[1] += seconds


@dataclass
class ModelRunner:
    model: object
    forward_passes: int = 0
    suppress_token_id: int | None = None
    """A token never to be predicted (the mask token: it is an input marker, not text)."""
    stats: ForwardStats = field(default_factory=ForwardStats)
    device: torch.device = field(init=False)

    def __post_init__(self):
        self.device = model_device(self.model)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, attention_mask=None,
                 logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids, position_ids: [B, S] appended after `cache` -> logits [B, S, V].

        `logits_to_keep=n` returns the logits of the last n positions only ([B, n, V]): the LM head
        is a large share of a narrow forward, so decoders ask only for what they read.
        """
        started = time.perf_counter()
        output = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=cache,
            use_cache=True,
            attention_mask=attention_mask,
            logits_to_keep=logits_to_keep,
        )
        logits = output.logits
        if self.suppress_token_id is not None:
            logits[..., self.suppress_token_id] = torch.finfo(logits.dtype).min
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so that the time below is the forward's, not its launch's
        self.stats.add(input_ids.numel(), time.perf_counter() - started)
        self.forward_passes += 1
        return logits


@dataclass
class DecodeOutput:
    """What a decoder hands back to `generate`: tokens in text order plus its internal state."""

    tokens: list[int]
    forward_passes: int
    cache: object = None
    decode_order_tokens: list[int] = field(default_factory=list)
    """Prompt then generated tokens in the order they were committed (the cache's order)."""
    decode_order_positions: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    """Decoder-specific counts (e.g. drafts offered and accepted), reported with the result."""
