"""Malformed bodies never give a 5xx: hypothesis throws wrong types, odd values and junk at every endpoint."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import MODEL_NAME

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=6)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "stream",
          "stream_options", "seed", "logprobs", "tools", "decoder", "slot_size", "blocks", "slot_threshold",
          "token_threshold", "kv", "stream_events", "echo", "suffix"]
roles = st.sampled_from(["user", "system", "assistant", "tool", "function", "", "USER", "developer"])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": st.one_of(st.text(max_size=12), values)}), max_size=3)
small = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def post(client, path, body):
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code < 500, (body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
    return response


@small
@given(body=st.dictionaries(st.sampled_from(FIELDS), values, max_size=6), path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_random_fields(client, body, path):
    post(client, path, body)


@small
@given(override=st.dictionaries(st.sampled_from(FIELDS[3:]), values, max_size=3), messages=messages)
def test_chat_with_wrong_values(client, override, messages):
    body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 2, **override}
    response = post(client, "/v1/chat/completions", body)
    if response.status_code == 200 and not override.get("stream") and "max_tokens" not in override:
        assert response.json()["usage"]["completion_tokens"] <= 2


@small
@given(max_tokens=st.one_of(st.integers(-2**63, 0), st.integers(1025, 2**63), st.integers(1, 24)), slot_size=st.integers(-5, 40), blocks=st.integers(-5, 40),
       threshold=st.floats(-2, 3, allow_nan=False))
def test_decoder_settings(client, max_tokens, slot_size, blocks, threshold):
    body = {"model": MODEL_NAME, "prompt": "ab", "max_tokens": max_tokens, "slot_size": slot_size, "blocks": blocks,
            "slot_threshold": threshold, "decoder": "refusion"}
    response = post(client, "/v1/completions", body)
    plausible = 1 <= max_tokens <= 24 and slot_size >= 1 and blocks >= 1 and 0 <= threshold <= 1
    if not plausible:
        assert response.status_code == 400
    if response.status_code == 200:
        assert response.json()["usage"]["completion_tokens"] <= max_tokens


@small
@given(junk=st.binary(max_size=64))
def test_junk_bytes(client, junk):
    post(client, "/v1/chat/completions", junk)
