"""Plan-and-infill against hand-derived expectations (the paper's algorithm, step by step).

Each scenario sets the oracle's confidences so that one branch of the algorithm is taken, and
checks the exact output, the exact number of forwards, the order of commits and the cache.
"""

import pytest
import torch

import refusion
from tests.decoding.oracle import EOS, MASK, PROMPT, PositionOracle, Tokenizer, cached_entries

HIGH, LOW = 0.9, 0.1
P = len(PROMPT)


def run(oracle, **options):
    # rides="always": every forward that may commit all slots carries the next plan, as the counts below assume
    # ("auto" leaves a plan out where its chance does not pay for its width: tested on its own).
    options = {"decoder": "refusion", "trace": True, "return_state": True, "rides": "always", **options}
    return refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), **options)


def commits(result):
    return [(event["phase"], event["positions"]) for event in result.trace if event["event"] == "commit"]


def fed(call) -> list[tuple[int, int]]:
    """(token, position) of everything a forward fed, whatever its layout (rows of a batch or one sequence)."""
    return sorted((t, p) for ids, pos in zip(call.input_ids, call.position_ids) for t, p in zip(ids, pos))


def at(tokens, start) -> list[tuple[int, int]]:
    return [(t, start + i) for i, t in enumerate(tokens)]


def plans(result):
    return [(event["slots"], event["selected"]) for event in result.trace if event["event"] == "plan"]


def test_all_planned_slots_accepted_by_global_verification():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4)
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    assert result.forward_passes == 2  # one plan, one verify
    assert plans(result) == [([0, 2], [0, 2])]
    assert commits(result) == [("verify", [0, 1, 2, 3])]
    # First pass: prompt and masks together, each at its true position.
    assert oracle.calls[0].input_ids == [PROMPT + [MASK] * 4]
    assert oracle.calls[0].position_ids == [[0, 1, 2, 3, 4, 5, 6]]
    # Verify pass feeds the drafts after the prompt's cache (the masks' KV was discarded), then each
    # slot's first completion draft, unused when the drafts pass: slot 0's is a mask that sees its first
    # draft in the verification; slot 1's repeats its first token (there it sees slot 0), then a mask.
    assert oracle.calls[1].past_length == P and oracle.calls[1].input_ids == [draft + [MASK, 13, MASK]]
    assert oracle.calls[1].position_ids == [[P, P + 1, P + 2, P + 3, P + 1, P + 2, P + 3]]
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]
    assert result.finish_reason == "length"


def test_partial_acceptance_commits_whole_leading_slots_then_completes_the_rest():
    draft = [11, 12, 13, 14]
    # Token at offset 3 fails verification: the prefix covers slot 0 and the start of slot 1.
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH, HIGH, HIGH, LOW])
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    # plan+verify (commit slot 0); plan+verify (slot 1 fails again; its first draft computed beside
    # the verification); one verify round. (Was 6 forwards: the draft had a forward of its own.)
    assert result.forward_passes == 5
    assert commits(result) == [("verify", [0, 1]), ("complete", [2, 3])]
    assert plans(result) == [([0, 2], [0, 2]), ([2], [2])]
    assert oracle.calls[3].input_ids == [[13, 14, MASK]]  # slot 1's drafts, then its draft row: a mask after 13
    assert oracle.calls[3].position_ids == [[5, 6, 6]]
    assert oracle.calls[4].input_ids == [[13, 14]]
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]


def test_parallel_completion_of_several_slots_in_one_round():
    draft = [11, 12, 13, 14, 15, 16, 17, 18]
    # Slot 0 fails at offset 2, slot 1 at offset 5: no whole slot passes global verification.
    ar = [HIGH, HIGH, LOW, HIGH, HIGH, LOW, HIGH, HIGH]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=ar)
    result = run(oracle, max_new_tokens=8, slot_size=4, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    # plan, global verify (carrying each slot's first draft for every acceptance), one parallel verify.
    assert result.forward_passes == 3
    draft_call, verify_call = oracle.calls[1], oracle.calls[2]
    # Each slot keeps its own accepted prefix and masks the rest, drafted on the one shared cache.
    assert set(at([11, 12, MASK, MASK], P) + at([15, MASK, MASK, MASK], P + 4)) <= set(fed(draft_call))
    assert draft_call.past_length == P and verify_call.past_length == P
    assert set(at([11, 12, 13, 14], P) + at([15, 16, 17, 18], P + 4)) <= set(fed(verify_call))
    assert commits(result) == [("complete", list(range(8)))]
    assert [e["accepted"] for e in result.trace if e["event"] == "round"] == [[4, 4]]
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]


def test_slot_already_accepted_in_verification_only_needs_its_own_kv():
    draft = [11, 12, 13, 14, 15, 16, 17, 18]
    ar = [HIGH, HIGH, LOW, HIGH, HIGH, HIGH, HIGH, HIGH]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=ar)
    result = run(oracle, max_new_tokens=8, slot_size=4, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.forward_passes == 3
    # Slot 0's draft comes with the global verification; then slot 0 is verified and slot 1 (already
    # accepted) is fed alone for its own KV, in one forward.
    assert set(at([11, 12, MASK, MASK], P)) <= set(fed(oracle.calls[1]))
    assert set(at([11, 12, 13, 14], P) + at([15, 16, 17, 18], P + 4)) <= set(fed(oracle.calls[2]))
    recompute = run(PositionOracle(draft, [HIGH] * 8, ar), max_new_tokens=8, slot_size=4, blocks=1,
                    slot_threshold=0.5, token_threshold=0.5, kv="recompute")
    assert recompute.tokens == result.tokens
    assert recompute.forward_passes == 4  # the same, then one causal recompute
    assert cached_entries(recompute.state.cache) == cached_entries(result.state.cache)


def test_iterative_completion_gains_one_token_per_round_when_nothing_passes():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH, LOW, LOW, LOW])
    result = run(oracle, max_new_tokens=4, slot_size=4, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    # plan, verify (carrying the first draft), then three verifies; each carries the next round's draft
    # for every outcome it could have, so a round costs one forward instead of two (was 2 + 2 * 3).
    assert result.forward_passes == 2 + 3
    assert [e["accepted"] for e in result.trace if e["event"] == "round"] == [[2], [3], [4]]


def test_no_slot_above_threshold_selects_the_single_best_in_confidence_order():
    draft = [11, 12, 13, 14, 15, 16]
    oracle = PositionOracle(draft, mask_conf=[0.3, HIGH, 0.5, HIGH, 0.4, HIGH], ar_conf=[HIGH] * 6)
    result = run(oracle, max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.6, token_threshold=0.5)
    assert result.tokens == draft
    assert plans(result) == [([0, 2, 4], [2]), ([0, 4], [4]), ([0], [0])]
    assert result.forward_passes == 4  # plan, then three verifies; each of the first two carries the next plan
    # The cache holds slots in the order they were written, each at its true position.
    order = [(13, 5), (14, 6), (15, 7), (16, 8), (11, 3), (12, 4)]
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT)] + order


def test_blocks_are_decoded_one_after_another():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4)
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    assert plans(result) == [([0], [0]), ([2], [2])]
    assert result.forward_passes == 3  # block 1's plan rides along block 0's verification
    assert oracle.calls[1].input_ids[0][:4] == [11, 12, MASK, MASK] and oracle.calls[1].position_ids[0][:4] == [3, 4, 5, 6]


def test_eos_in_global_verification_ends_the_text():
    draft = [11, 12, 13, EOS, 15, 16]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 6, ar_conf=[HIGH] * 6)
    result = run(oracle, max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == [11, 12, 13, EOS]
    assert result.finish_reason == "stop"
    assert result.forward_passes == 2
    assert commits(result) == [("verify", [0, 1, 2, 3])]
    assert len(cached_entries(result.state.cache)) == P + 4


def test_eos_ahead_of_a_masked_slot_finishes_the_gap_before_it():
    draft = [11, 12, 13, EOS, 15, 16]
    oracle = PositionOracle(draft, mask_conf=[0.3, HIGH, HIGH, HIGH, HIGH, HIGH], ar_conf=[HIGH] * 6)
    result = run(oracle, max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.6, token_threshold=0.5)
    assert plans(result) == [([0, 2, 4], [2, 4]), ([0], [0])]  # slot 4 is dropped, slot 0 still decoded
    assert result.tokens == [11, 12, 13, EOS]
    assert result.forward_passes == 4


def test_eos_drops_a_slot_that_was_committed_further_ahead_and_its_kv():
    draft = [11, 12, 13, EOS, 15, 16]
    oracle = PositionOracle(draft, mask_conf=[0.3, HIGH, 0.5, HIGH, HIGH, HIGH], ar_conf=[HIGH] * 6)
    result = run(oracle, max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.6, token_threshold=0.5)
    assert plans(result) == [([0, 2, 4], [4]), ([0, 2], [2]), ([0], [0])]
    assert [e["positions"] for e in result.trace if e["event"] == "drop"] == [[4, 5]]
    assert result.tokens == [11, 12, 13, EOS]
    assert result.forward_passes == 5  # the second plan rides along the first verification
    assert cached_entries(result.state.cache)[P:] == [(13, 5), (EOS, 6), (11, 3), (12, 4)]


def test_eos_found_during_parallel_completion_truncates_and_drops_later_slots():
    draft = [11, 12, EOS, 14, 15, 16, 17, 18]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=[HIGH, LOW] + [HIGH] * 6)
    result = run(oracle, max_new_tokens=8, slot_size=4, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    # Block 0 only: slot 0 completes with EOS inside; block 1 is never started.
    assert result.tokens == [11, 12, EOS]
    assert result.forward_passes == 3
    assert commits(result) == [("complete", [0, 1, 2])]
    assert len(cached_entries(result.state.cache)) == P + 3


def test_generation_length_is_rounded_up_and_output_cut_to_the_budget():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4)
    result = run(oracle, max_new_tokens=3, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == [11, 12, 13]
    assert result.settings["generation_length"] == 4


def test_autoregressive_decoder_on_the_oracle():
    draft = [11, 12, EOS, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4)
    result = refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), decoder="ar", max_new_tokens=4)
    assert result.tokens == [11, 12, EOS]
    assert result.forward_passes == 3
    assert [c.input_ids for c in oracle.calls] == [[PROMPT], [[11]], [[12]]]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"slot_threshold": 1.5}, "slot-threshold must lie in [0, 1]"),
        ({"token_threshold": -0.1}, "token-threshold must lie in [0, 1]"),
        ({"slot_size": 4, "blocks": 3, "max_new_tokens": 8}, "must split into 3 blocks"),
        ({"decoder": "nope"}, "unknown decoder"),
        ({"kv": "keep"}, "kv must be"),
        ({"decoder": "ar", "slot_size": 4}, "does not take slot_size"),
    ],
)
def test_bad_settings_are_refused(options, message):
    oracle = PositionOracle([11] * 8, [HIGH] * 8, [HIGH] * 8)
    options = {"max_new_tokens": 8, **options}
    with pytest.raises(refusion.RefusionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), **options)


def test_model_without_mask_token_is_refused_for_refusion():
    oracle = PositionOracle([11] * 4, [HIGH] * 4, [HIGH] * 4)
    oracle.config.mask_token_id = None
    with pytest.raises(refusion.RefusionError, match="needs a model trained with a <\\|mask\\|> token"):
        refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), max_new_tokens=4)


def test_an_earlier_slot_finding_eos_later_ends_the_text_before_a_later_slots_eos():
    draft = [11, 12, EOS, 14, 15, EOS, 17, 18]
    # Slot 1 accepts its EOS at once; slot 0 reaches its own EOS only in the second round.
    ar = [HIGH, LOW, LOW, HIGH, HIGH, HIGH, HIGH, HIGH]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=ar)
    result = run(oracle, max_new_tokens=8, slot_size=4, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == [11, 12, EOS]
    assert result.forward_passes == 4  # plan, verify (carrying the first draft), two verifies (each carrying the next)
    assert commits(result) == [("complete", [0, 1, 2])]
    assert cached_entries(result.state.cache)[P:] == [(11, 3), (12, 4), (EOS, 5)]


# --- one forward does the work of two, with the same choices -------------------------------------


def test_a_plan_rides_along_a_verification_that_commits_every_draft():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4)
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    assert plans(result) == [([0], [0]), ([2], [2])]  # the same choices as separate plan forwards make
    assert result.tokens == draft
    # plan block 0; verify block 0 with block 1's masks after the drafts; verify block 1. (Was 4 forwards.)
    assert result.forward_passes == 3
    assert oracle.calls[1].input_ids[0][:4] == [11, 12, MASK, MASK]
    assert oracle.calls[1].position_ids[0][:4] == [P, P + 1, P + 2, P + 3]
    assert oracle.calls[2].input_ids[0][:2] == [13, 14] and oracle.calls[2].past_length == P + 2
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]  # masks' KV cut


def test_a_plan_riding_a_verification_that_fails_is_discarded():
    draft = [11, 12, 13, 14, 15, 16]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 6, ar_conf=[HIGH, LOW, LOW] + [HIGH] * 3)
    result = run(oracle, max_new_tokens=6, slot_size=3, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    assert plans(result) == [([0], [0]), ([3], [3])]  # the same choices as plan forwards of their own
    # Slot 0 fails at offset 1, so block 1's masks riding the verification are dropped. They ride its
    # first verify round too, dropped again (offset 2 fails), then its second, which finishes it.
    # plan, verify, two verify rounds (each carrying block 1's plan), verify block 1. (Was 6 forwards.)
    assert result.forward_passes == 5
    block_1_masks = set(at([MASK] * 3, P + 3))
    assert block_1_masks <= set(fed(oracle.calls[2])) and block_1_masks <= set(fed(oracle.calls[3]))
    assert oracle.calls[4].input_ids[0][:3] == [14, 15, 16] and oracle.calls[4].past_length == P + 3


def test_a_plan_rides_the_completion_round_that_commits_every_slot():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH, LOW, HIGH, HIGH])
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    assert result.tokens == draft
    assert plans(result) == [([0], [0]), ([2], [2])]  # the same choices as a plan forward of its own
    # Slot 0 fails at offset 1: its verify round feeds [11, 12] and block 1's masks after it, seeing it
    # as the cache will hold it (kv="reuse"). plan, verify, verify round + plan, verify block 1. (Was 5.)
    assert result.forward_passes == 4
    assert set(at([11, 12, MASK, MASK], P)) <= set(fed(oracle.calls[2]))
    assert oracle.calls[3].input_ids[0][:2] == [13, 14] and oracle.calls[3].past_length == P + 2
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]


def test_auto_rides_leave_out_a_plan_whose_chance_does_not_pay_for_its_width():
    draft = [11, 12, 13, 14, 15, 16, 17, 18, 11, 12, 13, 14]
    # Block of three 4-token slots, planned one at a time. Slot 0 fails at offset 1 in the global
    # verification and needs 3 more tokens in its round; the slots after it pass at once.
    mask_conf = [HIGH] * 4 + [0.5] * 4 + [LOW] * 4
    ar_conf = [HIGH, LOW, HIGH, HIGH] + [HIGH] * 8
    options = dict(max_new_tokens=12, slot_size=4, blocks=1, slot_threshold=0.6, token_threshold=0.5)
    always = run(PositionOracle(draft, mask_conf=mask_conf, ar_conf=ar_conf), rides="always", **options)
    auto = run(PositionOracle(draft, mask_conf=mask_conf, ar_conf=ar_conf), rides="auto", **options)
    assert always.tokens == auto.tokens == draft and plans(always) == plans(auto) == [([0, 4, 8], [0]), ([4, 8], [4]),
                                                                                    ([8], [8])]
    # always: plan, verify slot 0 + plan, its round + plan, verify slot 1 + plan, verify slot 2.
    # auto (a stand-in's forward costs 2% more per token fed): the first verification (prior chance 0.1), a
    # round that needs 3 tokens (0.05) and a verification after one that failed (0.03) cost more in width than
    # their plan would save, so each plan after the first is a forward of its own: plan, verify slot 0, its
    # round, plan, verify slot 1, plan, verify slot 2.
    assert (always.forward_passes, auto.forward_passes) == (5, 7)
    assert always.settings["rides"] == "always" and auto.settings["rides"] == "auto"


def test_auto_rides_carry_a_plan_where_its_chance_pays():
    draft = [11, 12, 13, 14, 15, 16, 17, 18]
    options = dict(max_new_tokens=8, slot_size=2, blocks=4, slot_threshold=0.5, token_threshold=0.5)
    # Every verification commits its slot, and its chance (0.1 first, then 0.8 after one that committed
    # everything) pays for the next block's two masks (4% of a forward here).
    auto = run(PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=[HIGH] * 8), rides="auto", **options)
    assert auto.tokens == draft and plans(auto) == [([0], [0]), ([2], [2]), ([4], [4]), ([6], [6])]
    assert auto.forward_passes == 5  # plan, then four verifications, each of the first three carrying the next plan


def test_exact_kv_feeds_no_round_whose_outcome_is_known():
    draft = [11, 12, 13, 14]
    options = dict(max_new_tokens=4, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    # Both slots fail at their second token; each draft's last token passes as drafted, so only reuse
    # needs the round (for the slots' KV).
    ar = [HIGH, LOW, HIGH, LOW]
    reuse = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=ar), kv="reuse", **options)
    exact = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=ar), kv="exact", **options)
    assert reuse.tokens == exact.tokens == draft
    assert (reuse.forward_passes, exact.forward_passes) == (3, 2)
    assert commits(exact) == commits(reuse) == [("complete", [0, 1, 2, 3])]


def test_exact_kv_rides_the_committed_tokens_along_the_next_plan():
    draft = [11, 12, 13, 14, 15, 16, 17, 18]
    ar = [HIGH, LOW, HIGH, HIGH, HIGH, HIGH, HIGH, HIGH]  # slot 0 of block 0 fails at offset 1; slot 1 passes
    options = dict(max_new_tokens=8, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    exact = run(PositionOracle(draft, [HIGH] * 8, ar), kv="exact", **options)
    recompute = run(PositionOracle(draft, [HIGH] * 8, ar), kv="recompute", **options)
    reuse_oracle = PositionOracle(draft, [HIGH] * 8, ar)
    reuse = run(reuse_oracle, kv="reuse", **options)
    assert exact.tokens == recompute.tokens == reuse.tokens == draft
    assert plans(exact) == plans(recompute)
    # recompute: plan, verify, verify round, recompute, plan, verify; exact drops the recompute; reuse
    # feeds slot 1 beside slot 0's verify round for its own KV.
    assert (recompute.forward_passes, exact.forward_passes, reuse.forward_passes) == (6, 5, 5)
    exact_oracle = PositionOracle(draft, [HIGH] * 8, ar)
    run(exact_oracle, kv="exact", **options)
    block_1_plan = exact_oracle.calls[3]
    assert block_1_plan.input_ids == [[11, 12, 13, 14, MASK, MASK, MASK, MASK]]  # committed slot first, then masks
    assert block_1_plan.position_ids == [list(range(P, P + 8))]
    # The cache is the causal cache of the decode order, as recompute's, at reuse's forward count.
    assert cached_entries(exact.state.cache) == cached_entries(recompute.state.cache)


def test_exact_kv_leaves_tokens_committed_last_out_of_the_cache():
    draft = [11, 12, 13, 14]
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH, LOW, HIGH, HIGH])
    result = run(oracle, max_new_tokens=4, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5, kv="exact")
    assert result.tokens == draft and commits(result) == [("complete", [0, 1, 2, 3])]
    assert result.state.cached == P  # nothing after them needs their KV, so no forward computes it
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT)]


def test_exact_kv_keeps_a_lone_slots_own_kv_which_is_causal():
    draft = [11, 12, 13, 14]
    options = dict(max_new_tokens=4, slot_size=2, blocks=2, slot_threshold=0.5, token_threshold=0.5)
    ar = [HIGH, LOW, HIGH, HIGH]  # block 0's one slot fails at offset 1
    exact = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=ar), kv="exact", **options)
    reuse = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=ar), kv="reuse", **options)
    recompute = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=ar), kv="recompute", **options)
    assert exact.tokens == reuse.tokens == recompute.tokens == draft
    # Its verify round saw the cache and itself, as a causal forward does: exact keeps that KV, and block 1's
    # plan rides the round, as with reuse. plan, verify, verify round + plan, verify block 1.
    assert (exact.forward_passes, reuse.forward_passes, recompute.forward_passes) == (4, 4, 6)
    assert cached_entries(exact.state.cache) == cached_entries(recompute.state.cache)


# --- boundary="check": adjacent slots -------------------------------------------------------------
# The AR head disagrees with the drafted first token of the second slot (offset 2, or 4), given the
# first slot's draft: with the paper's "free" that token is accepted as drafted; with "check" the
# second slot waits for a later step, planned again with the first slot committed before it.


def test_a_checked_boundary_that_fails_leaves_the_later_slot_for_the_next_step():
    draft = [11, 12, 13, 14]
    ar_token = [11, 12, 9, 14]  # after 12, the AR head expects 9, not the drafted 13
    options = dict(max_new_tokens=4, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    free = run(PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4, ar_token=ar_token), **options)
    assert commits(free) == [("verify", [0, 1, 2, 3])] and free.forward_passes == 2
    oracle = PositionOracle(draft, mask_conf=[HIGH] * 4, ar_conf=[HIGH] * 4, ar_token=ar_token)
    checked = run(oracle, boundary="check", **options)
    assert commits(checked) == [("verify", [0, 1]), ("verify", [2, 3])]
    assert plans(checked) == [([0, 2], [0, 2]), ([2], [2])]
    assert checked.tokens == draft and checked.forward_passes == 4  # no forward of its own for the check
    assert checked.settings["boundary"] == "check" and free.settings["boundary"] == "free"
    assert cached_entries(checked.state.cache) == [(t, p) for p, t in enumerate(PROMPT + draft)]


def test_a_checked_boundary_that_fails_drops_the_later_slot_from_parallel_completion():
    draft = [11, 12, 13, 14, 15, 16, 17, 18]
    ar_conf = [HIGH, HIGH, LOW, HIGH, HIGH, HIGH, HIGH, HIGH]  # slot 0 fails at offset 2: no whole slot passes
    ar_token = [11, 12, 13, 14, 9, 16, 17, 18]  # and slot 1's first token disagrees with slot 0's tail
    options = dict(max_new_tokens=8, slot_size=4, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    free = run(PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=ar_conf, ar_token=ar_token), **options)
    assert commits(free) == [("complete", list(range(8)))]
    checked = run(PositionOracle(draft, mask_conf=[HIGH] * 8, ar_conf=ar_conf, ar_token=ar_token), boundary="check",
                  **options)
    assert commits(checked)[0] == ("complete", [0, 1, 2, 3])  # slot 1 was not completed beside it
    assert plans(checked)[1] == ([4], [4])
    assert sorted(p for _, positions in commits(checked) for p in positions) == list(range(8))


def test_slots_that_are_not_adjacent_are_never_checked():
    draft = [11, 12, 13, 14, 15, 16]
    ar_token = [11, 12, 13, 14, 9, 16]  # offset 4 starts the third slot, which follows an unselected one
    mask_conf = [HIGH, HIGH, LOW, LOW, HIGH, HIGH]  # the middle slot is not selected
    options = dict(max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.5, token_threshold=0.5)
    free = run(PositionOracle(draft, mask_conf=mask_conf, ar_conf=[HIGH] * 6, ar_token=ar_token), **options)
    checked = run(PositionOracle(draft, mask_conf=mask_conf, ar_conf=[HIGH] * 6, ar_token=ar_token), boundary="check",
                  **options)
    assert plans(checked)[0] == ([0, 2, 4], [0, 4])
    assert commits(checked) == commits(free) and checked.tokens == free.tokens
