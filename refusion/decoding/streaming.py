"""Turn out-of-order commit events into a left-to-right stream of final tokens, and watch it for stop strings.

A token is emitted only once every position before it is committed, so a slot decoded far ahead
never reaches the reader before the gap in front of it is filled. Knows nothing about models.
"""

from __future__ import annotations

from typing import Callable


class PrefixStream:
    """Feed it decoder events; `pop()` returns the tokens that just became final, in order."""

    def __init__(self, eos_token_ids: set[int] | None = None, limit: int | None = None):
        self.eos_token_ids = eos_token_ids or set()
        self.limit = limit
        self.committed: dict[int, int] = {}
        self.emitted = 0
        self.ended = False

    def __call__(self, event: dict) -> None:
        if event["event"] == "commit":
            self.committed.update(zip(event["positions"], event["tokens"]))
        elif event["event"] == "drop":
            for position in event["positions"]:
                self.committed.pop(position, None)

    @property
    def tokens(self) -> list[int]:
        """Every token emitted so far, in text order."""
        return [self.committed[p] for p in range(self.emitted)]

    def pop(self) -> list[int]:
        ready = []
        while not self.ended and self.emitted in self.committed:
            if self.limit is not None and self.emitted >= self.limit:
                self.ended = True
                break
            token = self.committed[self.emitted]
            ready.append(token)
            self.emitted += 1
            if token in self.eos_token_ids:
                self.ended = True
        return ready


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; (text, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def held_back(text: str, stop: list[str]) -> int:
    """How many trailing characters might still turn into a stop string or a multi-byte character."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class IncrementalDecoder:
    """Text of a growing token list, decoding only a short window per new token (as TGI and vLLM do).

    Decoding the window from `prefix_offset` with and without the new tokens and keeping the
    difference gives the same text as decoding everything (spaces that depend on the previous
    token included); a difference ending in an incomplete character waits for more tokens.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.tokens: list[int] = []
        self.text = ""
        self.prefix_offset = self.read_offset = 0

    def add(self, tokens: list[int]) -> str:
        """Append tokens; return the text they completed (possibly empty)."""
        self.tokens += tokens
        before = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        after = self.decode(self.tokens[self.prefix_offset :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        delta = after[len(before) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
        self.text += delta
        return delta


class FinalText:
    """Feed it decoder events; it keeps the final left-to-right text, cut before the first stop string.

    Calling it returns True when that text grew. `stopped` says a stop string was reached (nothing
    after it counts), and `ready` is the part safe to show now: all of it once stopped, otherwise
    without a tail that could still become a stop string or a multi-byte character. Text is
    decoded incrementally: each event costs a short window, not the whole prefix; with
    `text=False` (no stop strings, nobody reading) only the final tokens are kept, nothing decoded.
    """

    def __init__(self, decode: Callable[[list[int]], str], eos_token_ids: set[int], limit: int, stop: list[str] = (),
                 text: bool = True):
        self.stop = list(stop)
        self.decodes = text or bool(self.stop)
        self.prefix = PrefixStream(eos_token_ids, limit)
        self.decoder = IncrementalDecoder(decode)
        self.text = ""
        self.stopped = False

    @property
    def tokens(self) -> list[int]:
        """The final tokens so far, in text order."""
        return self.prefix.tokens

    @property
    def complete(self) -> bool:
        """The text can no longer change: the budget is final, or an EOS, or a stop string."""
        return self.stopped or self.prefix.ended

    @property
    def ready(self) -> str:
        return self.text if self.stopped else self.text[: len(self.text) - held_back(self.text, self.stop)]

    def __call__(self, event: dict) -> bool:
        self.prefix(event)
        if self.stopped:
            return False
        new = self.prefix.pop()
        if not new or not self.decodes or not self.decoder.add(new):
            return False
        # A stop string can only begin in the part not yet searched, or straddle its start.
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, len(self.text) - longest)
        tail, self.stopped = cut_at_stop(self.decoder.text[start:], self.stop)
        self.text = self.decoder.text[:start] + tail
        return True
