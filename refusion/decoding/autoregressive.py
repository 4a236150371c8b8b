"""The autoregressive baseline: prefill the prompt, then one token per forward with a KV cache.

Greedy output equals transformers' `generate(do_sample=False)`. `decode_batch` decodes several
prompts together (left-padded, one forward per step for the rows still running), each row getting
the tokens `decode` gives it alone. Knows nothing about slots or masks.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kv_cache
from ..attention import padded_causal_mask
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


def decode_batch(
    runner: ModelRunner,
    prompts: list[torch.Tensor],
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    temperature: float = 0.0,
    generators: list[torch.Generator | None],
    emits: list[EventCallback],
    should_stops: list[Callable[[], bool]],
) -> list[DecodeOutput]:
    """`decode` for several prompts ([1, P] each) at once: one forward per step for every unfinished row.

    Prompts are left-padded to the longest, with an additive mask hiding the padding and each row's
    own position ids, so every row sees exactly the keys and positions it sees alone; its tokens are
    chosen from its own logits with its own generator. A row that ends (EOS, its `should_stop`,
    the budget) leaves the batch: its cache row is dropped, and cache columns that are padding in
    every remaining row are cut, so finished or short rows stop costing work.
    """
    lengths = [prompt.shape[1] for prompt in prompts]
    width = max(lengths)
    pads = torch.tensor([width - length for length in lengths])
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - lengths[row]:] = prompt[0]
    columns = torch.arange(width)[None]
    positions = (columns - pads[:, None]).clamp_min(0)  # [B, P]: a row's prompt at 0 .. P-1, as alone
    padding = columns < pads[:, None]  # [B, cache columns], True = padding
    cache = kv_cache.new_cache()
    tokens: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))  # the prompt of each batch row, in cache row order
    for step in range(max_new_tokens):
        mask = padded_causal_mask(padding, input_ids.shape[1], runner.dtype, runner.device)
        logits = runner(input_ids, positions, cache, attention_mask=mask, logits_to_keep=1)[:, -1]  # [b, V]
        chosen = _choose_rows(logits, temperature, [generators[index] for index in active])
        running = []
        for row, index in enumerate(active):
            tokens[index].append(chosen[row])
            emits[index]({"event": "commit", "step": step + 1, "positions": [step], "tokens": [chosen[row]], "phase": "ar"})
            if not (chosen[row] in eos_token_ids or should_stops[index]()):
                running.append(row)
        if not running or step + 1 == max_new_tokens:
            break
        if len(running) < len(active):
            padding = _leave(cache, padding, torch.tensor(running))
            active = [active[row] for row in running]
        input_ids = torch.tensor([[tokens[index][-1]] for index in active])
        positions = torch.tensor([[lengths[index] + step] for index in active])
        padding = torch.cat([padding, torch.zeros(len(active), 1, dtype=torch.bool)], dim=1)
    return [
        DecodeOutput(
            tokens=row_tokens,
            forward_passes=len(row_tokens),  # one forward per token, as alone: the forwards this row took part in
            decode_order_tokens=prompt[0].tolist() + row_tokens,
            decode_order_positions=list(range(prompt.shape[1] + len(row_tokens))),
        )
        for prompt, row_tokens in zip(prompts, tokens)
    ]


def _choose_rows(logits: torch.Tensor, temperature: float, generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of logits [b, V]; sampling draws each row from its own generator, as alone."""
    if temperature == 0:
        return logits.argmax(dim=-1).tolist()
    return [int(choose(logits[row : row + 1], temperature, generator)[0]) for row, generator in enumerate(generators)]


def _leave(cache, padding: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """Keep only the `running` rows of the cache and padding; cut columns that are now padding in every row."""
    kv_cache.select_rows(cache, running)
    padding = padding[running]
    first = int((~padding).any(dim=0).int().argmax())  # the first column some remaining row does not pad
    if first:
        kv_cache.keep_indices(cache, torch.arange(first, padding.shape[1]))
        padding = padding[:, first:]
    return padding
