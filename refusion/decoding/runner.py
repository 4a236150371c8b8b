"""Calling the model: one place that builds the forward's keyword arguments and counts forwards.

Works with any object that behaves like a transformers causal-LM forward: keyword arguments
`input_ids`, `position_ids`, `past_key_values`, `use_cache`, `attention_mask`; it returns `.logits`
and updates the cache it was given. Knows nothing about decoding strategies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import kv_cache


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@dataclass
class ModelRunner:
    model: object
    forward_passes: int = 0
    suppress_token_id: int | None = None
    """A token never to be predicted (the mask token: it is an input marker, not text)."""
    device: torch.device = field(init=False)

    def __post_init__(self):
        self.device = model_device(self.model)

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, attention_mask=None) -> torch.Tensor:
        """input_ids, position_ids: [B, S] appended after `cache` -> logits [B, S, V]."""
        batch, new = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, kv_cache.length(cache) + new, dtype=torch.long, device=self.device)
        output = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=position_ids.to(self.device),
            past_key_values=cache,
            use_cache=True,
            attention_mask=attention_mask,
        )
        self.forward_passes += 1
        logits = output.logits
        if self.suppress_token_id is not None:
            logits[..., self.suppress_token_id] = torch.finfo(logits.dtype).min
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
