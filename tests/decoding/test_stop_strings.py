"""Stop strings end the decode as soon as the final left-to-right text holds one.

The oracle's tokenizer writes token ids joined by spaces, so the text after n tokens is known by hand.
"""

import pytest
import torch

import refusion
from tests.decoding.oracle import PROMPT, PositionOracle, Tokenizer

HIGH, LOW = 0.9, 0.1
DRAFT = [11, 12, 13, 14, 15, 16]


def run(oracle, **options):
    return refusion.generate(oracle, Tokenizer(), torch.tensor([PROMPT]), trace=True, **options)


def test_ar_stops_at_the_token_that_completes_the_stop_string():
    oracle = PositionOracle(DRAFT, mask_conf=[HIGH] * 6, ar_conf=[HIGH] * 6)
    result = run(oracle, decoder="ar", max_new_tokens=6, stop=["3 14", "never"])
    assert result.tokens == [11, 12, 13, 14]
    assert result.text == "11 12 1"  # cut before the stop string, which straddles two tokens
    assert result.forward_passes == 4  # instead of 6
    assert result.finish_reason == "stop" and result.settings["stop"] == ["3 14", "never"]


def test_refusion_stops_after_the_block_that_completes_it():
    oracle = PositionOracle(DRAFT, mask_conf=[HIGH] * 6, ar_conf=[HIGH] * 6)
    options = dict(decoder="refusion", max_new_tokens=6, slot_size=2, blocks=3, slot_threshold=0.5, token_threshold=0.5)
    whole = run(oracle, **options)
    assert whole.forward_passes == 4 and whole.finish_reason == "length"  # one plan, a verify per block (carrying the next plan)
    stopped = run(PositionOracle(DRAFT, [HIGH] * 6, [HIGH] * 6), **options, stop="13")
    assert stopped.tokens == [11, 12, 13, 14] and stopped.text == "11 12 "
    assert stopped.forward_passes == 3 and stopped.finish_reason == "stop"


def test_a_slot_written_ahead_does_not_stop_the_text_before_the_gap_is_filled():
    # Plan 1 picks slot 1 alone ("13 14" committed first, at offsets 2-3); plan 2 picks slot 0.
    oracle = PositionOracle(DRAFT, mask_conf=[0.3, HIGH, HIGH, HIGH, 0.2, HIGH], ar_conf=[HIGH] * 6)
    result = run(oracle, decoder="refusion", max_new_tokens=6, slot_size=2, blocks=1, slot_threshold=0.5,
                 token_threshold=0.5, stop="13 14")
    commits = [event["positions"] for event in result.trace if event["event"] == "commit"]
    assert commits == [[2, 3], [0, 1]]
    assert result.tokens == [11, 12, 13, 14] and result.text == "11 12 "
    assert result.forward_passes == 3  # slot 2 (offsets 4-5) is never decoded; plan 2 rides along verify 1


def test_a_stop_string_that_never_appears_changes_nothing():
    options = dict(decoder="refusion", max_new_tokens=6, slot_size=2, blocks=3, slot_threshold=0.5, token_threshold=0.5)
    plain = run(PositionOracle(DRAFT, [HIGH] * 6, [HIGH] * 6), **options)
    with_stop = run(PositionOracle(DRAFT, [HIGH] * 6, [HIGH] * 6), **options, stop=["99"])
    assert (with_stop.tokens, with_stop.text, with_stop.forward_passes) == (plain.tokens, plain.text, plain.forward_passes)
    assert with_stop.finish_reason == "length"


@pytest.mark.parametrize("stop", [[""], ["ok", ""], [3]])
def test_empty_or_non_text_stop_strings_are_refused(stop):
    oracle = PositionOracle(DRAFT, [HIGH] * 6, [HIGH] * 6)
    with pytest.raises(refusion.RefusionError, match="stop strings must be non-empty text"):
        run(oracle, decoder="ar", max_new_tokens=6, stop=stop)
