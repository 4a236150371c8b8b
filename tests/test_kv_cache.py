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


def test_appends_truncations_and_row_changes_keep_the_entries_a_plain_cache_keeps():
    """Every helper, in turn, on a growing cache and on transformers' own: the same entries throughout."""
    from transformers import DynamicCache

    growing, plain = numbered_cache(3, 5), DynamicCache()
    for layer, (keys, values) in enumerate(kv_cache.layer_tensors(growing)):
        plain.update(keys.clone(), values.clone(), layer)
    steps = [lambda c: kv_cache.truncate(c, 3),
             lambda c: kv_cache.append(c, [(torch.full((3, 1, 70, 1), 7.0), torch.full((3, 1, 70, 1), 7.0))] * 2),
             lambda c: kv_cache.truncate(c, 40),
             lambda c: kv_cache.select_rows(c, torch.tensor([2, 0])),
             lambda c: kv_cache.append(c, [(torch.full((2, 1, 2, 1), 8.0), torch.full((2, 1, 2, 1), 8.0))] * 2),
             lambda c: kv_cache.keep_tail_columns(c, 38, torch.tensor([[0, 3], [1, 2]])),
             lambda c: kv_cache.move_columns(c, 30, 2, 5)]
    for step in steps:
        step(growing)
        step(plain)
        assert kv_cache.length(growing) == kv_cache.length(plain)
        assert columns_of(growing) == columns_of(plain)


def test_an_append_writes_after_the_entries_and_a_truncation_moves_their_end_without_copying_them():
    cache = numbered_cache(1, 10)
    first_entry = kv_cache.layer_tensors(cache)[0][0].data_ptr()
    for column in range(10, 40):
        kv_cache.truncate(cache, column - 1)  # a draft cut, then two entries appended: a lossless step
        kv_cache.append(cache, [(torch.full((1, 1, 2, 1), float(column)),) * 2] * 2)
        assert kv_cache.layer_tensors(cache)[0][0].data_ptr() == first_entry
    assert columns_of(cache)[0][0] == list(range(9)) + list(range(10, 40)) + [39]


def test_a_segment_taken_before_a_truncation_keeps_its_entries_when_others_are_appended_where_they_were():
    cache = numbered_cache(1, 10)
    taken = kv_cache.segment(cache, 6, 3)
    kv_cache.truncate(cache, 5)
    kv_cache.append(cache, [(torch.zeros(1, 1, 4, 1), torch.zeros(1, 1, 4, 1))] * 2)
    assert [keys[0, 0, :, 0].tolist() for keys, _ in taken] == [[6.0, 7.0, 8.0]] * 2
