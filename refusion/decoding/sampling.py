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


def speculative_verify(ar_logits: torch.Tensor, drafts: torch.Tensor, draft_q: torch.Tensor | None,
                       mask_logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """Judge drafts against the AR head, pick the token after them, and draw the masks' guesses.

    ar_logits [n+1, V]: the AR head's next-token logits before each of the n drafts and after the last;
    drafts [n]; draft_q [n, V]: the distributions the drafts were drawn from (sampling only);
    mask_logits [m, V]. Returns (accepted, token, mask_tokens, mask_q): the length of the accepted
    prefix of drafts, the AR head's token after it, a guess per mask and (sampling) their distributions.

    Greedy: a draft is accepted iff it is the AR argmax, and the token is the AR argmax. Sampling:
    the speculative-sampling rule, so that the committed tokens are distributed exactly as tokens
    drawn one by one from the AR head at this temperature.
    """
    n = drafts.shape[0]
    if temperature == 0:
        picks = torch.cat([ar_logits.argmax(-1), mask_logits.argmax(-1)]).tolist()  # one host sync
        ar, mask_tokens = picks[: n + 1], picks[n + 1 :]
        drafted = drafts.tolist()
        accepted = next((i for i in range(n) if drafted[i] != ar[i]), n)
        return accepted, ar[accepted], mask_tokens, None
    p = torch.softmax(ar_logits.double().cpu() / temperature, dim=-1)  # [n+1, V]
    mask_q = torch.softmax(mask_logits.double().cpu() / temperature, dim=-1)  # [m, V]
    accepted = n
    if n:
        rows = torch.arange(n)
        ratio = p[rows, drafts] / draft_q[rows, drafts].clamp_min(1e-300)
        uniform = torch.rand(n, dtype=torch.float64, generator=generator)
        rejected = (uniform >= ratio.clamp(max=1.0)).nonzero()
        accepted = int(rejected[0]) if len(rejected) else n
    if accepted < n:
        residual = (p[accepted] - draft_q[accepted]).clamp_min(0)
        target = residual if residual.sum() > 0 else p[accepted]
    else:
        target = p[n]
    token = int(torch.multinomial(target / target.sum(), 1, generator=generator))
    mask_tokens = torch.multinomial(mask_q, 1, generator=generator).flatten().tolist() if len(mask_q) else []
    return accepted, token, mask_tokens, mask_q
