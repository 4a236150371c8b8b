"""Reading and tokenizing training records."""

from __future__ import annotations

import json

import pytest

from refusion.errors import RefusionError
from refusion.training.data import load_dataset
from tests.training.conftest import char_tokenizer


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_query_response_and_messages_records(write_jsonl):
    tokenizer = char_tokenizer()
    path = write_jsonl([
        {"query": "hi", "response": "yo"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "dd"}]},
    ])
    data = load_dataset([path], tokenizer, max_length=100)
    user, assistant, eos = (tokenizer.convert_tokens_to_ids(t) for t in ("<user>", "<assistant>", "<eos>"))
    first, second = data.examples
    assert first.prompt_ids == [user, *ids(tokenizer, "hi"), assistant]
    assert first.response_ids == [*ids(tokenizer, "yo"), eos]
    # earlier turns (with their own EOS) are prompt; the last assistant message is the response
    assert second.prompt_ids == [user, *ids(tokenizer, "a"), assistant, *ids(tokenizer, "b"), eos, user,
                                 *ids(tokenizer, "c"), assistant]
    assert second.response_ids == [*ids(tokenizer, "dd"), eos]
    assert data[0] == {"prompt_ids": first.prompt_ids, "response_ids": first.response_ids}


def test_without_chat_template_the_query_is_used_as_is(tmp_path):
    tokenizer = char_tokenizer(chat=False)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"query": "q?", "response": "r"}]))
    example = load_dataset([str(path)], tokenizer, max_length=100).examples[0]
    assert example.prompt_ids == ids(tokenizer, "q?")
    assert example.response_ids == [*ids(tokenizer, "r"), tokenizer.eos_token_id]


def test_too_long_examples_are_skipped_and_counted(write_jsonl):
    # prompt <user> x <assistant> = 3 tokens; response + EOS = len + 1
    path = write_jsonl([{"query": "x", "response": "ab"}, {"query": "x", "response": "abc"}, {"query": "x", "response": "a"}])
    data = load_dataset([path], char_tokenizer(), max_length=6)
    assert len(data) == 2 and data.skipped_too_long == 1


@pytest.mark.parametrize("line, message", [
    ('{"query": "a"}', "data.jsonl:2: expected string fields"),
    ('{"query": "a", "response": 3}', "data.jsonl:2: expected string fields"),
    ('[1, 2]', "data.jsonl:2: expected an object"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "data.jsonl:2: 'messages' needs an assistant"),
    ('{"query": "a", "response": "b"', "data.jsonl:2: not valid JSON"),
])
def test_malformed_record_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"query": "ok", "response": "ok"}\n' + line + "\n")
    with pytest.raises(RefusionError, match=message):
        load_dataset([str(path)], char_tokenizer(), max_length=100)


def test_missing_file_and_nothing_left(tmp_path, write_jsonl):
    with pytest.raises(RefusionError, match="data file not found"):
        load_dataset([str(tmp_path / "nope.jsonl")], char_tokenizer(), max_length=100)
    with pytest.raises(RefusionError, match="no training examples of at most 2 tokens"):
        load_dataset([write_jsonl([{"query": "x", "response": "y"}])], char_tokenizer(), max_length=2)
