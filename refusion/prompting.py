"""Turning a user's prompt into input ids: the chat template when the tokenizer has one."""

from __future__ import annotations

import torch

from .errors import RefusionError


def encode_prompt(tokenizer, prompt: str | list[dict], *, chat: bool = True) -> torch.Tensor:
    """prompt (text, or a list of chat messages) -> input ids [1, P]."""
    if isinstance(prompt, str) and not prompt.strip():
        raise RefusionError("the prompt is empty")
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
    else:
        if not isinstance(prompt, str):
            raise RefusionError("chat messages need a tokenizer with a chat template")
        ids = tokenizer(prompt)["input_ids"]
    ids = torch.as_tensor(ids, dtype=torch.long)
    return ids.view(1, -1)
