"""A generation's work is bounded by its token budget, whatever its other options, and it stops promptly when asked."""

import pytest

import refusion
from tests.tiny_models import tiny_mask_model

# Options that size work, at values far beyond a 2-token budget.
OVERSIZED = [
    ("refusion", {"slot_size": 4096}),
    ("refusion", {"slot_size": 4096, "blocks": 1}),
    ("refusion", {"slot_size": 1024, "slot_threshold": 0.0, "token_threshold": 1.0}),
    ("refusion", {"slot_size": 1024, "kv": "recompute"}),
    ("mdm", {"block_length": 10**6}),
    ("fast-dllm", {"block_length": 10**6, "threshold": 1.0}),
    ("lossless", {"max_branches": 64, "max_depth": 16}),
    ("lossless", {"branches": 64, "depth": 16, "max_branches": 64, "max_depth": 16}),
    ("ar", {}),
]
ALL_DECODERS = ["refusion", "lossless", "ar", "mdm", "fast-dllm"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_mask_model(max_position_embeddings=8192)


@pytest.mark.parametrize("decoder,options", OVERSIZED)
@pytest.mark.parametrize("budget", [1, 2, 5])
def test_oversized_options_cost_no_more_than_the_budget(model_and_tokenizer, decoder, options, budget):
    model, tokenizer = model_and_tokenizer
    prompt = refusion.encode_prompt(tokenizer, "Add 2 and 3.")
    result = refusion.generate(model, tokenizer, prompt, decoder=decoder, max_new_tokens=budget, **options)
    assert len(result.tokens) <= budget
    # At most a plan and a verify (or recompute) per token; none wider than the prompt plus a fixed tree of drafts.
    assert result.forward_passes <= 2 * budget + 1
    assert max(result.forward_profile) <= prompt.shape[1] + 200


def test_a_slot_longer_than_the_budget_is_cut_to_it_and_says_so(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = refusion.encode_prompt(tokenizer, "hi")
    result = refusion.generate(model, tokenizer, prompt, decoder="refusion", max_new_tokens=3, slot_size=1024)
    assert result.settings["slot_size"] == 3
    assert result.settings["generation_length"] == 3


@pytest.mark.parametrize("decoder", ALL_DECODERS)
def test_a_cancelled_generation_stops_at_the_next_step(model_and_tokenizer, decoder):
    model, tokenizer = model_and_tokenizer
    prompt = refusion.encode_prompt(tokenizer, "Add 2 and 3.")
    asked = []

    def cancel_after_one_step() -> bool:
        asked.append(True)
        return len(asked) > 1

    result = refusion.generate(model, tokenizer, prompt, decoder=decoder, max_new_tokens=64, should_stop=cancel_after_one_step)
    assert result.finish_reason == "cancelled"
    assert result.forward_passes <= 4
