"""Attention masks for the bidirectional (masked-diffusion) use of a causal Hugging Face model.

transformers takes a ready 4D mask as is. Under eager attention it must be an *additive float*
mask (0 = visible, dtype-min = hidden); a bool mask there is silently wrong, so we always build floats.
"""

from __future__ import annotations

import torch


def bidirectional_mask(batch: int, query_len: int, key_len: int, dtype: torch.dtype, device=None,
                       key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """All-visible additive mask [B, 1, Q, K]; `key_padding` ([B, K] bool, True = pad) hides padding."""
    mask = torch.zeros(batch, 1, query_len, key_len, dtype=dtype, device=device)
    if key_padding is not None:
        mask = mask.masked_fill(key_padding[:, None, None, :].to(device), torch.finfo(dtype).min)
    return mask


def branch_mask(past: int, prefix: int, branches: list[int], dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive mask [1, 1, S, past + S] for a forward that feeds a causal prefix, then several branches.

    Every fed token sees the `past` cached tokens; the `prefix` tokens see each other causally; each
    branch (of the given lengths, laid out one after another) sees the prefix and itself causally,
    never another branch. So one sequence holds alternatives that would otherwise need a batch.
    """
    fed = prefix + sum(branches)
    hidden = torch.finfo(dtype).min
    mask = torch.full((fed, past + fed), hidden, dtype=dtype, device=device)
    mask[:, :past] = 0
    causal = torch.ones(fed, fed, dtype=torch.bool, device=device).tril()
    group = torch.zeros(fed, dtype=torch.long, device=device)  # 0 = prefix, i = branch i
    start = prefix
    for index, length in enumerate(branches, 1):
        group[start : start + length] = index
        start += length
    visible = causal & ((group[None, :] == 0) | (group[None, :] == group[:, None]))
    mask[:, past:] = mask[:, past:].masked_fill(visible, 0)
    return mask[None, None]
