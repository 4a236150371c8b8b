"""One model, many clients: generations run one at a time, in arrival order, on a worker thread.

A request takes its place in line when it is admitted (`admit`: the model's turn at once, a
place in a FIFO, or `QueueFull`), so that a full line is known before any response starts. A
client that leaves while waiting is taken out of the line, and one that leaves while decoding
stops it at the decoder's next step (`should_stop`); `release` does either, whatever state the
request is in, so no path can leave the model marked busy. The model is only ever called from
the single worker thread, so requests never interleave on its state. Knows nothing about HTTP
or the OpenAI protocol.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..decoding import Generation, generate


class QueueFull(Exception):
    """Too many requests already wait for the model."""


@dataclass
class Job:
    prompt_ids: object  # [1, P] token ids
    options: dict  # keyword arguments of refusion.generate
    listener: Callable[[dict], None] | None = None  # gets each decode event, on the worker thread
    on_text: Callable[[str], None] | None = None  # gets the text as it becomes final, on the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)


class Ticket:
    """An admitted job's place: waiting in line, holding the model's turn, decoding, or done.

    `turn` resolves (on the admitting event loop) once the model is this job's. The state moves
    only under the engine's lock, so a release racing a hand-over never loses or doubles a turn.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop):
        self.job, self.loop = job, loop
        self.turn: asyncio.Future = loop.create_future()
        self.state = "waiting"  # -> "holding" (the turn is ours) -> "decoding" (the worker's); "done" if released first


@dataclass
class Counters:
    served: int = 0
    cancelled_waiting: int = 0
    """Clients that left before their decode began."""
    cancelled_decoding: int = 0
    """Decodes stopped because their client left."""
    failed: int = 0
    """Decodes that raised."""


class Engine:
    def __init__(self, model, tokenizer, max_waiting: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.counters = Counters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refusion-decode")
        self._lock = threading.Lock()
        self._busy = False
        self._line: collections.deque[Ticket] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def busy(self) -> bool:
        return self._busy

    def admit(self, job: Job) -> Ticket:
        """Take the model's turn if it is free and nobody waits, else a place at the end of the line.

        Call from the event loop that will `run` the ticket. Raises QueueFull when the line is full.
        Every admitted ticket must end in `run` returning or in `release`.
        """
        ticket = Ticket(job, asyncio.get_running_loop())
        with self._lock:
            if not self._busy and not self._line:
                self._busy, ticket.state = True, "holding"
                ticket.turn.set_result(None)
            elif len(self._line) >= self.max_waiting:
                raise QueueFull(f"{len(self._line)} requests are already waiting for the model")
            else:
                self._line.append(ticket)
        return ticket

    async def run(self, ticket: Ticket) -> Generation | None:
        """Wait for the turn, decode, return the result (None when the job was cancelled or released).

        Cancelling the awaiting task releases the ticket: a waiting job leaves the line, a decoding one stops.
        """
        try:
            await ticket.turn
            with self._lock:
                if ticket.state != "holding":  # released while the turn was on its way
                    return None
                ticket.state = "decoding"
            try:
                future = self._executor.submit(self._decode, ticket.job)
            except RuntimeError:  # shutting down: nothing will run, so the turn must not stay taken
                self._pass_turn()
                raise
            future.add_done_callback(lambda _: self._pass_turn())  # only once the model is really free
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            self.release(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        """Give up the ticket's place, whatever its state; harmless once its decode has ended.

        A waiting ticket leaves the line; a turn not yet used passes on; a running decode is told
        to stop at its next step (its worker passes the turn on when it returns).
        """
        ticket.job.cancelled.set()
        with self._lock:
            state = ticket.state
            if state in ("waiting", "holding"):
                ticket.state = "done"
                self.counters.cancelled_waiting += 1
            if state == "waiting":
                self._line.remove(ticket)
        if state == "holding":
            self._pass_turn()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _decode(self, job: Job) -> Generation | None:
        if job.cancelled.is_set():
            self.counters.cancelled_decoding += 1
            return None
        try:
            result = generate(self.model, self.tokenizer, job.prompt_ids, on_event=job.listener, on_text=job.on_text,
                              should_stop=job.cancelled.is_set, **job.options)
        except Exception:
            self.counters.failed += 1
            raise
        if result.finish_reason == "cancelled":
            self.counters.cancelled_decoding += 1
            return None
        self.counters.served += 1
        return result

    def _pass_turn(self) -> None:
        """Hand the model to the first ticket in line whose event loop still runs, or mark it free."""
        with self._lock:
            while self._line:
                ticket = self._line.popleft()
                try:
                    ticket.loop.call_soon_threadsafe(_hand_over, ticket.turn)
                except RuntimeError:  # its event loop has closed: nobody is there to take the turn
                    ticket.state = "done"
                    continue
                ticket.state = "holding"
                return
            self._busy = False


def _hand_over(turn: asyncio.Future) -> None:
    if not turn.done():  # a cancelled waiter has released its ticket, which passed the turn on
        turn.set_result(None)
