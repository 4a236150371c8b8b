"""The lossless decoder against hand-derived expectations, and against `ar` on tiny real models.

On the position oracle the AR head's token at offset j is `ar_token[j]` and a mask at offset j
predicts `draft[j]`, whatever the context; so which candidates are accepted, and hence every
forward, can be derived by hand. Forward 1 feeds the prompt and the root masks; each later forward
feeds the pending token, the root masks, the candidate chain and masks after each chain token.
"""

import collections

import pytest
import torch

import refusion
from refusion import kv_cache
from refusion.decoding import lossless, runner
from refusion.decoding.draft_table import DraftTable
from tests.decoding.oracle import EOS, MASK, PROMPT, VOCAB, PositionOracle, Tokenizer, cached_entries
from tests.tiny_models import char_tokenizer, tiny_model

P = len(PROMPT)
DRAFT = [11, 12, 13, 14, 15, 16, 17, 18]
M = MASK


def run(oracle, **options):
    options = {"decoder": "lossless", "branches": 1, "depth": 2, "trace": True, "return_state": True, **options}
    return refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), **options)


def commits(result):
    return [(event["positions"], event["accepted"]) for event in result.trace if event["event"] == "commit"]


def test_a_chain_the_ar_head_agrees_with_commits_all_its_tokens_and_one_more():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8)
    assert result.tokens == DRAFT
    # prompt -> 11; chain 12 13 accepted + 14; then chains only as deep as the budget reaches (a chain
    # of d and the masks after it span 2d + 1 positions): 15 + 16, then plain AR steps.
    assert commits(result) == [([0], 0), ([1, 2, 3], 2), ([4, 5], 1), ([6], 0), ([7], 0)]
    assert result.forward_passes == 5
    assert oracle.calls[0].input_ids == [PROMPT + [M, M, M]]  # root masks: offsets 0, 1, 2
    assert oracle.calls[0].position_ids == [[0, 1, 2, 3, 4, 5]]
    # pending 11; root masks at 1-3; chain 12 13 at 1-2; masks after 12 (at 2-3: the chain goes on) and
    # after 13, the chain's last token (at 3-5).
    assert oracle.calls[1].input_ids == [[11, M, M, M, 12, 13, M, M, M, M, M]]
    assert oracle.calls[1].position_ids == [[P, P + 1, P + 2, P + 3, P + 1, P + 2, P + 2, P + 3, P + 3, P + 4, P + 5]]
    assert oracle.calls[1].past_length == P
    assert oracle.calls[2].past_length == P + 3 and oracle.calls[2].input_ids[0][:1] == [14]
    assert oracle.calls[4].input_ids == [[17]]  # one token left: a plain AR step
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + DRAFT[:-1])]
    assert result.counters == {"drafts_offered": 3, "drafts_accepted": 3, "lookup_offered": 0, "lookup_accepted": 0,
                               "table_offered": 0, "table_accepted": 0}


def test_one_candidate_a_forward_gives_two_tokens_when_it_matches():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8, depth=1)
    assert result.tokens == DRAFT
    assert commits(result) == [([0], 0), ([1, 2], 1), ([3, 4], 1), ([5, 6], 1), ([7], 0)]
    assert oracle.calls[1].input_ids == [[11, M, M, 12, M, M]]
    assert oracle.calls[1].position_ids == [[P, P + 1, P + 2, P + 1, P + 2, P + 3]]


def test_a_chain_rejected_midway_keeps_the_agreed_part_and_the_ar_token():
    ar = [11, 12, 13, 9, 15, 16, 17, 18]  # the AR head disagrees with the draft at offset 3
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8, ar_token=ar)
    result = run(oracle, max_new_tokens=8, depth=3)
    assert result.tokens == ar
    # 11; chain 12 13 14: 12 and 13 agree, 9 replaces 14; chain 15 16 (17 is past the budget's reach) ...
    assert commits(result)[:2] == [([0], 0), ([1, 2, 3], 2)]
    entries = cached_entries(result.state.cache)
    assert (14, P + 3) not in entries and entries == [(t, p) for p, t in enumerate(PROMPT + ar[:-1])]


def test_no_candidate_matching_takes_the_next_candidates_from_the_root_masks():
    ar = [11, 7, 13, 14, 15, 16, 17, 18]
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8, ar_token=ar)
    result = run(oracle, max_new_tokens=8)
    assert result.tokens == ar
    assert commits(result)[:2] == [([0], 0), ([1], 0)]
    # Pending 7 at offset 1; candidates 13 14 from the root masks of the forward before (offsets 2, 3).
    assert oracle.calls[2].input_ids[0][:6] == [7, M, M, M, 13, 14]


def test_eos_inside_an_agreeing_chain_ends_the_text():
    ar = [11, 12, EOS, 14, 15, 16, 17, 18]
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8, ar_token=ar)
    result = run(oracle, max_new_tokens=8)
    assert result.tokens == [11, 12, EOS] and result.finish_reason == "stop"
    assert result.forward_passes == 2


def test_eos_as_the_ar_token_after_a_chain_ends_the_text():
    ar = [11, 12, 13, EOS, 15, 16, 17, 18]
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8, ar_token=ar)
    result = run(oracle, max_new_tokens=8)
    assert result.tokens == [11, 12, 13, EOS] and result.forward_passes == 2


def test_a_stop_string_inside_a_chain_ends_the_decode():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8, stop="13")
    assert result.text == "11 12 " and result.finish_reason == "stop"
    assert result.forward_passes == 2


class EveryKey(dict):
    """Remembered acceptance counts that any settings find."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts

    def get(self, key, default=None):
        return self.counts


def test_chains_accepted_whole_earn_a_deeper_probe_past_a_stale_estimate(monkeypatch):
    """An acceptance history that says chains break after three tokens (from earlier generations) would keep
    depth=auto at three for good: a depth is judged only when offered. Here every draft is right, so whole
    chains in a row earn a probe one token deeper, it succeeds, and the chains grow. (The text repeats: lookup drafts
    would win there, so they are off.)"""
    text = [11 + i % 8 for i in range(150)]
    oracle = PositionOracle(text, mask_conf=[0.9] * 150, ar_conf=[0.9] * 150)
    stale = {"rank": ([4.0] + [0.0] * 7, [4.0] * 8),
             "depth": ([1.2, 4.0, 4.0, 1.0] + [1.2] * 6, [4.0, 4.0, 4.0, 8.0] + [4.0] * 6)}  # depth 4: 1 in 8

    def depths():
        oracle._refusion_lossless_stats = EveryKey(stale)
        result = run(oracle, max_new_tokens=150, branches="auto", depth="auto", width_cost=0.05, lookup=0,
                     fallback_masks="on")
        assert result.tokens == text
        return [event["depth"] for event in result.trace if event["event"] == "commit"]

    probed = depths()
    # four whole chains of 3; the fifth forward feeds masks one deeper, the sixth offers a chain of 4
    assert probed[:7] == [0, 3, 3, 3, 3, 3, 4]
    assert "4, 4, 4, 4" in str(probed)  # each probe accepted whole: the estimate rises until 4 is the choice
    monkeypatch.setattr(lossless, "PROBE_AFTER", 10**9)
    assert max(depths()) == 3  # without probes the stale estimate rules for good


def shape_with(first_right: float, next_right: float, per_token: float) -> lossless.Shape:
    """One candidate at most, chains of two at most; the candidate right `first_right` of the time and the chain's
    second token `next_right` given the first; a forward costing 1 + per_token a token fed past the first."""
    shape = lossless.Shape("auto", "auto", 1, 2, lambda width: 1 + per_token * (width - 1))
    shape.rank_hits, shape.rank_trials = [4 * first_right], [4.0]
    shape.depth_hits[1], shape.depth_trials[1] = 4 * next_right, 4.0
    return shape


def test_fallback_masks_are_fed_only_where_they_pay_for_their_width():
    """Chains of 2: fed with fallback masks, 11 tokens (the pending one, 3 root masks, the chain, 2 masks after its
    first token and 3 after its last); lean, 6 (no root masks, none after the first token); a forward without
    candidates, 4 (the pending token and 3 root masks). Chains right 0.9 x 0.9 of the time, 0.1 a token: lean commits
    (2.71 + 0.19) tokens for (1.5 + 0.19 * 1.3), 1.66 a unit against 2.71 / 2.0 = 1.36 with the masks (and 1.41 for
    a lean chain of one). At 0.01 a token and candidates right 0.3 x 0.3 of the time: with the masks 1.39 / 1.10 =
    1.26 against (1.39 + 0.91) / (1.05 + 0.91 * 1.03) = 1.16 lean (and 1.24 with masks for a chain of one)."""
    assert lossless.tree_width(1, 1, 2) == 11 and lossless.tree_width(1, 1, 2, lean=True) == 6
    assert shape_with(0.9, 0.9, per_token=0.1).choose(reach=2) == (1, 2, True)
    assert shape_with(0.3, 0.3, per_token=0.01).choose(reach=2) == (1, 2, False)


def test_where_chains_are_accepted_whole_forwards_feed_no_fallback_masks():
    """Every draft right: once the decoder has seen enough chains accepted whole (the prior says a quarter of the
    candidates are right), a forward with candidates feeds no root masks (the pending token comes right before the
    chain), and the decode feeds fewer tokens in all than with fallback masks always fed; the text is the same."""
    text = [11 + i % 8 for i in range(120)]
    fed = {}
    for setting in ("on", "auto"):
        oracle = PositionOracle(text, mask_conf=[0.9] * 120, ar_conf=[0.9] * 120)
        result = run(oracle, max_new_tokens=120, branches="auto", depth="auto", width_cost=0.05, lookup=0,
                     fallback_masks=setting)
        assert result.tokens == text
        fed[setting] = [call.input_ids[0] for call in oracle.calls]
    assert all(ids[1] == M for ids in fed["on"][1:-2] if len(ids) > 1)  # root masks, as the old trees
    lean = [ids for ids in fed["auto"][1:] if len(ids) > 1 and ids[1] != M]
    assert len(lean) >= len(fed["auto"]) // 2
    assert sum(map(len, fed["auto"])) < sum(map(len, fed["on"]))


def test_what_one_setting_learnt_is_not_the_prior_of_another():
    """Acceptance counts carry over to the next generation with the same settings only: a bench that runs two
    settings in turn must measure each as if it ran alone."""
    text = [11 + i % 8 for i in range(60)]

    def depths(oracle, **options):
        result = run(oracle, max_new_tokens=60, branches="auto", depth="auto", width_cost=0.05, lookup=0, **options)
        assert result.tokens == text
        return [event["depth"] for event in result.trace if event["event"] == "commit"]

    def oracle():
        return PositionOracle(text, mask_conf=[0.9] * 60, ar_conf=[0.9] * 60)

    used = oracle()
    learnt = depths(used)
    assert depths(used) != learnt  # the same settings start from what the first run learnt
    assert depths(used, max_branches=4) == depths(oracle(), max_branches=4)


@pytest.mark.parametrize("width_cost, masks_fed", [(0.06, True), (0.1, False)])
def test_plain_steps_must_beat_the_best_tree_by_a_margin(width_cost, masks_fed):
    """On the prior (the likeliest candidate right a quarter of the time) one candidate is worth 1.25 tokens for a
    forward of six tokens, 1 + 5 * width_cost: at 0.06 a plain step is better by 4%, not by the 10% it must beat
    the tree by, so the first forward feeds masks; at 0.1 (better by 20%) it does not."""
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8, branches="auto", depth="auto", width_cost=width_cost, lookup=0)
    assert result.tokens == DRAFT
    assert (MASK in oracle.calls[0].input_ids[0]) == masks_fed


def test_zero_branches_is_plain_ar():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8, branches=0)
    assert result.tokens == DRAFT and result.forward_passes == 8
    assert all(MASK not in call.input_ids[0] for call in oracle.calls)


def test_a_fixed_number_of_branches_is_kept_when_only_the_depth_adapts():
    """branches=1 with depth=auto: the depth adapts, but every forward still offers one candidate, even where
    the drafts never match and a plain AR step would be the adaptive choice."""
    ar = [7] * 12  # no draft is ever right
    oracle = PositionOracle(DRAFT + DRAFT[:4], mask_conf=[0.9] * 12, ar_conf=[0.9] * 12, ar_token=ar)
    result = run(oracle, max_new_tokens=12, branches=1, depth="auto", width_cost=0.5, lookup=0)
    assert result.tokens == ar
    offered = [event["branches"] for event in result.trace if event["event"] == "commit"]
    # the first forward has no candidates yet; the last ones lie past the budget's reach (see above)
    assert offered[1:-2] == [1] * (len(offered) - 3)
    assert all(MASK in call.input_ids[0] for call in oracle.calls[:-2])


def test_several_candidates_for_the_next_position_share_one_forward():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    result = run(oracle, max_new_tokens=8, branches=3, depth=1)
    assert result.tokens == DRAFT
    second = oracle.calls[1].input_ids[0]
    assert len(second) == 1 + 2 + 3 * (1 + 2) and second[3] == 12  # the likeliest candidate first
    assert result.forward_passes == 5


# --- lookup drafts: copies of what followed the text's tail before ---------------------------


def test_a_lookup_draft_the_ar_head_agrees_with_commits_its_agreeing_part_and_one_more():
    ar = [5, 6, 7, 9, 10, 11]  # the prompt is 5 6 7: after 5, the text looks as if it repeats
    oracle = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar)
    result = run(oracle, max_new_tokens=6, branches=0, lookup=3)
    assert result.tokens == ar
    # 5; then 5 occurred before, followed by 6 7 5: 6 and 7 agree, the AR head says 9 for the third; 10; 11.
    assert commits(result) == [([0], 0), ([1, 2, 3], 2), ([4], 0), ([5], 0)]
    assert oracle.calls[0].input_ids == [PROMPT]  # the prompt's tail, 7, appeared nowhere before
    assert oracle.calls[1].input_ids == [[5, 6, 7, 5]] and oracle.calls[1].position_ids == [[P, P + 1, P + 2, P + 3]]
    assert oracle.calls[2].input_ids == [[9]]  # 9 is new: nothing to copy
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + ar[:-1])]
    assert result.counters == {"drafts_offered": 3, "drafts_accepted": 2, "lookup_offered": 3, "lookup_accepted": 2,
                               "table_offered": 0, "table_accepted": 0}


def test_a_long_prompt_does_not_make_a_lookup_draft_look_cheap():
    """The first forward feeds the whole prompt: ten more tokens are a small share of it, but they cost what they
    cost in any other step, and a draft that would not pay there (a one-token match adds 0.3 tokens on prior,
    against 0.5 of a forward for ten tokens at width_cost 0.05) is not offered there either."""
    prompt = [5] + [1, 2, 3, 4] * 10 + [5]  # the tail, 5, appeared at the start: a one-token match
    ar = list(range(6, 18))
    oracle = PositionOracle([0] * 12, mask_conf=[0.9] * 12, ar_conf=[0.9] * 12, ar_token=ar, prompt_len=len(prompt))
    result = refusion.generate(oracle, Tokenizer(), torch.tensor([prompt]), decoder="lossless", branches=0, depth=2,
                               lookup="auto", width_cost=0.05, max_new_tokens=12)
    assert result.tokens == ar
    assert oracle.calls[0].input_ids == [prompt]


@pytest.mark.parametrize("second, widened", [(PROMPT, True), ([8, 9, 10], False)], ids=["both-draft", "one-drafts"])
def test_in_a_batch_drafts_widen_the_forward_only_where_they_pay_for_every_row(second, widened):
    """Rows of a batch are fed side by side at the widest row's width: a wider forward costs every row, and its
    tokens are every row's progress. At width_cost 0.1 two rows' forward of one token each is worth 2 / 1.1 = 1.82
    tokens per unit of cost. The draft 6 7 5 (a one-token match: 0.3 tokens on prior, its first token worth 0.23)
    widens it to two tokens each only where both rows have it: (2 + 2 x 0.23) / 1.3 = 1.90, against
    (2 + 0.23) / 1.3 = 1.72 where one row has it."""
    ar = [5, 6, 7, 9, 10, 11]  # the prompt is 5 6 7: after 5, the draft 6 7 5; after 8 9 10 5, none
    oracle = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar)
    results = refusion.generate(oracle, Tokenizer(), [PROMPT, second], decoder="lossless", branches=0, depth=2,
                                lookup="auto", width_cost=0.1, max_new_tokens=6)
    assert [result.tokens for result in results] == [ar, ar]
    assert oracle.calls[1].input_ids == ([[5, 6], [5, 6]] if widened else [[5], [5]])


def test_a_rows_room_in_a_batch_is_filled_with_its_drafts_at_no_cost():
    """Rows are fed at the widest row's width. The first row always feeds its lookup draft 6 7 5 (lookup=3); the
    second has none, and alone its draft-table chain 6 7 9 would not pay (0.1 tokens on prior for three tokens at
    width_cost 0.1: 0.3 of a forward). Beside the first it fits in the padding, costs nothing, and here is right:
    four tokens in the first forward."""
    first, second = [5, 6, 7, 5], [8, 9, 10, 5]
    ar = [6, 7, 9, 10, 11, 12]
    options = dict(decoder="lossless", branches=0, depth=2, lookup=3, width_cost=0.1, max_new_tokens=6, trace=True)

    def oracle():
        model = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar, prompt_len=4)
        model._refusion_draft_table = DraftTable({(5,): 6, (6,): 7, (7,): 9})
        return model

    alone = [refusion.generate(oracle(), Tokenizer(), torch.tensor([prompt]), **options) for prompt in (first, second)]
    together = oracle()
    results = refusion.generate(together, Tokenizer(), [first, second], **options)
    assert [result.tokens for result in results] == [result.tokens for result in alone] == [ar, ar]
    assert together.calls[0].input_ids == [first + [6, 7, 5], second + [6, 7, 9]]
    assert commits(results[1]) == [([0, 1, 2, 3], 3), ([4], 0), ([5], 0)]
    assert results[1].forward_passes == 3 < alone[1].forward_passes


def test_the_longest_agreeing_draft_wins_and_the_next_forward_drafts_from_its_root_masks():
    ar = [5, 6, 7, 5, 6, 7, 5, 6, 7, 5]
    draft = [5, 6, 1, 1, 1, 1, 1, 1, 1, 1]  # the mask head is right about 6 at offset 1, wrong after
    oracle = PositionOracle(draft, mask_conf=[0.9] * 10, ar_conf=[0.9] * 10, ar_token=ar)
    result = run(oracle, max_new_tokens=10, branches=1, depth=2, lookup=3)
    assert result.tokens == ar
    # Forward 2: pending 5, root masks, the mask chain 6 1 with its masks, the lookup draft 6 7 5 (what followed
    # the prompt's 5). The chain agrees on one token, the lookup draft on three: 6 7 5 + the AR token 6.
    assert oracle.calls[1].input_ids == [[5, M, M, M, 6, 1, M, M, M, M, M, 6, 7, 5]]
    assert commits(result)[1] == ([1, 2, 3, 4], 3)
    # No masks follow a lookup draft: forward 3 has no mask chain, only root masks and the next lookup draft
    # (7 5 6 followed 7 5 6 before).
    assert oracle.calls[2].input_ids == [[6, M, M, M, 7, 5, 6]]
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + ar[:-1])]


def test_eos_inside_an_agreeing_lookup_draft_ends_the_text():
    prompt = [5, EOS, 7]  # after 5 came EOS once: the lookup draft for what follows the next 5 is EOS 7 5
    ar = [5, EOS, 7, 9, 10, 11]
    oracle = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar, prompt_len=len(prompt))
    result = refusion.generate(oracle, Tokenizer(), torch.tensor([prompt]), decoder="lossless", branches=0, lookup=3,
                               max_new_tokens=6)
    assert result.tokens == [5, EOS] and result.finish_reason == "stop"
    assert oracle.calls[1].input_ids == [[5, EOS, 7, 5]] and result.forward_passes == 2


# --- draft-table chains: what the model usually writes next ----------------------------------


def test_a_draft_table_chain_commits_its_agreeing_part_and_one_more():
    ar = [9, 10, 11, 12, 13, 14]
    oracle = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar)
    oracle._refusion_draft_table = DraftTable({(9,): 10, (10,): 11, (11,): 15})
    result = run(oracle, max_new_tokens=6, branches=0, lookup=0)
    assert result.tokens == ar
    # The prompt's tail 7 is not in the table: forward 1 is the prompt alone. Then 9 -> 10, 10 -> 11, 11 -> 15: the
    # chain 10 11 15 rides with the pending 9; 10 and 11 agree, the AR head says 12 for the third; 13; 14.
    assert oracle.calls[0].input_ids == [PROMPT]
    assert oracle.calls[1].input_ids == [[9, 10, 11, 15]] and oracle.calls[1].position_ids == [[P, P + 1, P + 2, P + 3]]
    assert commits(result) == [([0], 0), ([1, 2, 3], 2), ([4], 0), ([5], 0)]
    assert oracle.calls[2].input_ids == [[12]]  # 12 is not in the table
    assert cached_entries(result.state.cache) == [(t, p) for p, t in enumerate(PROMPT + ar[:-1])]
    assert result.counters == {"drafts_offered": 3, "drafts_accepted": 2, "lookup_offered": 0, "lookup_accepted": 0,
                               "table_offered": 3, "table_accepted": 2}
    off = run(PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar), max_new_tokens=6,
              branches=0, lookup=0, draft_table="off")
    assert off.tokens == ar and off.forward_passes == 6 and off.counters["table_offered"] == 0


def test_a_draft_table_chain_the_lookup_draft_already_holds_is_not_fed_twice():
    ar = [5, 6, 7, 9, 10, 11]  # after 5 the lookup draft is 6 7 5 (what followed the prompt's 5)
    oracle = PositionOracle([0] * 6, mask_conf=[0.9] * 6, ar_conf=[0.9] * 6, ar_token=ar)
    oracle._refusion_draft_table = DraftTable({(5,): 6, (6,): 7})  # the chain 6 7: a prefix of the lookup draft
    result = run(oracle, max_new_tokens=6, branches=0, lookup=3)
    assert oracle.calls[1].input_ids == [[5, 6, 7, 5]]
    assert result.tokens == ar and result.counters["table_offered"] == 0


def test_lookup_is_greedy_only():
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    with pytest.raises(refusion.RefusionError, match="lookup drafts are verified greedily"):
        refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), decoder="lossless", max_new_tokens=4,
                          lookup=4, temperature=0.5)


@pytest.mark.parametrize("options, message", [
    ({"branches": -1}, "branches"), ({"branches": "many"}, "branches"), ({"max_branches": 0}, "max-branches"),
    ({"branches": 9}, "must not exceed"), ({"width_cost": 2}, "width-cost"), ({"width_cost": "cheap"}, "width-cost"),
    ({"depth": 0}, "depth"), ({"depth": 12}, "must not exceed max-depth"), ({"lookup": -1}, "lookup"),
    ({"lookup": "some"}, "lookup"),
])
def test_bad_options_are_one_clear_error(options, message):
    oracle = PositionOracle(DRAFT, mask_conf=[0.9] * 8, ar_conf=[0.9] * 8)
    with pytest.raises(refusion.RefusionError, match=message):
        refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), decoder="lossless", max_new_tokens=4, **options)


# --- sampling: the output distribution is the AR head's --------------------------------------


def exact_distribution(token: int, prob: float) -> torch.Tensor:
    """The oracle's AR distribution as the decoder sees it: the mask token is never predicted."""
    probs = torch.full((VOCAB,), (1 - prob) / (VOCAB - 1))
    probs[token] = prob
    probs[MASK] = 0
    return probs / probs.sum()


def chi_square(counts: collections.Counter, expected: torch.Tensor, total: int) -> float:
    return sum((counts.get(t, 0) - total * float(p)) ** 2 / (total * float(p)) for t, p in enumerate(expected) if p > 0)


def test_sampled_tokens_follow_the_ar_head_not_the_drafts():
    # The drafts' distribution (mask head) differs from the AR head's at every offset, so rejections,
    # residual draws and matched roots all occur. The oracle's AR head ignores context: each offset's
    # token is an independent draw from `exact_distribution(ar_token[j], ar_conf[j])` at temperature 1.
    ar_token, ar_conf = [11, 12, 13, 14, 15, 16], [0.5, 0.4, 0.6, 0.3, 0.5, 0.5]
    draft, mask_conf = [11, 15, 13, 14, 17, 16], [0.9, 0.8, 0.2, 0.9, 0.9, 0.9]
    runs = 1500
    counts = [collections.Counter() for _ in range(6)]
    matched = 0
    for seed in range(runs):
        oracle = PositionOracle(draft, mask_conf=mask_conf, ar_conf=ar_conf, ar_token=ar_token)
        result = refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), decoder="lossless", branches=2,
                                   depth=2, max_new_tokens=6, temperature=1.0, seed=seed, trace=True)
        for offset, token in enumerate(result.tokens):
            counts[offset][token] += 1
        matched += sum(event["accepted"] for event in result.trace)
    assert matched > runs / 2, "the scenario must exercise matched candidates"
    for offset in (1, 2, 3):  # offset 0 comes from the prompt's forward alone
        total = sum(counts[offset].values())
        statistic = chi_square(counts[offset], exact_distribution(ar_token[offset], ar_conf[offset]), total)
        assert statistic < 42.3, (offset, statistic, counts[offset])  # chi-square, 18 degrees of freedom, p = 0.001


def test_sampling_on_a_tiny_model_matches_ar_over_many_seeds():
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=128, seed=3)
    model.config.mask_token_id = 127
    ids = refusion.encode_prompt(tokenizer, "Hi")
    # The AR distribution of the second token, exactly: sum over the first token of p(x1) p(x2 | x1).
    temperature = 0.05  # a random model's logits are flat: sharpen them so a few hundred runs tell
    with torch.no_grad():
        first = torch.softmax(model(input_ids=ids).logits[0, -1].double() / temperature, -1)
        first[127] = 0
        first /= first.sum()
        second = torch.zeros(128, dtype=torch.float64)
        for token in first.nonzero().flatten().tolist():
            if first[token] < 1e-6:
                continue
            logits = model(input_ids=torch.cat([ids, torch.tensor([[token]])], 1)).logits[0, -1].double()
            logits[127] = -float("inf")
            second += first[token] * torch.softmax(logits / temperature, -1)
    runs = 400
    seen, matched = collections.Counter(), 0
    for seed in range(runs):
        result = refusion.generate(model, tokenizer, ids, decoder="lossless", branches=2, depth=1,
                                   max_new_tokens=4, temperature=temperature, seed=seed, trace=True)
        seen[result.tokens[1]] += 1  # decided by the candidates the first forward's masks proposed
        matched += result.trace[1]["accepted"] > 0
    support = [t for t in range(128) if second[t] * runs >= 5]
    rest = 1 - float(second[support].sum())
    statistic = sum((seen.get(t, 0) - runs * float(second[t])) ** 2 / (runs * float(second[t])) for t in support)
    if rest * runs >= 5:
        other = runs - sum(seen.get(t, 0) for t in support)
        statistic += (other - runs * rest) ** 2 / (runs * rest)
    assert statistic < 60, (statistic, len(support))
    assert 0.1 * runs < matched < 0.9 * runs, "both matched candidates and rejections must occur"


# --- tiny real models: greedy output equals ar -----------------------------------------------


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
@pytest.mark.parametrize("shape", [{}, {"branches": 1, "depth": 1}, {"branches": 3, "depth": 4},
                                   {"branches": 0, "lookup": 6}, {"branches": 2, "depth": 3, "lookup": 8}])
def test_greedy_output_equals_ar_and_the_cache_is_the_causal_cache_of_the_text(kind, shape):
    tokenizer = char_tokenizer()
    lookup_accepted = 0
    for seed in range(3):
        model = tiny_model(kind, vocab_size=128, seed=seed)
        model.config.mask_token_id = 127
        ids = refusion.encode_prompt(tokenizer, "Add 2 and 3.")
        ar = refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=40)
        result = refusion.generate(model, tokenizer, ids, decoder="lossless", width_cost=0.0, max_new_tokens=40,
                                   return_state=True, **shape)
        assert result.tokens == ar.tokens
        lookup_accepted += result.counters["lookup_accepted"]
        text = ids[0].tolist() + result.tokens[:-1]
        with torch.no_grad():
            fresh = kv_cache.new_cache()
            model(input_ids=torch.tensor([text]), past_key_values=fresh, use_cache=True)
        for (keys, values), (want_keys, want_values) in zip(kv_cache.layer_tensors(result.state.cache),
                                                            kv_cache.layer_tensors(fresh)):
            torch.testing.assert_close(keys, want_keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(values, want_values, rtol=1e-4, atol=1e-5)
    if shape.get("lookup"):
        assert lookup_accepted > 0, "the lookup drafts must be accepted somewhere for the test to tell"


def test_a_seed_gives_the_same_sample_every_time_whatever_the_timings_and_history():
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=128, seed=5)
    model.config.mask_token_id = 127
    ids = refusion.encode_prompt(tokenizer, "Hello there")
    first = refusion.generate(model, tokenizer, ids, decoder="lossless", max_new_tokens=24, temperature=0.7, seed=11)
    for prompt in ("a", "bb", "ccc"):  # other generations move the acceptance history kept on the model
        refusion.generate(model, tokenizer, refusion.encode_prompt(tokenizer, prompt), decoder="lossless",
                          max_new_tokens=24)
    # and a forward cost measured very differently (wide forwards nearly free)
    model._refusion_width_costs = {(str(model.device), model.dtype): {1: 1.0, 2: 1.0, 64: 1.01, 256: 1.02}}
    again = refusion.generate(model, tokenizer, ids, decoder="lossless", max_new_tokens=24, temperature=0.7, seed=11)
    assert again.tokens == first.tokens


def _rows(picks: dict) -> dict:
    """Logit rows whose argmax is the given token, keyed as the lossless forward keys them."""
    return {key: torch.nn.functional.one_hot(torch.tensor(token), VOCAB).float() for key, token in picks.items()}


def test_a_chain_with_masks_after_it_is_worth_what_they_draft_next():
    """The AR head says 5 at the root, 6 after chain tokens that are 5, and 9 after a 6. The mask chain 5 4 agrees on
    one token, the lookup chain 5 6 7 on two. Which commits depends on what the masks after the mask chain (and the
    root masks) are expected to draft for the next forward; a lookup chain has none. Every choice is `ar`'s text."""
    chains = [[5, 4], [5, 6, 7]]
    rows = _rows({("ar", "root"): 5, ("ar", ("chain", 0, 0)): 6, ("ar", ("chain", 0, 1)): 1,
                  ("ar", ("chain", 1, 0)): 6, ("ar", ("chain", 1, 1)): 9, ("ar", ("chain", 1, 2)): 1})
    assert lossless._walk_greedy(rows, chains, masked=1, carried=0.0) == (9, [0, 1], 1, [1, 2])  # 5 6, then 9
    assert lossless._walk_greedy(rows, chains, masked=1, carried=1.5) == (6, [0], 0, [1, 2])  # 5, then 6
    # The mask chain disagrees from its first token: the root masks are worth 2.5, more than the lookup's two tokens.
    chains[0] = [3, 4]
    assert lossless._walk_greedy(rows, chains, masked=1, carried=2.5) == (5, [], None, [0, 2])
    assert lossless._walk_greedy(rows, chains, masked=1, carried=1.5) == (9, [0, 1], 1, [0, 2])


@pytest.mark.parametrize("widening, wider", [(1.01, True), (2.0, False)], ids=["cheap", "dear"])
def test_a_batch_widens_for_drafts_by_what_its_rows_forwards_cost(widening, wider):
    """A batch's cost by width is measured for its rows (each row attends to its own cache, so 16 rows of two tokens
    are not one row of 32): with one row's forwards as dear as their tokens, drafts widen two rows' forward where
    two rows' costs say that is cheap, and only there."""
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=128, seed=5)
    model.config.mask_token_id = 127
    key = (str(model.device), model.dtype)
    model._refusion_width_costs = {key: {1: 1.0, 2: 2.0, 64: 64.0}, (*key, 2): {1: 1.0, 2: widening, 64: 64.0}}
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    prompts = [refusion.encode_prompt(tokenizer, "abcabcabcabcabc")[0], refusion.encode_prompt(tokenizer, "abcabcab")[0]]
    results = refusion.generate(model, tokenizer, prompts, decoder="lossless", branches=0, max_new_tokens=12)
    decoding = widths[1:]  # the first forward feeds the prompts
    assert [r.tokens for r in results] == [refusion.generate(model, tokenizer, p, decoder="ar", max_new_tokens=12).tokens
                                           for p in prompts]
    assert (max(decoding) > 1) == wider


def test_a_cost_table_measured_flat_does_not_make_wide_trees_look_free():
    """A noisy machine can measure a forward of 8 tokens a row no dearer than one of 1. Past the widest width
    measured, a forward is priced in proportion to its tokens, so rows do not feed their widest trees (over a
    hundred tokens each) as if they cost nothing."""
    assert runner.interpolate_cost({1: 1.0, 8: 1.0}, 64) == 8.0
    assert runner.interpolate_cost({1: 1.0, 2: 1.2, 64: 3.0}, 128) == 6.0
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=128, seed=5)
    model.config.mask_token_id = 127
    key = (str(model.device), model.dtype)
    flat = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}
    model._refusion_width_costs = {key: flat, (*key, 2): flat}
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    prompts = [refusion.encode_prompt(tokenizer, "abcabcabcabcabc")[0], refusion.encode_prompt(tokenizer, "abcabcab")[0]]
    refusion.generate(model, tokenizer, prompts, decoder="lossless", max_new_tokens=24)
    assert max(widths[1:]) <= 24
