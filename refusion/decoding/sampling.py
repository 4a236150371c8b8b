"""Choosing tokens from logits: greedy, or Gumbel-max sampling in float64 (as LLaDA and ReFusion do)."""

from __future__ import annotations

import torch


def choose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """Pick a token at every position and return (tokens, probabilities of those tokens).

    logits: [..., V] -> tokens: [...] (long), probs: [...] (float32).
    The probability is under the untempered softmax: thresholds compare against the model's own belief.
    """
    if temperature > 0:
        scores = logits.double() / temperature
        uniform = torch.rand(scores.shape, dtype=torch.float64, generator=generator, device="cpu").to(scores.device)
        exponential = (-torch.log(uniform.clamp_min(1e-300))).clamp_min(1e-300)
        gumbel = -torch.log(exponential)
        tokens = (scores + gumbel).argmax(dim=-1)
    else:
        tokens = logits.argmax(dim=-1)
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, probs


def probability_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Probability the model gives `tokens` under `logits`: [..., V], [...] -> [...]."""
    return torch.softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
