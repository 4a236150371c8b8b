"""One model, many clients: generations run one at a time, in arrival order, on a worker thread.

A request waits for its turn in a FIFO; a client that leaves while waiting is taken out of the
line, and one that leaves while decoding stops it at the decoder's next step (`should_stop`). The model is only ever called from the single worker thread, so requests never
interleave on its state. Knows nothing about HTTP or the OpenAI protocol.
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


@dataclass
class Counters:
    served: int = 0
    cancelled_waiting: int = 0
    cancelled_decoding: int = 0
    failed: int = 0


class Engine:
    def __init__(self, model, tokenizer, max_waiting: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.max_waiting = max_waiting
        self.counters = Counters()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refusion-decode")
        self._lock = threading.Lock()
        self._busy = False
        self._line: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    @property
    def busy(self) -> bool:
        return self._busy

    async def run(self, job: Job) -> Generation | None:
        """Wait for the model, decode, return the result (None when the job was cancelled).

        Cancelling the awaiting task removes a waiting job or stops a decoding one.
        """
        await self._take_turn()
        future = self._executor.submit(self._decode, job)
        future.add_done_callback(lambda _: self._pass_turn())  # only once the model is really free
        try:
            return await asyncio.shield(asyncio.wrap_future(future))
        except asyncio.CancelledError:
            job.cancelled.set()
            raise

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

    # --- the line: FIFO of waiting requests, safe across threads and event loops ---------------

    async def _take_turn(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._busy and not self._line:
                self._busy = True
                return
            if len(self._line) >= self.max_waiting:
                raise QueueFull(f"{len(self._line)} requests are already waiting for the model")
            ticket = (loop, loop.create_future())
            self._line.append(ticket)
        try:
            await ticket[1]
        except asyncio.CancelledError:
            with self._lock:
                if ticket in self._line:  # still waiting: just leave the line
                    self._line.remove(ticket)
                    self.counters.cancelled_waiting += 1
                    raise
            self._pass_turn()  # the turn was handed over as we left: hand it on
            raise

    def _pass_turn(self) -> None:
        with self._lock:
            while self._line:
                loop, waiter = self._line.popleft()
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_hand_over, waiter)
                    return
            self._busy = False


def _hand_over(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
    # a waiter cancelled between popleft and here passes the turn on in its except clause
