"""Decoders on tiny random Qwen3 and Llama models: exact caches, determinism, AR = transformers."""

import pytest
import torch

import refusion
from refusion import kv_cache
from refusion.decoding import plan_infill
from tests.tiny_models import char_tokenizer, tiny_model, tiny_model_with_mask

MASK_ID = 127


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def prompt_ids(tokenizer):
    return refusion.encode_prompt(tokenizer, "Add 2 and 3.")



# Low thresholds on a random model: several slots per plan, partial acceptance and completion rounds.
# rides="always": forward counts that do not hang on how fast this machine runs each width.
LOOSE = dict(max_new_tokens=32, slot_size=4, blocks=2, slot_threshold=0.012, token_threshold=0.012, rides="always")


def fresh_cache(model, tokens, positions):
    cache = kv_cache.new_cache()
    with torch.no_grad():
        model(input_ids=torch.tensor([tokens]), position_ids=torch.tensor([positions]), past_key_values=cache, use_cache=True)
    return cache


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_recompute_cache_equals_a_fresh_causal_forward_over_the_decode_order(kind, tokenizer):
    model = tiny_model_with_mask(kind)
    result = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv="recompute", trace=True, return_state=True, **LOOSE)
    events = {event["event"] for event in result.trace}
    assert {"plan", "commit", "round"} <= events, "the settings must drive parallel completion"
    state = result.state
    assert sorted(state.decode_order_positions) == list(range(len(state.decode_order_positions)))
    assert state.decode_order_positions != sorted(state.decode_order_positions), "slots were committed out of order"
    expected = fresh_cache(model, state.decode_order_tokens, state.decode_order_positions)
    for (keys, values), (want_keys, want_values) in zip(kv_cache.layer_tensors(state.cache), kv_cache.layer_tensors(expected)):
        torch.testing.assert_close(keys, want_keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values, want_values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_exact_kv_makes_recomputes_choices_and_cache_without_its_extra_forwards(kind, tokenizer):
    model = tiny_model_with_mask(kind)
    recompute = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv="recompute", trace=True, **LOOSE)
    exact = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv="exact", trace=True, return_state=True, **LOOSE)
    assert exact.tokens == recompute.tokens
    completions = sum(1 for event in recompute.trace if event["event"] == "commit" and event["phase"] == "complete")
    # No recompute forward, and no round whose outcome is known (its KV would be recomputed anyway).
    assert completions > 0 and exact.forward_passes < recompute.forward_passes - completions
    state = exact.state
    covered = state.cached
    expected = fresh_cache(model, state.decode_order_tokens[:covered], state.decode_order_positions[:covered])
    for (keys, values), (want_keys, want_values) in zip(kv_cache.layer_tensors(state.cache), kv_cache.layer_tensors(expected)):
        torch.testing.assert_close(keys, want_keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(values, want_values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_reuse_keeps_one_cache_entry_per_decoded_token_and_exact_prompt_kv(kind, tokenizer):
    model = tiny_model_with_mask(kind)
    result = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv="reuse", return_state=True, **LOOSE)
    state = result.state
    assert kv_cache.length(state.cache) == len(state.decode_order_tokens)
    prompt_len = result.prompt_tokens
    expected = fresh_cache(model, state.decode_order_tokens[:prompt_len], list(range(prompt_len)))
    for (keys, _), (want, _) in zip(kv_cache.layer_tensors(state.cache), kv_cache.layer_tensors(expected)):
        torch.testing.assert_close(keys[..., :prompt_len, :], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("kv", ["reuse", "recompute"])
def test_outputs_hold_no_mask_and_greedy_is_deterministic(kind, kv, tokenizer):
    model = tiny_model_with_mask(kind)
    first = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv=kv, **LOOSE)
    second = refusion.generate(model, tokenizer, prompt_ids(tokenizer), kv=kv, **LOOSE)
    assert first.tokens == second.tokens and first.forward_passes == second.forward_passes
    assert MASK_ID not in first.tokens
    assert len(first.tokens) == 32


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_plans_riding_completion_rounds_make_the_choices_of_plan_forwards_of_their_own(kind, temperature, tokenizer,
                                                                                        monkeypatch):
    model = tiny_model_with_mask(kind)
    options = dict(LOOSE, temperature=temperature, seed=3, trace=True)
    riding = refusion.generate(model, tokenizer, prompt_ids(tokenizer), **options)
    priced = refusion.generate(model, tokenizer, prompt_ids(tokenizer), **dict(options, rides="auto"))
    monkeypatch.setattr(plan_infill, "may_be_last", lambda *args: False)  # every plan gets its own forward
    separate = refusion.generate(model, tokenizer, prompt_ids(tokenizer), **options)
    assert riding.tokens == priced.tokens == separate.tokens
    decisions = [[e for e in run.trace if e["event"] != "round"] for run in (riding, priced, separate)]
    assert decisions[0] == decisions[1] == decisions[2]
    assert riding.forward_passes < separate.forward_passes, "the settings must drive a plan onto a completion round"


def test_sampling_is_reproducible_with_a_seed(tokenizer):
    model = tiny_model_with_mask("llama")
    runs = [refusion.generate(model, tokenizer, prompt_ids(tokenizer), temperature=1.0, seed=seed, **LOOSE).tokens
            for seed in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_ar_equals_transformers_greedy_generate(kind, tokenizer):
    model = tiny_model(kind, vocab_size=128)
    ids = prompt_ids(tokenizer)
    ours = refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=24)
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    assert ours.tokens == theirs[0, ids.shape[1]:].tolist()
    assert ours.forward_passes == len(ours.tokens)


def test_refusion_with_one_token_slots_and_zero_thresholds_is_greedy_ar_after_the_first_token(tokenizer):
    """k = 1, B = L: each step plans one slot, verification accepts it: the text is the mask head's greedy."""
    model = tiny_model_with_mask("llama")
    result = refusion.generate(model, tokenizer, prompt_ids(tokenizer), max_new_tokens=8, slot_size=1, blocks=8,
                               slot_threshold=0.0, token_threshold=0.0, trace=True, rides="always")
    assert result.forward_passes == 9  # one plan, then a verify per token carrying the next token's plan
    assert [e["positions"] for e in result.trace if e["event"] == "commit"] == [[i] for i in range(8)]


def test_gumbel_sampling_follows_the_softmax():
    from refusion.decoding.sampling import choose

    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    tokens, probs = choose(logits, 1.0, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(tokens, minlength=3).float() / len(tokens)
    torch.testing.assert_close(frequencies, torch.softmax(logits[0], -1), atol=0.015, rtol=0)
    torch.testing.assert_close(probs, torch.softmax(logits, -1).gather(-1, tokens[:, None])[:, 0])


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_segments_side_by_side_in_one_forward_see_only_the_cache_and_their_own_visible_part(kind):
    """What the 4D segment mask promises: each segment's logits are those of a forward that fed it alone."""
    from refusion.attention import segment_mask

    model = tiny_model(kind, vocab_size=128)
    context = torch.tensor([[5, 6, 7, 8, 9]])
    first, second, third = [20, 21, 22], [30, 31], [40, 41]  # third sees the first two tokens of `first`
    segments = [(3, []), (2, []), (2, [(0, 2)])]
    positions = [[5, 6, 7, 5, 6, 7, 8]]

    def after_context(ids, pos, mask=None):
        cache = kv_cache.new_cache()
        with torch.no_grad():
            model(input_ids=context, past_key_values=cache, use_cache=True)
            return model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), past_key_values=cache,
                         use_cache=True, attention_mask=mask).logits[0]

    together = after_context(first + second + third, positions[0], segment_mask(5, segments, torch.float32))
    torch.testing.assert_close(together[:3], after_context(first, [5, 6, 7]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together[3:5], after_context(second, [5, 6]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(together[5:], after_context(first[:2] + third, [5, 6, 7, 8])[2:], rtol=1e-4, atol=1e-5)
