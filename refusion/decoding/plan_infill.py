"""ReFusion's plan-and-infill decoder (the ReFusion paper, §3.2).

The generated span is cut into `blocks` contiguous blocks, decoded one after another; each block is
cut into slots of `slot_size` tokens decoded in any order. Each step:

1. plan     - one diffusion forward over the block's masked slots picks the slots to write now;
2. verify   - one causal forward over the drafts accepts the longest confident prefix; whole
              leading slots are committed with the KV that pass computed;
3. complete - otherwise every selected slot is finished in parallel (draft + verify rounds),
              then committed in position order with its own KV (`kv="reuse"`) or recomputed KV.

The decoded sequence lives in *decode order* (prompt, then slots as they were accepted), each
token with its true position id, and the KV cache covers exactly that sequence. The text is the
sequence sorted by position. This module knows nothing about tokenizers or chat templates.

The choices are the paper's; the forwards are fewer, each doing what two did (oracle tests hold
the counts): the prompt and, with `kv="exact"`, the tokens a completion committed ride at the head
of the next plan (their exact KV at no extra forward); the next plan's masks ride after the drafts
of a verification that commits them all, or beside a completion round that commits every slot
(when the slots keep their own KV: `kv="reuse"`, and `kv="exact"` for a lone slot, whose own KV is
causal; otherwise `kv="exact"` feeds no round whose outcome is known); each slot's first
completion draft, for every acceptance it may get, rides beside the global verification; each verify
round carries the next round's draft for every outcome; parallel slots sit side by side in one
sequence under a 4D mask (one cache). A riding plan is kept only when its forward commits everything,
so by default (`rides="auto"`, `Rides`) it rides only where its chance of that pays for its width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import kv_cache
from ..attention import segment_mask
from ..errors import RefusionError
from .generation import EventCallback
from .options import Option
from .runner import DecodeOutput, ForwardCost, ModelRunner, first_cache
from .sampling import choose, probability_of

FUSE_LIMIT = 64
"""Most tokens a slot may add to a forward for drafts of outcomes not known yet (wider slots fall back to
a forward of their own for the outcomes past it)."""

OPTIONS = (
    Option("slot_size", 4, "tokens per slot, k (at most max-new-tokens: a longer slot is cut to it)", int, low=1),
    Option("blocks", None, "serial blocks, B; the generation length over B must be a whole number of k-token slots",
           int, low=1, none_means="blocks of at most 4 slots"),
    Option("slot_threshold", 0.6, "plan: write in parallel every slot whose first token is above this probability",
           float, 0.0, 1.0),
    Option("token_threshold", 0.3, "verify: accept drafted tokens whose AR probability is above this", float, 0.0, 1.0),
    Option("kv", "reuse", "after parallel completion: reuse each slot's own KV (the paper's default), recompute it "
           "causally in one more forward (the paper's ablation), or exact: the recomputed KV at no extra forward "
           "(the committed tokens ride at the head of the next plan; a lone slot keeps its own KV, which is causal)",
           str, choices=("reuse", "recompute", "exact")),
    Option("rides", "auto", "when the next plan's masks ride a forward that may commit every selected slot: "
           "where the chance that it does, learned in the decode, pays for their width (auto: forward costs "
           "measured per model), or always. Layout only: the choices are the same", str, choices=("auto", "always")),
    Option("boundary", "free", "a slot written right after another selected slot: its first token is accepted "
           "as drafted (free, the paper's) or must pass the AR check against that slot's draft in the global "
           "verification, else waits for a later step (check; no extra forward)", str, choices=("free", "check")),
)


RIDE_PRIORS = {("verify", None): 0.1, ("verify", True): 0.8, ("verify", False): 0.03, ("round", 2): 0.3,
               ("round", 3): 0.05}
"""Prior chances that a forward commits every selected slot, by situation (`Rides`): about the shipped model's
(`python3 benchmarks/ride_rates.py`, `benchmarks/bench/ride-rates.txt`)."""
RIDE_PRIOR_WEIGHT = 4.0


class Rides:
    """Whether the next plan's masks ride a forward that may commit every selected slot.

    "always": every such forward carries them. "auto": they ride where the chance that the forward commits
    everything, times what a plan forward of their own would cost, exceeds what they add to this one.
    Chances are learned in the decode from priors, by situation: a global verification first, after one
    that committed all its drafts, or after one that did not (acceptance runs in streaks); a completion
    round by the most tokens a slot still needs (one: sure). Costs by width are measured per model
    (`ForwardCost`), so where wide forwards cost little (a GPU) everything rides.
    """

    def __init__(self, mode: str, runner):
        self.cost = ForwardCost(runner, "auto") if mode == "auto" else None
        self.seen: dict[tuple, tuple[int, int]] = {}  # situation -> (forwards that committed everything, forwards)

    def chance(self, situation: tuple) -> float:
        if situation == ("round", 1):
            return 1.0
        committed, seen = self.seen.get(situation, (0, 0))
        return (committed + RIDE_PRIOR_WEIGHT * RIDE_PRIORS[situation]) / (seen + RIDE_PRIOR_WEIGHT)

    def pay(self, situation: tuple, width: int, masks: int) -> bool:
        """Whether `masks` more tokens in a forward of `width` tokens are worth their chance of saving a plan forward."""
        if self.cost is None:
            return True
        return self.chance(situation) * self.cost(masks) > self.cost(width + masks) - self.cost(width)

    def learn(self, situation: tuple, committed_everything: bool) -> None:
        committed, seen = self.seen.get(situation, (0, 0))
        self.seen[situation] = (committed + committed_everything, seen + 1)


def round_situation(slots) -> tuple:
    """A completion round's situation for `Rides`: the most tokens a slot still needs (1: the round surely ends it)."""
    return ("round", min(3, max(1, *(slot.length - slot.accepted for slot in slots))))


def prepare(runner: ModelRunner, options: dict, rows: int = 1) -> None:
    """Measure the model's forward cost by width now (once per model), outside the decode's timing."""
    if options["rides"] == "auto":
        ForwardCost(runner, "auto")


@dataclass
class Slot:
    """A selected slot on its way to being committed."""

    start: int  # absolute position of its first token
    tokens: torch.Tensor  # [k] current draft
    accepted: int = 1  # length of the accepted prefix (a slot's first token is always accepted)
    length: int = 0  # tokens it will keep (k, or fewer when it ends with EOS)
    kv: kv_cache.LayerKV | None = None  # its own KV from its latest verify pass, [1, H, k, D]
    kv_exact: int = 0  # how many leading tokens that KV is exact for

    @property
    def done(self) -> bool:
        return self.accepted >= self.length


@dataclass
class State:
    """The decoded sequence in decode order and the cache that covers it.

    The cache covers the first `cached` tokens of the decode order; the rest are *pending*:
    committed, their KV not computed yet. They ride at the head of the next plan forward, which
    computes their exact causal KV as a side effect (the prompt on the first step; with
    `kv="exact"`, the slots a parallel completion committed).
    """

    prompt_len: int
    cache: object
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    eos_position: int | None = None  # absolute position of the earliest committed EOS
    cached: int = 0

    def commit(self, tokens: list[int], positions: list[int], with_kv: bool) -> None:
        """Append to the decode order; `with_kv`: the cache already holds their KV (appended by the caller)."""
        if with_kv and self.cached != len(self.tokens):
            raise RuntimeError("tokens with KV committed behind pending ones")
        self.tokens += tokens
        self.positions += positions
        if with_kv:
            self.cached = len(self.tokens)

    @property
    def pending(self) -> tuple[list[int], list[int]]:
        return self.tokens[self.cached :], self.positions[self.cached :]


# --- step 1: plan -----------------------------------------------------------------------------


def mask_positions(slot_starts: list[int], k: int) -> torch.Tensor:
    """Positions of every token of the given slots: [n*k]."""
    return (torch.tensor(slot_starts)[:, None] + torch.arange(k)).flatten()


def read_plan(logits: torch.Tensor, n: int, k: int, temperature, generator):
    """Drafts [n, k] and slot scores [n] (the probability of each slot's first token) from mask logits [n*k, V]."""
    drafts, probs = choose(logits.view(n, k, -1), temperature, generator)
    return drafts.cpu(), probs[:, 0].cpu()


def plan(runner, state, slot_starts, k, mask_id, temperature, generator):
    """Feed the pending tokens, then every masked slot, after the cache; return drafts [n, k] and scores [n].

    The pending tokens' KV is kept (it is exact: they come first, at their true positions); the
    masks' KV is discarded.
    """
    pending, pending_positions = state.pending
    positions = mask_positions(slot_starts, k)
    input_ids = torch.tensor(pending + [mask_id] * len(positions)).unsqueeze(0)
    position_ids = torch.cat([torch.tensor(pending_positions, dtype=torch.long), positions]).unsqueeze(0)
    keep = kv_cache.length(state.cache) + len(pending)
    logits = runner(input_ids, position_ids, state.cache, logits_to_keep=len(positions))[0]  # [n*k, V]
    kv_cache.truncate(state.cache, keep)
    state.cached = len(state.tokens)
    return read_plan(logits, len(slot_starts), k, temperature, generator)


def select_slots(scores: torch.Tensor, slot_threshold: float) -> list[int]:
    """Indices of the slots scoring above the threshold, or of the single best one; ascending."""
    chosen = (scores > slot_threshold).nonzero().flatten().tolist()
    return chosen or [int(scores.argmax())]


# --- step 2: global verification ----------------------------------------------------------------


def accepted_mask(token_probs: torch.Tensor, is_slot_start: torch.Tensor, token_threshold: float):
    """Which tokens pass: probability above the threshold, or first of its slot. [N] -> [N] bool."""
    return (token_probs > token_threshold) | is_slot_start


def leading_true(mask: torch.Tensor) -> int:
    """Length of the run of True at the start of a 1-D bool tensor."""
    return int(mask.long().cumprod(0).sum())


def first_draft_rows(slots, k, mask_id) -> list[tuple[int, int, list[int], bool]]:
    """(slot start, a, row, lead) for the first completion draft of each slot, one row per accepted length a
    the global verification may leave it with (smallest first, at most FUSE_LIMIT tokens a slot).

    The first slot's drafts lead the verification, seeing only the cache and themselves, so its rows are
    masks alone that see its first a drafts there (lead); a later slot's drafts see the slots before
    them, so its rows repeat its first a tokens before the masks."""
    rows = []
    for index, slot in enumerate(slots):
        for a in range(1, min(k, FUSE_LIMIT // k + 1)):
            if index == 0:
                rows.append((slot.start, a, [mask_id] * (k - a), True))
            else:
                rows.append((slot.start, a, slot.tokens[:a].tolist() + [mask_id] * (k - a), False))
    return rows


def verify_globally(runner, state, tokens, positions, k, token_threshold, next_masks=(), mask_id=None, rows=(),
                    checked=()):
    """Feed the drafts (tokens, positions: [1, m*k], slots concatenated in position order) causally after the cache.

    Returns the length of the accepted prefix of the concatenation, each slot's own accepted
    prefix, the logits of `next_masks` (positions of masks fed after the drafts, or None): when
    every draft is committed, they are the predictions the next plan forward would make; and the
    logits of the masks of each of `rows` (`first_draft_rows`, fed beside them: exactly a completion's
    first draft round). The first token of each slot passes
    as drafted, except in the slots whose indices are in `checked`: there it is verified like the
    others (its own accepted prefix is then 0 when it fails). The cache is left holding the KV of
    the drafts; the caller keeps what it commits.
    """
    n = tokens.shape[1]
    if len(next_masks):
        tokens = torch.cat([tokens, torch.full((1, len(next_masks)), mask_id)], dim=1)
        positions = torch.cat([positions, torch.as_tensor(next_masks).view(1, -1)], dim=1)
    causal = tokens.shape[1]
    before = kv_cache.length(state.cache)
    attention = None
    if rows:
        tokens = torch.cat([tokens, torch.tensor([[t for _, _, row, _ in rows for t in row]])], dim=1)
        positions = torch.cat([positions, torch.tensor([[start + (a if lead else 0) + i for start, a, row, lead in rows
                                                         for i in range(len(row))]])], dim=1)
        layout = [(causal, [])] + [(len(row), [(0, a)] if lead else []) for _, a, row, lead in rows]
        attention = segment_mask(before, layout, runner.dtype, runner.device)
    logits = runner(tokens, positions, state.cache, attention)[0]  # [m*k (+ masks) (+ rows), V]
    kv_cache.truncate(state.cache, before + n)
    plan_logits = logits[n:causal] if len(next_masks) else None
    row_logits = list(logits[causal:].split([len(row) for _, _, row, _ in rows])) if rows else []
    row_logits = [part if lead else part[a:] for part, (_, a, _, lead) in zip(row_logits, rows)]  # the masks
    logits, tokens = logits[:n], tokens[:, :n]
    probs = torch.ones(tokens.shape[1])
    probs[1:] = probability_of(logits[:-1], tokens[0, 1:].to(logits.device)).cpu()  # AR prob, one place earlier
    is_start = torch.zeros(tokens.shape[1], dtype=torch.bool)
    is_start[::k] = True
    for index in checked:
        is_start[index * k] = False
    passed = accepted_mask(probs, is_start, token_threshold)
    per_slot = [leading_true(passed[i : i + k]) for i in range(0, tokens.shape[1], k)]
    return leading_true(passed), per_slot, plan_logits, row_logits


# --- step 3: parallel iterative completion ------------------------------------------------------


@dataclass
class Segment:
    """Tokens fed for one slot in a completion forward, and what its logits are for."""

    slot: Slot | None
    kind: str  # "draft": prefix + masks to fill; "verify": the filled slot; "outcome": masks after a verify row;
    # "plan": the masks of a slot the next step plans, after every verify row
    ids: list[int]
    start: int  # position of its first token
    sees: list[tuple[int, int]] = field(default_factory=list)  # (earlier segment, how many of its tokens) it sees
    logits: torch.Tensor | None = None  # set by the forward: [len(ids), V]
    kv: kv_cache.LayerKV | None = None  # a verify segment's own keys/values, set by the forward

    @property
    def visible(self) -> int:
        """An outcome's accepted length: how many of its verify row's tokens it sees."""
        return self.sees[0][1]


def completion_forward(runner, state, slots, drafting, verifying, k, mask_id, plan_starts=(), pays=lambda width: True):
    """One forward over every slot's segments, side by side in one sequence (each sees the cache and its own).

    `drafting` slots feed their accepted prefix and masks (a draft round). `verifying` slots feed
    their filled tokens (a verify round) and, when they may stay unfinished, one group of masks per
    possible outcome a (accepted length after this verify) that sees the first a tokens: that group
    predicts exactly what the next draft round would, so no separate draft forward is needed.
    `plan_starts`, when this round may commit every slot: the masks of the next plan's slots after them,
    seeing the verify rows (their reused KV) and each other causally, as a plan forward would; fed
    where `pays(width of the round without them)`.
    Returns the segments with their logits; the cache is left as it was.
    """
    segments: list[Segment] = []
    for slot in drafting:
        prefix = slot.tokens[: slot.accepted].tolist()
        segments.append(Segment(slot, "draft", prefix + [mask_id] * (k - slot.accepted), slot.start))
    for slot in verifying:
        segments.append(Segment(slot, "verify", slot.tokens.tolist(), slot.start))
        row = len(segments) - 1
        budget = FUSE_LIMIT
        for outcome in range(slot.accepted + 1, slot.length):  # likeliest (shortest acceptance) first
            budget -= k - outcome
            if budget < 0:
                break  # an outcome past the budget gets its draft from a forward of its own
            segments.append(Segment(slot, "outcome", [mask_id] * (k - outcome), slot.start + outcome, [(row, outcome)]))
    rows = [(index, len(seg.ids)) for index, seg in enumerate(segments) if seg.kind == "verify"]
    if plan_starts and not pays(sum(len(seg.ids) for seg in segments)):
        plan_starts = ()
    for start in plan_starts:
        segments.append(Segment(None, "plan", [mask_id] * k, start, list(rows)))
        rows.append((len(segments) - 1, k))
    ids = torch.tensor([[t for seg in segments for t in seg.ids]])
    positions = torch.tensor([[seg.start + i for seg in segments for i in range(len(seg.ids))]])
    layout = [(len(seg.ids), seg.sees) for seg in segments]
    before = kv_cache.length(state.cache)
    mask = segment_mask(before, layout, runner.dtype, runner.device)
    logits = runner(ids, positions, state.cache, mask)[0]  # [fed, V]
    offset = 0
    for seg in segments:
        seg.logits = logits[offset : offset + len(seg.ids)]
        if seg.kind == "verify":  # its own KV (cache and itself only), as the paper's reuse keeps it
            seg.kv = kv_cache.segment(state.cache, before + offset, len(seg.ids))
        offset += len(seg.ids)
    kv_cache.truncate(state.cache, before)
    return segments


def fill(slot, start: int, logits, temperature, generator) -> None:
    """Replace the slot's tokens from `start` on with predictions from mask logits [k - start, V]."""
    predicted, _ = choose(logits, temperature, generator)
    slot.tokens = torch.cat([slot.tokens[:start], predicted.cpu()])


def verify(slot, seg, token_threshold) -> None:
    """AR-verify the slot on its own; the first token after the accepted prefix always passes."""
    tokens = slot.tokens
    probs = torch.ones(len(tokens))
    probs[1:] = probability_of(seg.logits[:-1], tokens[1:].to(seg.logits.device)).cpu()
    passed = probs > token_threshold
    passed[: slot.accepted + 1] = True
    slot.accepted = min(slot.length, leading_true(passed))
    slot.kv, slot.kv_exact = seg.kv, slot.accepted


def end_at_eos(slots, eos_token_ids) -> int | None:
    """Cut the first slot whose accepted prefix holds an EOS, drop the slots after it.

    Returns the EOS's absolute position, or None. Mutates `slots` in place.
    """
    for index, slot in enumerate(slots):
        hits = [i for i, t in enumerate(slot.tokens[: slot.accepted].tolist()) if t in eos_token_ids]
        if hits:
            slot.length = slot.accepted = hits[0] + 1
            del slots[index + 1 :]
            return slot.start + hits[0]
    return None


def may_be_last(slots, drafting, verifying, filled) -> bool:
    """Whether this round's forward may leave every slot done: each is in it as a filled draft."""
    return not drafting and len(verifying) == len(slots) and all(slot.start in filled for slot in verifying)


def surely_last(slots, drafting, verifying, filled) -> bool:
    """Whether it leaves every slot done whatever the AR head says: each at most one token short (that
    token passes as drafted)."""
    return may_be_last(slots, drafting, verifying, filled) and all(slot.accepted >= slot.length - 1 for slot in slots)


def complete_in_parallel(runner, state, slots, k, options, mask_id, eos_token_ids, generator, emit, step, should_stop,
                         first_drafts, next_plan=(), rides: Rides | None = None):
    """Finish every selected slot (at most k rounds), then commit them in position order.

    `first_drafts` maps (slot start, accepted length) to the logits of that slot's first draft
    round, computed beside the global verification; a slot found there skips its own draft forward.
    `next_plan`: the slots the next step plans once these are committed. When the slots keep their
    own KV (`kv="reuse"`; `kv="exact"` with one slot, whose own KV is its causal KV) those masks ride
    a round that verifies all slots where `rides` says they pay, kept when it leaves them all done
    (they saw each slot's tokens as the cache will hold them). With `kv="exact"` and several slots a
    round whose outcome is known (each slot one token short) is not fed at all: their KV is computed
    by the next plan anyway.
    Returns (tokens, positions, EOS position or None, whether their KV is in the cache, the ridden
    plan's mask logits or None), or None, committing nothing, when `should_stop()` says so between rounds.
    """
    own_kv = options["kv"] == "reuse" or (options["kv"] == "exact" and len(slots) == 1)

    def emit_round():
        emit({"event": "round", "step": step, "slots": [s.start - state.prompt_len for s in slots],
              "accepted": [s.accepted for s in slots]})

    eos_position = None
    plan_logits = None
    filled: set[int] = set()  # starts of slots whose tokens are a fresh draft waiting for its verify
    for slot in slots:
        logits = first_drafts.get((slot.start, slot.accepted))
        if logits is not None and not slot.done:
            fill(slot, slot.accepted, logits, options["temperature"], generator)
            filled.add(slot.start)
    for _ in range(2 * k + 2):
        if should_stop():
            return None
        # The earliest slot holding an accepted EOS ends the text (an earlier slot may find one later).
        eos_position = end_at_eos(slots, eos_token_ids) or eos_position
        drafting = [slot for slot in slots if not slot.done and slot.start not in filled]
        verifying = [slot for slot in slots if slot.start in filled or (own_kv and slot.done and slot.kv_exact < slot.length)]
        if not drafting and not verifying:
            break
        last = surely_last(slots, drafting, verifying, filled)
        if last and options["kv"] == "exact" and not own_kv:
            for slot in verifying:
                slot.accepted = slot.length
            filled.clear()
            emit_round()
            continue
        situation = round_situation(slots) if may_be_last(slots, drafting, verifying, filled) else None
        plan_starts = next_plan if own_kv and situation else ()
        pays = lambda width: rides is None or rides.pay(situation, width, len(plan_starts) * k)  # noqa: E731
        segments = completion_forward(runner, state, slots, drafting, verifying, k, mask_id, plan_starts, pays)
        a_round = any(slot.start in filled for slot in verifying)  # a draft verified (not only KV for a done slot)
        ridden = [seg.logits for seg in segments if seg.kind == "plan"]
        plan_logits = torch.cat(ridden) if ridden else None
        for seg in segments:
            if seg.kind == "draft":
                fill(seg.slot, seg.slot.accepted, seg.logits[seg.slot.accepted :], options["temperature"], generator)
                filled.add(seg.slot.start)
            elif seg.kind == "verify":
                verify(seg.slot, seg, options["token_threshold"])
                filled.discard(seg.slot.start)
        for seg in segments:  # the next draft of each slot still unfinished: the group for its outcome
            if seg.kind == "outcome" and not seg.slot.done and seg.visible == seg.slot.accepted:
                fill(seg.slot, seg.visible, seg.logits, options["temperature"], generator)
                filled.add(seg.slot.start)
        if situation and rides is not None:
            rides.learn(situation, all(slot.done for slot in slots))
        if a_round:
            emit_round()
    tokens = [t for slot in slots for t in slot.tokens[: slot.length].tolist()]
    positions = [p for slot in slots for p in range(slot.start, slot.start + slot.length)]
    if own_kv:
        for slot in slots:
            kv_cache.append(state.cache, kv_cache.select(slot.kv, 0, slot.length))
    elif options["kv"] == "recompute":
        runner(torch.tensor([tokens]), torch.tensor([positions]), state.cache, logits_to_keep=1)  # exact causal KV
    # kv="exact" with several slots: the tokens stay pending and ride at the head of the next plan forward.
    if eos_position is not None or any(slot.length < k for slot in slots):
        plan_logits = None  # the text ends here: nothing more is planned
    return tokens, positions, eos_position, own_kv or options["kv"] == "recompute", plan_logits


def validate_options(options: dict, max_new_tokens: int) -> None:
    """Reject combinations that make no sense (each value alone is checked by its `Option`)."""
    k, blocks = effective_slot_size(options["slot_size"], max_new_tokens), options["blocks"]
    if blocks is not None:
        length, _ = generation_length(max_new_tokens, k, blocks)
        if length % blocks or (length // blocks) % k:
            raise RefusionError(
                f"max-new-tokens {max_new_tokens} (rounded up to {length}, a multiple of slot-size {k}) "
                f"must split into {blocks} blocks of a whole number of {k}-token slots"
            )


# --- the loop ---------------------------------------------------------------------------------


def effective_slot_size(slot_size: int, max_new_tokens: int) -> int:
    """k, never longer than the generation: a longer slot would only decode masks past the budget."""
    return min(slot_size, max_new_tokens)


def generation_length(max_new_tokens: int, slot_size: int, blocks: int | None) -> tuple[int, int]:
    """(L, B) for the `effective_slot_size` k: L rounded up to a multiple of k (so under 2x the budget);
    by default blocks of at most 4 slots."""
    if blocks is None:
        block_len = min(4 * slot_size, -(-max_new_tokens // slot_size) * slot_size)
        length = -(-max_new_tokens // block_len) * block_len
        return length, length // block_len
    length = -(-max_new_tokens // slot_size) * slot_size
    return length, blocks


def decode(
    runner: ModelRunner,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: set[int],
    mask_token_id: int,
    slot_size: int,
    blocks: int | None,
    slot_threshold: float,
    token_threshold: float,
    kv: str,
    boundary: str = "free",
    rides: str = "auto",
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> DecodeOutput:
    k = effective_slot_size(slot_size, max_new_tokens)
    length, blocks = generation_length(max_new_tokens, k, blocks)
    block_len = length // blocks
    options = {"token_threshold": token_threshold, "kv": kv, "temperature": temperature}
    P = prompt_ids.shape[1]
    # The prompt is pending: it rides with the first plan (a long one's last token only: `first_cache`).
    cache, cached = first_cache(runner, prompt_ids[0].tolist())
    state = State(prompt_len=P, cache=cache, tokens=prompt_ids[0].tolist(), positions=list(range(P)), cached=cached)
    committed: dict[int, int] = {}  # absolute position -> token
    step = 0
    riding: tuple | None = None  # (slot starts, drafts, scores) of a plan computed inside the last verify forward
    ride_policy = Rides(rides, runner)
    verified_all: bool | None = None  # whether the last global verification committed every draft

    def block_slots(block: int) -> list[int]:
        start = P + block * block_len
        return list(range(start, start + block_len, k))

    def next_slots(masked, selected, block) -> list[int]:
        """The slots the next step plans once the selected ones are committed."""
        rest = [start for start in masked if start not in selected]
        return rest if rest or block + 1 == blocks else block_slots(block + 1)

    def record(tokens, positions, phase, with_kv):
        state.commit(tokens, positions, with_kv)
        committed.update(zip(positions, tokens))
        emit({"event": "commit", "step": step, "positions": [p - P for p in positions], "tokens": tokens, "phase": phase})

    def stop_at(eos_position, masked):
        """Drop every position after the EOS: unplanned slots, and committed tokens with their KV."""
        state.eos_position = eos_position
        masked[:] = [start for start in masked if start < eos_position]
        keep = [i for i, p in enumerate(state.positions) if p <= eos_position]
        dropped = [p for p in state.positions if p > eos_position]
        if dropped:
            cached_keep = [i for i in keep if i < state.cached]
            kv_cache.keep_indices(state.cache, torch.tensor(cached_keep, dtype=torch.long))
            state.cached = len(cached_keep)
            state.tokens = [state.tokens[i] for i in keep]
            state.positions = [state.positions[i] for i in keep]
            for p in dropped:
                committed.pop(p)
            emit({"event": "drop", "step": step, "positions": [p - P for p in dropped]})

    for block in range(blocks):
        masked = block_slots(block)  # starts of still-masked slots
        while masked and not should_stop():
            step += 1
            if riding is not None and riding[0] == masked:
                _, drafts, scores = riding  # the plan a separate forward would make, already computed
            else:
                drafts, scores = plan(runner, state, masked, k, mask_token_id, temperature, generator)
            riding = None
            chosen = select_slots(scores, slot_threshold)
            slots = [Slot(start=masked[i], tokens=drafts[i], length=k) for i in chosen]
            selected = {slot.start for slot in slots}
            emit({"event": "plan", "step": step, "block": block, "slots": [s - P for s in masked],
                  "selected": [s.start - P for s in slots]})

            before = kv_cache.length(state.cache)
            drafts_flat = torch.cat([slot.tokens for slot in slots]).unsqueeze(0)  # [1, m*k]
            positions_flat = torch.cat([torch.arange(s.start, s.start + k) for s in slots]).unsqueeze(0)
            # Beside the drafts, each slot's first completion draft for every acceptance it may get.
            rows = first_draft_rows(slots, k, mask_token_id)
            # The next plan's masks ride after the drafts where that pays: if every draft is committed, they
            # predict exactly what a separate plan forward after those drafts would.
            upcoming = next_slots(masked, selected, block)
            situation = ("verify", verified_all)
            width = drafts_flat.shape[1] + sum(len(row) for _, _, row, _ in rows)
            rides_here = upcoming and ride_policy.pay(situation, width, len(upcoming) * k)
            ride_positions = mask_positions(upcoming, k) if rides_here else ()
            # With boundary="check", a slot that starts where the one before it ends is checked at its first token.
            checked = [i for i in range(1, len(slots)) if boundary == "check" and slots[i].start == slots[i - 1].start + k]
            prefix, per_slot, plan_logits, row_logits = verify_globally(
                runner, state, drafts_flat, positions_flat, k, token_threshold, ride_positions, mask_token_id, rows,
                checked)
            flat = drafts_flat[0].tolist()
            eos_hits = [i for i, t in enumerate(flat[:prefix]) if t in eos_token_ids]
            keep = eos_hits[0] + 1 if eos_hits else (prefix // k) * k
            verified_all = keep == len(flat) and not eos_hits
            ride_policy.learn(situation, verified_all)
            if verified_all and plan_logits is not None:
                riding = (upcoming, *read_plan(plan_logits, len(upcoming), k, temperature, generator))
            if keep:  # whole leading slots (or up to an EOS) were accepted: their KV is exact
                kv_cache.truncate(state.cache, before + keep)
                positions = positions_flat[0, :keep].tolist()
                record(flat[:keep], positions, "verify", with_kv=True)
                done = {slot.start for slot in slots[: -(-keep // k)]}
                masked[:] = [start for start in masked if start not in done]
                if eos_hits:
                    stop_at(positions[-1], masked)
                continue

            kv_cache.truncate(state.cache, before)
            for slot, accepted in zip(slots, per_slot):
                slot.accepted = accepted
            if boundary == "check":  # a checked slot whose first token failed waits for a later step, masked
                slots = [slot for slot in slots if slot.accepted]
                selected = {slot.start for slot in slots}
            first_drafts = {(start, a): logits for (start, a, _, _), logits in zip(rows, row_logits)}
            upcoming = next_slots(masked, selected, block)
            completed = complete_in_parallel(
                runner, state, slots, k, options, mask_token_id, eos_token_ids, generator, emit, step, should_stop,
                first_drafts, upcoming, ride_policy,
            )
            if completed is None:
                break
            tokens, positions, eos_position, with_kv, plan_logits = completed
            if plan_logits is not None:  # the next plan rode the last completion round
                riding = (upcoming, *read_plan(plan_logits, len(upcoming), k, temperature, generator))
            record(tokens, positions, "complete", with_kv)
            masked[:] = [start for start in masked if start not in selected]
            if eos_position is not None:
                stop_at(eos_position, masked)
        if state.eos_position is not None or should_stop():
            break

    text_order = [committed[p] for p in sorted(committed)]
    first_eos = next((i for i, t in enumerate(text_order) if t in eos_token_ids), None)
    tokens = text_order if first_eos is None else text_order[: first_eos + 1]
    return DecodeOutput(
        tokens=tokens,
        forward_passes=runner.forward_passes,
        cache=state.cache,
        decode_order_tokens=state.tokens,
        decode_order_positions=state.positions,
        cached=state.cached,
        settings={"slot_size": k, "blocks": blocks, "generation_length": length, "slot_threshold": slot_threshold,
                  "token_threshold": token_threshold, "kv": kv, "boundary": boundary, "rides": rides},
    )
