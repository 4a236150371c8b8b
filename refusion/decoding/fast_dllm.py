"""The Fast-dLLM baseline (`decoder="fast-dllm"`): threshold parallel decoding with a block prefix cache.

Fast-dLLM (Wu et al., 2025): blocks of `block_length` masks are decoded left to right as in LLaDA,
but (§3.2) each step unmasks *every* masked token of the block whose confidence exceeds `threshold`,
and at least one (the most confident), so a block takes as many steps as it needs; and (§3.1,
"prefix cache", their `generate_with_prefix_cache`) the KV of everything before the block is
computed once, by the forward that starts the block, and reused by every step inside it. That
cache is approximate under bidirectional attention (computed while the block was still masked)
and refreshed only when a block completes. Each in-block step feeds the block and, under
bidirectional attention, every later (masked) position, against the prefix cache; the cache is
cut back to the prefix after every forward.

Under causal attention the prefix cache is exact, and later positions cannot influence the block,
so the refresh feeds only the newly completed block and the steps feed only the current block:
the same tokens as the full computation with fewer FLOPs. Confidence ties at exactly `threshold`
do not pass (Fast-dLLM keeps them); the mask token is never predicted; decoding stops once a
complete block holds an EOS (see `masked_diffusion`). Cache handling goes through `kv_cache`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kv_cache
from . import masked_diffusion
from .generation import EventCallback
from .options import Option
from .masked_diffusion import attention_mask_for, block_spans, finish, first_eos, is_bidirectional, predict
from .runner import DecodeOutput, ModelRunner, first_cache

OPTIONS = (
    Option("threshold", 0.9, "fast-dllm: unmask every token above this confidence", float, 0.0, 1.0),
    masked_diffusion.OPTIONS[1],  # block_length, as in mdm
)
"""threshold: unmask every token above this confidence (at least one per step); block_length: tokens per block."""


def confident(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices (ascending) of the tokens above the threshold, or of the single most confident one."""
    chosen = (confidence > threshold).nonzero().flatten()
    return chosen if len(chosen) else confidence.argmax().view(1)


def forward_after_prefix(runner, x, cache, prefix_end, feed_from, feed_to, bidirectional):
    """Feed x[feed_from:feed_to] after the cache (which covers x[:feed_from]); cut the cache to x[:prefix_end].

    x: [P+L]. Returns logits [feed_to - feed_from, V].
    """
    ids = x[feed_from:feed_to].unsqueeze(0)  # [1, S]
    positions = torch.arange(feed_from, feed_to).unsqueeze(0)
    attention = attention_mask_for(runner, bidirectional, feed_to - feed_from, feed_to)
    logits = runner(ids, positions, cache, attention)[0]
    kv_cache.truncate(cache, prefix_end)
    return logits


def decode(
    runner: ModelRunner,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    mask_token_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
    threshold: float = 0.9,
    block_length: int = 32,
) -> DecodeOutput:
    P, L = prompt_ids.shape[1], max_new_tokens
    x = torch.cat([prompt_ids[0], torch.full((L,), mask_token_id, dtype=torch.long)])  # [P+L]
    bidirectional = is_bidirectional(runner.model)
    settings = {"attention": "bidirectional" if bidirectional else "causal"}
    cache = kv_cache.new_cache() if bidirectional else first_cache(runner, prompt_ids[0].tolist())[0]
    step = 0
    for block, (start, end) in enumerate(block_spans(L, block_length)):
        block_start, feed_to = P + start, P + (L if bidirectional else end)
        # refresh the prefix cache: recompute everything (bidirectional) or append what completed since
        feed_from = 0 if bidirectional else kv_cache.length(cache)
        if bidirectional:
            cache = kv_cache.new_cache()
        while (x[block_start : P + end] == mask_token_id).any():
            step += 1
            logits = forward_after_prefix(runner, x, cache, block_start, feed_from, feed_to, bidirectional)
            logits = logits[block_start - feed_from : P + end - feed_from]  # [block, V]
            masked = (x[block_start : P + end] == mask_token_id).nonzero().flatten()  # [n] block offsets
            tokens, confidence = predict(logits[masked.to(logits.device)], temperature, generator)
            chosen = confident(confidence, threshold)
            positions = masked[chosen] + block_start
            x[positions] = tokens[chosen]
            relative = (positions - P).tolist()
            emit({"event": "plan", "step": step, "block": block, "slots": (masked + start).tolist(), "selected": relative})
            emit({"event": "commit", "step": step, "positions": relative, "tokens": tokens[chosen].tolist(), "phase": "fast-dllm"})
            if should_stop():
                return finish(x, P, end, mask_token_id, eos_token_ids, runner, emit, step, settings)
            feed_from = block_start
        if first_eos(x[P : P + end].tolist(), eos_token_ids) is not None:
            return finish(x, P, end, mask_token_id, eos_token_ids, runner, emit, step, settings)
    return finish(x, P, L, mask_token_id, eos_token_ids, runner, emit, step, settings)
