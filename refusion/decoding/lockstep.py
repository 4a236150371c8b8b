"""Several prompts of any decoder in lockstep: each decode runs as written, and their model calls share forwards.

For decoders without a `ROW` (`refusion`, `mdm`, `fast-dllm`), whose steps make several calls of
different widths with caches of their own. Each prompt's `decode` runs on its own thread with a
`LockstepRunner` in place of the model runner; a model call hands its inputs (ids, positions, its
own cache, its mask, the logits it wants) to the coordinator and waits. Once every unfinished
decode waits on a call, the coordinator runs all the calls as one forward: their caches stacked
(each left-padded to the longest), their tokens side by side (right-padded to the widest), one
additive mask that gives each row exactly the keys it would see alone. Each decode then gets its
own logits, and its cache the keys and values of what it fed, as if it had called the model alone.

Only one decode thread runs at a time (the coordinator resumes them one by one), so a decode's
calls, random draws and callbacks happen in the order they do alone. Stacking copies the caches on
every forward: cheaper than the forwards it saves, but a row-native decoder (`batching.Batch`)
does better. Knows nothing about tokenizers.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from .. import kv_cache
from .runner import DecodeOutput, ModelRunner


class Abandoned(Exception):
    """Raised inside a decode whose batch failed elsewhere, to end its thread."""


class Call:
    """One decode's model call, waiting for the batched forward."""

    def __init__(self, input_ids, position_ids, cache, attention_mask, logits_to_keep):
        self.input_ids, self.position_ids, self.cache = input_ids, position_ids, cache
        self.attention_mask, self.logits_to_keep = attention_mask, logits_to_keep
        self.logits: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    def read_offsets(self) -> list[int]:
        """The fed offsets whose logits the caller gets back, in the order it gets them."""
        keep = self.logits_to_keep
        if isinstance(keep, torch.Tensor):
            return keep.tolist()
        return list(range(self.width - keep, self.width)) if 0 < keep < self.width else list(range(self.width))


class LockstepRunner(ModelRunner):
    """A decode's runner: calls go to the coordinator's batched forward; forwards are counted per decode."""

    def __init__(self, shared: ModelRunner, lane: "Lane"):
        self.model, self.suppress_token_id, self.stats = shared.model, shared.suppress_token_id, shared.stats
        self.device, self.dtype, self.cache_keyword = shared.device, shared.dtype, shared.cache_keyword
        self.forward_passes = 0
        self.lane, self.shared = lane, shared

    def alone(self, input_ids, position_ids, cache, logits_to_keep: int = 0):
        """Straight to the model: while this decode's thread runs, every other decode waits on a call."""
        self.forward_passes += 1
        return self.shared.alone(input_ids, position_ids, cache, logits_to_keep)

    def __call__(self, input_ids, position_ids, cache, attention_mask=None, logits_to_keep: int = 0):
        self.forward_passes += 1
        return self.lane.call(Call(input_ids, position_ids, cache, attention_mask, logits_to_keep))


class Lane:
    """One decode's thread and its hand-over with the coordinator: run until the next call or the end."""

    def __init__(self, work: Callable[["Lane"], DecodeOutput]):
        self.work = work
        self.call_waiting: Call | None = None
        self.output: DecodeOutput | None = None
        self.error: BaseException | None = None
        self.done = False
        self.abandoned = False  # another decode failed: this one ends at its next call
        self._turn = threading.Semaphore(0)  # the decode may run
        self._yielded = threading.Semaphore(0)  # the decode waits on a call or has ended
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._turn.acquire()
        try:
            self.output = self.work(self)
        except Abandoned:
            pass
        except BaseException as error:  # handed to the caller of `decode_lockstep`
            self.error = error
        self.done = True
        self._yielded.release()

    def call(self, call: Call) -> torch.Tensor:
        """On the decode's thread: wait until the coordinator has run the call."""
        self.call_waiting = call
        self._yielded.release()
        self._turn.acquire()
        if self.abandoned:
            raise Abandoned
        logits, self.call_waiting = call.logits, None
        return logits

    def abandon(self) -> None:
        """End a decode that waits on a call (its result is not wanted)."""
        if not self.done and self.call_waiting is not None:
            self.abandoned = True
            self._turn.release()
            self._yielded.acquire()

    def resume(self) -> None:
        """On the coordinator's thread: let the decode run until its next call or its end."""
        if not self._thread.is_alive() and not self.done:
            self._thread.start()
        self._turn.release()
        self._yielded.acquire()


class Lockstep:
    """Decodes whose model calls share forwards; a decode may join between any two forwards (the server's batch)."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner
        self.lanes: list[Lane] = []

    def __len__(self) -> int:
        return len(self.lanes)

    def add(self, work: Callable[[ModelRunner], DecodeOutput]) -> Lane:
        """Start `work(runner)` (a decode) and run it up to its first model call."""
        lane = Lane(lambda lane: work(LockstepRunner(self.runner, lane)))
        lane.resume()
        self.lanes.append(lane)
        return lane

    def step(self) -> list[Lane]:
        """One forward for every waiting decode, each then run up to its next call; returns the lanes that ended.

        A lane that ended with an error carries it (`lane.error`); the others go on. If the forward
        itself fails, every lane in it ends with that error.
        """
        waiting = [lane for lane in self.lanes if not lane.done]
        if waiting:
            try:
                batched_forward(self.runner, [lane.call_waiting for lane in waiting])
            except Exception as error:
                for lane in waiting:  # abandoning ends each thread, which marks the lane done
                    lane.error = error
                    lane.abandon()
            else:
                for lane in waiting:
                    lane.resume()
        ended = [lane for lane in self.lanes if lane.done]
        self.lanes = [lane for lane in self.lanes if not lane.done]
        return ended

    def abandon(self) -> None:
        """End every decode still waiting on a call (their results are not wanted)."""
        for lane in self.lanes:
            lane.abandon()
        self.lanes = []


def decode_lockstep(runner: ModelRunner, works: list[Callable[[ModelRunner], DecodeOutput]]) -> list[DecodeOutput]:
    """Run every `work(runner)` (a decode), their model calls batched; their outputs, in order.

    Each output is the one that decode gives alone, with `forward_passes` its own calls. The first
    error a decode raises is raised here, and the other decodes are ended.
    """
    group = Lockstep(runner)
    lanes = [group.add(work) for work in works]
    try:
        while len(group):
            for lane in group.step():
                if lane.error is not None:
                    raise lane.error
        return [lane.output for lane in lanes]
    finally:
        group.abandon()


def batched_forward(runner: ModelRunner, calls: list[Call]) -> None:
    """Run the calls as one forward; give each its logits and append its fed tokens' KV to its own cache."""
    rows, width = len(calls), max(call.width for call in calls)
    lengths = [kv_cache.length(call.cache) if kv_cache.started(call.cache) else 0 for call in calls]
    columns = max(lengths)
    ids = torch.zeros(rows, width, dtype=torch.long)
    positions = torch.zeros(rows, width, dtype=torch.long)
    visible = torch.zeros(rows, width, columns + width, dtype=torch.bool)
    for r, (call, length) in enumerate(zip(calls, lengths)):
        fed = call.width
        ids[r, :fed] = call.input_ids[0].cpu()
        positions[r, :fed] = call.position_ids[0].cpu()
        own = torch.ones(fed, length + fed, dtype=torch.bool).tril(diagonal=length)  # causal: the model's own mask
        if call.attention_mask is not None:  # additive [1, 1, fed, length + fed]: 0 = visible
            own = call.attention_mask[0, 0].cpu() > torch.finfo(call.attention_mask.dtype).min / 2
        visible[r, :fed, columns - length : columns] = own[:, :length]
        visible[r, :fed, columns : columns + fed] = own[:, length:]
        visible[r, fed:, columns + fed :] = torch.eye(width - fed, dtype=torch.bool)  # a pad sees itself
    stacked = kv_cache.new_cache()
    if columns:
        kv_cache.append(stacked, _stack([call.cache for call in calls], lengths, columns))
    mask = torch.zeros(visible.shape, dtype=runner.dtype).masked_fill(~visible, torch.finfo(runner.dtype).min)
    reads = [call.read_offsets() for call in calls]
    union = sorted({offset for read in reads for offset in read})
    where = {offset: i for i, offset in enumerate(union)}
    logits = runner(ids, positions, stacked, mask[:, None].to(runner.device),
                    logits_to_keep=torch.tensor(union, device=runner.device))
    # What the forward fed, as views: the stacked cache is dropped unchanged once each call's cache has its copy.
    fed_kv = [(k[:, :, columns:], v[:, :, columns:]) for k, v in kv_cache.layer_tensors(stacked)]
    for r, (call, read) in enumerate(zip(calls, reads)):
        kv_cache.append(call.cache, [(k[r : r + 1, :, : call.width], v[r : r + 1, :, : call.width]) for k, v in fed_kv])
        call.logits = logits[r : r + 1, [where[offset] for offset in read]]


def _stack(caches, lengths: list[int], columns: int) -> kv_cache.LayerKV:
    """Every cache's layers as one batch [rows, H, columns, D], each left-padded with zeros to `columns`."""
    template = next(cache for cache, length in zip(caches, lengths) if length)
    stacked = []
    for index, layer in enumerate(kv_cache.layer_tensors(template)):
        keys = layer[0].new_zeros(len(caches), *layer[0].shape[1:2], columns, layer[0].shape[-1])
        values = layer[1].new_zeros(len(caches), *layer[1].shape[1:2], columns, layer[1].shape[-1])
        for r, (cache, length) in enumerate(zip(caches, lengths)):
            if length:
                own_keys, own_values = kv_cache.layer_tensors(cache)[index]
                keys[r, :, columns - length :] = own_keys[0]
                values[r, :, columns - length :] = own_values[0]
        stacked.append((keys, values))
    return stacked
