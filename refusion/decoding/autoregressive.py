"""The autoregressive baseline: prefill the prompt, then one token per forward with a KV cache.

Greedy output equals transformers' `generate(do_sample=False)`. Knows nothing about slots or masks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kv_cache
from .generation import EventCallback
from .runner import DecodeOutput, ModelRunner
from .sampling import choose

OPTIONS: tuple = ()


def decode(
    runner: ModelRunner,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DecodeOutput:
    prompt_len = prompt_ids.shape[1]
    cache = kv_cache.new_cache()
    input_ids = prompt_ids  # [1, P] then [1, 1]
    positions = torch.arange(prompt_len).unsqueeze(0)
    tokens: list[int] = []
    for step in range(max_new_tokens):
        logits = runner(input_ids, positions, cache, logits_to_keep=1)[:, -1]  # [1, V]
        token, _ = choose(logits, temperature, generator)
        tokens.append(int(token))
        emit({"event": "commit", "step": step + 1, "positions": [step], "tokens": [tokens[-1]], "phase": "ar"})
        if tokens[-1] in eos_token_ids or should_stop():
            break
        input_ids = token.view(1, 1).cpu()
        positions = torch.tensor([[prompt_len + step]])
    return DecodeOutput(
        tokens=tokens,
        forward_passes=runner.forward_passes,
        cache=cache,
        decode_order_tokens=prompt_ids[0].tolist() + tokens,
        decode_order_positions=list(range(prompt_len + len(tokens))),
    )
