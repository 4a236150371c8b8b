"""The `mdm` decoder (LLaDA generate, low-confidence remasking) against hand-derived expectations.

A stand-in model fixes, for every generated position, the token predicted at a mask there and its
probability, so the exact unmasking order, the steps and the forwards can be worked out by hand.
A tiny random Llama then checks both attentions against a direct transcription of LLaDA's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import refusion
from refusion import kv_cache
from refusion.decoding.masked_diffusion import steps_per_block, transfer_counts
from refusion.errors import RefusionError
from tests.tiny_models import tiny_model

from tests.decoding.oracle import EOS, MASK, PROMPT, distribution

P = len(PROMPT)


@dataclass
class Call:
    input_ids: list[int]
    position_ids: list[int]
    past_length: int
    attention_mask: torch.Tensor


class ConfidenceModel(nn.Module):
    """At a mask at generated offset j it predicts `tokens[j]` with probability `confidence[j]`.

    Real tokens predict token 0 with probability 0.5. Its cache holds one dummy entry per fed
    token (through `refusion.kv_cache`), and every call is logged.
    """

    def __init__(self, tokens, confidence, objective=None):
        super().__init__()
        self.tokens, self.confidence = tokens, confidence
        self.config = SimpleNamespace(mask_token_id=MASK, max_position_embeddings=512, refusion_objective=objective)
        self.calls: list[Call] = []

    def forward(self, *, input_ids, position_ids, past_key_values, use_cache, attention_mask=None, logits_to_keep=0):
        _, length = input_ids.shape  # [1, S]
        self.calls.append(Call(input_ids[0].tolist(), position_ids[0].tolist(), kv_cache.length(past_key_values), attention_mask))
        logits = torch.stack([
            distribution(self.tokens[p - P], self.confidence[p - P]) if token == MASK else distribution(0, 0.5)
            for token, p in zip(input_ids[0].tolist(), position_ids[0].tolist())
        ]).unsqueeze(0)  # [1, S, V]
        dummy = torch.zeros(1, 1, length, 1)
        kv_cache.append(past_key_values, [(dummy, dummy)])
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class Tokenizer:
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def run(model, decoder="mdm", **options):
    return refusion.generate(model, Tokenizer(), torch.tensor([PROMPT]), decoder=decoder, trace=True, **options)


def commits(result):
    return [event["positions"] for event in result.trace if event["event"] == "commit"]


def test_transfer_counts_match_llada():
    # LLaDA's get_num_transfer_tokens: base = masked // steps, the first (masked % steps) get one more.
    assert transfer_counts(10, 4) == [3, 3, 2, 2]
    assert transfer_counts(4, 4) == [1, 1, 1, 1]
    assert transfer_counts(5, 1) == [5]


def test_steps_split_evenly_over_equal_blocks_and_proportionally_otherwise():
    assert steps_per_block(8, [(0, 4), (4, 8)]) == [4, 4]
    assert steps_per_block(4, [(0, 4), (4, 8)]) == [2, 2]
    assert steps_per_block(10, [(0, 8), (8, 10)]) == [8, 2]  # 10 * 8/10 = 8, the rest 2


def test_one_token_per_step_in_order_of_confidence():
    model = ConfidenceModel([11, 12, 13, 14], [0.3, 0.9, 0.5, 0.7])
    result = run(model, max_new_tokens=4, block_length=4)
    assert result.tokens == [11, 12, 13, 14]
    assert commits(result) == [[1], [3], [2], [0]]
    assert result.forward_passes == 4 == len(model.calls)
    # Every step sees the whole generation, the unmasked tokens in place; a causal model's prompt, which never
    # sees what follows it, is fed once and cached.
    assert [call.input_ids for call in model.calls] == [
        PROMPT + [MASK, MASK, MASK, MASK],
        [MASK, 12, MASK, MASK],
        [MASK, 12, MASK, 14],
        [MASK, 12, 13, 14],
    ]
    assert model.calls[0].position_ids == list(range(P + 4)) and model.calls[0].past_length == 0
    assert all(call.position_ids == list(range(P, P + 4)) and call.past_length == P for call in model.calls[1:])
    assert result.settings["steps"] == 4 and result.finish_reason == "length"


def test_a_bidirectional_model_sees_the_whole_sequence_at_every_step():
    model = ConfidenceModel([11, 12, 13], [0.3, 0.9, 0.5], objective="mdm")
    run(model, max_new_tokens=3, block_length=3)
    assert [call.input_ids for call in model.calls] == [
        PROMPT + [MASK, MASK, MASK],
        PROMPT + [MASK, 12, MASK],
        PROMPT + [MASK, 12, 13],
    ]
    assert all(call.position_ids == list(range(P + 3)) and call.past_length == 0 for call in model.calls)


def test_fewer_steps_unmask_the_most_confident_few_per_step():
    model = ConfidenceModel([11, 12, 13, 14, 15], [0.3, 0.9, 0.5, 0.7, 0.2])
    result = run(model, max_new_tokens=5, block_length=5, steps=2)
    assert commits(result) == [[1, 2, 3], [0, 4]]  # counts 3 then 2
    assert result.forward_passes == 2
    assert result.tokens == [11, 12, 13, 14, 15]


def test_blocks_are_decoded_left_to_right_whatever_the_confidence_later():
    model = ConfidenceModel([11, 12, 13, 14], [0.3, 0.5, 0.9, 0.95])
    result = run(model, max_new_tokens=4, block_length=2, steps=4)
    assert commits(result) == [[1], [0], [3], [2]]
    plans = [(e["block"], e["slots"]) for e in result.trace if e["event"] == "plan"]
    assert plans == [(0, [0, 1]), (0, [0]), (1, [2, 3]), (1, [2])]


def test_shorter_last_block():
    model = ConfidenceModel([11, 12, 13], [0.3, 0.5, 0.9])
    result = run(model, max_new_tokens=3, block_length=2)
    assert commits(result) == [[1], [0], [2]]
    assert result.forward_passes == 3


def test_stops_after_the_block_holding_an_eos_and_ends_the_text_there():
    model = ConfidenceModel([11, EOS, 13, 14, 15, 16], [0.3, 0.9, 0.8, 0.7, 0.6, 0.5])
    result = run(model, max_new_tokens=6, block_length=4)
    # Block 0 (offsets 0-3) runs its 4 steps: EOS, 13, 14, then 11; block 1 is never run.
    assert commits(result) == [[1], [2], [3], [0]]
    assert result.forward_passes == 4
    assert result.tokens == [11, EOS] and result.finish_reason == "stop"
    assert result.trace[-1] == {"event": "drop", "step": 4, "positions": [2, 3]}


def test_causal_by_default_bidirectional_for_mdm_trained_models():
    causal = ConfidenceModel([11, 12], [0.9, 0.8])
    run(causal, max_new_tokens=2)
    assert causal.calls[0].attention_mask is None  # the model's own causal mask
    bidirectional = ConfidenceModel([11, 12], [0.9, 0.8], objective="mdm")
    result = run(bidirectional, max_new_tokens=2)
    mask = bidirectional.calls[0].attention_mask
    assert mask.shape == (1, 1, P + 2, P + 2) and mask.is_floating_point() and not mask.any()
    assert result.settings["attention"] == "bidirectional"


@pytest.mark.parametrize("options, message", [
    ({"steps": 1}, "between the number of blocks (2)"),
    ({"steps": 9}, "and max-new-tokens (8)"),
    ({"block_length": 0}, "block-length must be a positive integer"),
    ({"slot_size": 4}, "does not take slot_size"),
    ({"threshold": 0.5}, "does not take threshold"),
])
def test_bad_options_are_one_line_errors(options, message):
    model = ConfidenceModel([11] * 8, [0.5] * 8)
    with pytest.raises(RefusionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(model, max_new_tokens=8, **{"block_length": 4, **options})


# --- a tiny random Llama ---------------------------------------------------------------------------


class NoEosTokenizer:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return ""


@pytest.fixture(scope="module")
def llama():
    model = tiny_model("llama", vocab_size=64, seed=1)
    model.config.mask_token_id = 63
    model.generation_config.eos_token_id = None  # no early stop: every position gets decoded
    return model


def llada_reference(model, prompt, length, block_length, steps, bidirectional):
    """LLaDA's `generate` (low-confidence remasking, greedy), transcribed; the mask is never predicted."""
    mask_id, total = model.config.mask_token_id, prompt.shape[1] + length
    x = torch.cat([prompt, torch.full((1, length), mask_id)], dim=1)
    attention = torch.zeros(1, 1, total, total) if bidirectional else None
    per_block = steps // (length // block_length)
    for start in range(prompt.shape[1], total, block_length):
        block_masks = (x[:, start : start + block_length] == mask_id).sum()
        counts = transfer_counts(int(block_masks), per_block)
        for count in counts:
            with torch.no_grad():
                logits = model(input_ids=x, attention_mask=attention).logits
            logits[..., mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            confidence = torch.softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
            confidence[:, start + block_length :] = float("-inf")
            confidence = torch.where(x == mask_id, confidence, float("-inf"))
            chosen = confidence[0].topk(count).indices
            x[0, chosen] = x0[0, chosen]
    return x[0, prompt.shape[1] :].tolist()


@pytest.mark.parametrize("objective", [None, "mdm"])
def test_tiny_llama_matches_llada_reference(llama, objective):
    llama.config.refusion_objective = objective
    prompt = torch.tensor([[5, 9, 17, 3]])
    result = refusion.generate(llama, NoEosTokenizer(), prompt, decoder="mdm", max_new_tokens=12, block_length=4, steps=6)
    assert result.tokens == llada_reference(llama, prompt, 12, 4, 6, bidirectional=objective == "mdm")
    assert 63 not in result.tokens and len(result.tokens) == 12
    assert result.forward_passes == 6


def test_tiny_llama_attention_changes_the_output(llama):
    prompt = torch.tensor([[5, 9, 17, 3]])
    outputs = {}
    for objective in (None, "mdm"):
        llama.config.refusion_objective = objective
        outputs[objective] = refusion.generate(llama, NoEosTokenizer(), prompt, decoder="mdm", max_new_tokens=8).tokens
    assert outputs[None] != outputs["mdm"]


def test_tiny_llama_sampling_is_seeded(llama):
    llama.config.refusion_objective = "mdm"
    prompt = torch.tensor([[5, 9, 17, 3]])
    runs = [refusion.generate(llama, NoEosTokenizer(), prompt, decoder="mdm", max_new_tokens=8, temperature=1.0, seed=s).tokens
            for s in (0, 0, 1)]
    assert runs[0] == runs[1] and 63 not in runs[0]
    assert runs[0] != runs[2]
