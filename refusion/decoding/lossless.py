"""Lossless decoding (`decoder="lossless"`): the masked-diffusion head drafts, the AR head decides.

Speculative decoding with the model as its own drafter (Leviathan et al. 2023; Chen et al. 2023),
the drafts coming from `<|mask|>` positions as in TiDAR. Every forward feeds, after the cache:

    [pending tokens] [drafts d_1..d_n] [masks at the next n' + 1 positions]

`pending` are committed tokens whose KV is not cached yet (the prompt on the first step, then the
token the AR head chose last). The logits at the last pending token and at each draft are the AR
head's next-token distributions, exactly those the `ar` decoder computes at those places, so:

- greedy: a draft is accepted iff it equals the AR argmax; at the first mismatch (or after the
  last draft) the AR argmax itself is committed. The text is the `ar` decoder's text.
- sampling (temperature > 0): a draft x drawn from q is accepted with probability min(1, p(x)/q(x))
  and at the first rejection a token is drawn from max(0, p - q), normalised; after the last
  accepted draft one more from p. The text is distributed exactly as the `ar` decoder's.

Each forward thus commits accepted + 1 tokens, and the KV of the pending tokens and accepted drafts
it computed is exact (causal, true positions), so it stays in the cache. The masks, sitting after
the drafts, predict the positions after them: the next forward's drafts. When a draft is
rejected, the drafts and mask predictions after it were made for a different prefix; they remain
the best guesses at hand and are offered again (any draft keeps the output exact; only the
acceptance rate depends on it).

The number of drafts adapts: the decoder keeps a running estimate of the chance that a draft is
accepted and picks the n that maximises expected tokens per forward over the forward's cost,
modelled as `1 + width_cost * (tokens fed - 1)` (0.02 fits a bf16 CPU forward of a few tokens).
Knows nothing about tokenizers.
"""

from __future__ import annotations

import torch

from .. import kv_cache
from ..errors import RefusionError
from .generation import EventCallback
from .runner import DecodeOutput, ModelRunner
from .sampling import speculative_verify

OPTIONS = {"draft_length": "auto", "max_draft_length": 8, "width_cost": 0.02}
"""draft_length: drafts per forward, or "auto" to adapt it; max_draft_length: the adaptive upper bound;
width_cost: the cost of one more fed token relative to a one-token forward (used by "auto")."""

PRIOR_ACCEPTED, PRIOR_OFFERED, DECAY = 1.0, 2.0, 0.9


def validate_options(options: dict, max_new_tokens: int) -> None:
    draft_length, most = options["draft_length"], options["max_draft_length"]
    if draft_length != "auto" and not (isinstance(draft_length, int) or str(draft_length).isdigit()):
        raise RefusionError(f"draft-length must be 'auto' or a whole number, got {draft_length!r}")
    if draft_length != "auto" and int(draft_length) < 0:
        raise RefusionError(f"draft-length must be >= 0, got {draft_length}")
    if int(most) < 1:
        raise RefusionError(f"max-draft-length must be a positive integer, got {most}")
    if not 0 <= float(options["width_cost"]) <= 1:
        raise RefusionError(f"width-cost must lie in [0, 1], got {options['width_cost']}")


class DraftLength:
    """Chooses how many drafts to offer from the acceptance seen so far (decayed counts, deterministic)."""

    def __init__(self, fixed: int | None, most: int, width_cost: float):
        self.fixed, self.most, self.width_cost = fixed, most, width_cost
        self.accepted, self.offered = PRIOR_ACCEPTED, PRIOR_OFFERED

    def update(self, accepted: int, offered: int) -> None:
        """`offered` counts the drafts actually judged: the accepted ones and the first rejected one."""
        self.accepted = DECAY * self.accepted + accepted
        self.offered = DECAY * self.offered + offered

    def choose(self, budget: int) -> int:
        """Drafts for the next forward; `budget` is how many tokens may still be committed after the AR one."""
        if self.fixed is not None:
            return min(self.fixed, budget)
        rate = self.accepted / self.offered

        def gain(n: int) -> float:  # expected tokens per forward over its relative cost, steady state
            tokens = sum(rate**i for i in range(n + 1))
            width = 2 * n + 2 if n else 1
            return tokens / (1 + self.width_cost * (width - 1))

        return max(range(1, min(self.most, budget) + 1), key=gain, default=0)


def decode(
    runner: ModelRunner,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    mask_token_id: int,
    draft_length: int | str = "auto",
    max_draft_length: int = 8,
    width_cost: float = 0.02,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
) -> DecodeOutput:
    P = prompt_ids.shape[1]
    cache = kv_cache.new_cache()
    chooser = DraftLength(None if draft_length == "auto" else int(draft_length), int(max_draft_length), float(width_cost))
    pending = prompt_ids[0].tolist()  # committed, KV not yet cached
    guesses: list[int] = []  # draft candidates for the positions right after `pending`
    guess_q: torch.Tensor | None = None  # [len(guesses), V] their proposal distributions (sampling only)
    text: list[int] = []
    offered_total = accepted_total = step = 0

    while len(text) < max_new_tokens:
        step += 1
        remaining = max_new_tokens - len(text)  # the AR token is always committed: up to remaining - 1 drafts
        n = min(chooser.choose(remaining - 1), len(guesses))
        n_next = chooser.choose(max(remaining - n - 2, 0)) if remaining - n > 1 else 0
        drafts = guesses[:n]
        masks = n_next + 1 if n_next else 0  # the first mask sits where the AR token will go
        start = kv_cache.length(cache)  # == position of pending[0]: decode order is text order here
        ids = pending + drafts + [mask_token_id] * masks
        fed = torch.tensor([ids])
        positions = torch.arange(start, start + len(ids)).unsqueeze(0)
        read = n + 1 + masks  # logits at the last pending token, each draft, each mask
        logits = runner(fed, positions, cache, logits_to_keep=read)[0]  # [read, V]

        q = guess_q[:n] if guess_q is not None else None
        accepted, token, mask_tokens, mask_q = speculative_verify(
            logits[: n + 1], torch.tensor(drafts, dtype=torch.long), q, logits[n + 1 :], temperature, generator)
        new = drafts[:accepted] + [token]
        offered = min(n, accepted + 1)
        chooser.update(accepted, offered)
        offered_total += offered
        accepted_total += accepted
        kv_cache.truncate(cache, start + len(pending) + accepted)  # exact KV: pending and accepted drafts

        eos_at = next((i for i, t in enumerate(new) if t in eos_token_ids), None)
        if eos_at is not None:
            new = new[: eos_at + 1]
        new = new[:remaining]
        emit({"event": "commit", "step": step, "positions": list(range(len(text), len(text) + len(new))),
              "tokens": new, "phase": "lossless", "drafted": n, "accepted": accepted})
        text += new
        if eos_at is not None:
            break
        # Next drafts: this forward's guesses for the positions after the new token. When every draft
        # was accepted the first mask stood where the new token now is, so its guess is not needed.
        skip = 1 if accepted == n else 0
        guesses = drafts[accepted + 1 :] + mask_tokens[skip:]
        if temperature > 0:
            guess_q = torch.cat([q[accepted + 1 :], mask_q[skip:]]) if n else mask_q[skip:]
        pending = [token]

    return DecodeOutput(
        tokens=text,
        forward_passes=runner.forward_passes,
        cache=cache,
        decode_order_tokens=prompt_ids[0].tolist() + text[:-1] if text else prompt_ids[0].tolist(),
        decode_order_positions=list(range(P + max(len(text) - 1, 0))),
        settings={"draft_length": draft_length, "max_draft_length": int(max_draft_length), "width_cost": float(width_cost)},
        counters={"drafts_offered": offered_total, "drafts_accepted": accepted_total},
    )
