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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import kv_cache
from ..errors import RefusionError
from .generation import EventCallback
from .runner import DecodeOutput, ModelRunner
from .sampling import choose, probability_of

OPTIONS = {"slot_size": 4, "blocks": None, "slot_threshold": 0.6, "token_threshold": 0.3, "kv": "reuse"}


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
    """The decoded sequence in decode order and the cache that covers it."""

    prompt_len: int
    cache: object
    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    eos_position: int | None = None  # absolute position of the earliest committed EOS

    def commit(self, tokens: list[int], positions: list[int]) -> None:
        self.tokens += tokens
        self.positions += positions


# --- step 1: plan -----------------------------------------------------------------------------


def plan(runner, state, prefix_ids, slot_starts, k, mask_id, temperature, generator):
    """Feed every masked slot after the cache; return drafts [n, k] and slot scores [n].

    On the very first step `prefix_ids` ([1, P] prompt) goes in the same pass and its KV is kept.
    A slot's score is the probability of its first drafted token. The masks' KV is discarded.
    """
    n_prefix = prefix_ids.shape[1]
    starts = torch.tensor(slot_starts)
    mask_positions = (starts[:, None] + torch.arange(k)).reshape(1, -1)  # [1, n*k]
    input_ids = torch.cat([prefix_ids, torch.full_like(mask_positions, mask_id)], dim=1)
    position_ids = torch.cat([torch.arange(n_prefix).unsqueeze(0), mask_positions], dim=1)
    keep = kv_cache.length(state.cache) + n_prefix
    logits = runner(input_ids, position_ids, state.cache, logits_to_keep=mask_positions.shape[1])[0]  # [n*k, V]
    kv_cache.truncate(state.cache, keep)
    drafts, probs = choose(logits.view(len(slot_starts), k, -1), temperature, generator)  # [n, k]
    return drafts.cpu(), probs[:, 0].cpu()


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


def verify_globally(runner, state, tokens, positions, k, token_threshold):
    """Feed the drafts (tokens, positions: [1, m*k], slots concatenated in position order) causally after the cache.

    Returns the length of the accepted prefix of the concatenation and each slot's own accepted
    prefix. The cache is left holding the KV of all fed tokens; the caller keeps what it commits.
    """
    logits = runner(tokens, positions, state.cache)[0]  # [m*k, V]
    probs = torch.ones(tokens.shape[1])
    probs[1:] = probability_of(logits[:-1], tokens[0, 1:].to(logits.device)).cpu()  # AR prob, one place earlier
    is_start = torch.zeros(tokens.shape[1], dtype=torch.bool)
    is_start[::k] = True
    passed = accepted_mask(probs, is_start, token_threshold)
    per_slot = [leading_true(passed[i : i + k]) for i in range(0, tokens.shape[1], k)]
    return leading_true(passed), per_slot


# --- step 3: parallel iterative completion ------------------------------------------------------


def slot_batch(slots, k):
    """Tokens and position ids of several slots as a batch: [n, k] each."""
    tokens = torch.stack([slot.tokens for slot in slots])
    positions = torch.stack([torch.arange(slot.start, slot.start + k) for slot in slots])
    return tokens, positions


def draft_round(runner, state, slots, k, mask_id, temperature, generator):
    """Mask each slot's unaccepted tokens, predict them (each slot sees the cache and itself only)."""
    tokens, positions = slot_batch(slots, k)
    masked = torch.arange(k)[None, :] >= torch.tensor([s.accepted for s in slots])[:, None]  # [n, k]
    inputs = tokens.masked_fill(masked, mask_id)
    logits = runner(inputs, positions, kv_cache.repeat(state.cache, len(slots)))  # [n, k, V]
    predicted, _ = choose(logits, temperature, generator)
    filled = torch.where(masked, predicted.cpu(), tokens)
    for slot, row in zip(slots, filled):
        slot.tokens = row


def verify_round(runner, state, slots, k, token_threshold):
    """AR-verify each slot on its own; the first token after the accepted prefix always passes."""
    tokens, positions = slot_batch(slots, k)
    batch_cache = kv_cache.repeat(state.cache, len(slots))
    logits = runner(tokens, positions, batch_cache)  # [n, k, V]
    probs = torch.ones(tokens.shape)
    probs[:, 1:] = probability_of(logits[:, :-1], tokens[:, 1:].to(logits.device)).cpu()
    own_kv = kv_cache.tail(batch_cache, k)
    for row, slot in enumerate(slots):
        passed = probs[row] > token_threshold
        passed[: slot.accepted + 1] = True
        slot.accepted = min(slot.length, leading_true(passed))
        slot.kv, slot.kv_exact = kv_cache.select(own_kv, row, k), slot.accepted


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


def complete_in_parallel(runner, state, slots, k, options, mask_id, eos_token_ids, generator, emit, step):
    """Finish every selected slot (at most k rounds), then commit them in position order."""
    reuse = options["kv"] == "reuse"
    eos_position = None
    for _ in range(k + 1):
        # The earliest slot holding an accepted EOS ends the text (an earlier slot may find one later).
        eos_position = end_at_eos(slots, eos_token_ids) or eos_position
        drafting = [slot for slot in slots if not slot.done]
        missing_kv = [slot for slot in slots if slot.done and slot.kv_exact < slot.length] if reuse else []
        if not drafting and not missing_kv:
            break
        if drafting:
            draft_round(runner, state, drafting, k, mask_id, options["temperature"], generator)
        verify_round(runner, state, drafting + missing_kv, k, options["token_threshold"])
        emit({"event": "round", "step": step, "slots": [s.start - state.prompt_len for s in slots],
              "accepted": [s.accepted for s in slots]})
    tokens = [t for slot in slots for t in slot.tokens[: slot.length].tolist()]
    positions = [p for slot in slots for p in range(slot.start, slot.start + slot.length)]
    if reuse:
        for slot in slots:
            kv_cache.append(state.cache, kv_cache.select(slot.kv, 0, slot.length))
    else:
        runner(torch.tensor([tokens]), torch.tensor([positions]), state.cache, logits_to_keep=1)  # exact causal KV
    return tokens, positions, eos_position


def validate_options(options: dict, max_new_tokens: int) -> None:
    """Reject settings that make no sense before a model is loaded (called by `check_options`)."""
    if options["kv"] not in ("reuse", "recompute"):
        raise RefusionError(f"kv must be 'reuse' or 'recompute', got {options['kv']!r}")
    k, blocks = options["slot_size"], options["blocks"]
    if int(k) < 1:
        raise RefusionError(f"slot-size must be a positive integer, got {k}")
    if blocks is not None:
        if int(blocks) < 1:
            raise RefusionError(f"blocks must be a positive integer, got {blocks}")
        length, _ = generation_length(max_new_tokens, k, blocks)
        if length % blocks or (length // blocks) % k:
            raise RefusionError(
                f"max-new-tokens {max_new_tokens} (rounded up to {length}, a multiple of slot-size {k}) "
                f"must split into {blocks} blocks of a whole number of {k}-token slots"
            )


# --- the loop ---------------------------------------------------------------------------------


def generation_length(max_new_tokens: int, slot_size: int, blocks: int | None) -> tuple[int, int]:
    """(L, B): L rounded up to a multiple of k; by default blocks of at most 4 slots."""
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
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    emit: EventCallback = lambda event: None,
) -> DecodeOutput:
    k = slot_size
    length, blocks = generation_length(max_new_tokens, k, blocks)
    block_len = length // blocks
    options = {"token_threshold": token_threshold, "kv": kv, "temperature": temperature}
    P = prompt_ids.shape[1]
    state = State(prompt_len=P, cache=kv_cache.new_cache(), tokens=prompt_ids[0].tolist(), positions=list(range(P)))
    prefix_ids = prompt_ids  # fed with the first plan, then it lives in the cache
    committed: dict[int, int] = {}  # absolute position -> token
    step = 0

    def record(tokens, positions, phase):
        state.commit(tokens, positions)
        committed.update(zip(positions, tokens))
        emit({"event": "commit", "step": step, "positions": [p - P for p in positions], "tokens": tokens, "phase": phase})

    def stop_at(eos_position, masked):
        """Drop every position after the EOS: unplanned slots, and committed tokens with their KV."""
        state.eos_position = eos_position
        masked[:] = [start for start in masked if start < eos_position]
        keep = [i for i, p in enumerate(state.positions) if p <= eos_position]
        dropped = [p for p in state.positions if p > eos_position]
        if dropped:
            kv_cache.keep_indices(state.cache, torch.tensor(keep))
            state.tokens = [state.tokens[i] for i in keep]
            state.positions = [state.positions[i] for i in keep]
            for p in dropped:
                committed.pop(p)
            emit({"event": "drop", "step": step, "positions": [p - P for p in dropped]})

    for block in range(blocks):
        block_start = P + block * block_len
        masked = list(range(block_start, block_start + block_len, k))  # starts of still-masked slots
        while masked:
            step += 1
            drafts, scores = plan(runner, state, prefix_ids, masked, k, mask_token_id, temperature, generator)
            prefix_ids = prompt_ids[:, :0]
            chosen = select_slots(scores, slot_threshold)
            slots = [Slot(start=masked[i], tokens=drafts[i], length=k) for i in chosen]
            selected = {slot.start for slot in slots}
            emit({"event": "plan", "step": step, "block": block, "slots": [s - P for s in masked],
                  "selected": [s.start - P for s in slots]})

            before = kv_cache.length(state.cache)
            drafts_flat = torch.cat([slot.tokens for slot in slots]).unsqueeze(0)  # [1, m*k]
            positions_flat = torch.cat([torch.arange(s.start, s.start + k) for s in slots]).unsqueeze(0)
            prefix, per_slot = verify_globally(runner, state, drafts_flat, positions_flat, k, token_threshold)
            flat = drafts_flat[0].tolist()
            eos_hits = [i for i, t in enumerate(flat[:prefix]) if t in eos_token_ids]
            keep = eos_hits[0] + 1 if eos_hits else (prefix // k) * k
            if keep:  # whole leading slots (or up to an EOS) were accepted: their KV is exact
                kv_cache.truncate(state.cache, before + keep)
                positions = positions_flat[0, :keep].tolist()
                record(flat[:keep], positions, "verify")
                done = {slot.start for slot in slots[: -(-keep // k)]}
                masked[:] = [start for start in masked if start not in done]
                if eos_hits:
                    stop_at(positions[-1], masked)
                continue

            kv_cache.truncate(state.cache, before)
            for slot, accepted in zip(slots, per_slot):
                slot.accepted = accepted
            tokens, positions, eos_position = complete_in_parallel(
                runner, state, slots, k, options, mask_token_id, eos_token_ids, generator, emit, step
            )
            record(tokens, positions, "complete")
            masked[:] = [start for start in masked if start not in selected]
            if eos_position is not None:
                stop_at(eos_position, masked)
        if state.eos_position is not None:
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
        settings={"slot_size": k, "blocks": blocks, "generation_length": length, "slot_threshold": slot_threshold,
                  "token_threshold": token_threshold, "kv": kv},
    )
