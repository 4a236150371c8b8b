"""The OpenAI-shaped endpoints, in-process: shapes, decoder settings, stop strings, streaming, errors."""

from __future__ import annotations

import json

import pytest
import torch

from refusion import encode_prompt, generate

from .conftest import MODEL_NAME


def post(client, path: str, body: dict):
    """JSON with every non-ASCII character escaped, so that a lone surrogate ("\\ud800") can be sent."""
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def chat(client, **body):
    return post(client, "/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], **body})


def complete(client, **body):
    return post(client, "/v1/completions", {"model": MODEL_NAME, "prompt": "hello", **body})


def sse_records(text: str) -> list[tuple[str | None, str]]:
    records = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        records.append((event, data))
    return records


def test_models_and_health(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [MODEL_NAME]
    assert client.get("/health").json()["status"] == "ok"
    assert client.get(f"/v1/models/{MODEL_NAME}").json()["id"] == MODEL_NAME
    assert client.get("/v1/models/other").status_code == 404


def test_chat_matches_the_library(client, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    body = chat(client, max_tokens=12, decoder="refusion", slot_size=4, blocks=3, slot_threshold=0.5, token_threshold=0.2).json()
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    expected = generate(model, tokenizer, ids, decoder="refusion", max_new_tokens=12, slot_size=4, blocks=3,
                        slot_threshold=0.5, token_threshold=0.2)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == MODEL_NAME
    assert body["choices"][0]["message"] == {"role": "assistant", "content": expected.text}
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    assert body["usage"] == {"prompt_tokens": ids.shape[1], "completion_tokens": expected.new_tokens,
                             "total_tokens": ids.shape[1] + expected.new_tokens}
    stats = body["refusion"]
    assert stats["decoder"] == "refusion" and stats["forward_passes"] == expected.forward_passes
    assert stats["tokens_per_forward"] == pytest.approx(expected.new_tokens / expected.forward_passes, abs=1e-3)
    assert stats["settings"]["blocks"] == 3 and stats["settings"]["slot_threshold"] == 0.5


def test_completion_is_raw_text_and_ar_is_one_token_per_forward(client, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    body = complete(client, max_tokens=10, decoder="ar").json()
    expected = generate(model, tokenizer, tokenizer("hello", return_tensors="pt").input_ids, decoder="ar", max_new_tokens=10)
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == expected.text
    assert body["usage"]["prompt_tokens"] == 5  # one token per character, no template
    assert body["refusion"]["forward_passes"] == body["usage"]["completion_tokens"] == 10
    ids_body = complete(client, max_tokens=10, decoder="ar", prompt=tokenizer("hello").input_ids).json()
    assert ids_body["choices"][0]["text"] == expected.text


def test_stop_strings_end_the_decode_and_cut_the_text(client):
    full = complete(client, max_tokens=16, decoder="ar").json()["choices"][0]["text"]
    stop = full[5:7]
    cut = full[: full.find(stop)]
    body = complete(client, max_tokens=16, decoder="ar", stop=[stop, "never-there"]).json()
    assert body["choices"][0] == {"index": 0, "text": cut, "logprobs": None, "finish_reason": "stop"}
    # the decode itself ended there: one token per character, so 7 of the 16 tokens were generated
    assert body["usage"]["completion_tokens"] == body["refusion"]["forward_passes"] == 7
    streamed = complete(client, max_tokens=16, decoder="ar", stop=stop, stream=True)
    chunks = [json.loads(d) for _, d in sse_records(streamed.text) if d != "[DONE]"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("decoder", ["refusion", "ar"])
def test_streaming_equals_the_full_answer(client, decoder):
    options = {"slot_size": 4} if decoder == "refusion" else {}
    whole = chat(client, max_tokens=16, decoder=decoder, **options).json()
    response = chat(client, max_tokens=16, decoder=decoder, stream=True, stream_options={"include_usage": True}, **options)
    assert response.headers["content-type"].startswith("text/event-stream")
    records = sse_records(response.text)
    assert records[-1] == (None, "[DONE]")
    chunks = [json.loads(d) for _, d in records[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert chunks[-1]["refusion"]["forward_passes"] == whole["refusion"]["forward_passes"]


def test_stream_events_show_out_of_order_commits(client, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    response = complete(client, max_tokens=16, decoder="refusion", slot_size=4, slot_threshold=0.0, stream=True, stream_events=True)
    records = sse_records(response.text)
    events = [json.loads(d) for e, d in records if e == "refusion.decode"]
    commits = [e for e in events if e["event"] == "commit"]
    positions = [p for e in commits for p in e["positions"]]
    assert sorted(positions) == list(range(16))  # every position committed exactly once
    assert all(e["pieces"] == [tokenizer.decode([t]) for t in e["tokens"]] for e in commits)
    plans = [e for e in events if e["event"] == "plan"]
    assert plans and len(plans[0]["selected"]) == 4  # threshold 0: all four slots planned in parallel
    # text never runs ahead of the committed left-to-right prefix
    committed, shown = set(), 0
    for event, data in records:
        if event == "refusion.decode":
            committed.update(json.loads(data).get("positions", []) if json.loads(data)["event"] == "commit" else [])
        elif data != "[DONE]":
            shown += len(json.loads(data)["choices"][0]["text"])
            assert set(range(shown)) <= committed


def test_openai_error_shape_and_limits(client):
    def error(response, status, param=None):
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"} and body["message"]
        assert param is None or body["param"] == param
        return body

    error(chat(client, n=2), 400, "n")
    error(chat(client, logprobs=True), 400, "logprobs")
    error(chat(client, tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools")
    error(complete(client, echo=True), 400, "echo")
    error(complete(client, prompt=["a", "b"]), 400, "prompt")
    error(chat(client, max_tokens=0), 400, "max_tokens")
    error(chat(client, max_tokens=1025), 400, "max_tokens")  # the fixture's limit is 1024
    error(complete(client, prompt="x" * 201), 400, "prompt")  # the fixture's prompt limit is 200
    error(chat(client, model="gpt-4"), 404, "model")
    error(chat(client, decoder="nope"), 400, "decoder")
    error(chat(client, decoder="ar", slot_size=4), 400, "slot_size")
    error(chat(client, decoder="refusion", slot_size=4, blocks=3, max_tokens=16), 400, "blocks")
    error(chat(client, decoder="refusion", slot_threshold=1.5), 400, "slot_threshold")
    error(chat(client, slot_size=4), 400, "slot_size")  # the default decoder (lossless) has no slots
    error(chat(client, decoder="lossless", branches=-1), 400, "branches")
    error(chat(client, decoder="mdm", steps=0), 400, "steps")
    error(chat(client, temperature=-1), 400, "temperature")
    error(chat(client, unknown_field=1), 400, "unknown_field")
    error(chat(client, stream_events=True), 400, "stream_events")
    error(client.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": []}), 400, "messages")
    error(client.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": [{"role": "tool", "content": "x"}]}), 400)
    error(client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)
    error(client.post("/v1/completions", content=b"x" * 20_001, headers={"content-type": "application/json"}), 413)
    error(complete(client, prompt=[10_000]), 400, "prompt")
    error(client.get("/v1/nothing"), 404)


def test_model_without_mask_token_defaults_to_ar(model_and_tokenizer):
    from fastapi.testclient import TestClient

    from .conftest import make_app

    model, tokenizer = model_and_tokenizer
    plain = type(model)(model.config.__class__(**{**model.config.to_dict(), "mask_token_id": None})).eval()
    plain.config.mask_token_id = None
    with TestClient(make_app((plain, tokenizer))) as plain_client:
        body = chat(plain_client, max_tokens=4).json()
        assert body["refusion"]["decoder"] == "ar" and body["refusion"]["forward_passes"] == 4
        assert chat(plain_client, decoder="refusion").status_code == 400
    assert torch.is_tensor(plain.get_input_embeddings().weight)


def test_serve_on_a_busy_port_is_a_one_line_error(capsys):
    import socket

    from refusion.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--model", "no-such-model-is-loaded-first", "--host", "127.0.0.1", "--port", str(port)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("fields", [
    {"temperature": 5e-324, "decoder": "lossless"}, {"temperature": 5e-324, "decoder": "refusion"},  # logits / T overflow
    {"decoder": "refusion", "slot_size": 2**31}, {"decoder": "mdm", "block_length": 2**70},  # sizes far past the budget
    {"decoder": "fast-dllm", "block_length": 2**62},
])
def test_extreme_values_decode_within_the_budget(client, fields):
    response = complete(client, max_tokens=2, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 2


@pytest.mark.parametrize("stream", [False, True])
def test_values_that_used_to_fail_in_the_worker_are_400s_before_any_decode(client, stream):
    """Checked in the request's handler, streamed or not: the answer is a JSON 400, never a 500 or a 200 stream."""
    served = client.get("/health").json()["served"]
    cases = [
        ({"seed": 2**64}, "seed"), ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"),
        ({"stop": "\ud800"}, "stop"), ({"stop": ["ok", "a\udfffb"]}, "stop.1"), ({"prompt": "a\ud800"}, "prompt"),
        ({"prompt": ["\udbff"]}, "prompt.0"), ({"user": "\udc00"}, "user"), ({"decoder": "\ud800"}, "decoder"),
        ({"model": "\ud800"}, "model"), ({"kv": "\ud800", "decoder": "refusion"}, "kv"),
        ({"logit_bias": {"\ud800": 1}}, "logit_bias"), ({"stop": "x" * 1001}, "stop"),
    ]
    for fields, param in cases:
        response = complete(client, max_tokens=2, stream=stream, **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.headers["content-type"] == "application/json"
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error", (fields, error)
    seed_error = complete(client, seed=2**64).json()["error"]["message"]
    assert seed_error.startswith("seed must lie in [0, ")  # the shared Option's message, as the command line gives it
    for content, param in [("a\ud800", "messages.0.content"), ([{"type": "text", "text": "\udfff"}], "messages.0.content.0.text")]:
        response = chat(client, max_tokens=2, stream=stream, messages=[{"role": "user", "content": content}])
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    response = chat(client, max_tokens=2, stream=stream, messages=[{"role": "user", "content": "x", "name": "\ud800"}])
    assert response.json()["error"]["param"] == "messages.0.name"
    assert client.get("/health").json()["served"] == served


def test_a_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 1000  # no content-length: sent chunked, 30 kB against the fixture's 20 kB

    response = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    small = client.post("/v1/completions", content=iter([b'{"model": "tiny-llama",', b' "prompt": "ab", "max_tokens": 2}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 200, small.text  # a chunked body under the limit reaches the app whole


def test_refusals_are_counted_by_reason_and_logged(client, caplog):
    before = client.get("/health").json()["refused"]
    assert set(before) >= {"bad_request", "not_found", "too_large", "queue_full", "method_not_allowed"}
    with caplog.at_level("INFO", logger="refusion.server"):
        complete(client, seed=-1)
        chat(client, model="gpt-4")
        client.get("/v1/nothing")
        client.post("/v1/completions", content=b"x" * 20_001, headers={"content-type": "application/json"})
        client.get("/v1/completions")
    after = client.get("/health").json()["refused"]
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "bad_request": 1, "not_found": 2, "too_large": 1, "queue_full": 0, "method_not_allowed": 1}
    lines = [r for r in caplog.records if r.name == "refusion.server"]
    assert len(lines) == 5 and all(r.levelname in ("INFO", "WARNING") and not r.exc_info for r in lines)
    assert "POST /v1/completions: 400 bad_request, param seed: seed must lie in" in lines[0].getMessage()
    assert "404 not_found, param model" in lines[1].getMessage()
    assert "413 too_large" in lines[3].getMessage() and lines[3].levelname == "WARNING"


def test_a_stream_whose_client_left_before_it_began_gives_its_turn_back(model_and_tokenizer):
    """The client stops reading before the first chunk and then leaves: the body generator never
    starts (nor its cleanup), so the response itself must give back the turn the request was admitted with."""
    import asyncio

    from .conftest import make_app

    app = make_app(model_and_tokenizer)
    body = json.dumps({"model": MODEL_NAME, "prompt": "hello", "max_tokens": 8, "stream": True}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message["type"])
        await asyncio.sleep(3600)  # a client that never reads

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    engine = app.state.engine
    assert sent == ["http.response.start"]
    assert not engine.busy and engine.waiting == 0
    assert vars(engine.counters) == {"served": 0, "cancelled_waiting": 1, "cancelled_decoding": 0, "failed": 0}
