"""Lossless decoding (`decoder="lossless"`): the masked-diffusion head proposes, the AR head decides.

Speculative decoding with the model as its own drafter (Leviathan et al. 2023; Chen et al. 2023;
TiDAR drafts with masks in the verifying forward). The text so far is known up to position T; its
last token (or, on the first step, the whole prompt) is *pending*: committed, its KV not cached.
Every forward feeds, after the cache, in one sequence with an additive 4D mask:

    pending (… T)  |  fallback: <mask> T+1, <mask> T+2  |  branch j: r_j T+1, <mask> T+2, <mask> T+3   (j = 1..b)

Pending tokens see the cache and each other causally; the fallback and each branch see the cache,
the pending tokens and themselves, never each other. The roots r_j are candidates for position T+1.

- The AR head at the last pending token gives the token at T+1, exactly as the `ar` decoder would.
- If it equals a root r_j (greedy: same token; sampling: the root accepted by multi-candidate
  speculative sampling), r_j was fed at its true position after the true text, so its KV is exact
  and its AR logits give the token at T+2 exactly too: two tokens from one forward.
- The masks predict what comes next for the next forward's roots: branch j's mask at T+3 when r_j
  matched, the fallback's mask at T+2 when none did. Greedy takes the b most likely tokens,
  sampling draws b candidates independently.

Greedy output is token-identical to `ar` (up to floating-point differences between a narrow and a
wide forward); sampled output is distributed exactly as `ar`'s. Only the pending tokens' and a
matched root's KV are kept: the cache stays the exact causal cache of the text.

The branch count b adapts: the decoder counts how often the candidate of each rank matched and
picks the b that maximises expected tokens per forward over the forward's cost. That cost, by the
number of tokens fed, is measured once per model (`width_cost="auto"`: on a GPU or a bf16 CPU 27
tokens cost little more than one; in float32 on a CPU they do not), or modelled as
`1 + width_cost * (tokens fed - 1)`. b = 0 feeds no masks: a plain `ar` step, so the mode
never costs much more than `ar` where branches do not pay.
Knows nothing about tokenizers.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import kv_cache
from ..attention import branch_mask
from ..errors import RefusionError
from .generation import EventCallback
from .options import Option
from .runner import DecodeOutput, ModelRunner, interpolate_cost, width_costs
from .sampling import draw, tempered, verify_candidates

OPTIONS = (
    Option("branches", "auto", "lossless: candidate tokens verified per forward (0 = plain ar steps); auto adapts "
           "it to the acceptance seen and the forward's cost", int, low=0, high=64, auto=True),
    Option("max_branches", 8, "lossless: the most candidates branches=auto may use", int, low=1, high=64),
    Option("width_cost", "auto", "lossless: cost of one more fed token relative to a one-token forward; auto "
           "measures the model once", float, 0.0, 1.0, auto=True),
)

FALLBACK = 2  # <mask> T+1, <mask> T+2
BRANCH = 3  # root T+1, <mask> T+2, <mask> T+3
PRIOR_RATE = (0.25, 0.13, 0.07, 0.06, 0.04, 0.03, 0.03, 0.02)  # chance the rank-i candidate matches (measured prior)
PRIOR_WEIGHT, DECAY = 4.0, 0.95


def validate_options(options: dict, max_new_tokens: int) -> None:
    """Reject combinations that make no sense (each value alone is checked by its `Option`)."""
    branches, most = options["branches"], options["max_branches"]
    if branches != "auto" and branches > most:
        raise RefusionError(f"branches ({branches}) must not exceed max-branches ({most})")


class BranchCount:
    """How many candidate roots to feed, from how often each rank matched (decayed counts; deterministic)."""

    def __init__(self, fixed: int | None, most: int, cost: Callable[[int], float]):
        self.fixed, self.most, self.cost = fixed, most, cost
        rates = [PRIOR_RATE[i] if i < len(PRIOR_RATE) else PRIOR_RATE[-1] for i in range(most)]
        self.hits = [PRIOR_WEIGHT * rate for rate in rates]  # per rank: decayed matches
        self.trials = [PRIOR_WEIGHT] * most  # per rank: decayed forwards that offered it

    def update(self, offered: int, matched_rank: int | None) -> None:
        for rank in range(offered):
            self.hits[rank] = DECAY * self.hits[rank] + (rank == matched_rank)
            self.trials[rank] = DECAY * self.trials[rank] + 1

    def choose(self) -> int:
        if self.fixed is not None:
            return self.fixed
        rates = [h / t for h, t in zip(self.hits, self.trials)]

        def gain(b: int) -> float:  # expected tokens per forward over its relative cost (one pending token)
            width = 1 + FALLBACK + BRANCH * b if b else 1
            return (1 + sum(rates[:b])) / self.cost(width)

        return max(range(self.most + 1), key=gain)


def decode(
    runner: ModelRunner,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    mask_token_id: int,
    branches: int | str = "auto",
    max_branches: int = 4,
    width_cost: float | str = "auto",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DecodeOutput:
    P = prompt_ids.shape[1]
    cache = kv_cache.new_cache()
    counter = BranchCount(None if branches == "auto" else int(branches), int(max_branches),
                          forward_cost(runner, width_cost) if branches == "auto" else None)
    dtype = _logits_dtype(runner)
    M = mask_token_id
    pending = prompt_ids[0].tolist()  # committed, KV not cached yet
    roots: list[int] = []  # candidates for the position after the pending tokens, best first
    roots_q: torch.Tensor | None = None  # [V] the distribution they were drawn from (sampling)
    text: list[int] = []
    step = offered_total = matched_total = 0

    while len(text) < max_new_tokens:
        step += 1
        remaining = max_new_tokens - len(text)
        # Candidates and their masks reach position T+3: only worth feeding while the budget goes that far.
        wanted = counter.choose() if remaining >= 3 else 0
        b = min(len(roots), wanted)
        masks = wanted > 0  # the fallback's masks give the next forward's candidates
        past = kv_cache.length(cache)
        T = past + len(pending) - 1  # position of the last pending token
        L = len(pending)
        groups = ([FALLBACK] if masks else []) + [BRANCH] * b
        ids = list(pending) + ([M, M] if masks else [])
        positions = list(range(T - L + 1, T + 1)) + ([T + 1, T + 2] if masks else [])
        for root in roots[:b]:
            ids += [root, M, M]
            positions += [T + 1, T + 2, T + 3]
        read = [L - 1] + ([L + 1] if masks else [])  # AR at T; fallback mask at T+2
        for j in range(b):
            base = L + FALLBACK + BRANCH * j
            read += [base, base + 2]  # root j: AR at T+1; its mask at T+3
        attention = branch_mask(past, L, groups, dtype, runner.device) if b else None
        logits = runner(torch.tensor([ids]), torch.tensor([positions]), cache, attention,
                        logits_to_keep=torch.tensor(read, device=runner.device))[0]  # [len(read), V]

        token, matched, after, next_roots, next_q = _judge(logits, roots[:b], roots_q, masks, wanted,
                                                           temperature, generator)
        counter.update(b, matched)
        offered_total += b
        matched_total += matched is not None
        if matched is None:  # exact KV: the cache before, the pending tokens and a matched root
            kv_cache.truncate(cache, past + L)
        else:
            root = past + L + FALLBACK + BRANCH * matched
            kv_cache.keep_indices(cache, torch.cat([torch.arange(past + L), torch.tensor([root])]))

        new = [token] + ([after] if matched is not None else [])
        eos_at = next((i for i, t in enumerate(new) if t in eos_token_ids), None)
        new = new[: eos_at + 1] if eos_at is not None else new
        new = new[:remaining]
        emit({"event": "commit", "step": step, "positions": list(range(len(text), len(text) + len(new))),
              "tokens": new, "phase": "lossless", "branches": b, "matched": matched})
        text += new
        if eos_at is not None or should_stop():
            break
        pending = [new[-1]]
        roots, roots_q = next_roots, next_q

    return DecodeOutput(
        tokens=text,
        forward_passes=runner.forward_passes,
        cache=cache,
        decode_order_tokens=prompt_ids[0].tolist() + text[:-1] if text else prompt_ids[0].tolist(),
        decode_order_positions=list(range(P + max(len(text) - 1, 0))),
        settings={"branches": branches, "max_branches": int(max_branches), "width_cost": width_cost},
        counters={"drafts_offered": offered_total, "drafts_accepted": matched_total},
    )


def forward_cost(runner: ModelRunner, width_cost: float | str) -> Callable[[int], float]:
    """Relative cost of a forward by tokens fed: measured once per model ("auto"), or linear."""
    if width_cost == "auto":
        if isinstance(runner.model, torch.nn.Module):
            table = width_costs(runner.model)
            return lambda width: interpolate_cost(table, width)
        width_cost = 0.02  # a stand-in model: nothing worth timing
    return lambda width: 1 + float(width_cost) * (width - 1)


def _logits_dtype(runner: ModelRunner) -> torch.dtype:
    try:
        return next(runner.model.parameters()).dtype
    except (AttributeError, StopIteration, TypeError):
        return torch.float32


def _judge(logits, roots, roots_q, masks, next_count, temperature, generator):
    """Read one forward's logits (rows: AR at T, fallback mask, then per root: AR at T+1, mask at T+3).

    Returns (token at T+1, index of the matched root or None, token at T+2 when matched,
    next roots, their distribution).
    """
    if temperature == 0:
        candidates = logits[1::2].topk(next_count, dim=-1).indices if masks and next_count else None
        picks = [logits.argmax(-1)] + ([candidates.flatten()] if candidates is not None else [])
        flat = torch.cat(picks).tolist()  # one host sync
        argmax, top = flat[: len(logits)], flat[len(logits) :]
        token = argmax[0]
        matched = roots.index(token) if token in roots else None
        after = argmax[2 + 2 * matched] if matched is not None else None
        source = 0 if matched is None else matched + 1  # fallback, or the matched root's mask
        next_roots = top[source * next_count : (source + 1) * next_count] if candidates is not None else []
        return token, matched, after, next_roots, None
    p = tempered(logits[0], temperature)
    token, matched = verify_candidates(p, roots, roots_q, generator)
    after = draw(tempered(logits[2 + 2 * matched], temperature), 1, generator)[0] if matched is not None else None
    if not masks:
        return token, matched, after, [], None
    row = 1 if matched is None else 3 + 2 * matched
    q = tempered(logits[row], temperature)
    return token, matched, after, draw(q, next_count, generator), q
