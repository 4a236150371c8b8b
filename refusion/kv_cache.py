"""The only module that touches transformers' KV cache.

Decoders treat the cache as an opaque object and call these helpers: its length, cutting it back,
keeping chosen entries or batch rows, taking the keys/values of a span a forward just appended, and appending
precomputed keys/values. Per-layer tensors are `[B, H, S, D]`. Keys are stored after RoPE, so
slicing or reordering along S keeps every cached entry exact.

Each layer holds its entries in a buffer with room to grow (`GrowingLayer`): appending writes after the
last entry and truncating moves where the entries end, where transformers' own layer copies every cached
entry of every row at every append.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# One entry per layer: (keys, values), each [B, H, S, D].
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose `keys`/`values` are the first entries of buffers with room to grow: an append writes
    into the room (the buffers grow by half when full), a crop leaves a shorter view of the same buffers. Keys or
    values replaced by other tensors (a gather, a batch row added) are copied into new buffers at the next
    append."""

    ROOM = 64  # entries of room at least, beyond what an append needs, when buffers are made
    _buffers = None

    def reset(self) -> None:
        self._buffers = None
        super().reset()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:  # transformers' own initialization (its signature varies by version)
            super().update(key_states[:, :, :0], value_states[:, :, :0], *args, **kwargs)
        length = self.keys.shape[2] if self.keys.dim() == 4 else 0
        needed = length + key_states.shape[2]
        buffers = self._buffers
        if buffers is None or not (_heads_view(self.keys, buffers[0]) and _heads_view(self.values, buffers[1])) \
                or buffers[0].shape[2] < needed:
            room = needed + max(self.ROOM, needed // 2)
            buffers = []
            for old, new in ((self.keys, key_states), (self.values, value_states)):
                buffer = new.new_empty(new.shape[0], new.shape[1], room, new.shape[3])
                if length:
                    buffer[:, :, :length] = old
                buffers.append(buffer)
            self._buffers = buffers
        keys, values = self._buffers
        keys[:, :, length:needed] = key_states
        values[:, :, length:needed] = value_states
        self.keys, self.values = keys[:, :, :needed], values[:, :, :needed]
        return self.keys, self.values


def _heads_view(tensor: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether `tensor` is the first entries of `buffer` (as `update` and `crop` leave it)."""
    return (tensor.dim() == 4 and tensor.data_ptr() == buffer.data_ptr() and tensor.stride() == buffer.stride()
            and tensor.shape[:2] == buffer.shape[:2] and tensor.shape[3] == buffer.shape[3])


def new_cache() -> DynamicCache:
    """An empty cache of `GrowingLayer`s (transformers adds a layer per layer of the model as it fills)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def length(cache: DynamicCache) -> int:
    return cache.get_seq_length()


def truncate(cache: DynamicCache, keep: int) -> None:
    """Keep the first `keep` cached tokens. transformers 5 crops by a *negative* count to remove."""
    remove = length(cache) - keep
    if remove < 0:
        raise ValueError(f"cannot truncate a cache of {length(cache)} tokens to {keep}")
    if remove:
        cache.crop(-remove)


def select(kv: LayerKV, row: int, count: int) -> LayerKV:
    """Row `row` of a batched LayerKV, first `count` tokens: [1, H, count, D] per layer."""
    return [(k[row : row + 1, :, :count, :], v[row : row + 1, :, :count, :]) for k, v in kv]


def append(cache: DynamicCache, kv: LayerKV) -> None:
    """Append precomputed keys/values (as computed by an earlier forward) to the cache."""
    for index, (keys, values) in enumerate(kv):
        cache.update(keys, values, index)


def keep_indices(cache: DynamicCache, indices: torch.Tensor) -> None:
    """Keep only the cached tokens at `indices` (in that order)."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys = layer.keys.index_select(-2, indices.to(layer.keys.device))
            layer.values = layer.values.index_select(-2, indices.to(layer.values.device))


def select_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Keep only the batch rows at `rows` (in that order): finished prompts leave a batch and stop costing work."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
            layer.values = layer.values.index_select(0, rows.to(layer.values.device))


def layer_tensors(cache: DynamicCache) -> LayerKV:
    """Every layer's (keys, values), for inspection and tests."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def segment(cache: DynamicCache, start: int, count: int) -> LayerKV:
    """The keys/values of cached tokens start .. start+count-1: [B, H, count, D] per layer (copies: an append
    after a truncation writes where they were)."""
    return [(layer.keys[..., start : start + count, :].clone(), layer.values[..., start : start + count, :].clone())
            for layer in cache.layers]


def gather_columns(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep, for each batch row b, the cached tokens at `index[b]` ([B, K], in that order).

    What rows of a batch keep of one forward differs by row (how many drafts each accepted); a row
    that keeps fewer repeats an entry, which its owner marks as padding. A cache of one row gives every row of
    `index` its entries (sequences fed end to end in one row become rows of their own).
    """
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = _gather_tokens(layer.keys, index), _gather_tokens(layer.values, index)


def _gather_tokens(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, H, S, D] -> [B, H, K, D]: for each batch row b, the tokens at `index[b]` ([B, K])."""
    expanded = index.to(tensor.device)[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[-1])
    return tensor.expand(index.shape[0], -1, -1, -1).gather(2, expanded)


def keep_tail_columns(cache: DynamicCache, start: int, index: torch.Tensor) -> None:
    """Keep the first `start` cached tokens and after them, for each batch row b, the tokens at `start + index[b]`
    ([B, K], increasing per row; a row that keeps fewer repeats an entry, which its owner marks as padding).

    Only the tail past `start` (what the last forward fed) is read and written, in place: the cache before it is
    neither copied nor moved."""
    count = index.shape[1]
    for layer in cache.layers:
        if layer.is_initialized:
            for tensor in (layer.keys, layer.values):
                tensor[:, :, start:start + count] = _gather_tokens(tensor[:, :, start:], index)
    truncate(cache, start + count)


def move_columns(cache: DynamicCache, source: int, target: int, count: int) -> None:
    """Move the `count` cached tokens from column `source` to column `target` (< source) and cut what follows
    them: a slice copy per layer, cheaper than a gather where what is kept is one run."""
    for layer in cache.layers:
        if layer.is_initialized:
            for tensor in (layer.keys, layer.values):
                moved = tensor[:, :, source:source + count]
                tensor[:, :, target:target + count] = moved.clone() if source < target + count else moved
    truncate(cache, target + count)


def add_rows(cache: DynamicCache, others: list[DynamicCache], rows: int) -> None:
    """Append the batch rows of `others` (one-row caches, empty or not) to the `rows` rows of `cache` (with entries or
    none yet), every row left-padded with zero entries to the longest: one copy of the cache for all of them."""
    reference = next((other for other in others if started(other)), None)
    if reference is not None and not started(cache):  # its rows: zero entries each
        for index, layer in enumerate(reference.layers):
            heads, dim = layer.keys.shape[1], layer.keys.shape[3]
            cache.update(layer.keys.new_zeros(rows, heads, 0, dim), layer.values.new_zeros(rows, heads, 0, dim), index)
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        added = [(other.layers[index].keys, other.layers[index].values) if started(other)  # else a row of padding
                 else (keys.new_zeros(1, keys.shape[1], 0, keys.shape[3]),
                       values.new_zeros(1, values.shape[1], 0, values.shape[3])) for other in others]
        width = max([keys.shape[2]] + [new_keys.shape[2] for new_keys, _ in added])
        layer.keys = torch.cat([_left_pad(keys, width)] + [_left_pad(new_keys, width) for new_keys, _ in added], dim=0)
        layer.values = torch.cat([_left_pad(values, width)] + [_left_pad(new_values, width) for _, new_values in added],
                                 dim=0)


def started(cache) -> bool:
    """Whether the cache holds any layer's entries yet (a new one has none, not even empty ones)."""
    return any(layer.is_initialized for layer in getattr(cache, "layers", []))


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if not missing:
        return tensor
    shape = list(tensor.shape)
    shape[2] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)
