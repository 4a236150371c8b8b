"""The autoregressive baseline: prefill the prompt, then one token per forward with a KV cache.

Greedy output equals transformers' `generate(do_sample=False)`. `ArRow` is the same decode as a
row of a `Batch`: several prompts decode together (one forward per step for the rows still
running), each row getting the tokens `decode` gives it alone; the server's running batch takes
`ar` requests as such rows. Knows nothing about slots or masks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .batching import Feed
from .generation import EventCallback
from .runner import DecodeOutput, ModelRunner, first_cache
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
    cache, start = first_cache(runner, prompt_ids[0].tolist())  # a long prompt's but its last token, cached apart
    input_ids = prompt_ids[:, start:]  # [1, P] (or its last token) then [1, 1]
    positions = torch.arange(start, prompt_len).unsqueeze(0)
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


class ArRow:
    """One prompt's `ar` decode as a row of a `Batch`: feeds its last token, takes the next one."""

    def __init__(self, runner: ModelRunner, prompt: list[int], *, max_new_tokens: int, eos_token_ids: set[int], temperature: float = 0.0,
                 generator: torch.Generator | None = None, emit: EventCallback = lambda event: None,
                 should_stop: Callable[[], bool] = lambda: False):
        self.prompt = prompt
        self.pending, self.position = list(prompt), 0
        self.max_new_tokens, self.eos_token_ids = max_new_tokens, eos_token_ids
        self.temperature, self.generator, self.emit, self.should_stop = temperature, generator, emit, should_stop
        self.tokens: list[int] = []
        self.forwards = 0
        self.done = False

    def feed(self, rows: int) -> Feed:
        fed = len(self.pending)
        return Feed(self.pending, list(range(self.position, self.position + fed)), None, [fed - 1])

    def take(self, logits: torch.Tensor) -> list[int]:
        token, _ = choose(logits, self.temperature, self.generator)
        self.tokens.append(int(token))
        step = len(self.tokens)
        self.emit({"event": "commit", "step": step, "positions": [step - 1], "tokens": [self.tokens[-1]], "phase": "ar"})
        self.done = self.tokens[-1] in self.eos_token_ids or step == self.max_new_tokens or self.should_stop()
        kept = list(range(len(self.pending)))
        self.position += len(self.pending)
        self.pending = [self.tokens[-1]]
        return kept

    def output(self) -> DecodeOutput:
        return DecodeOutput(
            tokens=self.tokens,
            forward_passes=self.forwards,  # the forwards this row took part in: as many as alone
            decode_order_tokens=self.prompt + self.tokens,
            decode_order_positions=list(range(len(self.prompt) + len(self.tokens))),
        )


ROW = ArRow
