"""Moving cached entries: what a decoder keeps of a forward ends up right after what was cached before it."""

import pytest
import torch

from refusion import kv_cache


def numbered_cache(rows: int, columns: int, layers: int = 2):
    """A cache whose entry at (row b, column c) holds 100 b + c in every key, value and layer."""
    cache = kv_cache.new_cache()
    entries = (100 * torch.arange(rows)[:, None] + torch.arange(columns)[None]).float()[:, None, :, None]
    for layer in range(layers):
        cache.update(entries.clone(), entries.clone(), layer)
    return cache


def columns_of(cache) -> list[list[list[int]]]:
    """Per layer, per row, the entries in cache order (keys and values must agree)."""
    out = []
    for keys, values in kv_cache.layer_tensors(cache):
        assert torch.equal(keys, values)
        out.append(keys[:, 0, :, 0].long().tolist())
    return out


@pytest.mark.parametrize("source, target, count", [(6, 3, 2), (4, 2, 4), (5, 1, 5)],
                         ids=["apart", "overlapping", "overlapping-more"])
def test_a_run_of_entries_moves_down_and_what_follows_it_is_cut(source, target, count):
    cache = numbered_cache(1, 10)
    kv_cache.move_columns(cache, source, target, count)
    expected = list(range(target)) + list(range(source, source + count))
    assert columns_of(cache) == [[expected]] * 2


def test_each_row_keeps_its_own_tail_entries():
    cache = numbered_cache(2, 8)
    kv_cache.keep_tail_columns(cache, 3, torch.tensor([[0, 2, 3], [1, 4, 4]]))  # row 1 keeps two; its third is padding
    assert columns_of(cache) == [[[0, 1, 2, 3, 5, 6], [100, 101, 102, 104, 107, 107]]] * 2
