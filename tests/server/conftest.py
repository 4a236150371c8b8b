"""A tiny random Llama with a mask token and a character-level chat tokenizer, served in-process,
on a live uvicorn, and as a slow stand-in for a big model (every forward sleeps)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.tiny_models import tiny_mask_model

MODEL_NAME = "tiny-llama"


@pytest.fixture(scope="session")
def model_and_tokenizer():
    return tiny_mask_model(max_position_embeddings=2048)


def make_app(model_and_tokenizer, **limits):
    from refusion.server import Limits, ServerConfig, create_app

    model, tokenizer = model_and_tokenizer
    defaults = {"decoder": None, "max_new_tokens": 32, "temperature": 0.0, "slot_size": 4, "seed": None}
    return create_app(model, tokenizer, ServerConfig(model_name=MODEL_NAME, defaults=defaults, limits=Limits(**limits)))


@pytest.fixture(scope="module")
def client(model_and_tokenizer):
    from fastapi.testclient import TestClient

    with TestClient(make_app(model_and_tokenizer, max_tokens=1024, max_prompt_tokens=200, max_body_bytes=20_000)) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn on 127.0.0.1 in a background thread of this process."""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(model_and_tokenizer):
    with LiveServer(make_app(model_and_tokenizer, max_tokens=4096, max_waiting=8)) as server:
        yield server


SLOW_FORWARD_SECONDS = 0.05


@pytest.fixture(scope="module")
def slow_live():
    """uvicorn serving a copy of the tiny model whose every forward takes SLOW_FORWARD_SECONDS, so
    that a long decode stays in progress while a test disconnects, queues or checks /health. One
    request decodes at a time, so that the line's limits show with a few requests."""
    slow, tokenizer = tiny_mask_model(max_position_embeddings=2048)
    slow.register_forward_pre_hook(lambda module, args: time.sleep(SLOW_FORWARD_SECONDS))
    with LiveServer(make_app((slow, tokenizer), max_tokens=4096, max_waiting=2, max_batch_size=1)) as server:
        yield server
