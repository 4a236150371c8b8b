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
