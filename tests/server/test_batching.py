"""Continuous batching: requests that decode together get exactly what each gets alone.

On the tiny model with a mask token, through the engine (the server's worker) and through a live
server with concurrent clients, the official openai client among them.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

import refusion
from refusion.decoding import lossless
from refusion.server.engine import Engine, Job

from .conftest import MODEL_NAME

PROMPTS = ["Hi", "Add 2 and 3.", "What is the capital of France?", "Tell me a long story about a cat please",
           "Count to ten.", "Why?"]
# Settings per request: decoders that batch, greedy and seeded, budgets and a stop string, so that rows
# end at different steps and a batch holds rows of different decoders and settings.
SETTINGS = [
    dict(decoder="ar", max_new_tokens=12),
    dict(decoder="lossless", max_new_tokens=20, width_cost=0.1),
    dict(decoder="ar", max_new_tokens=16, temperature=0.7, seed=3),
    dict(decoder="lossless", max_new_tokens=9, temperature=0.5, seed=11, branches=2, depth=2),
    dict(decoder="ar", max_new_tokens=24, stop=["e"]),
    dict(decoder="lossless", max_new_tokens=14, branches=1, depth=3),
]


def fresh(model):
    """Forget the acceptance history lossless keeps on the model: every run starts where the other did."""
    lossless.forget(model)


def alone(model, tokenizer, prompt_ids, options) -> refusion.Generation:
    fresh(model)
    return refusion.generate(model, tokenizer, prompt_ids, **{"stop": [], **options})


class CountForwards:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))


def test_requests_that_join_and_leave_a_running_batch_get_what_they_get_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [refusion.encode_prompt(tokenizer, text) for text in PROMPTS]
    expected = [alone(model, tokenizer, ids, options) for ids, options in zip(prompts, SETTINGS)]
    fresh(model)
    engine = Engine(model, tokenizer, max_batch_size=4)
    counter = CountForwards(model)
    texts: dict[int, list[str]] = {index: [] for index in range(len(PROMPTS))}

    async def scenario():
        tickets = []
        for index, (ids, options) in enumerate(zip(prompts, SETTINGS)):
            job = Job(prompt_ids=ids, options={"stop": [], **options}, on_text=texts[index].append)
            tickets.append(engine.admit(job))
        assert engine.waiting == 2  # four places in the batch, two wait for rows to leave
        return await asyncio.gather(*(engine.run(ticket) for ticket in tickets))

    try:
        results = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    finally:
        counter.handle.remove()
        engine.close()
    for index, (result, single) in enumerate(zip(results, expected)):
        assert (result.tokens, result.text, result.finish_reason) == (single.tokens, single.text, single.finish_reason), index
        assert "".join(texts[index]) == result.text  # streamed as it became final
        if SETTINGS[index]["decoder"] == "ar":  # one more for a row that joined a running batch: its prompt's own forward
            assert result.forward_passes - single.forward_passes in (0, 1)
    assert {result.finish_reason for result in results} == {"stop", "length"}
    assert max(result.batch_size for result in results) > 1
    # shared forwards: fewer than the rows' own, though two rows joined a running batch (a prefill each)
    assert counter.count < sum(result.forward_passes for result in results)
    assert engine.counters.served == len(PROMPTS) and not engine.busy


def test_a_row_that_leaves_does_not_disturb_the_others(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    options = dict(decoder="ar", max_new_tokens=40, stop=[])
    prompts = [refusion.encode_prompt(tokenizer, text) for text in PROMPTS[:3]]
    expected = [alone(model, tokenizer, ids, options) for ids in prompts]
    engine = Engine(model, tokenizer)
    steps = threading.Event()

    async def scenario():
        listener = lambda event: steps.set() if event["step"] >= 3 else None  # noqa: E731
        jobs = [Job(prompt_ids=ids, options=dict(options), listener=listener if i == 1 else None)
                for i, ids in enumerate(prompts)]
        tickets = [engine.admit(job) for job in jobs]
        runs = [asyncio.ensure_future(engine.run(ticket)) for ticket in tickets]
        while not steps.is_set():
            await asyncio.sleep(0.005)
        runs[1].cancel()  # the client of the middle row leaves mid-decode
        return await asyncio.gather(*runs, return_exceptions=True)

    try:
        results = asyncio.run(asyncio.wait_for(scenario(), timeout=120))
    finally:
        engine.close()
    assert isinstance(results[1], asyncio.CancelledError)
    for index in (0, 2):
        assert results[index].tokens == expected[index].tokens
    assert engine.counters.cancelled_decoding == 1 and engine.counters.served == 2 and not engine.busy


def test_concurrent_clients_get_their_own_texts_and_health_shows_the_batch(live, model_and_tokenizer):
    import openai

    model, tokenizer = model_and_tokenizer
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    bodies = [{"prompt": text, "max_tokens": 24 + 4 * index, "decoder": "ar" if index % 2 else "lossless"}
              for index, text in enumerate(PROMPTS)]
    expected = []
    for body in bodies:
        extra = {"width_cost": 0.1} if body["decoder"] == "lossless" else {}
        ids = refusion.encode_prompt(tokenizer, body["prompt"], chat=False)
        expected.append(alone(model, tokenizer, ids, dict(decoder=body["decoder"], max_new_tokens=body["max_tokens"],
                                                         **extra)).text)
    seen_running = []
    answers: dict[int, str] = {}
    failures = []

    def ask(index: int) -> None:
        body = bodies[index]
        extra = {"decoder": body["decoder"], **({"width_cost": 0.1} if body["decoder"] == "lossless" else {})}
        try:
            if index == 0:  # the official client, streaming
                stream = client.completions.create(model=MODEL_NAME, prompt=body["prompt"], max_tokens=body["max_tokens"],
                                                   stream=True, extra_body=extra)
                answers[index] = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
            elif index == 1:  # the official client
                answers[index] = client.completions.create(model=MODEL_NAME, prompt=body["prompt"],
                                                           max_tokens=body["max_tokens"], extra_body=extra).choices[0].text
            else:
                response = httpx.post(f"{live.url}/v1/completions", json={"model": MODEL_NAME, **body, **extra}, timeout=60)
                answers[index] = response.json()["choices"][0]["text"]
        except Exception as error:  # reported below
            failures.append((index, error))

    def watch():
        while len(answers) + len(failures) < len(bodies):
            seen_running.append(httpx.get(f"{live.url}/health").json()["batch"]["running"])

    threads = [threading.Thread(target=ask, args=(index,)) for index in range(len(bodies))]
    watcher = threading.Thread(target=watch)
    for thread in threads + [watcher]:
        thread.start()
    for thread in threads + [watcher]:
        thread.join(timeout=120)
    assert not failures
    assert [answers[index] for index in range(len(bodies))] == expected
    assert max(seen_running) > 1
    health = httpx.get(f"{live.url}/health").json()
    assert health["batch"] == {"running": 0, "max_batch_size": 16}


@pytest.mark.parametrize("size", [0, -3])
def test_max_batch_size_must_be_positive(size, capsys):
    from refusion.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--max-batch-size", str(size)])
    assert exit_info.value.code == 2
    assert "--max-batch-size must be a positive integer" in capsys.readouterr().err


def test_the_engine_counts_only_real_forwards_on_a_lone_request(model_and_tokenizer):
    """A batch of one row is the decode alone: the same forwards, none extra."""
    model, tokenizer = model_and_tokenizer
    ids = refusion.encode_prompt(tokenizer, "Hi")
    single = alone(model, tokenizer, ids, dict(decoder="ar", max_new_tokens=7))
    engine = Engine(model, tokenizer)
    counter = CountForwards(model)

    async def scenario():
        return await engine.run(engine.admit(Job(prompt_ids=ids, options=dict(decoder="ar", max_new_tokens=7, stop=[]))))

    try:
        result = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    finally:
        counter.handle.remove()
        engine.close()
    assert result.tokens == single.tokens and counter.count == single.forward_passes == 7
