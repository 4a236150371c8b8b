"""From an OpenAI request to a generation and back: prompt, options, limits, responses, streaming.

`prepare` checks everything that can be checked before the model is touched, with the same
checks `generate` makes, so that a bad request answers 400 before a stream starts and never
reaches the worker; `complete` and `stream` run an admitted job on the engine. Whatever still
fails in the worker is answered as a 400 if it is a RefusionError (bad input after all), else as
a server bug: logged with its traceback, a 500 (in-band once a stream has started). The decode ends at the first stop string; streamed text holds back
whatever could still become one. Knows nothing about routes or the web page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from ..decoding import DECODERS, Generation
from ..decoding.dispatch import NEEDS_MASK, check_options, default_decoder
from ..decoding.options import SEED, TEMPERATURE, Option, options_of
from ..errors import RefusionError
from . import protocol
from .engine import Engine, Job, Ticket

log = logging.getLogger("refusion.server")


class ApiError(Exception):
    """Answered as OpenAI's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        message, param = protocol.printable(message), param and protocol.printable(param)
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return protocol.error_body(self.message, self.type, self.param, self.code)


MAX_STOP_CHARS = 1000
"""Longest stop string: each decode step searches the text's tail for every stop string's
prefixes, so a huge one would make every step slow; real stop sequences are a few characters."""


@dataclass
class Limits:
    max_tokens: int = 4096
    """Largest max_tokens a request may ask for."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens (None: the model's context)."""
    max_body_bytes: int = 1 << 20
    max_waiting: int = 64
    """Requests that may wait for the model; more answer 429."""
    max_batch_size: int = 16
    """Requests decoding together in the running batch; 1 serves one at a time."""


@dataclass
class ServerConfig:
    model_name: str
    defaults: dict = field(default_factory=dict)
    """Decoding defaults (refusion.cli.decoder_options); a request's own fields override them."""
    limits: Limits = field(default_factory=Limits)


@dataclass
class Prepared:
    kind: str  # "text_completion" | "chat.completion"
    job: Job
    stop: list[str]
    include_usage: bool
    stream_events: bool


def prepare(request, kind: str, engine: Engine, config: ServerConfig) -> Prepared:
    """Validate a request against the model and limits; build the job. Raises ApiError."""
    surrogate = protocol.surrogate_field(request)
    if surrogate:
        raise ApiError(400, surrogate_message(surrogate), surrogate)
    if request.model != config.model_name:
        raise ApiError(404, f"the model {request.model!r} does not exist; this server serves {config.model_name!r}",
                       "model", "model_not_found")
    field_name = request.unsupported()
    if field_name:
        raise ApiError(400, f"{field_name!r} is not supported by this server with that value", field_name, "unsupported_parameter")
    model = engine.model
    prompt_ids = encode(request, kind, engine)
    prompt_len = prompt_ids.shape[1]
    context = getattr(model.config, "max_position_embeddings", None) or prompt_len + config.limits.max_tokens
    longest = min(config.limits.max_prompt_tokens or context, context - 1)
    if prompt_len > longest:
        raise ApiError(400, f"the prompt has {prompt_len} tokens; this server accepts at most {longest}", "messages"
                       if kind == "chat.completion" else "prompt", "context_length_exceeded")
    max_tokens = request.token_budget() if kind == "chat.completion" else request.max_tokens
    budget = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) is not None else "max_tokens"
    if max_tokens is None:
        max_tokens = max(1, min(config.defaults.get("max_new_tokens") or 256, config.limits.max_tokens, context - prompt_len))
    elif not 1 <= max_tokens <= config.limits.max_tokens:
        raise ApiError(400, f"{budget} must lie in [1, {config.limits.max_tokens}], got {max_tokens}", budget)
    elif prompt_len + max_tokens > context:
        raise ApiError(400, f"prompt ({prompt_len} tokens) plus {budget} ({max_tokens}) exceeds the model's context of {context}",
                       budget, "context_length_exceeded")
    options = decoding_options(request, max_tokens, model, config.defaults)
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    if any(not s for s in stop):
        raise ApiError(400, "stop strings must not be empty", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"stop strings must be at most {MAX_STOP_CHARS} characters", "stop")
    if request.stream_options is not None and not request.stream:
        raise ApiError(400, "stream_options is only allowed with stream=true", "stream_options")
    if request.stream_events and not request.stream:
        raise ApiError(400, "stream_events is only allowed with stream=true", "stream_events")
    return Prepared(kind=kind, job=Job(prompt_ids=prompt_ids, options={**options, "stop": stop}), stop=stop,
                    include_usage=bool(request.stream_options and request.stream_options.include_usage),
                    stream_events=request.stream_events)


def surrogate_message(param: str) -> str:
    return f"{param} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not text"


def encode(request, kind: str, engine: Engine):
    """The prompt as ids [1, P]: chat messages through the chat template, text as is."""
    import torch

    from ..prompting import encode_prompt

    tokenizer = engine.tokenizer
    param, rejected = ("messages", "the chat template rejected these messages") if kind == "chat.completion" else \
        ("prompt", "the tokenizer rejected this prompt")
    try:
        if kind == "chat.completion":
            if not getattr(tokenizer, "chat_template", None):
                raise ApiError(400, "this model's tokenizer has no chat template; use /v1/completions", "messages")
            roles = {"developer": "system"}
            messages = [{"role": roles.get(m.role, m.role), "content": m.text()} for m in request.messages]
            return encode_prompt(tokenizer, messages, chat=True)
        prompt = request.prompt[0] if isinstance(request.prompt, list) and isinstance(request.prompt[0], str) else request.prompt
        if isinstance(prompt, str):
            return encode_prompt(tokenizer, prompt, chat=False)
        vocab = engine.model.get_input_embeddings().weight.shape[0]
        if not all(0 <= t < vocab for t in prompt):
            raise ApiError(400, f"prompt token ids must lie in [0, {vocab})", "prompt")
        return torch.tensor([prompt], dtype=torch.long)
    except RefusionError as error:
        raise ApiError(400, str(error), param) from error
    except (ValueError, TypeError, KeyError, IndexError) as error:  # chat templates reject odd conversations this way
        raise ApiError(400, f"{rejected}: {error}", param) from error
    except Exception as error:
        if type(error).__name__ == "TemplateError":  # jinja2's raise_exception() in a chat template
            raise ApiError(400, f"{rejected}: {error}", param) from error
        raise


def decoding_options(request, max_tokens: int, model, defaults: dict) -> dict:
    """Keyword arguments for `refusion.generate`: server defaults, overridden by the request.

    A server default the chosen decoder does not take is dropped; a request field it does not
    take is a 400. Sizes need no limit here: every decoder bounds its work by max_tokens.
    """
    decoder = request.decoder or defaults.get("decoder") or default_decoder(model)
    if decoder not in DECODERS:
        raise ApiError(400, f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}", "decoder")
    if decoder in NEEDS_MASK and getattr(model.config, "mask_token_id", None) is None:
        raise ApiError(400, f"decoder {decoder!r} needs a model with a <|mask|> token; this one has none: use 'ar'", "decoder")
    takes = options_of(DECODERS[decoder])
    knobs = {name: value for name, value in defaults.items() if name in takes and value is not None}
    requested = {name: value for name, value in request.knobs().items() if value is not None}
    knobs.update(requested)
    try:
        resolved = check_options(decoder, knobs, max_tokens)
    except RefusionError as error:
        raise ApiError(400, str(error), named_last(str(error), list(requested))) from error
    knobs = {name: resolved[name] for name in knobs}
    temperature = checked(TEMPERATURE, request.temperature if request.temperature is not None else
                          defaults.get("temperature") or 0.0, "temperature")
    seed = request.seed if request.seed is not None else defaults.get("seed")
    seed = None if seed is None else checked(SEED, seed, "seed")
    return {"decoder": decoder, "max_new_tokens": max_tokens, "temperature": temperature, "seed": seed, **knobs}


def checked(option: Option, value, param: str):
    """`value` as `generate` will take it, or a 400 with the message the command line gives for it."""
    try:
        return option.check(value)
    except RefusionError as error:
        raise ApiError(400, str(error), param) from error


def named_last(message: str, names) -> str | None:
    """The field a decoder's error message names last (its constraint), for the error's `param`."""
    places = {max(message.rfind(name), message.rfind(name.replace("_", "-"))): name for name in names}
    return places[max(places)] if places and max(places) >= 0 else None


# --- responses ---------------------------------------------------------------------------------


def decode_stats(result: Generation) -> protocol.DecodeStats:
    stats = result.stats()
    return protocol.DecodeStats(decoder=result.decoder, forward_passes=result.forward_passes,
                                tokens_per_forward=stats["tokens_per_forward"], tokens_per_second=stats["tokens_per_second"],
                                seconds=stats["seconds"], settings=result.settings)


def usage(result: Generation) -> protocol.Usage:
    return protocol.Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.new_tokens,
                          total_tokens=result.prompt_tokens + result.new_tokens)


def response(prepared: Prepared, result: Generation, model_name: str) -> dict:
    text, finish = result.text, result.finish_reason  # already cut at the first stop string
    if prepared.kind == "chat.completion":
        choice = protocol.ChatChoice(message=protocol.ChatCompletionMessage(content=text), finish_reason=finish)
        prefix = "chatcmpl"
    else:
        choice = protocol.CompletionChoice(text=text, finish_reason=finish)
        prefix = "cmpl"
    return protocol.Response(id=protocol.new_id(prefix), object=prepared.kind, model=model_name, choices=[choice],
                             usage=usage(result), refusion=decode_stats(result)).model_dump()


async def complete(prepared: Prepared, ticket: Ticket, engine: Engine, model_name: str,
                   disconnected: Callable) -> dict | None:
    """Run the admitted job to the end; None when the client left first (its job is then taken out or stopped).

    Polls for a disconnect every 0.2 s; however this ends (cancelled too), the ticket is released.
    """
    task = asyncio.ensure_future(engine.run(ticket))
    try:
        while not (await asyncio.wait([task], timeout=0.2))[0]:
            if await disconnected():
                return None
        try:
            result = task.result()
        except Exception as error:
            raise failed(error) from error
        return None if result is None else response(prepared, result, model_name)
    finally:
        task.cancel()
        engine.release(ticket)


def failed(error: Exception) -> ApiError:
    """The error for a decode that raised: a RefusionError is bad input that `prepare` let through
    (a 400 all the same); anything else is a server bug, logged with its traceback."""
    if isinstance(error, RefusionError):
        log.warning("the decoder refused a request that passed the server's checks: %s", protocol.printable(str(error)))
        return ApiError(400, str(error))
    log.error("generation failed", exc_info=error)
    return ApiError(500, f"generation failed ({type(error).__name__}); the server's log has the details",
                    type="server_error", code="generation_failed")


def sse(data: dict | str, event: str | None = None) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


async def stream(prepared: Prepared, ticket: Ticket, engine: Engine, model_name: str) -> AsyncIterator[str]:
    """SSE chunks of an admitted job: text as soon as its left-to-right prefix is final, then the finish and usage chunks.

    If the client disconnects, the framework cancels this generator and the decode stops; the
    response that sends it also releases the ticket in case this generator never started.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    def deliver(item) -> None:
        """From the worker thread to this generator; nothing once the loop has closed (nobody reads)."""
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:
            pass

    if prepared.stream_events:
        prepared.job.listener = lambda event: deliver(("event", event))
    prepared.job.on_text = lambda text: deliver(("text", text))
    task = asyncio.ensure_future(engine.run(ticket))
    task.add_done_callback(lambda _: queue.put_nowait(end))
    tokenizer, chat = engine.tokenizer, prepared.kind == "chat.completion"
    chunk = Chunks(prepared.kind, model_name)
    sent = ""
    try:
        if chat:
            yield sse(chunk.make(protocol.ChatDelta(role="assistant", content="")))
        while (item := await queue.get()) is not end:
            kind, value = item
            if kind == "event":
                yield sse(readable(value, tokenizer), event="refusion.decode")
            else:  # text that just became final (generate holds back what could become a stop string)
                yield sse(chunk.text(value))
                sent += value
        try:
            result = task.result()
        except Exception as error:  # the decode failed after the stream started: say so in-band
            yield sse(failed(error).body())
            yield sse("[DONE]")
            return
        if result is None:  # released: the client is gone
            return
        text = result.text  # already cut at the first stop string
        if len(text) > len(sent) and text.startswith(sent):
            yield sse(chunk.text(text[len(sent):]))
        yield sse(chunk.finish(result.finish_reason, decode_stats(result)))
        if prepared.include_usage:
            yield sse(chunk.usage(usage(result), decode_stats(result)))
        yield sse("[DONE]")
    finally:
        task.cancel()
        engine.release(ticket)


def readable(event: dict, tokenizer) -> dict:
    """A decode event for the page, with each committed token's text beside its id."""
    out = {"object": "refusion.decode_event", **event}
    if event["event"] == "commit":
        out["pieces"] = [tokenizer.decode([t]) for t in event["tokens"]]
    return out


class Chunks:
    """The stream's JSON chunks for one request: same id and created time on each."""

    def __init__(self, kind: str, model_name: str):
        self.chat = kind == "chat.completion"
        self.head = {"id": protocol.new_id("chatcmpl" if self.chat else "cmpl"),
                     "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": int(time.time()), "model": model_name}

    def make(self, delta: protocol.ChatDelta | str, finish: str | None = None, **extra) -> dict:
        if self.chat:
            choice = protocol.ChatChunkChoice(delta=delta, finish_reason=finish).model_dump(exclude_none=False)
        else:
            choice = protocol.CompletionChoice(text=delta, finish_reason=finish).model_dump()
        return {**self.head, "choices": [choice], **extra}

    def text(self, text: str) -> dict:
        return self.make(protocol.ChatDelta(content=text) if self.chat else text)

    def finish(self, reason: str, stats: protocol.DecodeStats) -> dict:
        return self.make(protocol.ChatDelta() if self.chat else "", reason, refusion=stats.model_dump())

    def usage(self, used: protocol.Usage, stats: protocol.DecodeStats) -> dict:
        return {**self.head, "choices": [], "usage": used.model_dump(), "refusion": stats.model_dump()}
