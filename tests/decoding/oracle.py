"""A stand-in causal LM whose every prediction is set by hand.

The distribution at an input position depends only on (is the input the mask?, position id):
- at a mask at generated offset j: `draft[j]` with probability `mask_conf[j]` (the MDM head);
- at a real token at offset j-1 (or the prompt's last token for j = 0): `ar_token[j]` (by default
  `draft[j]`) with probability `ar_conf[j]` (the AR head, read one place later by verification).
Everything else shares the remaining mass. Its "KV cache" stores (token, position) per entry, so a
test can read back exactly which tokens the cache covers and in which order. Every call is logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from refusion import kv_cache

VOCAB = 20
MASK = 19
EOS = 2
PROMPT = [5, 6, 7]


def distribution(token: int, prob: float) -> torch.Tensor:
    """Log-probabilities putting `prob` on `token` and the rest spread evenly."""
    probs = torch.full((VOCAB,), (1.0 - prob) / (VOCAB - 1))
    probs[token] = prob
    return probs.log()


@dataclass
class Call:
    input_ids: list[list[int]]
    position_ids: list[list[int]]
    past_length: int


@dataclass
class PositionOracle:
    draft: list[int]
    mask_conf: list[float]
    ar_conf: list[float]
    ar_token: list[int] | None = None
    prompt_len: int = len(PROMPT)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self):
        self.config = SimpleNamespace(mask_token_id=MASK, max_position_embeddings=512)
        self.ar_token = list(self.ar_token or self.draft)

    def __call__(self, *, input_ids, position_ids, past_key_values, use_cache, attention_mask=None, logits_to_keep=0):
        batch, length = input_ids.shape  # [B, S]
        if attention_mask is not None:  # causal when None; otherwise an additive 4D mask over cache + new
            assert attention_mask.shape[-2:] == (length, kv_cache.length(past_key_values) + length)
        self.calls.append(Call(input_ids.tolist(), position_ids.tolist(), kv_cache.length(past_key_values)))
        logits = torch.empty(batch, length, VOCAB)
        for b in range(batch):
            for s in range(length):
                offset = int(position_ids[b, s]) - self.prompt_len
                if int(input_ids[b, s]) == MASK and 0 <= offset < len(self.draft):
                    logits[b, s] = distribution(self.draft[offset], self.mask_conf[offset])
                elif int(input_ids[b, s]) == MASK:
                    logits[b, s] = distribution(0, 0.5)
                elif 0 <= offset + 1 < len(self.draft):
                    logits[b, s] = distribution(self.ar_token[offset + 1], self.ar_conf[offset + 1])
                else:
                    logits[b, s] = distribution(0, 0.5)
        entry = torch.stack([input_ids, position_ids], dim=-1).float().unsqueeze(1)  # [B, 1, S, 2]
        past_key_values.update(entry, entry.clone(), 0)
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep.cpu()]
        elif logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=past_key_values)


class Tokenizer:
    eos_token_id = EOS

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


def cached_entries(cache) -> list[tuple[int, int]]:
    """(token, position) of every cached entry, in cache order."""
    keys = kv_cache.layer_tensors(cache)[0][0][0, 0]  # [S, 2]
    return [(int(t), int(p)) for t, p in keys.tolist()]
