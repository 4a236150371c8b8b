"""Calling the model: one place that builds the forward's keyword arguments, counts forwards and times them.

Works with any object that behaves like a transformers causal-LM forward: keyword arguments
`input_ids`, `position_ids`, `cache` (`past_key_values` in older transformers), `use_cache`,
`attention_mask` (None = causal over the cache order, or an additive float mask [B, 1, S, cache + S])
and `logits_to_keep`; it returns `.logits` and updates the cache it was given. Knows nothing about decoding strategies.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import invariant_kernels, kv_cache
from ..attention import rows_mask


def cache_keyword(model) -> str:
    """The forward's name for the KV cache: `cache` in newer transformers, `past_key_values` before (and in fakes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(getattr(base, "forward", base)).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@dataclass
class ForwardStats:
    """Forwards counted and timed by the number of new tokens they fed (summed over the batch)."""

    by_width: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0.0]))  # width -> [count, seconds]

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.by_width.values())

    def copy(self) -> "ForwardStats":
        copied = ForwardStats()
        for width, (count, seconds) in self.by_width.items():
            copied.by_width[width] = [count, seconds]
        return copied

    def minus(self, before: "ForwardStats") -> "ForwardStats":
        """The forwards since `before` was copied."""
        since = ForwardStats()
        for width, (count, seconds) in self.by_width.items():
            earlier = before.by_width.get(width, [0, 0.0])
            if count > earlier[0]:
                since.by_width[width] = [count - earlier[0], seconds - earlier[1]]
        return since

    def add(self, width: int, seconds: float) -> None:
        entry = self.by_width[width]
        entry[0] += 1
        entry[1] += seconds


@dataclass
class ModelRunner:
    model: object
    forward_passes: int = 0
    suppress_token_id: int | None = None
    """A token never to be predicted (the mask token: it is an input marker, not text)."""
    stats: ForwardStats = field(default_factory=ForwardStats)
    device: torch.device = field(init=False)
    dtype: torch.dtype = field(init=False)
    cache_keyword: str = field(init=False)

    def __post_init__(self):
        self.device = model_device(self.model)
        invariant_kernels.ensure(self.model)  # a token's logits the same whatever else its forward feeds
        self.cache_keyword = cache_keyword(self.model)
        try:
            self.dtype = next(self.model.parameters()).dtype
        except (AttributeError, StopIteration, TypeError):
            self.dtype = torch.float32

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, attention_mask=None,
                 logits_to_keep: int = 0) -> torch.Tensor:
        """input_ids, position_ids: [B, S] appended after `cache` -> logits [B, S, V].

        `logits_to_keep=n` returns the logits of the last n positions only ([B, n, V]): the LM head
        is a large share of a narrow forward, so decoders ask only for what they read.
        """
        started = time.perf_counter()
        new = input_ids.shape[1]
        if isinstance(logits_to_keep, int) and 0 < logits_to_keep < new:
            # As explicit indices: transformers slices the hidden states with an int, and on a bf16
            # CPU the LM head over that slice made the whole forward several times slower than over
            # the gathered copy that indices give.
            logits_to_keep = torch.arange(new - logits_to_keep, new, device=self.device)
        output = self.model(
            input_ids=input_ids.to(self.device),
            position_ids=position_ids.to(self.device),
            use_cache=True,
            attention_mask=attention_mask,
            logits_to_keep=logits_to_keep,
            **{self.cache_keyword: cache},
        )
        logits = output.logits
        if self.suppress_token_id is not None:
            logits[..., self.suppress_token_id] = torch.finfo(logits.dtype).min
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so that the time below is the forward's, not its launch's
        self.stats.add(input_ids.numel(), time.perf_counter() - started)
        self.forward_passes += 1
        return logits

    def alone(self, input_ids: torch.Tensor, position_ids: torch.Tensor, cache, logits_to_keep: int = 0) -> torch.Tensor:
        """A forward of one row's own, never batched with others', under PyTorch's attention where the model has
        the invariant kernels (`invariant_kernels.native_attention`): a long prompt's cache, fed by the same
        call wherever the prompt goes."""
        with invariant_kernels.native_attention():
            return self(input_ids, position_ids, cache, logits_to_keep=logits_to_keep)


def cache_prefix(runner: ModelRunner, prefix: list[int], position: int):
    """A prompt's tokens but its last (`prefix`, the first at `position`) cached by a forward of their own: a
    one-row cache (empty for no tokens). A long prompt of a model with the invariant kernels is fed alone under
    PyTorch's attention (`invariant_kernels.caches_apart`, `ModelRunner.alone`): every decoder and batch caches it
    by this same call."""
    cache = kv_cache.new_cache()
    if prefix:
        call = runner.alone if invariant_kernels.caches_apart(runner.model, len(prefix)) else runner
        call(torch.tensor([prefix]), torch.arange(position, position + len(prefix))[None], cache, logits_to_keep=1)
    return cache


def cache_prefixes(runner: ModelRunner, prefixes: list[list[int]], positions: list[int]) -> list:
    """`cache_prefix` for several prompts at once: one one-row cache each, holding the entries it gets alone. Under
    the invariant attention the short ones share one forward (`packed_forward`: each attends to itself alone, so
    its entries are bitwise those of a forward of its own); a long one is cached apart as `cache_prefix` does, and
    so is every one of a model whose kernels do not pack."""
    shared = [i for i, prefix in enumerate(prefixes)
              if prefix and not invariant_kernels.caches_apart(runner.model, len(prefix))]
    if not shared or not invariant_kernels.packs(runner.model):
        return [cache_prefix(runner, prefix, position) for prefix, position in zip(prefixes, positions)]
    packed = kv_cache.new_cache()
    pieces = [(prefixes[i], list(range(positions[i], positions[i] + len(prefixes[i]))), None, []) for i in shared]
    pieces[0][3].append(0)  # a logit nobody reads: the forward is for the cache
    _, bounds = packed_forward(runner, pieces, packed)
    caches = {}
    for i, start, end in zip(shared, bounds, bounds[1:]):
        caches[i] = kv_cache.new_cache()
        kv_cache.append(caches[i], kv_cache.segment(packed, start, end - start))
    return [caches[i] if i in caches else cache_prefix(runner, prefix, position)
            for i, (prefix, position) in enumerate(zip(prefixes, positions))]


def packed_forward(runner: ModelRunner, pieces: list[tuple[list[int], list[int], torch.Tensor | None, list[int]]],
                   cache) -> tuple[torch.Tensor, list[int]]:
    """One forward of sequences laid end to end in one row after an empty `cache`, each attending to itself alone
    (`invariant_kernels.packed`), filled up to a `packed_width` by a segment nothing reads. `pieces`: (ids, their
    positions, [n, n] which of them each sees or None for causal, the offsets in it whose logits to return).
    Returns (logits [1, all pieces' reads in order, V], where each piece starts and the last ends)."""
    bounds = list(itertools.accumulate((len(piece[0]) for piece in pieces), initial=0))
    fed = bounds[-1]
    filler = packed_width(fed) - fed
    ids = [token for piece in pieces for token in piece[0]] + [0] * filler
    positions = [p for piece in pieces for p in piece[1]] + list(range(filler))
    seen = [visible if visible is not None else torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
            for ids, _, visible, _ in pieces]
    visible = torch.block_diag(*seen, torch.ones(filler, filler, dtype=torch.bool).tril())
    mask = rows_mask(torch.zeros(1, 0, dtype=torch.bool), visible[None], runner.dtype, runner.device)
    read = [start + offset for start, piece in zip(bounds, pieces) for offset in piece[3]]
    with invariant_kernels.packed(list(zip(bounds, bounds[1:])) + ([(fed, fed + filler)] if filler else [])):
        logits = runner(torch.tensor([ids]), torch.tensor([positions]), cache, mask,
                        logits_to_keep=torch.tensor(read, device=runner.device))
    return logits, bounds


PACKED_STEP = (512, 32, 128)
"""Packed forwards are filled up to a multiple of 32 tokens, of 128 from 512 on."""


def packed_width(tokens: int) -> int:
    """The width a forward of `tokens` packed tokens is filled up to (with a segment of its own that nothing reads).

    CPU kernels and the memory allocator keep what they built for every shape a process feeds: in a 10-minute soak of
    the server, whose joins packed prompts to widths of every sum, its memory grew by 8% (benchmarks/load/soak-joins);
    300 packs of random widths grew it by 343 MB, and by 1 MB filled (`benchmarks/packed_widths.py`). A filler of
    at most 31 (127) tokens buys that."""
    switch, small, large = PACKED_STEP
    step = small if tokens < switch else large
    return -(-tokens // step) * step


def first_cache(runner: ModelRunner, prompt: list[int]):
    """A decode's first cache and how many of the prompt's tokens it holds: all but the last where the prompt is
    long and the model has the invariant kernels (`cache_prefix`); else none, and its first forward feeds the
    whole prompt."""
    start = len(prompt) - 1 if invariant_kernels.caches_apart(runner.model, len(prompt) - 1) else 0
    return cache_prefix(runner, prompt[:start], 0), start


CALIBRATION_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
BATCH_CALIBRATION_WIDTHS = (1, 2, 3, 4, 6, 8)
"""Widths measured for a batch of rows: rows widen only by a few tokens each."""
CALIBRATION_CONTEXT = 128
CALIBRATION_ROUNDS = 7
BATCH_CALIBRATION_ROUNDS = 3  # a batch's forwards take longer, and vary less


def rows_bucket(rows: int) -> int:
    """Batches are measured at powers of two rows: the next one up stands for the rows between."""
    return 1 << (max(rows, 1) - 1).bit_length()


@torch.no_grad()
def width_costs(model, rows: int = 1, measure: bool = True) -> dict[int, float] | None:
    """A forward's cost by the number of new tokens each of `rows` rows feeds, relative to one token each,
    measured once per model and number of rows (`rows_bucket`).

    After a context of 128 cached tokens per row, CALIBRATION_ROUNDS rounds each time one forward at
    every width, and each width keeps its fastest: a busy machine slows some forwards, never speeds one
    up, and interleaving the widths spreads a slow spell over all of them. A wider forward never
    costs less than a narrower one (what is left of the noise could say otherwise). Rows are measured
    as rows under the additive mask a batch is fed with, not as one row of their tokens: each attends
    to its own cache, and on this CPU (bf16, one thread) 16 rows of two tokens cost 1.45x 16 of one,
    where one row of 32 tokens costs 1.3x one of 16 (`benchmarks/bench/cpu-costs.txt`). Kept on the model
    (per device, dtype and rows) so that a process measures each once; `measure=False` only reads what was
    measured (None if nothing).
    """
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    rows = rows_bucket(rows)
    key = (str(device), dtype) if rows == 1 else (str(device), dtype, rows)
    known = getattr(model, "_refusion_width_costs", {})
    if key in known or not measure:
        return known.get(key)
    cache = kv_cache.new_cache()
    keyword = cache_keyword(model)
    context = torch.zeros(rows, CALIBRATION_CONTEXT, dtype=torch.long, device=device)
    model(input_ids=context, use_cache=True, logits_to_keep=1, **{keyword: cache})
    widths = CALIBRATION_WIDTHS if rows == 1 else BATCH_CALIBRATION_WIDTHS
    fastest = dict.fromkeys(widths, float("inf"))
    for _ in range(CALIBRATION_ROUNDS if rows == 1 else BATCH_CALIBRATION_ROUNDS):
        for width in widths:
            ids = torch.zeros(rows, width, dtype=torch.long, device=device)
            positions = torch.arange(CALIBRATION_CONTEXT, CALIBRATION_CONTEXT + width, device=device).repeat(rows, 1)
            # Rows of a batch are always fed under an additive mask (their padding), which costs more than none.
            mask = None if rows == 1 else rows_mask(torch.zeros(rows, CALIBRATION_CONTEXT, dtype=torch.bool),
                                                    torch.ones(width, width, dtype=torch.bool).tril().repeat(rows, 1, 1),
                                                    dtype, device)
            started = time.perf_counter()
            model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=width,
                  **{keyword: cache})
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            fastest[width] = min(fastest[width], time.perf_counter() - started)
            kv_cache.truncate(cache, CALIBRATION_CONTEXT)
    table, most = {}, 0.0
    for width in widths:
        most = max(most, fastest[width] / fastest[1])
        table[width] = most
    model._refusion_width_costs = {**known, key: table}
    return table


@torch.no_grad()
def build_kernels(model, most: int) -> None:
    """One forward at every width 1 .. `most`, every position's logits kept, after a few tokens of context.

    On a CPU, bf16 matrix kernels are built for each new input shape the first time it is seen (on
    this AMD EPYC about 1.6 ms, most of a forward of a 2M-parameter model: `benchmarks/bench/cpu-costs.txt`),
    and a decoder whose forwards vary in width meets many shapes. A long-running process has built them all;
    a benchmark builds them before it times anything."""
    device = model_device(model)
    keyword = cache_keyword(model)
    cache = kv_cache.new_cache()
    model(input_ids=torch.zeros(1, 4, dtype=torch.long, device=device), use_cache=True, logits_to_keep=1,
          **{keyword: cache})
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    most = min(most, positions - 4) if isinstance(positions, int) else most  # no forward past what the model knows
    for width in range(1, most + 1):
        model(input_ids=torch.zeros(1, width, dtype=torch.long, device=device),
              position_ids=torch.arange(4, 4 + width, device=device)[None], use_cache=True, logits_to_keep=width,
              **{keyword: cache})
        kv_cache.truncate(cache, 4)


def interpolate_cost(table: dict[int, float], width: int) -> float:
    """Piecewise-linear cost between measured widths; past the widest, in proportion to the tokens fed.

    Proportion is the safe guess where nothing was measured: a forward that wide computes more than it reads, and
    a table a noisy machine left nearly flat (one token measured slow) would otherwise price any width at next to
    nothing, and the decoder would feed its widest trees (at batch 4, rows of 140 tokens where 3-12 pay)."""
    widths = sorted(table)
    for low, high in zip(widths, widths[1:]):
        if width <= high:
            share = (width - low) / (high - low)
            return table[low] + share * (table[high] - table[low])
    return table[widths[-1]] * width / widths[-1]


@dataclass
class DecodeOutput:
    """What a decoder hands back to `generate`: tokens in text order plus its internal state."""

    tokens: list[int]
    forward_passes: int
    cache: object = None
    decode_order_tokens: list[int] = field(default_factory=list)
    """Prompt then generated tokens in the order they were committed (the cache's order)."""
    decode_order_positions: list[int] = field(default_factory=list)
    cached: int | None = None
    """How many tokens of the decode order the cache covers (None: all); the rest were never needed again."""
    settings: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    """Decoder-specific counts (e.g. drafts offered and accepted), reported with the result."""


class ForwardCost:
    """Relative cost of a forward by tokens fed (`cost(width)`, one row), and of a batch's forward by tokens each
    row feeds (`rows(n)`): measured once per model and number of rows ("auto"), or linear in all tokens fed."""

    def __init__(self, runner: ModelRunner, width_cost: float | str):
        self.model = runner.model
        self.measured = width_cost == "auto" and isinstance(runner.model, torch.nn.Module)
        self.per_token = 0.02 if width_cost == "auto" else float(width_cost)  # "auto" on a stand-in: nothing to time
        self.table = width_costs(runner.model) if self.measured else None

    def __call__(self, width: int) -> float:
        return interpolate_cost(self.table, width) if self.measured else 1 + self.per_token * (width - 1)

    def rows(self, rows: int, measure: bool = False) -> Callable[[int], float]:
        """A batch's forward by each row's width, relative to one token each. Measured where `prepare` (or
        `measure`) had it measured; else every token is taken to cost what the first does, so that only the room
        the widest row leaves is filled (measuring takes seconds: a running server does not stop for it)."""
        if rows == 1:
            return self
        if self.measured:
            table = width_costs(self.model, rows, measure)
            return (lambda width: interpolate_cost(table, width)) if table else float
        return lambda width: self(rows * width) / self(rows)
