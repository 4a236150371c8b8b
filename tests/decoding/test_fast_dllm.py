"""The `fast-dllm` decoder (threshold parallel decoding, block prefix cache) against hand-derived expectations.

The stand-in model of test_masked_diffusion fixes each position's prediction and confidence, so the
threshold rule, the forwards and what each forward feeds against which cache can be checked by
hand. A tiny random Llama then checks both attentions against a transcription of Fast-dLLM's
`generate_with_prefix_cache` that handles the cache with transformers directly.
"""

from __future__ import annotations

import copy

import pytest
import torch

import refusion
from refusion.decoding.fast_dllm import confident
from refusion.errors import RefusionError
from tests.decoding.test_masked_diffusion import EOS, MASK, PROMPT, ConfidenceModel, NoEosTokenizer, commits, run
from tests.tiny_models import tiny_model

P = len(PROMPT)


def fed(model):
    """(fed positions as a range, cache length before the call) of every forward."""
    return [(call.position_ids[0], call.position_ids[-1] + 1, call.past_length) for call in model.calls]


def test_threshold_rule():
    confidence = torch.tensor([0.95, 0.5, 0.92, 0.3])
    assert confident(confidence, 0.9).tolist() == [0, 2]
    assert confident(confidence, 0.96).tolist() == [0]  # none above: the single most confident
    assert confident(torch.tensor([0.9, 0.2]), 0.9).tolist() == [0]  # exactly at the threshold does not pass
    assert confident(torch.tensor([0.9, 0.2, 0.9]), 0.9).tolist() == [0]


def test_unmasks_every_token_above_threshold_and_at_least_one():
    model = ConfidenceModel([11, 12, 13, 14], [0.95, 0.5, 0.92, 0.3])
    result = run(model, "fast-dllm", max_new_tokens=4, block_length=4, threshold=0.9)
    assert commits(result) == [[0, 2], [1], [3]]
    assert result.tokens == [11, 12, 13, 14]
    assert result.forward_passes == 3
    # First forward: prompt and block from an empty cache; then the block alone after the prompt's KV.
    assert fed(model) == [(0, P + 4, 0), (P, P + 4, P), (P, P + 4, P)]
    assert model.calls[1].input_ids == [11, MASK, 13, MASK]


def test_causal_prefix_cache_is_refreshed_with_the_completed_block_only():
    model = ConfidenceModel([11, 12, 13, 14], [0.95, 0.5, 0.92, 0.3])
    result = run(model, "fast-dllm", max_new_tokens=4, block_length=2, threshold=0.9)
    assert commits(result) == [[0], [1], [2], [3]]
    # Block 0: from scratch, then against the prompt's KV. Block 1: block 0 and block 1 after the
    # prompt's KV (cut back to prompt + block 0), then block 1 alone. Later masks are never fed.
    assert fed(model) == [(0, P + 2, 0), (P, P + 2, P), (P, P + 4, P), (P + 2, P + 4, P + 2)]
    assert all(call.attention_mask is None for call in model.calls)


def test_bidirectional_recomputes_the_prefix_per_block_and_feeds_the_masked_suffix():
    model = ConfidenceModel([11, 12, 13, 14], [0.95, 0.5, 0.92, 0.3], objective="mdm")
    result = run(model, "fast-dllm", max_new_tokens=4, block_length=2, threshold=0.9)
    assert commits(result) == [[0], [1], [2], [3]]
    assert fed(model) == [(0, P + 4, 0), (P, P + 4, P), (0, P + 4, 0), (P + 2, P + 4, P + 2)]
    assert model.calls[1].input_ids == [11, MASK, MASK, MASK]
    masks = [call.attention_mask for call in model.calls]
    assert [tuple(m.shape) for m in masks] == [(1, 1, P + 4, P + 4), (1, 1, 4, P + 4), (1, 1, P + 4, P + 4), (1, 1, 2, P + 4)]
    assert not any(m.any() for m in masks)


def test_stops_after_the_block_holding_an_eos():
    model = ConfidenceModel([11, EOS, 13, 14, 15, 16], [0.3, 0.95, 0.97, 0.5, 0.99, 0.99])
    result = run(model, "fast-dllm", max_new_tokens=6, block_length=4, threshold=0.9)
    assert commits(result) == [[1, 2], [3], [0]]
    assert result.tokens == [11, EOS] and result.finish_reason == "stop"
    assert result.forward_passes == 3
    assert result.trace[-1] == {"event": "drop", "step": 3, "positions": [2, 3]}


@pytest.mark.parametrize("options, message", [
    ({"threshold": 1.5}, "threshold must lie in"),
    ({"block_length": 0}, "block-length must be a positive integer"),
    ({"steps": 4}, "does not take steps"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(RefusionError, match=message):
        run(ConfidenceModel([11] * 4, [0.5] * 4), "fast-dllm", max_new_tokens=4, **options)


def test_needs_a_mask_token():
    model = ConfidenceModel([11] * 4, [0.5] * 4)
    model.config.mask_token_id = None
    with pytest.raises(RefusionError, match="needs a model trained with a <|mask|> token"):
        run(model, "fast-dllm", max_new_tokens=4)


# --- a tiny random Llama ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama", vocab_size=64, seed=2)
    model.config.mask_token_id = 63
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # confident enough for thresholds in (0, 1) to bite
    return model


def fast_dllm_reference(model, prompt, length, block_length, threshold, bidirectional):
    """Fast-dLLM's `generate_with_prefix_cache` (greedy, threshold), transcribed; never predicts the mask.

    Returns the generated tokens and the offsets unmasked at each step.
    """
    mask_id, prompt_len = model.config.mask_token_id, prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, length), mask_id)], dim=1)
    total, steps = x.shape[1], []

    def transfer(logits, window_start, block_end):
        logits[..., mask_id] = float("-inf")
        x0 = logits[0].argmax(-1)
        confidence = torch.softmax(logits[0].double(), -1).gather(-1, x0[:, None])[:, 0]
        window = x[0, window_start:]
        confidence[block_end - window_start :] = float("-inf")
        confidence = torch.where(window == mask_id, confidence, float("-inf"))
        order = confidence.argsort(descending=True)
        keep = [order[0]] + [i for i in order[1:] if confidence[i] > threshold]
        for i in keep:
            window[i] = x0[i]
        steps.append(sorted(int(i) + window_start - prompt_len for i in keep))

    with torch.no_grad():
        for start in range(prompt_len, total, block_length):
            end = start + block_length
            attention = torch.zeros(1, 1, total, total) if bidirectional else None
            output = model(input_ids=x, attention_mask=attention, use_cache=True)
            transfer(output.logits, 0, end)
            prefix = output.past_key_values
            prefix.crop(-(total - start))
            while (x[0, start:end] == mask_id).any():
                attention = torch.zeros(1, 1, total - start, total) if bidirectional else None
                logits = model(input_ids=x[:, start:], past_key_values=copy.deepcopy(prefix), attention_mask=attention,
                               position_ids=torch.arange(start, total)[None], use_cache=True).logits
                transfer(logits, start, end)
    return x[0, prompt_len:].tolist(), steps


@pytest.mark.parametrize("objective", [None, "mdm"])
@pytest.mark.parametrize("threshold", [0.4, 0.7])
def test_tiny_llama_matches_fast_dllm_reference(llama, objective, threshold):
    llama.config.refusion_objective = objective
    prompt = torch.tensor([[5, 9, 17, 3]])
    result = refusion.generate(llama, NoEosTokenizer(), prompt, decoder="fast-dllm", max_new_tokens=12, block_length=4,
                               threshold=threshold, trace=True)
    tokens, steps = fast_dllm_reference(llama, prompt, 12, 4, threshold, bidirectional=objective == "mdm")
    assert result.tokens == tokens and commits(result) == steps
    assert 63 not in result.tokens and len(result.tokens) == 12
    assert result.forward_passes == len(steps) < 12  # some steps unmasked several tokens


@pytest.mark.parametrize("objective", [None, "mdm"])
def test_tiny_llama_threshold_extremes(llama, objective):
    llama.config.refusion_objective = objective
    prompt = torch.tensor([[5, 9, 17, 3]])

    def decode(threshold):
        return refusion.generate(llama, NoEosTokenizer(), prompt, decoder="fast-dllm", max_new_tokens=12, block_length=4,
                                 threshold=threshold, trace=True)

    one_by_one, all_at_once = decode(1.0), decode(0.0)
    assert one_by_one.forward_passes == 12 and all(len(p) == 1 for p in commits(one_by_one))
    assert all_at_once.forward_passes == 3 and commits(all_at_once) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert decode(1.0).tokens == one_by_one.tokens  # greedy is deterministic
    assert 63 not in one_by_one.tokens + all_at_once.tokens
