"""Kernels that compute a token alike whatever else its forward computes.

On a CPU, PyTorch's fused attention blocks its sums over the keys by the shapes it is given: the same query over
the same visible keys rounds differently when its forward fed more tokens, when masked keys sit between the
visible ones (the branches of a lossless tree, a batch row's padding), or when it is one of more query rows.
Some matrix kernels round a lone row unlike a row among others. In bf16 a decoder that verifies several tokens
per forward then parts from `ar` at near-ties of the AR head, and a batch row from the same prompt alone.

Invariant kernels: attention with float64 sums (the scores of bf16 queries and keys are exact in float64 at any
magnitude a model's activations take, and the softmax and value sums round at 2^-53, far below bf16's 2^-8, in
any order), and the matrix kernels that round a lone row differently fed at least the rows that round alike
(`rows_alike`, measured per weight shape). They cost 1% of `ar`'s speed at batch 1, 8% of the lossless
decoder's and 8-11% at batch 16 on this project's CPU (BENCHMARKS.md). A prompt of LONG_PREFIX tokens or more is
cached by a forward of its own under PyTorch's attention, the same call wherever it goes: in float64 a prompt of
3,000 tokens took 4.9-6.4x longer per request (`benchmarks/long_prompt.py`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import RefusionError
from .files import write_text
from . import hardware, model as models  # modules, not names: hardware imports the decoders, which import this

NAME = "refusion_invariant"


QUERY_CHUNK = 256
"""Query rows per float64 product: a long prompt's scores stay a few hundred MB at most."""

LONG_PREFIX = 256
"""A prompt with at least this many tokens before its last is cached by a forward of its own under PyTorch's
attention (`caches_apart`): in float64 a prefill costs 1.24x that at 128 tokens (about what one more forward
of a token costs), 1.46x at 256, 4.7x at 1,024 and 7.8x at 3,000 (shipped model, 2 threads:
`benchmarks/long_prompt.py`); apart, it is the same call for the same prompt in every decoder and batch, so its
tokens still round alike wherever they go."""

_NATIVE_NOW = contextvars.ContextVar("refusion_native_attention", default=False)
_PACKED = contextvars.ContextVar("refusion_packed_segments", default=None)


def invariant_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """query [B, Hq, Q, D], key/value [B, Hkv, K, D], attention_mask [B, 1, Q, K] (additive float or bool) or None
    (causal: the queries are the last keys) -> ([B, Q, Hq, D], None), as transformers' attention functions return.

    A prompt's prefill is float64 too, since decoders feed a prompt in different company (a lossless first step
    adds drafts, a batch its other rows) and every one of its tokens must round alike; a long one, where that
    would cost several times PyTorch's attention, is cached apart (`caches_apart`). Inside `packed`, each
    segment's queries attend to that segment's keys alone."""
    if _NATIVE_NOW.get():
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    scaling = dim ** -0.5 if scaling is None else scaling
    segments = _PACKED.get()
    if segments is None or keys != queries:  # one segment: every key (a packed forward has no cache before it)
        segments = ((0, queries),)
    output = torch.empty(batch, queries, heads, dim, dtype=query.dtype, device=query.device)
    for first, end in segments:
        span = end - first + keys - queries  # this segment's keys: its own, and any cache before the forward
        # Heads sharing keys one after another, as one matrix per key head: [B * Hkv, K, D].
        key64 = key[:, :, first:first + span].reshape(batch * kv_heads, span, dim).double().transpose(1, 2)
        value64 = value[:, :, first:first + span].reshape(batch * kv_heads, span, dim).double()
        for start in range(first, end, QUERY_CHUNK):
            stop = min(end, start + QUERY_CHUNK)
            bias = _hiding_bias(attention_mask, (queries, keys), first, start, stop, end - first, span,
                                (batch, kv_heads, heads // kv_heads), query.device)
            output[:, start:stop] = _float64_attention(module, query[:, :, start:stop], key64, value64, bias, scaling,
                                                       dropout).transpose(1, 2)
    return output, None


def _float64_attention(module, query, key64, value64, bias, scaling: float, dropout: float) -> torch.Tensor:
    """[B, Hq, Q, D] attention with float64 sums over key64 [B * Hkv, D, K] and value64 [B * Hkv, K, D]; `bias`
    [B * Hkv, Hq / Hkv * Q, K] float64, 0 where a query may look and the lowest float where not, or None where
    every query sees every key."""
    batch, heads, queries, dim = query.shape
    kv_heads = key64.shape[0] // batch
    grouped = query.reshape(batch * kv_heads, heads // kv_heads * queries, dim).double()
    if bias is None:
        scores = torch.bmm(grouped, key64).mul_(scaling)
    else:  # the scaling and the mask in the product's own pass: alpha * sum + 0 is what mul_ gives
        scores = torch.baddbmm(bias, grouped, key64, alpha=scaling)
    weights = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        weights = F.dropout(weights, p=dropout)
    return torch.bmm(weights, value64).to(query.dtype).view(batch, heads, queries, dim)


_LAST_BIAS = threading.local()
"""The biases of the last mask seen, by query chunk: every layer of a forward gets the same mask, so they are built
at its first layer and dropped when another mask (or another shape of forward) comes."""


def _hiding_bias(attention_mask, fed: tuple[int, int], first: int, start: int, stop: int, queries: int, keys: int,
                 heads: tuple[int, int, int], device) -> torch.Tensor | None:
    """The bias of queries start .. stop for `_float64_attention`, over the `keys` keys from column `first` (the
    segment of `queries` queries that begins there) of a forward of `fed` (queries, keys), `heads` being (batch,
    key heads, query heads per key head); None where every query sees every key. No mask: causal, the queries
    being the last keys."""
    if attention_mask is None and queries == 1:
        return None
    # A mask changed in place is a new mask: its version counter moved.
    forward = (fed, heads, None if attention_mask is None else attention_mask._version)
    last = getattr(_LAST_BIAS, "entry", None)
    if last is None or last[0] is not attention_mask or last[1] != forward:
        last = _LAST_BIAS.entry = (attention_mask, forward, {})
    biases = last[2]
    if start not in biases:
        if attention_mask is None:
            visible = torch.ones(stop - start, keys, dtype=torch.bool, device=device)
            hidden = ~visible.tril(keys - queries + start - first)[None, None]
        else:
            chunk = attention_mask[:, :, start:stop, first:first + keys]
            hidden = ~chunk if chunk.dtype == torch.bool else chunk < 0
        biases[start] = _bias(hidden, heads, device)
    return biases[start]


def _bias(hidden: torch.Tensor, heads: tuple[int, int, int], device) -> torch.Tensor:
    """[B or 1, 1, Q, K] True where hidden -> [B * Hkv, Hq / Hkv * Q, K] float64: 0, or the lowest float where
    hidden (not -inf: a row hiding all is no NaN)."""
    batch, kv_heads, groups = heads
    queries, keys = hidden.shape[2], hidden.shape[3]
    bias = torch.zeros(hidden.shape, dtype=torch.float64, device=device).masked_fill_(
        hidden, torch.finfo(torch.float64).min)
    return bias[:, :, None].expand(batch, kv_heads, groups, queries, keys).reshape(batch * kv_heads, -1, keys)


def caches_apart(model, prefix_tokens: int) -> bool:
    """Whether a prompt with `prefix_tokens` tokens before its last is cached by a forward of its own, under
    PyTorch's attention (`native_attention`): a long prompt of a model with the invariant attention."""
    return prefix_tokens >= LONG_PREFIX and _attends_invariantly(model)


@contextlib.contextmanager
def native_attention():
    """PyTorch's fused attention for the forwards inside, where a model has the invariant attention."""
    token = _NATIVE_NOW.set(True)
    try:
        yield
    finally:
        _NATIVE_NOW.reset(token)


def packs(model) -> bool:
    """Whether several prompts are best fed laid end to end in one row (`packed`) rather than padded to the longest:
    under the invariant attention, which attends each segment alone, so that no work is spent on padding."""
    return _attends_invariantly(model)


def _attends_invariantly(model) -> bool:
    """Whether the model's attention is the invariant one (`use`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == NAME


@contextlib.contextmanager
def packed(segments: list[tuple[int, int]]):
    """Forwards inside feed one row holding several sequences laid end to end, (start, end) each, with no cache
    before them: each segment's tokens attend to that segment's alone, as if fed in a forward of its own (the
    mask still says which of them each sees). Only the invariant attention reads this (`packs`)."""
    token = _PACKED.set(tuple(segments))
    try:
        yield
    finally:
        _PACKED.reset(token)


AttentionInterface.register(NAME, invariant_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def rows_alike(weight: torch.Tensor, bias: torch.Tensor | None, most: int = 16) -> int:
    """The fewest rows a linear layer of this weight must be fed for each row to round as among many: 1 where
    every row count rounds alike; measured on random rows against one product of all of them (fewer rows for
    wide outputs such as the LM head's, to keep it under a second)."""
    samples = max(64, min(1024, 2**22 // weight.shape[0]))
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(samples, weight.shape[1], generator=generator).to(weight.dtype)
    reference = F.linear(rows, weight, bias)
    needed = 1
    for count in range(1, most + 1):
        for start in range(0, samples - count + 1, count):
            if not torch.equal(F.linear(rows[start:start + count], weight, bias), reference[start:start + count]):
                needed = count + 1
                break
    return needed


class _PaddedRows:
    """A Linear's forward fed at least `rows` rows (zeros added, their outputs dropped)."""

    def __init__(self, linear: torch.nn.Linear, rows: int):
        self.linear, self.rows = linear, rows

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        count = inputs.numel() // inputs.shape[-1]
        if count >= self.rows:
            return F.linear(inputs, self.linear.weight, self.linear.bias)
        flat = F.pad(inputs.reshape(count, -1), (0, 0, 0, self.rows - count))
        return F.linear(flat, self.linear.weight, self.linear.bias)[:count].reshape(*inputs.shape[:-1], -1)


KERNELS = ("invariant", "native")


def use(model, kernels: str = "invariant") -> None:
    """Give a bf16 (or fp16) model on a CPU the invariant kernels ("invariant") or PyTorch's own ("native": 1-11%
    faster, and decoders that feed different widths or batches part at near-ties). In float32 the kernels' rounding
    differences lie far below the logits' (lossless and `ar` write the same text), and on other devices, and for
    stand-in models, nothing changes: their kernels are left as they are."""
    if kernels not in KERNELS:
        raise RefusionError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, torch.nn.Module) or not hasattr(base, "set_attn_implementation"):
        return
    base._refusion_kernels = kernels
    parameter = next(base.parameters())
    attention = getattr(base.config, "_attn_implementation", None)
    reduced = parameter.dtype in (torch.bfloat16, torch.float16)
    if kernels == "native" or parameter.device.type != "cpu" or not reduced:
        if attention == NAME:
            base.set_attn_implementation(getattr(base, "_refusion_native_attention", "sdpa"))
        for module in base.modules():
            if isinstance(module.__dict__.get("forward"), _PaddedRows):
                del module.forward
        return
    softcapped = getattr(base.config, "attn_logit_softcapping", None) is not None  # not written out here
    if attention in ("sdpa", "eager") and not softcapped:
        base._refusion_native_attention = attention
        base.set_attn_implementation(NAME)
    with torch.no_grad():
        for module in base.modules():
            if type(module) is torch.nn.Linear and module.weight.dtype in (torch.bfloat16, torch.float16):
                rows = _rows_alike_here(module.weight, module.bias)
                if rows > 1:
                    module.forward = _PaddedRows(module, rows)


_MEASURED: dict[str, int] = {}


def _rows_alike_here(weight: torch.Tensor, bias: torch.Tensor | None) -> int:
    """`rows_alike` for this weight's shape on this machine: measured once per machine, torch version and thread
    count, then read from the cache directory."""
    key = "|".join(map(str, (torch.__version__, hardware.cpu_name(), torch.get_num_threads(),
                             tuple(weight.shape), weight.dtype, bias is not None)))
    path = models.cache_dir() / "rows_alike.json"
    if not _MEASURED and path.is_file():
        try:
            _MEASURED.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # unreadable: measured again
    if key not in _MEASURED:
        _MEASURED[key] = rows_alike(weight, bias)
        try:
            write_text(path, json.dumps(_MEASURED, indent=1))
        except OSError:
            pass  # a read-only cache: measured again next time
    return _MEASURED[key]


def ensure(model) -> None:
    """The invariant kernels, unless the model's kernels were chosen already (`use`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_refusion_kernels", None) is None:
        use(model)
