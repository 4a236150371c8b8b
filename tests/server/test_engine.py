"""The engine's line, with a stand-in for `generate`: turns in arrival order, QueueFull when the line
is full, and every way a request can go away gives its place back (nothing left busy)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from refusion.server import engine as engine_module
from refusion.server.engine import Engine, Job, QueueFull


class FakeGenerate:
    """Records the order of decodes; each runs until `finish` is set or it is told to stop."""

    def __init__(self):
        self.order: list[str] = []
        self.finish = threading.Event()

    def __call__(self, model, tokenizer, prompt_ids, *, should_stop, **options):
        self.order.append(prompt_ids)
        while not self.finish.is_set() and not should_stop():
            time.sleep(0.002)
        return SimpleNamespace(finish_reason="cancelled" if should_stop() else "length", name=prompt_ids)


@pytest.fixture
def fake(monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(engine_module, "generate", fake)
    return fake


def run(coroutine_function):
    return asyncio.run(asyncio.wait_for(coroutine_function(), timeout=10))


def job(name: str) -> Job:
    return Job(prompt_ids=name, options={})


def idle(engine: Engine) -> bool:
    return not engine.busy and engine.waiting == 0


def test_turns_follow_arrival_order_and_a_full_line_refuses(fake):
    engine = Engine(None, None, max_waiting=2)

    async def scenario():
        tickets = [engine.admit(job(name)) for name in "abc"]
        assert engine.busy and engine.waiting == 2
        with pytest.raises(QueueFull):
            engine.admit(job("d"))
        fake.finish.set()
        results = await asyncio.gather(*(engine.run(t) for t in reversed(tickets)))
        return [r.name for r in results]

    assert run(scenario) == ["c", "b", "a"] and fake.order == ["a", "b", "c"]
    assert idle(engine) and engine.counters.served == 3


def test_released_places_are_given_back_whatever_their_state(fake):
    engine = Engine(None, None, max_waiting=4)

    async def scenario():
        holding, waiting, last = (engine.admit(job(name)) for name in "abc")
        engine.release(waiting)  # left the line
        engine.release(waiting)  # twice is harmless
        assert engine.waiting == 1 and engine.counters.cancelled_waiting == 1
        engine.release(holding)  # held the turn but never ran (a stream whose body never started)
        assert last.state == "holding"
        fake.finish.set()
        assert (await engine.run(last)).name == "c"
        assert await engine.run(holding) is None  # too late: released

    run(scenario)
    assert fake.order == ["c"] and idle(engine)
    assert engine.counters.cancelled_waiting == 2 and engine.counters.served == 1


def test_a_turn_handed_to_a_client_that_has_left_passes_on(fake):
    engine = Engine(None, None)

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
    engine = Engine(None, None)

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
    engine = Engine(None, None)

    async def admit_two():
        return engine.admit(job("a")), engine.admit(job("b"))

    first, second = asyncio.run(admit_two())  # that loop is closed now
    engine.release(first)
    assert idle(engine) and second.state == "done"
