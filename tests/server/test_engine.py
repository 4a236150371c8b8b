"""The engine's line and places, with a stand-in decoder on the position oracle: places in arrival
order, QueueFull when the line is full, and every way a request can go away gives its place back
(nothing left busy)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from refusion import kv_cache
from refusion.decoding import DECODERS
from refusion.decoding.runner import DecodeOutput
from refusion.server.engine import Engine, Job, QueueFull
from tests.decoding.oracle import PositionOracle, Tokenizer

NAMES = {"a": 11, "b": 12, "c": 13, "d": 14}


class WaitingDecoder:
    """A decoder that records the order decodes start in; each calls the model until `finish` is set or it is told to stop."""

    OPTIONS = ()

    def __init__(self):
        self.order: list[str] = []
        self.finish = threading.Event()

    def decode(self, runner, prompt_ids, *, should_stop, **_):
        name = {number: name for name, number in NAMES.items()}[int(prompt_ids[0, 0])]
        self.order.append(name)
        while not self.finish.is_set() and not should_stop():
            runner(prompt_ids, torch.arange(prompt_ids.shape[1])[None], kv_cache.new_cache())
            time.sleep(0.002)
        return DecodeOutput(tokens=[NAMES[name]], forward_passes=runner.forward_passes)


@pytest.fixture
def fake(monkeypatch):
    fake = WaitingDecoder()
    monkeypatch.setitem(DECODERS, "waiting", fake)
    return fake


def make(**options) -> Engine:
    oracle = PositionOracle([11, 12, 13, 14], mask_conf=[0.9] * 4, ar_conf=[0.9] * 4)
    return Engine(oracle, Tokenizer(), **{"max_batch_size": 1, **options})


def run(coroutine_function):
    return asyncio.run(asyncio.wait_for(coroutine_function(), timeout=10))


def job(name: str) -> Job:
    return Job(prompt_ids=torch.tensor([[NAMES[name], 5, 6]]), options={"decoder": "waiting", "max_new_tokens": 4})


def idle(engine: Engine) -> bool:
    return not engine.busy and engine.waiting == 0


def name_of(result) -> str:
    return {number: name for name, number in NAMES.items()}[result.tokens[0]]


def test_turns_follow_arrival_order_and_a_full_line_refuses(fake):
    engine = make(max_waiting=2)

    async def scenario():
        tickets = [engine.admit(job(name)) for name in "abc"]
        assert engine.busy and engine.waiting == 2
        with pytest.raises(QueueFull):
            engine.admit(job("d"))
        fake.finish.set()
        results = await asyncio.gather(*(engine.run(t) for t in reversed(tickets)))
        return [name_of(r) for r in results]

    assert run(scenario) == ["c", "b", "a"] and fake.order == ["a", "b", "c"]
    assert idle(engine) and engine.counters.served == 3


def test_released_places_are_given_back_whatever_their_state(fake):
    engine = make(max_waiting=4)

    async def scenario():
        holding, waiting, last = (engine.admit(job(name)) for name in "abc")
        engine.release(waiting)  # left the line
        engine.release(waiting)  # twice is harmless
        assert engine.waiting == 1 and engine.counters.cancelled_waiting == 1
        engine.release(holding)  # held the turn but never ran (a stream whose body never started)
        assert last.state == "holding"
        fake.finish.set()
        assert name_of(await engine.run(last)) == "c"
        assert await engine.run(holding) is None  # too late: released

    run(scenario)
    assert fake.order == ["c"] and idle(engine)
    assert engine.counters.cancelled_waiting == 2 and engine.counters.served == 1


def test_a_turn_handed_to_a_client_that_has_left_passes_on(fake):
    engine = make()

    async def scenario():
        first, second = engine.admit(job("a")), engine.admit(job("b"))
        fake.finish.set()
        await engine.run(first)  # its end hands the turn to `second`, which nobody runs
        await asyncio.sleep(0.01)
        assert second.state == "holding" and engine.busy
        engine.release(second)

    run(scenario)
    assert idle(engine) and engine.counters.cancelled_waiting == 1


def test_cancelling_the_caller_stops_a_running_decode_and_frees_the_model(fake):
    engine = make()

    async def scenario():
        decoding = asyncio.ensure_future(engine.run(engine.admit(job("a"))))
        waiting = asyncio.ensure_future(engine.run(engine.admit(job("b"))))
        while not fake.order:
            await asyncio.sleep(0.005)
        waiting.cancel()
        decoding.cancel()
        for task in (waiting, decoding):
            with pytest.raises(asyncio.CancelledError):
                await task
        while engine.busy:
            await asyncio.sleep(0.005)

    run(scenario)
    assert fake.order == ["a"] and idle(engine)
    assert engine.counters.cancelled_decoding == 1 and engine.counters.cancelled_waiting == 1


def test_a_waiter_whose_event_loop_has_closed_is_skipped():
    engine = make()

    async def admit_two():
        return engine.admit(job("a")), engine.admit(job("b"))

    first, second = asyncio.run(admit_two())  # that loop is closed now
    engine.release(first)
    assert idle(engine) and second.state == "done"


def test_requests_within_the_batch_size_decode_at_once_and_share_forwards(fake):
    engine = make(max_batch_size=3)
    oracle = engine.model

    async def scenario():
        tickets = [engine.admit(job(name)) for name in "abcd"]
        assert engine.waiting == 1  # three places, the fourth waits
        runs = [asyncio.ensure_future(engine.run(ticket)) for ticket in tickets]
        while len(fake.order) < 3:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        assert fake.order == ["a", "b", "c"] and engine.running == 3
        assert max(len(call.input_ids) for call in oracle.calls) == 3  # one forward for the three decodes' calls
        fake.finish.set()
        return [name_of(result) for result in await asyncio.gather(*runs)]

    assert run(scenario) == ["a", "b", "c", "d"]
    assert idle(engine) and engine.counters.served == 4
