"""The n-gram draft table: what it counts, the chains it drafts, its file, `refusion drafts`, and lossless decoding
with it on tiny real models (still `ar`'s text)."""

import json

import pytest
import torch

import refusion
from refusion.cli import main
from refusion.decoding.draft_table import FILENAME, DraftTable
from tests.tiny_models import char_tokenizer, tiny_model, tiny_model_with_mask


def test_each_context_keeps_its_most_frequent_next_token():
    table = DraftTable.build([[1, 2, 3, 1, 2, 4, 1, 2, 4]], longest=2)
    # after 1 2 came 3 once and 4 twice; after 2: 3 once, 4 twice; after 4: 1; after 3: 1; after 1: 2 (three times)
    assert table.following == {(1,): 2, (2,): 4, (3,): 1, (4,): 1, (1, 2): 4, (2, 3): 1, (3, 1): 2, (2, 4): 1,
                                (4, 1): 2}
    assert table.counts[(1,)] == 3 and table.counts[(1, 2)] == 2
    pruned = DraftTable.build([[1, 2, 3, 1, 2, 4, 1, 2, 4]], longest=2, min_count=2)
    assert pruned.following == {(1,): 2, (2,): 4, (1, 2): 4}


def test_a_draft_follows_the_longest_match_and_feeds_on_itself():
    table = DraftTable({(7,): 8, (8,): 9, (5, 7): 6, (6,): 5, (9,): 1})
    # 5 7 matches two tokens: 6; then 7 6 is unknown, 6 alone gives 5; 6 5 unknown, 5 unknown: the chain ends
    assert table.draft([3, 5, 7], 8) == (2, [6, 5])
    assert table.draft([3, 4, 7], 3) == (1, [8, 9, 1])  # only 7 matches: 8 9 1, cut at 3 tokens
    assert table.draft([3, 4], 5) == (0, [])


def test_the_file_round_trips(tmp_path):
    table = DraftTable.build([[4, 5, 6, 4, 5, 7], [9, 4, 5, 6]], longest=3)
    table.save(tmp_path / FILENAME)
    loaded = DraftTable.load(tmp_path / FILENAME)
    assert loaded.following == table.following and loaded.counts == table.counts and loaded.longest == 3


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_lossless_with_a_draft_table_is_still_ar_and_the_table_is_used(kind):
    tokenizer = char_tokenizer()
    accepted = 0
    for seed in range(3):
        model = tiny_model_with_mask(kind, seed=seed)
        ids = refusion.encode_prompt(tokenizer, "Add 2 and 3.")
        ar = refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=40)
        # A table that has seen half of this text and another model's: right in places, wrong in others.
        other = refusion.generate(tiny_model(kind, vocab_size=128, seed=seed + 10), tokenizer, ids, decoder="ar",
                                  max_new_tokens=40)
        model._refusion_draft_table = DraftTable.build([ar.tokens[:20], other.tokens])
        result = refusion.generate(model, tokenizer, ids, decoder="lossless", width_cost=0.0, max_new_tokens=40,
                                   lookup=0)
        assert result.tokens == ar.tokens
        accepted += result.counters["table_accepted"]
    assert accepted > 0, "the table's drafts must be accepted somewhere for the test to tell"


def test_refusion_drafts_writes_the_table_that_loading_the_model_attaches(tmp_path, capsys):
    model = tiny_model("llama", vocab_size=128, seed=1)
    tokenizer = char_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"query": q, "response": "ok, here it is"}) + "\n" for q in ("a", "b")))
    main(["drafts", "--model", str(tmp_path / "model"), "--data", str(data), "--no-progress"])
    assert "wrote" in capsys.readouterr().out
    loaded, _ = refusion.load(tmp_path / "model")
    table = loaded._refusion_draft_table
    response = tokenizer("ok, here it is", add_special_tokens=False)["input_ids"]
    assert table.draft(response[:3], 4)[1] == response[3:7]


def test_refusion_drafts_needs_somewhere_to_write_for_a_hub_model(tmp_path, capsys):
    data = tmp_path / "answers.jsonl"
    data.write_text(json.dumps({"query": "a", "response": "b"}) + "\n")
    with pytest.raises(SystemExit):
        main(["drafts", "--model", "some-org/some-model", "--data", str(data)])
    err = capsys.readouterr().err
    assert "--output" in err and "Traceback" not in err
