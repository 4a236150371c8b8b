"""The training objectives as small tensor functions: build one example's input, then score logits.

`refusion`: the hybrid AR + masked-diffusion objective of the ReFusion paper (Li et al., ICLR 2026): slots,
clean slots shuffled first with their position ids, masked slots after. `ar`: next-token
fine-tuning on the response. `mdm`: LLaDA-style token masking with bidirectional attention.

Every builder returns the same fields for one example (all [S] = prompt + response length):
input_ids, position_ids, ar_labels (next-token targets, IGNORE where none), mdm_labels (unshifted
targets at mask positions), mdm_weights (1/p at mask positions, else 0), plus response_length.
Random draws come from the `generator` passed in, in a fixed order documented on each builder.
Knows nothing about models, padding or the Trainer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100
EPS = 1e-3
OBJECTIVES = ("refusion", "ar", "mdm")
BIDIRECTIONAL = {"mdm"}
"""Objectives whose model attends in both directions (the decoders read this from the config)."""


def mask_probability(t: torch.Tensor) -> torch.Tensor:
    """p = (1 - eps) t + eps: never 0, so 1/p stays finite."""
    return (1 - EPS) * t + EPS


def _prompt_part(prompt: torch.Tensor) -> dict:
    length = prompt.shape[0]
    return {
        "input_ids": prompt,
        "position_ids": torch.arange(length),
        "ar_labels": torch.full((length,), IGNORE),
        "mdm_labels": torch.full((length,), IGNORE),
        "mdm_weights": torch.zeros(length),
    }


def _join(prompt: torch.Tensor, response: dict, response_length: int) -> dict:
    head = _prompt_part(prompt)
    built = {name: torch.cat([head[name], response[name]]) for name in head}
    built["response_length"] = response_length
    return built


def refusion_example(prompt: torch.Tensor, response: torch.Tensor, mask_id: int, slot_sizes: tuple[int, ...],
                     generator: torch.Generator, *, prefix_share: float = 0.0, ar_across_slots: bool = False,
                     draft_horizon: int | None = None, next_token_share: float = 0.0) -> dict:
    """The paper's training recipe, steps 1-4 (slot size, masking, input order, labels), for one example. prompt [P], response [R] (EOS included).

    Options beside the recipe (all off by default, which is the paper's recipe draw for draw):
    - `prefix_share`: the share of examples laid out as the left-to-right decoders see them: a clean prefix of
      slots in their own order, then a masked tail of ceil(p * n) slots. Every clean token of such an example
      predicts the next one (it is plain left-to-right text), and L_MDM averages over the masked tokens;
    - `ar_across_slots`: a clean slot's last token also predicts the next slot's first token whenever that
      token is hidden from it (masked, or in a clean slot placed later in the input). The recipe gives that
      token no label, so next-token prediction across slot boundaries is never trained;
    - `draft_horizon` (prefix layout only): the masked tail keeps its first H tokens and the response after them is
      left out of the input. Under causal attention a mask's prediction depends only on what comes before it, so
      this drops only the far masks, which the lossless decoder never reads, and their compute;
    - `next_token_share`: the share of examples that are plain next-token examples over the whole response
      (`ar_example`, no masks). Every other layout labels a token's successor only where the input shows the token
      clean, so the end of an answer, which is masked most often, rarely trains the AR head.

    Draws, in order: the next-token coin (rand 1, only when next_token_share > 0; a next-token example draws
    nothing more), the slot-size index (randint), t (rand 1), the layout coin (rand 1, only when
    prefix_share > 0), then for the shuffled layout one coin per slot (rand n) and the order of the clean
    slots (randperm); the prefix layout draws nothing more.
    """
    if next_token_share > 0 and float(torch.rand(1, generator=generator)) < next_token_share:
        return ar_example(prompt, response)
    length = response.shape[0]
    k = slot_sizes[int(torch.randint(len(slot_sizes), (1,), generator=generator))]
    p = mask_probability(torch.rand(1, generator=generator))  # [1]
    slots = -(-length // k)
    slot_of = torch.arange(length) // k  # [R] slot of each response position
    prefix = prefix_share > 0 and float(torch.rand(1, generator=generator)) < prefix_share
    if prefix:
        masked_slots = math.ceil(float(p) * slots)  # >= 1, since p > 0
        masked_slot = torch.arange(slots) >= slots - masked_slots  # [n]
        rank = torch.arange(slots)
        first_masked = (slots - masked_slots) * k  # < length: the last slot is always masked
        kept = length if draft_horizon is None else min(length, first_masked + draft_horizon)
        weight = length / (kept - first_masked)  # L_MDM: the mean over the masked tokens kept
    else:
        masked_slot = torch.rand(slots, generator=generator) < p  # [n]
        clean = torch.nonzero(~masked_slot).flatten()  # [C]
        masked = torch.nonzero(masked_slot).flatten()  # [M]
        rank = torch.empty(slots, dtype=torch.long)
        rank[clean[torch.randperm(clean.shape[0], generator=generator)]] = torch.arange(clean.shape[0])
        rank[masked] = clean.shape[0] + torch.arange(masked.shape[0])
        weight = 1.0 / p

    order = torch.argsort(rank[slot_of], stable=True)  # [R] response position of each input token
    tokens = response[order]
    is_masked = masked_slot[slot_of[order]]
    following = (order + 1).clamp(max=length - 1)
    # Which clean tokens predict the next one: in the prefix layout (left-to-right text) all of them; with
    # ar_across_slots each whose next token the input has not shown it; in the paper's recipe those inside a slot.
    has_next = (order + 1 < length) & ~is_masked
    if not prefix and ar_across_slots:
        input_index = torch.empty(length, dtype=torch.long)
        input_index[order] = torch.arange(length)
        has_next &= masked_slot[slot_of[following]] | (input_index[following] > torch.arange(length))
    elif not prefix:
        has_next &= slot_of[following] == slot_of[order]
    part = {
        "input_ids": torch.where(is_masked, mask_id, tokens),
        "position_ids": prompt.shape[0] + order,
        "ar_labels": torch.where(has_next, response[following], IGNORE),
        "mdm_labels": torch.where(is_masked, tokens, IGNORE),
        "mdm_weights": torch.where(is_masked, weight, 0.0),
    }
    if prefix:
        part = {name: value[:kept] for name, value in part.items()}  # the prefix layout keeps response order
    return _join(prompt, part, length)


def ar_example(prompt: torch.Tensor, response: torch.Tensor) -> dict:
    """Next-token fine-tuning: position j predicts token j+1 when that token is in the response. No draws."""
    sequence = torch.cat([prompt, response])
    labels = torch.full_like(sequence, IGNORE)
    labels[prompt.shape[0] - 1:-1] = response
    return {
        "input_ids": sequence,
        "position_ids": torch.arange(sequence.shape[0]),
        "ar_labels": labels,
        "mdm_labels": torch.full_like(sequence, IGNORE),
        "mdm_weights": torch.zeros(sequence.shape[0]),
        "response_length": response.shape[0],
    }


def mdm_example(prompt: torch.Tensor, response: torch.Tensor, mask_id: int, generator: torch.Generator) -> dict:
    """LLaDA's SFT masking: each response token masked with p = (1-eps) t + eps. Draws: t (rand 1), one coin per token."""
    length = response.shape[0]
    p = mask_probability(torch.rand(1, generator=generator))
    is_masked = torch.rand(length, generator=generator) < p  # [R]
    part = {
        "input_ids": torch.where(is_masked, mask_id, response),
        "position_ids": prompt.shape[0] + torch.arange(length),
        "ar_labels": torch.full((length,), IGNORE),
        "mdm_labels": torch.where(is_masked, response, IGNORE),
        "mdm_weights": torch.where(is_masked, 1.0 / p, 0.0),
    }
    return _join(prompt, part, length)


def eos_padded(response: torch.Tensor, length: int, eos_id: int) -> torch.Tensor:
    """The response followed by EOS up to `length` tokens (LLaDA's SFT: the padding is masked and scored
    like any token, so the model learns to fill the unused tail of a generation span with EOS)."""
    missing = max(length - response.shape[0], 0)
    return torch.cat([response, response.new_full((missing,), eos_id)])


def build_example(objective: str, prompt: torch.Tensor, response: torch.Tensor, *, mask_id: int | None,
                  slot_sizes: tuple[int, ...], generator: torch.Generator, prefix_share: float = 0.0,
                  ar_across_slots: bool = False, draft_horizon: int | None = None, next_token_share: float = 0.0) -> dict:
    if objective == "refusion":
        return refusion_example(prompt, response, mask_id, slot_sizes, generator, prefix_share=prefix_share,
                                ar_across_slots=ar_across_slots, draft_horizon=draft_horizon,
                                next_token_share=next_token_share)
    if objective == "mdm":
        return mdm_example(prompt, response, mask_id, generator)
    if objective == "ar":
        return ar_example(prompt, response)
    raise ValueError(f"unknown objective {objective!r}")


def ar_term(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_AR: mean cross-entropy over every labelled token of the batch; 0 (with a graph) when there is none.

    logits [B, S, V], labels [B, S]; label at j is the target of logits at j (already shifted).
    """
    valid = labels != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), labels[valid])


def mdm_term(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
             response_lengths: torch.Tensor) -> torch.Tensor:
    """L_MDM: per example, sum over masked tokens of CE / p over the response length; summed, over batch size.

    logits [B, S, V], labels/weights [B, S] (unshifted), response_lengths [B].
    """
    valid = labels != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0
    per_token = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)  # [B, S]
    per_token = per_token.masked_scatter(valid, F.cross_entropy(logits[valid].float(), labels[valid], reduction="none"))
    per_example = (per_token * weights).sum(dim=1) / response_lengths.clamp(min=1)  # [B]
    return per_example.sum() / labels.shape[0]


def objective_terms(objective: str, logits: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
    """The objective's loss terms: {"ar": L_AR, "mdm": L_MDM} for refusion, one of them for ar / mdm."""
    terms = {}
    if objective in ("refusion", "ar"):
        terms["ar"] = ar_term(logits, batch["ar_labels"])
    if objective in ("refusion", "mdm"):
        terms["mdm"] = mdm_term(logits, batch["mdm_labels"], batch["mdm_weights"], batch["response_lengths"])
    return terms


def total_loss(objective: str, terms: dict[str, torch.Tensor], mdm_weight: float = 1.0) -> torch.Tensor:
    """refusion: L_AR + lambda L_MDM; ar: L_AR; mdm: L_MDM."""
    if objective == "refusion":
        return terms["ar"] + mdm_weight * terms["mdm"]
    return terms["ar" if objective == "ar" else "mdm"]
