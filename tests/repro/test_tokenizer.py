"""The tokenizer built from training text: digits split, specials, chat template, lossless round trip."""

from __future__ import annotations

from refusion.repro import arithmetic, records
from refusion.repro.tokenizer import build_tokenizer


def _texts():
    train, _ = arithmetic.split(5, 5, 300)
    items, _ = records.split(5, 5, 300)
    return ([arithmetic.question(p) + "\n" + arithmetic.solution(p) for p in train]
            + [records.question(i) + "\n" + records.solution(i) for i in items])


def test_saved_tokenizer_round_trips_and_templates(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer(_texts(), vocab_size=400).save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) <= 400
    text = '{"name": "Rosa", "age": 47, "likes": ["tea"], "id": 905} 47 * 2 = 94.'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert all(not any(c.isdigit() for c in piece) or piece.strip("Ġ").isdigit() and len(piece.strip("Ġ")) == 1
               for piece in pieces)  # every digit is a token of its own
    mask = tokenizer.convert_tokens_to_ids("<|mask|>")
    assert tokenizer.convert_ids_to_tokens(tokenizer("a <|mask|> b")["input_ids"]).count("<|mask|>") == 1
    assert mask != tokenizer.unk_token_id and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_same_text_gives_the_same_vocabulary():
    assert build_tokenizer(_texts(), 300).get_vocab() == build_tokenizer(_texts(), 300).get_vocab()
