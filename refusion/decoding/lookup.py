"""Lookup drafts for the lossless decoder: copy what followed the last time the text's tail appeared.

Prompt lookup decoding (Saxena 2023; `prompt_lookup_num_tokens` in transformers): the text so far
(prompt included) often repeats itself, in code, lists, quotes of the question and a small model's
loops. If its last n tokens (n = 3, else 2, else 1) occurred before, the tokens that followed that
occurrence are a draft for what comes next. The draft costs no model work to make, only the width
it adds to a forward, so it pays where the mask head's drafts are weak and the text repeats.

`NgramIndex` finds the draft in constant time per committed token. `LookupGain` learns, per match
length, how many tokens a lookup draft adds beyond what the mask-head chains accepted in the same
forward, and offers one only where that is worth its width. Knows nothing about models.
"""

from __future__ import annotations

from typing import Callable

LONGEST_MATCH = 3  # n-grams tried, longest first
PRIOR_GAIN = {1: 0.3, 2: 1.0, 3: 1.5}  # tokens a draft adds beyond the mask chains, by match length, before any seen
TABLE_PRIOR_GAIN = {1: 0.1, 2: 0.2, 3: 0.2, 4: 0.4}  # the same for draft-table chains (`draft_table.py`)
PRIOR_WEIGHT, DECAY = 4.0, 0.95
EXPLORE_EVERY = 16  # after this many matches passed over, offer one anyway: how much they add may have changed


class NgramIndex:
    """The text's tokens, with where each n-gram (n <= LONGEST_MATCH) last ended before its latest occurrence."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.last_end: dict[tuple[int, ...], int] = {}  # n-gram -> index of its last token, latest occurrence
        self.tail_before: dict[int, int | None] = {}  # n -> where the current tail's n-gram ended before (None: never)
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1
            for n in range(1, LONGEST_MATCH + 1):
                if end + 1 < n:
                    self.tail_before[n] = None
                    continue
                gram = tuple(self.tokens[end + 1 - n:end + 1])
                self.tail_before[n] = self.last_end.get(gram)
                self.last_end[gram] = end

    def draft(self, most: int) -> tuple[int, list[int]]:
        """(match length, up to `most` tokens that followed the tail's longest earlier match); (0, []) if none."""
        for n in range(LONGEST_MATCH, 0, -1):
            before = self.tail_before.get(n)
            if before is not None:
                return n, self.tokens[before + 1:before + 1 + most]
        return 0, []


class LookupGain:
    """Whether a lookup draft pays: tokens it added beyond the mask chains (decayed mean per match length) against
    what its width costs."""

    def __init__(self, priors: dict[int, float] = PRIOR_GAIN):
        self.gain = {n: PRIOR_WEIGHT * g for n, g in priors.items()}
        self.trials = {n: PRIOR_WEIGHT for n in priors}
        self.passed_over = 0

    def mean(self, match: int) -> float:
        """Tokens a draft from a match of this length has added beyond the mask chains, on (decayed) average."""
        return self.gain[match] / self.trials[match]

    def pays(self, match: int, length: int, expected: float, width: int, cost: Callable[[int], float],
             explore: bool = True, rate: float | None = None) -> bool:
        """Offer a draft of `length` tokens from a match of `match` tokens beside a forward of `width` tokens that is
        expected to give `expected` tokens? It pays where what it adds per unit of the cost it adds beats `rate`,
        the tokens per unit of cost a decoding step gives without it (default: this forward's, expected / cost(width)).
        `explore=False` (in a batch) never offers one only to see if it pays."""
        mean = self.mean(match)
        rate = expected / cost(width) if rate is None else rate
        if mean > rate * (cost(width + length) - cost(width)):
            self.passed_over = 0
            return True
        self.passed_over += 1
        if self.passed_over >= EXPLORE_EVERY and explore:
            self.passed_over = 0
            return True
        return False

    def update(self, match: int, added: int) -> None:
        self.gain[match] = DECAY * self.gain[match] + added
        self.trials[match] = DECAY * self.trials[match] + 1
