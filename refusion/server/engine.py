"""One model, many clients: continuous batching on one worker thread.

Requests whose decoder batches (`ar`, `lossless`) decode as rows of one running batch: a request
joins it at the next step boundary and leaves it when done, so that one forward per step serves
every running request (`refusion.decoding.batching`). At most `max_batch_size` rows run at once.
Requests for the other decoders (`refusion`, `mdm`, `fast-dllm`) need the model alone: one starts
when the batch has emptied, and the batch refills after it. Requests take places in arrival order.

A request takes its place when it is admitted (`admit`): a place held for it at once (a row of
the batch, or the model alone), a place in a FIFO line, or `QueueFull`, so that a full line is
known before any response starts. It starts decoding only when its caller `run`s it, once it has
set its listeners. A client that leaves while waiting is taken out of the line, and one that
leaves while decoding stops at its decoder's next step (`should_stop`); `release` does either,
whatever state the request is in, so no path can leave a place taken. The model is only ever
called from the worker thread. Knows nothing about HTTP or the OpenAI protocol.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..decoding import DECODERS, Generation, generate
from ..decoding.batching import Batch
from ..decoding.dispatch import batches, open_row
from ..decoding.runner import ModelRunner

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

    @property
    def batched(self) -> bool:
        decoder = self.options.get("decoder")
        return decoder in DECODERS and batches(decoder)


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
        self._rows = 0  # batch rows held or decoding
        self._alone = False  # a job that needs the model alone holds it or decodes
        self._arrivals: collections.deque[Ticket] = collections.deque()  # run, not yet picked up by the worker
        self._closed = False
        self._batch: Batch | None = None
        self._open: dict[int, tuple] = {}  # id(row state) -> (ticket, OpenRow) for the rows of the batch
        self.running = 0
        """Rows in the running batch now (a job decoding alone counts as one)."""
        self._worker = threading.Thread(target=self._work, name="refusion-decode", daemon=True)
        self._worker.start()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._alone or self._line)

    def admit(self, job: Job) -> Ticket:
        """Hold a place for the job if one is free and nobody waits, else put it at the end of the line.

        Call from the event loop that will `run` the ticket. Raises QueueFull when the line is full.
        Every admitted ticket must end in `run` returning or in `release`.
        """
        ticket = Ticket(job, asyncio.get_running_loop())
        with self._lock:
            if not self._line and self._fits(job):
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
                    self._free(ticket.job)
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
                self._free(ticket.job)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()

    # --- places (all under the lock) --------------------------------------------------------

    def _fits(self, job: Job) -> bool:
        if job.batched:
            return not self._alone and self._rows < self.max_batch_size
        return not self._alone and not self._rows

    def _hold(self, ticket: Ticket) -> None:
        ticket.state = "holding"
        if ticket.job.batched:
            self._rows += 1
        else:
            self._alone = True

    def _free(self, job: Job) -> None:
        """Give back the job's place and hand free places to the line, first come first served."""
        if job.batched:
            self._rows -= 1
        else:
            self._alone = False
        while self._line and self._fits(self._line[0].job):
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
                    return
                arrivals = list(self._arrivals)
                self._arrivals.clear()
            for ticket in arrivals:
                if ticket.job.batched:
                    self._join(ticket)
                else:
                    self._decode_alone(ticket)
            if self._open:
                self._step()

    def _decode_alone(self, ticket: Ticket) -> None:
        job = ticket.job
        self.running = 1
        try:
            if job.cancelled.is_set():
                self.counters.cancelled_decoding += 1
                self._end(ticket, None)
                return
            result = generate(self.model, self.tokenizer, job.prompt_ids, on_event=job.listener, on_text=job.on_text,
                              should_stop=job.cancelled.is_set, **job.options)
        except Exception as error:
            self.counters.failed += 1
            self._end(ticket, error=error)
            return
        finally:
            self.running = 0
        self._finish(ticket, result)

    def _join(self, ticket: Ticket) -> None:
        job = ticket.job
        if job.cancelled.is_set():
            self.counters.cancelled_decoding += 1
            self._end(ticket, None)
            return
        try:
            if self._batch is None:
                self._batch = Batch(ModelRunner(self.model, suppress_token_id=getattr(self.model.config, "mask_token_id", None)))
            opened = open_row(self.model, self.tokenizer, self._batch.runner, job.prompt_ids, on_event=job.listener,
                              on_text=job.on_text, should_stop=job.cancelled.is_set, **job.options)
            self._batch.join(opened.state)
        except Exception as error:
            self.counters.failed += 1
            self._end(ticket, error=error)
            return
        self._open[id(opened.state)] = (ticket, opened)
        self.running = len(self._batch)

    def _step(self) -> None:
        size = len(self._batch)
        try:
            finished = self._batch.step()
        except Exception as error:  # a failed forward leaves the batch's cache unknown: every row ends with it
            log.error("a batch step failed", exc_info=error)
            self.counters.failed += len(self._open)
            for ticket, _ in self._open.values():
                self._end(ticket, error=error)
            self._open.clear()
            self._batch = None
            self.running = 0
            return
        for state in finished:
            ticket, opened = self._open.pop(id(state))
            self._finish(ticket, opened.result(batch_size=size))
        self.running = len(self._batch)

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
            self._free(ticket.job)
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
