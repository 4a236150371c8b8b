"""The tokens decoding treats specially: the mask token a ReFusion model is trained with, and the ids that end a generation.

A model's mask id lives in `config.mask_token_id` (or as the tokenizer's `<|mask|>`); `add_mask_token`
gives one to a model that has none, the same way for training and for loading an adapter over its base.
"""

from __future__ import annotations

import torch

MASK_TOKEN = "<|mask|>"


def mask_token_id(model, tokenizer=None) -> int | None:
    """The mask id from the model's config, else the tokenizer's `<|mask|>`, else None."""
    found = getattr(model.config, "mask_token_id", None)
    if found is None and tokenizer is not None:
        vocab = tokenizer.get_vocab()
        found = vocab.get(MASK_TOKEN)
    return found


def eos_token_ids(tokenizer, model=None) -> set[int]:
    """Every id that ends a generation: the tokenizer's EOS plus the generation config's."""
    ids: set[int] = set()
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    return ids


def add_mask_token(model, tokenizer) -> int:
    """Add `<|mask|>` to tokenizer and model if missing; return its id.

    The new embedding row (and output row, when untied) is the mean of the existing rows, and the
    id is recorded as `config.mask_token_id` so that a saved model carries it.
    """
    existing = mask_token_id(model, tokenizer)
    if existing is not None:
        model.config.mask_token_id = existing
        return existing
    tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]}, replace_extra_special_tokens=False)
    new_id = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    old_rows = model.get_input_embeddings().weight.shape[0]
    if new_id >= old_rows:
        model.resize_token_embeddings(new_id + 1, mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
                layer.weight[old_rows:] = layer.weight[:old_rows].mean(dim=0)
    model.config.mask_token_id = new_id
    return new_id
