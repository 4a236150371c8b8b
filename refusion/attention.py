"""Attention masks for the bidirectional (masked-diffusion) use of a causal Hugging Face model, for
segments fed side by side in one sequence, and for batch rows that each feed their own tokens.

transformers takes a ready 4D mask as is. Under eager attention it must be an *additive float*
mask (0 = visible, dtype-min = hidden); a bool mask there is silently wrong, so we always build floats.
"""

from __future__ import annotations

import functools

import torch


def bidirectional_mask(batch: int, query_len: int, key_len: int, dtype: torch.dtype, device=None,
                       key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """All-visible additive mask [B, 1, Q, K]; `key_padding` ([B, K] bool, True = pad) hides padding."""
    mask = torch.zeros(batch, 1, query_len, key_len, dtype=dtype, device=device)
    if key_padding is not None:
        mask = mask.masked_fill(key_padding[:, None, None, :].to(device), torch.finfo(dtype).min)
    return mask


def segment_mask(past: int, segments: list[tuple[int, list[tuple[int, int]]]], dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive mask [1, 1, S, past + S] for several token segments fed side by side in one forward.

    `segments` are (length, sees), laid out one after another: each segment sees the `past` cached
    tokens, itself causally, and for each (segment index, count) in `sees` the first `count`
    tokens of that (earlier) segment. So one sequence holds what would otherwise need a batch of
    rows, each with its own copy of the cache.
    """
    visible = segment_visibility(segments)
    fed = visible.shape[0]
    mask = torch.zeros(fed, past + fed, dtype=dtype)
    mask[:, past:] = torch.zeros(fed, fed, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def segment_visibility(segments: list[tuple[int, list[tuple[int, int]]]]) -> torch.Tensor:
    """Who sees whom among the fed tokens of `segment_mask`'s segments: [S, S] bool, True = visible."""
    key = tuple((length, tuple(sees)) for length, sees in segments)
    return _visibility(key).clone()  # decoders feed the same few layouts again and again


@functools.lru_cache(maxsize=1024)
def _visibility(segments: tuple) -> torch.Tensor:
    fed = sum(length for length, _ in segments)
    visible = torch.zeros(fed, fed, dtype=torch.bool)
    starts = []
    start = 0
    for length, sees in segments:
        starts.append(start)
        visible[start : start + length, start : start + length] = torch.ones(length, length, dtype=torch.bool).tril()
        for other, count in sees:
            visible[start : start + length, starts[other] : starts[other] + count] = True
        start += length
    return visible


def rows_mask(cache_padding: torch.Tensor, fed_visible: torch.Tensor, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Additive mask [B, 1, W, C + W] for a batch whose rows each feed their own tokens after a shared cache.

    `cache_padding` [B, C] (True = not this row's entry) hides other rows' padding in the cache;
    `fed_visible` [B, W, W] says which of its fed tokens each fed token sees.
    """
    rows, width = fed_visible.shape[:2]
    columns = cache_padding.shape[1]
    hidden = torch.finfo(dtype).min
    mask = torch.zeros(rows, 1, width, columns + width, dtype=dtype)
    mask[:, 0, :, columns:].masked_fill_(~fed_visible, hidden)
    if cache_padding.any():  # a decode alone has none
        mask[:, 0, :, :columns].masked_fill_(cache_padding[:, None, :], hidden)
    return mask.to(device)
