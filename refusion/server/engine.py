"""One model, many clients: continuous batching on one worker thread.

Every running request is a row of the running batch: it joins at the next step boundary and
leaves when done, so that one forward serves every running request. `ar` and `lossless` requests
are rows of a `refusion.decoding.batching.Batch` (one forward per step for all of them); requests
for the other decoders (`refusion`, `mdm`, `fast-dllm`) run in a `refusion.decoding.lockstep`
group (one forward for each model call of all of them). While both groups have rows, the worker
alternates: a step of the one, a forward of the other. At most `max_batch_size` requests run at
once; the others wait in arrival order.

A request takes its place when it is admitted (`admit`): a place held for it at once (a row of
the batch), a place in a FIFO line, or `QueueFull`, so that a full line is known before any
response starts. It starts decoding only when its caller `run`s it, once it has set its listeners. A client that leaves while waiting is taken out of the line, and one that
leaves while decoding stops at its decoder's next step (`should_stop`); `release` does either,
whatever state the request is in, so no path can leave a place taken. The model is only ever
called from the worker thread (a lockstep decode runs on a thread of its own, but its model calls
are made by the worker). Knows nothing about HTTP or the OpenAI protocol.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..decoding import Generation
from ..decoding.batching import Batch
from ..decoding.dispatch import OpenRow, open_row
from ..decoding.lockstep import Lockstep
from ..decoding.runner import ModelRunner
from ..errors import RefusionError

log = logging.getLogger("refusion.server")


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
    """An admitted job's place: waiting in line, holding a place, decoding, or done.

    `turn` resolves (on the admitting event loop) once a place is held for it; `outcome` once its
    decode has ended. The state moves only under the engine's lock, so a release racing a
    hand-over never loses or doubles a place.
    """

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop):
        self.job, self.loop = job, loop
        self.turn: asyncio.Future = loop.create_future()
        self.outcome: asyncio.Future = loop.create_future()
        self.state = "waiting"  # -> "holding" (a place is ours) -> "decoding" (the worker's); "done" if released first


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
    def __init__(self, model, tokenizer, max_waiting: int = 64, max_batch_size: int = 16):
        self.model = model
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.max_batch_size = max_batch_size
        self.counters = Counters()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._line: collections.deque[Ticket] = collections.deque()
        self._rows = 0  # places held or decoding
        self._arrivals: collections.deque[Ticket] = collections.deque()  # run, not yet picked up by the worker
        self._closed = False
        self._runner: ModelRunner | None = None
        self._batch: Batch | None = None
        self._lockstep: Lockstep | None = None
        self._open: dict[int, tuple[Ticket, OpenRow]] = {}  # id(row state or lane) -> its ticket and row
        self.running = 0
        """Requests decoding now."""
        self._worker = threading.Thread(target=self._work, name="refusion-decode", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._line)

    def admit(self, job: Job) -> Ticket:
        """Hold a place for the job if one is free and nobody waits, else put it at the end of the line.

        Call from the event loop that will `run` the ticket. Raises QueueFull when the line is full.
        Every admitted ticket must end in `run` returning or in `release`.
        """
        ticket = Ticket(job, asyncio.get_running_loop())
        with self._lock:
            if not self._line and self._has_room():
                self._hold(ticket)
                ticket.turn.set_result(None)
            elif len(self._line) >= self.max_waiting:
                raise QueueFull(f"{len(self._line)} requests are already waiting for the model")
            else:
                self._line.append(ticket)
        return ticket

    async def run(self, ticket: Ticket) -> Generation | None:
        """Wait for a place, decode, return the result (None when the job was cancelled or released).

        Cancelling the awaiting task releases the ticket: a waiting job leaves the line, a decoding one stops.
        """
        try:
            await ticket.turn
            with self._lock:
                if ticket.state != "holding":  # released while the place was on its way
                    return None
                if self._closed:  # nothing will run it, so its place must not stay taken
                    ticket.state = "done"
                    self._free()
                    raise RuntimeError("the server is shutting down")
                ticket.state = "decoding"
                self._arrivals.append(ticket)
                self._wake.notify()
            return await asyncio.shield(ticket.outcome)
        except asyncio.CancelledError:
            self.release(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        """Give up the ticket's place, whatever its state; harmless once its decode has ended.

        A waiting ticket leaves the line; a place not yet used passes on; a running decode is told
        to stop at its next step (the worker frees its place when it has).
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
                self._free()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()

    # --- places (all under the lock) --------------------------------------------------------

    def _has_room(self) -> bool:
        return self._rows < self.max_batch_size

    def _hold(self, ticket: Ticket) -> None:
        ticket.state = "holding"
        self._rows += 1

    def _free(self) -> None:
        """Give back a place and hand free places to the line, first come first served."""
        self._rows -= 1
        while self._line and self._has_room():
            ticket = self._line.popleft()
            try:
                ticket.loop.call_soon_threadsafe(_hand_over, ticket.turn)
            except RuntimeError:  # its event loop has closed: nobody is there to take the place
                ticket.state = "done"
                continue
            self._hold(ticket)

    # --- the worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._arrivals and not self._open and not self._closed:
                    self._wake.wait()
                if self._closed:
                    if self._lockstep is not None:
                        self._lockstep.abandon()
                    return
                arrivals = list(self._arrivals)
                self._arrivals.clear()
            self._join(arrivals)
            if self._batch is not None and len(self._batch):
                self._step_batch()
            if self._lockstep is not None and len(self._lockstep):
                self._step_lockstep()
            self.running = len(self._open)

    def _join(self, tickets: list[Ticket]) -> None:
        """Open the arrivals' decodes; batch rows join together, their prompts cached by one forward (`Batch.add`)."""
        joining = []
        for ticket in tickets:
            job = ticket.job
            if job.cancelled.is_set():
                self.counters.cancelled_decoding += 1
                self._end(ticket, None)
                continue
            try:
                if self._runner is None:
                    self._runner = ModelRunner(self.model,
                                               suppress_token_id=getattr(self.model.config, "mask_token_id", None))
                    self._batch, self._lockstep = Batch(self._runner), Lockstep(self._runner)
                opened = open_row(self.model, self.tokenizer, self._runner, job.prompt_ids, on_event=job.listener,
                                  on_text=job.on_text, should_stop=job.cancelled.is_set, **job.options)
                if opened.state is not None:
                    joining.append((ticket, opened))
                else:  # runs up to its first model call now
                    self._open[id(self._lockstep.add(opened.decode))] = (ticket, opened)
            except Exception as error:
                self.counters.failed += 1
                self._end(ticket, error=error)
        try:
            if joining:
                self._batch.add(*(opened.state for _, opened in joining))
        except Exception:  # the batch is as it was: each one again alone, so that only a row that fails alone fails
            for ticket, opened in joining:
                try:
                    self._batch.add(opened.state)
                except Exception as error:
                    if not isinstance(error, RefusionError):
                        log.error("caching a joining prompt failed", exc_info=error)
                    self.counters.failed += 1
                    self._end(ticket, error=error)
                else:
                    self._open[id(opened.state)] = (ticket, opened)
            return
        for ticket, opened in joining:
            self._open[id(opened.state)] = (ticket, opened)

    def _step_batch(self) -> None:
        size = len(self._batch)
        try:
            finished = self._batch.step()
        except Exception as error:  # a failed forward leaves the batch's cache unknown: every row ends with it
            log.error("a batch step failed", exc_info=error)
            for state in self._batch.rows:
                ticket, _ = self._open.pop(id(state))
                self.counters.failed += 1
                self._end(ticket, error=error)
            self._batch = Batch(self._runner)
            return
        for state in finished:
            ticket, opened = self._open.pop(id(state))
            self._finish(ticket, opened.result(batch_size=size))

    def _step_lockstep(self) -> None:
        size = len(self._lockstep)
        for lane in self._lockstep.step():
            ticket, opened = self._open.pop(id(lane))
            if lane.error is not None:
                if not isinstance(lane.error, RefusionError):
                    log.error("a decode failed", exc_info=lane.error)
                self.counters.failed += 1
                self._end(ticket, error=lane.error)
            else:
                self._finish(ticket, opened.result(lane.output, batch_size=size))

    def _finish(self, ticket: Ticket, result: Generation) -> None:
        if result.finish_reason == "cancelled":
            self.counters.cancelled_decoding += 1
            self._end(ticket, None)
        else:
            self.counters.served += 1
            self._end(ticket, result)

    def _end(self, ticket: Ticket, result: Generation | None = None, error: Exception | None = None) -> None:
        """Free the place, then hand the outcome to the caller's event loop (which then sees the place free)."""
        with self._lock:
            ticket.state = "done"
            self._free()
        try:
            ticket.loop.call_soon_threadsafe(_settle, ticket.outcome, result, error)
        except RuntimeError:  # its event loop has closed: nobody waits for it
            pass


def _hand_over(turn: asyncio.Future) -> None:
    if not turn.done():  # a cancelled waiter has released its ticket, which passed the place on
        turn.set_result(None)


def _settle(outcome: asyncio.Future, result, error) -> None:
    if outcome.done():
        return
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(result)
