"""Rows that decode together: each step is one forward that feeds every running row its own tokens.

A row is one prompt's decoder state (`autoregressive.ArRow`, `lossless.LosslessRow`). It holds
`pending`, its committed tokens whose KV is not cached yet (the whole prompt at first), and
`position`, the position of the first of them, and it answers two calls per step:

- `feed(rows)` -> `Feed`: the tokens it feeds this step (its pending tokens first), their true
  positions, which of them see which, and the offsets whose logits it reads. `rows` is how many
  rows share the forward, for a row that sizes its work by what the forward costs;
- `take(logits)` with the logits it asked for, in that order: it decides, reports through its own
  callbacks, sets `done` when it has finished, and returns the offsets of the fed tokens whose KV
  the cache keeps (in order: its exact causal cache of the text).

A row may also offer `spare` after `feed`: drafts it can add to its feed at no model work (`Spare`),
and then answers `fill(tokens)` with its feed grown by that many of them. Rows are fed at the widest
row's width, so a shorter row's room costs nothing: the batch fills it, and widens the whole forward
where what every row's drafts add pays for it.

Rows' feeds are laid side by side in a [rows, width] batch, each row's last pending token in the
same column (a shorter prompt is padded on its left), so that the logits read fall in a few
columns and the LM head runs only on those; one additive mask hides from each row the cache
entries and fed tokens that are not its own. Under the invariant attention the first step (nothing
cached yet, every prompt fed whole) lays the feeds end to end in one row instead, each attending to
its own alone: no padding is fed. The cache is shared: a column holds
one entry per row, and `padding` marks the entries that are not that row's (its feed was shorter,
it kept fewer tokens, or it joined with a shorter prompt). Columns that are padding in every row
are cut, and a finished row's cache row is dropped, so that finished rows stop costing work.

A row may join a running batch between steps (the server's continuous batching): its prompt but
the last token is fed in a forward of its own, and its cache row is added to the batch's. Knows nothing about tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .. import invariant_kernels, kv_cache
from ..attention import rows_mask
from .runner import ModelRunner, cache_prefixes, packed_forward

COMPACT_WASTE = 64
"""Re-pack the cache when its width exceeds the longest row's own entries by this many columns."""


@dataclass
class Feed:
    ids: list[int]
    positions: list[int]
    visible: torch.Tensor | None
    """[w, w] bool: which fed tokens each fed token sees (None: causal)."""
    read: list[int]
    """Offsets of the fed tokens whose logits the row reads."""


@dataclass
class Spare:
    """Drafts a row can add to its feed (after `feed`), best first."""

    expected: float
    """Tokens the row's feed is expected to commit without them."""
    gains: list[float]
    """[i]: tokens the (i+1)-th added draft token is expected to add; `fill(k)` adds the first k."""
    cost: Callable[[int], float]
    """Relative cost of the batch's forward by the width its rows are fed at."""


def fill_width(ends: list[int], spares: list[Spare | None]) -> int:
    """The width to feed rows whose feeds end at these columns at: the widest feed's, or wider where the tokens all
    rows are expected to commit per unit of the forward's cost grow. A row without `Spare` is expected to commit one
    token."""
    cost = next(spare.cost for spare in spares if spare)
    floor = max(ends)
    widest = max([floor] + [end + len(spare.gains) for end, spare in zip(ends, spares) if spare])

    def rate(fed: int) -> float:
        tokens = sum(spare.expected + sum(spare.gains[: fed - end]) if spare else 1.0
                     for end, spare in zip(ends, spares))
        return tokens / cost(fed)

    return max(range(floor, widest + 1), key=rate)  # the narrowest of equals


def _seen(feed: Feed) -> torch.Tensor:
    """Which of a feed's tokens each of them sees: its own layout, or causal."""
    fed = len(feed.ids)
    return feed.visible if feed.visible is not None else torch.ones(fed, fed, dtype=torch.bool).tril()


def _inputs(feeds: list[Feed], starts: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The [rows, width] ids and positions, and [rows, width, width] which fed token sees which: each row's feed
    from its start column; padding elsewhere (a pad sees only itself: no row of the mask is all hidden)."""
    if len(feeds) == 1 and not starts[0]:
        feed = feeds[0]
        return torch.tensor([feed.ids]), torch.tensor([feed.positions]), _seen(feed)[None]
    width = max(start + len(feed.ids) for start, feed in zip(starts, feeds))
    ids = torch.zeros(len(feeds), width, dtype=torch.long)
    positions = torch.zeros(len(feeds), width, dtype=torch.long)
    visible = torch.eye(width, dtype=torch.bool).repeat(len(feeds), 1, 1)
    for b, (start, feed) in enumerate(zip(starts, feeds)):
        end = start + len(feed.ids)
        ids[b, start:end] = torch.tensor(feed.ids)
        positions[b, start:end] = torch.tensor(feed.positions)
        visible[b, start:end, start:end] = _seen(feed)
    return ids, positions, visible


def _prefix_and_run(keep: list[int]) -> tuple[int, int] | None:
    """(p, s) where `keep` is 0 .. p-1 followed by one run s, s+1, ... (s > p); else None."""
    p = 0
    while p < len(keep) and keep[p] == p:
        p += 1
    rest = keep[p:]
    if rest and rest == list(range(rest[0], rest[0] + len(rest))):
        return p, rest[0]
    return None


class Batch:
    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.rows: list = []
        self._empty()

    def _empty(self) -> None:
        self.cache = kv_cache.new_cache()
        self.padding = torch.zeros(0, 0, dtype=torch.bool)  # [rows, columns], True = not that row's entry
        self.started = False  # a step has run

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, *rows) -> None:
        """Take rows in. Before the first step each one's whole prompt rides along that step (as it would alone);
        into a running batch, their prompts but the last token are cached by a forward of their own (one for all of
        them: `cache_prefixes`), so that the running rows' steps never carry a long prompt's width; so is a long
        prompt before the first step, where the invariant kernels would feed it in float64
        (`invariant_kernels.caches_apart`)."""
        riding = [not (self.started and self.rows)
                  and not invariant_kernels.caches_apart(self.runner.model, len(row.pending) - 1) for row in rows]
        apart = [row for row, rides in zip(rows, riding) if not rides]
        # Their caches first: a forward that fails leaves the batch as it was.
        caches = cache_prefixes(self.runner, [row.pending[:-1] for row in apart], [row.position for row in apart])
        if not self.rows:
            self._empty()
        for row in (row for row, rides in zip(rows, riding) if rides):
            self._ride(row)
        if apart:
            self._add_cached(apart, caches)

    def _ride(self, row) -> None:
        """A row whose whole prompt the first step feeds."""
        columns = self.padding.shape[1]
        if columns:  # a long prompt was cached apart: this row has none of its entries
            kv_cache.add_rows(self.cache, [kv_cache.new_cache()], len(self.rows))
        self.rows.append(row)
        self.padding = torch.cat([self.padding, torch.ones(1, columns, dtype=torch.bool)])

    def _add_cached(self, rows: list, caches: list) -> None:
        """Rows whose prompts but the last token `caches` hold (one row each), added in one copy of the cache."""
        prefixes = [len(row.pending) - 1 for row in rows]
        for row, prefix in zip(rows, prefixes):
            row.forwards += bool(prefix)
            row.pending, row.position = row.pending[-1:], row.position + prefix
        columns = self.padding.shape[1]
        width = max([columns] + prefixes)
        padding = torch.cat([torch.ones(len(self.rows), width - columns, dtype=torch.bool), self.padding], 1)
        theirs = torch.arange(width)[None] < width - torch.tensor(prefixes)[:, None]
        kv_cache.add_rows(self.cache, caches, len(self.rows))
        self.padding = torch.cat([padding, theirs])
        self.rows.extend(rows)

    def step(self) -> list:
        """One forward for every row; returns the rows that finished (they have left the batch)."""
        self.started = True
        feeds = [row.feed(len(self.rows)) for row in self.rows]
        if len(feeds) > 1 and not self.padding.shape[1] and invariant_kernels.packs(self.runner.model):
            self._packed_step(feeds)
        else:
            self._padded_step(feeds)
        finished = [row for row in self.rows if row.done]
        if finished:
            self._leave([b for b, row in enumerate(self.rows) if not row.done])
        else:
            self.compact()
        return finished

    def _padded_step(self, feeds: list[Feed]) -> None:
        """Rows side by side, each row's last pending token in one column: the logits read are then mostly in the
        same few columns (prompts of different lengths are padded on the left), and the LM head runs only on those."""
        last = max(len(row.pending) for row in self.rows) - 1
        starts = [last - len(row.pending) + 1 for row in self.rows]
        feeds = self._filled(feeds, starts)
        rows, columns = len(feeds), self.padding.shape[1]
        ids, positions, visible = _inputs(feeds, starts)
        causal = rows == 1 and feeds[0].visible is None and not self.padding.any()
        mask = None if causal else rows_mask(self.padding, visible, self.runner.dtype, self.runner.device)
        read = sorted({start + offset for start, feed in zip(starts, feeds) for offset in feed.read})
        logits = self.runner(ids, positions, self.cache, mask, logits_to_keep=torch.tensor(read, device=self.runner.device))
        if rows == 1 and read == feeds[0].read:  # alone, the logits are already in the order the row reads them
            self.rows[0].forwards += 1
            keeps = [self.rows[0].take(logits[0])]
        else:
            keeps = self._take(logits, starts, feeds, read)
        self._keep(columns, keeps)

    def _packed_step(self, feeds: list[Feed]) -> None:
        """The first step of rows with nothing cached: their feeds laid end to end in one row, each attending to its
        own alone (`invariant_kernels.packed`), so that no padding is fed (16 bench prompts: 671 tokens, not 912);
        then each row's kept entries become its cache row."""
        logits, starts = packed_forward(self.runner, [(f.ids, f.positions, f.visible, f.read) for f in feeds], self.cache)
        read = [start + offset for start, feed in zip(starts, feeds) for offset in feed.read]  # the logits' order
        keeps = self._take(logits.expand(len(feeds), -1, -1), starts, feeds, read)
        most = max(len(keep) for keep in keeps)
        index = torch.tensor([keep + keep[:1] * (most - len(keep)) for keep in keeps])  # repeats: padding
        kv_cache.gather_columns(self.cache, index)
        self.padding = torch.arange(most)[None] >= torch.tensor([len(keep) for keep in keeps])[:, None]

    def _take(self, logits: torch.Tensor, starts: list[int], feeds: list[Feed], read: list[int]) -> list[list[int]]:
        """Each row takes the logits it asked for (row b of `logits` [B, len(read), V], read at `starts[b]` plus its
        offsets); returns what each keeps, as columns of its row of the forward."""
        where = {offset: i for i, offset in enumerate(read)}
        keeps = []
        for b, (row, start, feed) in enumerate(zip(self.rows, starts, feeds)):
            row.forwards += 1
            kept = row.take(logits[b, [where[start + offset] for offset in feed.read]])
            keeps.append([start + offset for offset in kept])
        return keeps

    def _filled(self, feeds: list[Feed], starts: list[int]) -> list[Feed]:
        """Every row is fed at the widest feed's width: rows that offer spare drafts fill their room with them,
        and the forward widens where that pays for every row (`fill_width`)."""
        spares = [getattr(row, "spare", None) for row in self.rows]
        if len(feeds) == 1 or not any(spares):
            return feeds
        ends = [start + len(feed.ids) for start, feed in zip(starts, feeds)]
        width = fill_width(ends, spares)
        return [row.fill(min(width - end, len(spare.gains))) if spare and width > end else feed
                for row, feed, end, spare in zip(self.rows, feeds, ends, spares)]

    def _keep(self, columns: int, keeps: list[list[int]]) -> None:
        """Keep each row's chosen fed entries fed after the `columns` cached before this step."""
        most = max(len(keep) for keep in keeps)
        if all(keep == list(range(len(keep))) for keep in keeps):  # prefixes: cutting the cache is enough
            kv_cache.truncate(self.cache, columns + most)
        elif len(keeps) == 1 and (run := _prefix_and_run(keeps[0])):  # alone: the pending tokens and one chain
            kept_prefix, source = run
            kv_cache.move_columns(self.cache, columns + source, columns + kept_prefix, most - kept_prefix)
        else:
            index = torch.arange(most).repeat(len(keeps), 1)
            for b, keep in enumerate(keeps):
                index[b, : len(keep)] = torch.tensor(keep, dtype=torch.long)
            kv_cache.keep_tail_columns(self.cache, columns, index)
        kept = torch.arange(most)[None] >= torch.tensor([len(keep) for keep in keeps])[:, None]
        self.padding = torch.cat([self.padding, kept], dim=1)

    def _leave(self, running: list[int]) -> None:
        """Drop the finished rows; cut the columns no remaining row uses; re-pack a cache mostly padding."""
        if not running:  # the cache stays as the last row left it (a decode alone returns it) until a row comes
            self.rows = []
            return
        self.rows = [self.rows[b] for b in running]
        kv_cache.select_rows(self.cache, torch.tensor(running))
        self.padding = self.padding[running]
        self.compact()

    def compact(self) -> None:
        """Cut columns that are padding in every row; re-pack each row's entries if most of the cache is waste."""
        if not self.padding.any():
            return
        used = ~self.padding.all(dim=0)
        if not used.all():
            kv_cache.keep_indices(self.cache, used.nonzero()[:, 0])
            self.padding = self.padding[:, used]
        own = (~self.padding).sum(dim=1)
        longest = int(own.max()) if len(own) else 0
        if self.padding.shape[1] - longest > COMPACT_WASTE:
            # Each row's own entries in order, right-aligned; the rest of its columns repeat its first entry as padding.
            index = torch.zeros(len(self.rows), longest, dtype=torch.long)
            padding = torch.ones(len(self.rows), longest, dtype=torch.bool)
            for b in range(len(self.rows)):
                entries = (~self.padding[b]).nonzero()[:, 0]
                index[b, longest - len(entries):] = entries
                padding[b, longest - len(entries):] = False
            kv_cache.gather_columns(self.cache, index)
            self.padding = padding
