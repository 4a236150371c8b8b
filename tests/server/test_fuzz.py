"""No request body gives a 5xx, a traceback, a failed decode or an error after a 200 stream start.

Hypothesis throws wrong types, huge integers, NaN and infinities, lone surrogates, deep nesting,
strings near the body limit, every declared decoder option and junk bytes at both endpoints,
streamed and not: over 1,000 bodies per endpoint. Derandomized, so every run posts the same
bodies and a failure reproduces. Most bodies ask for at most 2 tokens, so that the run is quick.
"""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refusion.decoding import DECODERS
from refusion.decoding.options import options_of
from refusion.server.protocol import DECODER_OPTION_NAMES, ChatCompletionRequest, CompletionRequest

from .conftest import MODEL_NAME

PATHS = ["/v1/completions", "/v1/chat/completions"]
BODY_LIMIT = 20_000  # the `client` fixture's max_body_bytes
FIELDS = sorted(set(CompletionRequest.model_fields) | set(ChatCompletionRequest.model_fields)) + ["unknown", "threads", ""]
OPTIONS = list(DECODER_OPTION_NAMES)

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])

surrogates = st.sampled_from(["\ud800", "a\udfffb", "\udbff\udbff", "x\udc00"])
tricky_text = st.sampled_from(["", " ", "<|mask|>", "<|im_end|>", "<|endoftext|>", "\x00", "é😀", "auto", "reuse",
                               "exact", "NaN", "Infinity", "1e9", "-1", "0x10", "4", " 4 ", "0.5", "1" * 5000])
texts = st.one_of(st.text(max_size=8), tricky_text, surrogates)
huge_ints = st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 2**64 + 1, -2**63 - 1, 10**30, -10**30, 2**1000])
ints = st.one_of(st.integers(-3, 40), st.integers(-2**70, 2**70), huge_ints)
floats = st.one_of(st.floats(-3, 3), st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 5e-324, -0.0, 0.5, 1.0]))
near_limit = st.integers(BODY_LIMIT - 2_500, BODY_LIMIT + 100).map(lambda n: "x" * n)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, near_limit)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=6)
roles = st.sampled_from(["user", "system", "assistant", "developer", "tool", "function", "", "USER"])
contents = st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": texts}),
                                     max_size=2), values)
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": contents}), min_size=1, max_size=3)
prompts = st.one_of(texts, st.lists(texts, min_size=1, max_size=2), st.lists(st.integers(-2, 120), min_size=1, max_size=8),
                    st.lists(ints, min_size=1, max_size=3), values)
plausible = st.one_of(st.integers(0, 70), st.floats(0, 1), huge_ints, st.sampled_from(["auto", "reuse", "recompute", "exact"]))
option_values = st.one_of(plausible, plausible, plausible, st.none(), ints, floats, st.booleans(), texts)
small_budget = st.fixed_dictionaries({}, optional={"max_tokens": st.integers(1, 2)}) | \
    st.fixed_dictionaries({"max_completion_tokens": st.integers(1, 2)})


class Problems(logging.Handler):
    """Collects log records that mean a server bug: errors, tracebacks, decodes that failed late."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        late = record.name == "refusion.server" and "passed the server's checks" in record.getMessage()
        if record.levelno >= logging.ERROR or record.exc_info or late:
            self.records.append(record)


@pytest.fixture(scope="module")
def problems():
    handler = Problems()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def base(path: str) -> dict:
    if path == "/v1/completions":
        return {"model": MODEL_NAME, "prompt": "ab"}
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "ab"}]}


def post(client, problems, path: str, body) -> int:
    """POST the body; fail on a 5xx, a malformed error, an error inside a 200 stream or a logged problem."""
    problems.records.clear()
    content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    started = time.monotonic()
    response = client.post(path, content=content, headers={"content-type": "application/json"})
    shown = content[:300]
    assert response.status_code < 500, (shown, response.text)
    assert time.monotonic() - started < 10, shown  # a request of at most a few tokens never takes long
    assert not problems.records, (shown, [r.getMessage() for r in problems.records])
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/json", shown
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"], (shown, error)
    elif response.headers["content-type"].startswith("text/event-stream"):
        data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
        assert data[-1] == "[DONE]", (shown, response.text[-300:])
        chunks = [json.loads(d) for d in data[:-1]]
        assert not [c for c in chunks if "error" in c], (shown, response.text[-300:])
        assert [c for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]], shown
    else:
        assert response.json()["choices"][0]["finish_reason"] in ("stop", "length"), shown
    return response.status_code


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_any_fields_any_values(client, problems, path, data):
    body = data.draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=6))
    if data.draw(st.booleans()):  # often a well-formed start, so that the odd fields get past the shape checks
        body = {**base(path), **body}
        body.update(data.draw(small_budget))
    post(client, problems, path, body)


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=600)
@given(data=st.data())
def test_well_formed_requests_with_odd_values(client, problems, path, data):
    odd = st.sampled_from([f for f in FIELDS if f not in ("max_tokens", "max_completion_tokens", "model")])
    body = {**base(path), **data.draw(st.dictionaries(odd, values, max_size=3)), **data.draw(small_budget)}
    if path == "/v1/chat/completions" and data.draw(st.booleans()):
        body["messages"] = data.draw(messages)
    elif path == "/v1/completions" and data.draw(st.booleans()):
        body["prompt"] = data.draw(prompts)
    body["stream"] = data.draw(st.sampled_from([True, False, None, "true", 1]))
    post(client, problems, path, body)


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=500)
@given(data=st.data())
def test_every_decoder_option(client, problems, path, data):
    decoder = data.draw(st.sampled_from([*DECODERS, None] * 4 + ["nope", "\ud800", ""]))
    own = [name for name in OPTIONS if decoder in DECODERS and name in options_of(DECODERS[decoder])]
    names = own if own and data.draw(st.integers(0, 3)) else OPTIONS  # mostly the decoder's own options
    body = {**base(path), "max_tokens": data.draw(st.integers(1, 2)), "decoder": decoder,
            **data.draw(st.dictionaries(st.sampled_from(names), option_values, max_size=4)), "stream": data.draw(st.booleans())}
    if body["stream"]:
        body["stream_events"] = data.draw(st.booleans())
    if data.draw(st.booleans()):
        body.update(temperature=data.draw(st.floats(0, 2)), seed=data.draw(st.integers(0, 2**63 - 1) | huge_ints))
    post(client, problems, path, body)


EXTREMES = [0, 1, 2, 3, 64, 65, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, 2**1000, -1, -2**63, 0.0, 0.5, 1.0, 1.5, 1e308, 5e-324,
            math.nan, math.inf, -math.inf, "auto", "1e3", " 2 ", "", "\ud800", True, None]


@pytest.mark.parametrize("path", PATHS)
def test_extreme_values_of_every_declared_option(client, problems, path):
    """Every option of every decoder at every extreme, with a budget of 1 and 2 tokens: no randomness needed."""
    for decoder, module in DECODERS.items():
        for name in options_of(module):
            assert name in OPTIONS
            for value in EXTREMES:
                for budget in (1, 2):
                    post(client, problems, path, {**base(path), "decoder": decoder, name: value, "max_tokens": budget})


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=80)
@given(max_tokens=st.one_of(st.integers(-2**70, 0), st.integers(1025, 2**70), huge_ints, st.integers(1, 6)),
       field=st.sampled_from(["max_tokens", "max_completion_tokens"]), stream=st.booleans())
def test_any_max_tokens(client, problems, path, max_tokens, field, stream):
    if path == "/v1/completions":
        field = "max_tokens"
    status = post(client, problems, path, {**base(path), field: max_tokens, "stream": stream, "decoder": "ar"})
    assert status == (200 if 1 <= max_tokens <= 1024 else 400)


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=40)
@given(depth=st.integers(1, 5_000), field=st.sampled_from(FIELDS), opener=st.sampled_from(['[', '{"a":', '[1,']))
def test_deeply_nested_values(client, problems, path, depth, field, opener):
    closer = {"[": "]", '{"a":': "}", "[1,": "]"}[opener]
    nested = opener * depth + "0" + closer * depth
    body = json.dumps({**base(path), "max_tokens": 1})[:-1] + f', {json.dumps(field)}: {nested}}}'
    post(client, problems, path, body.encode())


@pytest.mark.parametrize("path", PATHS)
@settings(FUZZ, max_examples=40)
@given(junk=st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"NaN", b"\xff\xfe",
                                                               b'{"model": "\\ud800"}', b"{" * 10_000])))
def test_junk_bytes(client, problems, path, junk):
    post(client, problems, path, junk)


def test_the_fuzzed_server_is_idle_and_never_failed(client):
    state = client.get("/health").json()
    assert state["failed"] == 0 and not state["busy"] and state["waiting"] == 0
