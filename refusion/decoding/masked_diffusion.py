"""The masked-diffusion baseline (`decoder="mdm"`): LLaDA's `generate` with low-confidence remasking.

LLaDA (Nie et al., 2025, §2.4 and Appendix B.3, semi-autoregressive remasking): the generated span
starts as `max_new_tokens` `<|mask|>` tokens and is cut into blocks of `block_length`, decoded left
to right. Each block gets its share of `steps`; every step runs the model over the *whole*
sequence (prompt and every generated position, no KV cache), predicts every masked position of
the block (greedy, or Gumbel-max in float64), and unmasks the `count` most confident, where the
counts come from LLaDA's `get_num_transfer_tokens` (`transfer_counts`). Unmasked tokens are final.

Differences from LLaDA's reference code, none of which changes the text of a greedy run:
- a span that is not a multiple of `block_length` ends with a shorter block, and `steps` is split
  in proportion to block sizes (evenly, as in LLaDA, when the blocks are equal);
- the `<|mask|>` token itself is never predicted;
- decoding stops once a block is complete and an EOS lies in it or before it: the tokens up to the
  first EOS can no longer change, so only the (wasted) later forwards are skipped.

Attention follows what the model was trained for: bidirectional (an additive float 4D mask) when
`model.config.refusion_objective == "mdm"`, otherwise the model's own causal attention (what a
ReFusion- or AR-trained model knows). This module knows nothing about tokenizers.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kv_cache
from ..attention import bidirectional_mask
from ..errors import RefusionError
from .generation import EventCallback
from .options import Option
from .runner import DecodeOutput, ModelRunner, first_cache
from .sampling import choose

OPTIONS = (
    Option("steps", None, "mdm: total denoising steps", int, low=1, none_means="max-new-tokens, one token per step"),
    Option("block_length", 32, "tokens per semi-autoregressive block", int, low=1),
)


def validate_options(options: dict, max_new_tokens: int) -> None:
    """Reject combinations that make no sense (each value alone is checked by its `Option`)."""
    block_length = options["block_length"]
    steps = options.get("steps")
    if steps is not None:
        blocks = len(block_spans(max_new_tokens, int(block_length)))
        if not blocks <= int(steps) <= max_new_tokens:
            raise RefusionError(
                f"steps must lie between the number of blocks ({blocks}) and max-new-tokens ({max_new_tokens}), got {steps}"
            )


# --- shared with fast_dllm ------------------------------------------------------------------------


def block_spans(length: int, block_length: int) -> list[tuple[int, int]]:
    """[start, end) of each block over a span of `length` generated positions; the last may be shorter."""
    return [(start, min(start + block_length, length)) for start in range(0, length, block_length)]


def is_bidirectional(model) -> bool:
    """True for a model trained with the bidirectional masked-diffusion objective."""
    return getattr(model.config, "refusion_objective", None) == "mdm"


def attention_mask_for(runner: ModelRunner, bidirectional: bool, query_len: int, key_len: int):
    """An all-visible additive mask [1, 1, Q, K] when bidirectional, else None (the model's causal mask)."""
    if not bidirectional:
        return None
    return bidirectional_mask(1, query_len, key_len, runner.dtype, device=runner.device)


def predict(logits: torch.Tensor, temperature: float, generator):
    """Token and confidence at each position: [N, V] -> [N], [N] (on cpu). The runner already rules out the mask."""
    tokens, confidence = choose(logits, temperature, generator)
    return tokens.cpu(), confidence.cpu()


def first_eos(tokens: list[int], eos_token_ids: set[int]) -> int | None:
    return next((i for i, token in enumerate(tokens) if token in eos_token_ids), None)


def finish(x: torch.Tensor, prompt_len: int, end: int, mask_id: int, eos_token_ids, runner, emit, step, settings):
    """Tokens of x[P:P+end] up to the first EOS; a drop event for committed tokens after it."""
    generated = x[prompt_len : prompt_len + end].tolist()
    eos = first_eos(generated, eos_token_ids)
    if eos is not None:
        dropped = [p for p in range(eos + 1, len(x) - prompt_len) if int(x[prompt_len + p]) != mask_id]
        if dropped:
            emit({"event": "drop", "step": step, "positions": dropped})
        generated = generated[: eos + 1]
    return DecodeOutput(
        tokens=generated,
        forward_passes=runner.forward_passes,
        decode_order_tokens=x[:prompt_len].tolist() + generated,
        decode_order_positions=list(range(prompt_len + len(generated))),
        settings=settings,
    )


# --- LLaDA ----------------------------------------------------------------------------------------


def transfer_counts(masked: int, steps: int) -> list[int]:
    """LLaDA's `get_num_transfer_tokens`: `masked` tokens over `steps` steps, remainder to the first ones."""
    base, extra = divmod(masked, steps)
    return [base + (i < extra) for i in range(steps)]


def steps_per_block(steps: int, spans: list[tuple[int, int]]) -> list[int]:
    """Split `steps` over the blocks in proportion to their size; each gets 1..its size."""
    length = spans[-1][1]
    bounds = [0] + [round(steps * end / length) for _, end in spans]
    return [min(max(b - a, 1), end - start) for a, b, (start, end) in zip(bounds, bounds[1:], spans)]


def denoise_step(runner, x, bidirectional, block_positions, count, temperature, generator, prompt_len, prompt_cache):
    """One LLaDA step: predict every masked position of the block, unmask the `count` most confident.

    x: [P+L] current sequence (changed in place); block_positions: [n] absolute masked positions.
    A causal model's prompt never sees what follows it, so its KV is computed once (`prompt_cache`, filled by
    the first step and cut back to the prompt after each) and every later step feeds only the L positions;
    bidirectional attention lets the prompt see the masks, so there (`prompt_cache` None) every step feeds everything.
    Returns the unmasked positions (ascending) and their tokens.
    """
    total = x.shape[0]
    if prompt_cache is None:
        attention = attention_mask_for(runner, bidirectional, total, total)
        logits = runner(x.unsqueeze(0), torch.arange(total).unsqueeze(0), kv_cache.new_cache(), attention)[0]  # [P+L, V]
        first = 0
    else:
        first = kv_cache.length(prompt_cache)  # 0 on the first step (a long prompt's P - 1: `first_cache`), then P
        logits = runner(x[first:].unsqueeze(0), torch.arange(first, total).unsqueeze(0), prompt_cache, None)[0]
        kv_cache.truncate(prompt_cache, prompt_len)
    tokens, confidence = predict(logits[(block_positions - first).to(logits.device)], temperature, generator)  # [n]
    chosen = confidence.topk(count).indices.sort().values
    positions = block_positions[chosen]
    x[positions] = tokens[chosen]
    return positions.tolist(), tokens[chosen].tolist()


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
    steps: int | None = None,
    block_length: int = 32,
) -> DecodeOutput:
    P, L = prompt_ids.shape[1], max_new_tokens
    x = torch.cat([prompt_ids[0], torch.full((L,), mask_token_id, dtype=torch.long)])  # [P+L]
    bidirectional = is_bidirectional(runner.model)
    spans = block_spans(L, block_length)
    budgets = steps_per_block(steps or L, spans)
    settings = {"steps": sum(budgets), "block_length": block_length, "attention": "bidirectional" if bidirectional else "causal"}
    prompt_cache = None if bidirectional else first_cache(runner, prompt_ids[0].tolist())[0]
    step = 0
    for block, ((start, end), budget) in enumerate(zip(spans, budgets)):
        for count in transfer_counts(end - start, budget):
            step += 1
            masked = (x[P + start : P + end] == mask_token_id).nonzero().flatten() + P + start  # [n] absolute
            positions, tokens = denoise_step(runner, x, bidirectional, masked, count, temperature, generator, P,
                                             prompt_cache)
            relative = [p - P for p in positions]
            emit({"event": "plan", "step": step, "block": block, "slots": (masked - P).tolist(), "selected": relative})
            emit({"event": "commit", "step": step, "positions": relative, "tokens": tokens, "phase": "mdm"})
            if should_stop():
                return finish(x, P, end, mask_token_id, eos_token_ids, runner, emit, step, settings)
        if first_eos(x[P : P + end].tolist(), eos_token_ids) is not None:
            return finish(x, P, end, mask_token_id, eos_token_ids, runner, emit, step, settings)
    return finish(x, P, L, mask_token_id, eos_token_ids, runner, emit, step, settings)
