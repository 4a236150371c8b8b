"""An n-gram draft table: what a model usually writes after the last few tokens, counted on its own answers.

The lossless decoder's lookup drafts (`lookup.py`) copy from the text itself. A small model also
repeats itself across texts: the phrases, list openings and sign-offs of its answers. This table
holds, for every context of 1 to `longest` tokens seen in a set of the model's own answers, the
token that most often came next. A draft is a chain: the longest context matching the text's tail
gives the next token, which joins the tail for the one after (an n-gram model as the drafter, as in
REST, He et al. 2024, and Lookahead decoding's n-gram pool). Like lookup drafts it costs no model
work, only width, and the lossless decoder keeps only what the AR head agrees with.

Stored beside the model's weights as `draft_table.safetensors` (`refusion drafts` builds it).
Knows nothing about models or tokenizers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import torch

FILENAME = "draft_table.safetensors"
LONGEST = 4


class DraftTable:
    """context (a tuple of 1..longest token ids) -> the token that most often followed it."""

    def __init__(self, following: dict[tuple[int, ...], int], counts: dict[tuple[int, ...], int] | None = None):
        self.following = following
        self.counts = counts or {context: 1 for context in following}
        self.longest = max((len(context) for context in following), default=0)

    @classmethod
    def build(cls, sequences: Iterable[list[int]], longest: int = LONGEST, min_count: int = 1) -> "DraftTable":
        """Count every (context, next token) pair in the sequences; keep each context's most frequent next token
        (ties: the one seen first) where it occurred at least `min_count` times."""
        seen: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for tokens in sequences:
            for end in range(len(tokens) - 1):  # tokens[end] is the context's last token, tokens[end + 1] follows
                for n in range(1, min(longest, end + 1) + 1):
                    seen[tuple(tokens[end + 1 - n:end + 1])][tokens[end + 1]] += 1
        following, counts = {}, {}
        for context, nexts in seen.items():
            token, count = nexts.most_common(1)[0]
            if count >= min_count:
                following[context], counts[context] = token, count
        return cls(following, counts)

    def draft(self, tail: list[int], most: int) -> tuple[int, list[int]]:
        """(length of the context matched for the first token, up to `most` tokens); (0, []) when nothing matches."""
        context, chain, first_match = list(tail[-self.longest:]) if self.longest else [], [], 0
        while len(chain) < most:
            for n in range(min(self.longest, len(context)), 0, -1):
                token = self.following.get(tuple(context[-n:]))
                if token is not None:
                    break
            else:
                break
            first_match = first_match or n
            chain.append(token)
            context.append(token)
        return first_match, chain

    def __len__(self) -> int:
        return len(self.following)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {}
        for n in range(1, self.longest + 1):
            contexts = [context for context in self.following if len(context) == n]
            tensors[f"context.{n}"] = torch.tensor(contexts, dtype=torch.int32).reshape(len(contexts), n)
            tensors[f"next.{n}"] = torch.tensor([self.following[c] for c in contexts], dtype=torch.int32)
            tensors[f"count.{n}"] = torch.tensor([self.counts[c] for c in contexts], dtype=torch.int32)
        save_file(tensors, str(path), metadata={"format": "refusion-draft-table", "longest": str(self.longest)})

    @classmethod
    def load(cls, path: str | Path) -> "DraftTable":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        following, counts = {}, {}
        for n in range(1, 1 + sum(name.startswith("context.") for name in tensors)):
            contexts = map(tuple, tensors[f"context.{n}"].tolist())
            for context, token, count in zip(contexts, tensors[f"next.{n}"].tolist(), tensors[f"count.{n}"].tolist()):
                following[context], counts[context] = token, count
        return cls(following, counts)
