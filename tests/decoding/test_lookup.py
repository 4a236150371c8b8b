"""Lookup drafts: what the n-gram index proposes, and when a draft is judged worth its width."""

from refusion.decoding.lookup import EXPLORE_EVERY, LookupGain, NgramIndex


def test_the_longest_latest_match_gives_the_draft():
    index = NgramIndex([1, 2, 3, 9, 2, 3, 4, 1, 2, 3])
    # the tail 1 2 3 occurred at 0-2: what followed it, up to 4 tokens
    assert index.draft(4) == (3, [9, 2, 3, 4])
    index.extend([8])
    assert index.draft(4) == (0, [])  # 8 is new
    index.extend([1, 2])
    assert index.draft(2) == (2, [3, 8])  # 8 2 is new; 1 2 last occurred at 7-8, before 3 8


def test_a_draft_may_run_into_the_tail_itself():
    index = NgramIndex([4, 4, 4])
    assert index.draft(5) == (2, [4])  # 4 4 ended at 1 before: only the 4 at 2 follows it


def test_a_draft_is_offered_when_what_it_adds_outweighs_its_width():
    gain = LookupGain()
    cheap, dear = (lambda width: 1 + 0.01 * width), (lambda width: width)
    assert gain.pays(3, 8, expected=1.5, width=10, cost=cheap)
    assert not gain.pays(3, 8, expected=1.5, width=1, cost=dear)
    for _ in range(40):  # drafts from one-token matches never add anything here
        gain.update(1, 0)
    assert not gain.pays(1, 8, expected=1.5, width=10, cost=cheap)


def test_a_draft_passed_over_long_enough_is_offered_once_to_see_whether_it_pays_now():
    gain = LookupGain()
    dear = lambda width: width  # noqa: E731
    offered = [gain.pays(1, 4, expected=1.0, width=1, cost=dear) for _ in range(2 * EXPLORE_EVERY)]
    assert offered.count(True) == 2 and offered[EXPLORE_EVERY - 1]
    assert not any(LookupGain().pays(1, 4, 1.0, 1, dear, explore=False) for _ in range(2 * EXPLORE_EVERY))
