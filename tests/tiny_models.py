"""Tiny random Hugging Face models and a character-level tokenizer, built offline for tests."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def char_tokenizer(extra_specials: list[str] = ()) -> PreTrainedTokenizerFast:
    """One token per printable character; EOS is <|im_end|>; has a chat template."""
    vocab = {token: i for i, token in enumerate(SPECIALS + list(extra_specials) + list(string.printable))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[2:] + list(extra_specials)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(kind: str, vocab_size: int, **overrides):
    shape = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    shape.update(overrides)
    if kind == "qwen3":
        return Qwen3Config(head_dim=8, **shape)
    return LlamaConfig(**shape)


def tiny_model(kind: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(kind, vocab_size, **overrides)
    model_class = Qwen3ForCausalLM if kind == "qwen3" else LlamaForCausalLM
    return model_class(config).eval()


def tiny_mask_model(max_position_embeddings: int = 2048):
    """(model, tokenizer): a tiny random Llama whose char tokenizer has <|mask|>, recorded as its mask token."""
    tokenizer = char_tokenizer(extra_specials=["<|mask|>"])
    model = tiny_model("llama", vocab_size=len(tokenizer), max_position_embeddings=max_position_embeddings)
    model.config.mask_token_id = tokenizer.convert_tokens_to_ids("<|mask|>")
    return model, tokenizer


def tiny_model_with_mask(kind: str, mask_id: int = 127, seed: int = 0):
    """A tiny random model of 128 tokens whose last id stands for the mask (the char tokenizer never emits it)."""
    model = tiny_model(kind, vocab_size=128, seed=seed)
    model.config.mask_token_id = mask_id
    return model
