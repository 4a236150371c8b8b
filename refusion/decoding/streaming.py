"""Turn out-of-order commit events into a left-to-right stream of final tokens.

A token is emitted only once every position before it is committed, so a slot decoded far ahead
never reaches the reader before the gap in front of it is filled. Knows nothing about models.
"""

from __future__ import annotations


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
