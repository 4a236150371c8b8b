"""uvicorn on 127.0.0.1: the official openai client, client disconnects, and a bounded load test."""

from __future__ import annotations

import gc
import json
import threading
import time

import httpx
import psutil
import pytest

from .conftest import MODEL_NAME


def wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def health(live) -> dict:
    return httpx.get(f"{live.url}/health").json()


def test_official_openai_client(live):
    import openai

    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]
    knobs = {"decoder": "refusion", "slot_size": 4, "slot_threshold": 0.5}
    answer = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "2+2?"}],
                                            max_tokens=12, extra_body=knobs)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens <= 12
    assert answer.model_extra["refusion"]["decoder"] == "refusion"
    pieces, usage = [], None
    for chunk in client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "2+2?"}], max_tokens=12,
                                                stream=True, stream_options={"include_usage": True}, extra_body=knobs):
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == answer.choices[0].message.content
    assert usage.completion_tokens == answer.usage.completion_tokens
    text = client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=6, extra_body={"decoder": "ar"})
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=MODEL_NAME, prompt="abc", max_tokens=6,
                                                                             stream=True, extra_body={"decoder": "ar"}))
    assert streamed == text.choices[0].text and text.usage.completion_tokens == 6
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], n=2)
    assert raised.value.body["param"] == "n"


def test_disconnects_free_the_model(live):
    long = {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 2000, "decoder": "ar", "stream": True}
    before = health(live)
    with httpx.Client(timeout=30) as first, first.stream("POST", f"{live.url}/v1/completions", json=long) as decoding:
        lines = decoding.iter_lines()  # kept: dropping the iterator closes the connection
        assert next(lines).startswith("data: ")  # decoding has started
        assert health(live)["busy"]
        # a second client joins the running batch (another decoder, not streamed), then gives up
        joining = {**long, "stream": False, "decoder": "refusion"}
        waiter = threading.Thread(target=lambda: pytest.raises(httpx.ReadTimeout, httpx.post, f"{live.url}/v1/completions",
                                                               json=joining, timeout=1.5))
        waiter.start()
        assert wait_for(lambda: health(live)["batch"]["running"] == 2)
        waiter.join()
        assert wait_for(lambda: health(live)["cancelled_decoding"] == before["cancelled_decoding"] + 1)
        assert health(live)["batch"]["running"] == 1 and health(live)["waiting"] == 0
    # the streaming client left mid-decode: it stops at the next step, long before 2000 tokens
    assert wait_for(lambda: health(live)["cancelled_decoding"] == before["cancelled_decoding"] + 2)
    assert wait_for(lambda: not health(live)["busy"])
    after = httpx.post(f"{live.url}/v1/completions", json={**long, "stream": False, "max_tokens": 3}, timeout=30).json()
    assert after["usage"]["completion_tokens"] == 3
    assert health(live)["served"] == before["served"] + 1


def one_request(url: str, index: int) -> None:
    """A mix of endpoints, decoders and streaming; raises unless the answer is complete."""
    chat = index % 2 == 0
    body = {"model": MODEL_NAME, "max_tokens": 4, "decoder": "refusion" if index % 3 else "ar", "stream": index % 4 < 2}
    body.update({"messages": [{"role": "user", "content": f"q{index}"}]} if chat else {"prompt": f"q{index}"})
    path = "/v1/chat/completions" if chat else "/v1/completions"
    response = httpx.post(url + path, json=body, timeout=120)
    assert response.status_code == 200, response.text
    if not body["stream"]:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")
        return
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    finishes = [c["choices"][0]["finish_reason"] for c in map(json.loads, data[:-1]) if c["choices"]]
    assert finishes[-1] in ("stop", "length")


def test_load_no_errors_no_memory_growth(live):
    clients, seconds, rounds = 5, 2.0, 3
    process = psutil.Process()
    resident, counts = [], []
    for _ in range(rounds):
        failures, done = [], []
        stop_at = time.monotonic() + seconds

        def worker(seed):
            index = seed
            while time.monotonic() < stop_at:
                try:
                    one_request(live.url, index)
                    done.append(index)
                except Exception as error:  # collected, reported below
                    failures.append(repr(error))
                index += clients

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:3]
        gc.collect()
        resident.append(process.memory_info().rss)
        counts.append(len(done))
    assert min(counts) >= clients  # every client finished at least one request per round
    state = health(live)
    assert state["waiting"] == 0 and not state["busy"] and state["failed"] == 0
    grown = resident[-1] - resident[1]  # round 0 warms caches and allocators
    assert grown < 40 * 2**20, f"resident memory grew by {grown / 2**20:.1f} MiB over rounds: {resident}"
