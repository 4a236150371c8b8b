"""Turning a user's prompt into input ids: the chat template when the tokenizer has one."""

from __future__ import annotations

import torch

from .errors import RefusionError


def prompt_token_ids(tokenizer, prompt: str | list[dict], *, chat: bool = True) -> list[int]:
    """Ids of a prompt: the chat template with the generation prompt when asked for and the tokenizer
    has one; otherwise the text itself (chat messages' contents joined by newlines)."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
    return tokenizer(text)["input_ids"]


def encode_prompt(tokenizer, prompt: str | list[dict], *, chat: bool = True) -> torch.Tensor:
    """prompt (text, or a list of chat messages) -> input ids [1, P]."""
    if isinstance(prompt, str) and not prompt.strip():
        raise RefusionError("the prompt is empty")
    if not isinstance(prompt, str) and not (chat and getattr(tokenizer, "chat_template", None)):
        raise RefusionError("chat messages need a tokenizer with a chat template")
    return torch.as_tensor(prompt_token_ids(tokenizer, prompt, chat=chat), dtype=torch.long).view(1, -1)
