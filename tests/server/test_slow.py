"""A slow stand-in model on uvicorn: a client that leaves stops its decode within a second, a full
line answers 429 streamed or not, and the places of clients that left are given back."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from refusion.decoding import DECODERS

from .conftest import MODEL_NAME

LONG = {"model": MODEL_NAME, "prompt": "hello", "max_tokens": 2000, "decoder": "ar"}


def health(server) -> dict:
    return httpx.get(f"{server.url}/health").json()


def wait_for(predicate, seconds=10.0) -> float | None:
    """Seconds until `predicate()` held, or None if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def open_request(server, path: str, body: dict) -> socket.socket:
    """POST over a raw socket, so that the test decides exactly when the client leaves (close)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def read_until(sock: socket.socket, marker: bytes, seconds: float = 60) -> bytes:
    sock.settimeout(seconds)
    seen = b""
    while marker not in seen:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before sending {marker!r}: {seen[-300:]!r}"
        seen += chunk
    return seen


def decode_ended(server, before: dict):
    return lambda: (now := health(server))["cancelled_decoding"] == before["cancelled_decoding"] + 1 and not now["busy"]


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_a_streaming_client_that_leaves_stops_its_decode_within_a_second(slow_live, decoder):
    before = health(slow_live)
    sock = open_request(slow_live, "/v1/completions", {**LONG, "decoder": decoder, "stream": True, "stream_events": True})
    read_until(sock, b"event: refusion.decode")  # decoding
    assert health(slow_live)["busy"]
    sock.close()
    seconds = wait_for(decode_ended(slow_live, before), 5)
    assert seconds is not None and seconds < 1.0, (seconds, health(slow_live))
    assert health(slow_live)["served"] == before["served"]


def test_a_waiting_client_that_leaves_stops_its_decode_within_a_second(slow_live):
    before = health(slow_live)
    sock = open_request(slow_live, "/v1/completions", LONG)
    assert wait_for(lambda: health(slow_live)["busy"]) is not None
    time.sleep(0.3)  # a few decode steps
    sock.close()
    seconds = wait_for(decode_ended(slow_live, before), 5)
    assert seconds is not None and seconds < 1.0, (seconds, health(slow_live))


def test_a_full_line_answers_429_streamed_or_not_and_places_are_given_back(slow_live):
    before = health(slow_live)
    decoding = open_request(slow_live, "/v1/completions", {**LONG, "stream": True})
    chat = {key: value for key, value in LONG.items() if key != "prompt"} | {"messages": [{"role": "user", "content": "x"}]}
    waiting = []
    try:
        read_until(decoding, b"data: ")
        # the line holds two (the fixture's max_waiting): a stream and a plain request wait their turn
        waiting += [open_request(slow_live, "/v1/completions", {**LONG, "stream": True}),
                    open_request(slow_live, "/v1/chat/completions", chat)]
        assert wait_for(lambda: health(slow_live)["waiting"] == 2) is not None
        for stream in (True, False):
            refused = httpx.post(f"{slow_live.url}/v1/completions", json={**LONG, "stream": stream}, timeout=10)
            assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
            assert refused.headers["content-type"].startswith("application/json")
            assert refused.json()["error"]["code"] == "queue_full"
        invalid = httpx.post(f"{slow_live.url}/v1/completions", json={**LONG, "stream": True, "seed": -1}, timeout=10)
        assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "seed"  # checked before admission
    finally:
        for sock in waiting:
            sock.close()
        assert wait_for(lambda: health(slow_live)["waiting"] == 0) is not None
        decoding.close()
    assert wait_for(decode_ended(slow_live, before), 5) is not None
    after = health(slow_live)
    assert after["cancelled_waiting"] == before["cancelled_waiting"] + 2
    assert after["refused"]["queue_full"] == before["refused"]["queue_full"] + 2
    assert after["refused"]["bad_request"] == before["refused"]["bad_request"] + 1
    # the model is free again: a short request is served at once
    quick = httpx.post(f"{slow_live.url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=30)
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 2
