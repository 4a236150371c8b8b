"""The FastAPI application: routes, OpenAI-style errors, the body-size limit and the web page.

`create_app(model, tokenizer, config)` serves an already-loaded model, so tests and notebooks need
no files on disk. Every error, including malformed JSON and unknown routes, answers OpenAI's
`{"error": {"message", "type", "param", "code"}}` shape; every refusal is counted by reason in
/health and logged on the "refusion.server" logger. A request is validated and admitted to the
model's line before its response starts, so a streamed request gets the same 400 or 429 as an
unstreamed one. Knows nothing about decoding.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from . import handlers, protocol
from .engine import Engine, QueueFull
from .handlers import ApiError, ServerConfig

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("refusion.server")

def create_app(model, tokenizer, config: ServerConfig) -> FastAPI:
    engine = Engine(model, tokenizer, max_waiting=config.limits.max_waiting, max_batch_size=config.limits.max_batch_size)
    refusals = Refusals()
    started = int(time.time())
    app = FastAPI(title="refusion", description="OpenAI-compatible API for ReFusion decoding", docs_url="/docs",
                  redoc_url=None)
    app.state.engine = engine
    app.state.config = config
    app.state.refusals = refusals
    app.router.add_event_handler("shutdown", engine.close)

    @app.get("/health")
    def health() -> dict:
        c = engine.counters
        return {"status": "ok", "model": config.model_name, "busy": engine.busy, "waiting": engine.waiting,
                "batch": {"running": engine.running, "max_batch_size": engine.max_batch_size},
                "served": c.served, "cancelled_waiting": c.cancelled_waiting, "cancelled_decoding": c.cancelled_decoding,
                "failed": c.failed, "refused": dict(refusals.counts)}

    @app.get("/v1/models")
    def models() -> dict:
        return protocol.ModelList(data=[protocol.ModelCard(id=config.model_name, created=started)]).model_dump()

    @app.get("/v1/models/{name:path}")
    def model_card(name: str) -> dict:
        if name != config.model_name:
            raise ApiError(404, f"the model {name!r} does not exist", "model", "model_not_found")
        return protocol.ModelCard(id=name, created=started).model_dump()

    async def serve(request: Request, body, kind: str):
        prepared = handlers.prepare(body, kind, engine, config)
        ticket = engine.admit(prepared.job)  # QueueFull: a 429, streamed or not
        if body.stream:
            return Stream(handlers.stream(prepared, ticket, engine, config.model_name), lambda: engine.release(ticket))
        result = await handlers.complete(prepared, ticket, engine, config.model_name, request.is_disconnected)
        if result is None:  # the client left; nobody reads this
            return Response(status_code=499)
        return result

    @app.post("/v1/completions")
    async def completions(body: protocol.CompletionRequest, request: Request):
        return await serve(request, body, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: protocol.ChatCompletionRequest, request: Request):
        return await serve(request, body, "chat.completion")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app, refusals)
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes, refusals=refusals)
    return app


class Stream(StreamingResponse):
    """An SSE response that runs `release` however it ends: finished, cancelled by a disconnect, or
    cancelled before its generator ever started (whose own cleanup then never runs)."""

    def __init__(self, chunks, release):
        super().__init__(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


REASONS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large", 429: "queue_full"}


class Refusals:
    """Every error answer goes through `answer`: counted by reason for /health, and one log line
    (status, reason, route, param, message) so that an operator sees what was refused and why."""

    def __init__(self):
        self.counts = {reason: 0 for reason in REASONS.values()}

    def answer(self, scope, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None, headers: dict | None = None) -> JSONResponse:
        message, param = protocol.printable(message), param and protocol.printable(param)
        reason = REASONS.get(status, "server_error" if status >= 500 else "other")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        route = f"{scope.get('method', '')} {protocol.printable(scope.get('path', ''))}"
        level = logging.WARNING if status in (413, 429) or status >= 500 else logging.INFO
        log.log(level, "refused %s: %d %s, param %s: %s", route, status, reason, param, message)
        return JSONResponse(protocol.error_body(message, type, param, code), status_code=status, headers=headers)


def add_error_handlers(app: FastAPI, refusals: Refusals) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return refusals.answer(request.scope, error.status, error.message, error.type, error.param, error.code)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return refusals.answer(request.scope, 429, f"the server is busy: {error}; retry later", "rate_limit_error",
                               code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # The deepest error is the one whose input matched the most structure: for a union (stop: a
        # string or a list of strings) it is the member the client meant, not the first one tried.
        first = max(error.errors(), key=lambda e: len(e.get("loc", ())), default={})
        location = [str(part) for part in first.get("loc", ()) if part != "body" and not union_member(part)]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif first.get("type") == "string_unicode":  # a lone surrogate, as prepare says it for other fields
            message = handlers.surrogate_message(param or "the request body")
        elif not param:
            message = f"the request body must be a JSON object ({message})"
        else:
            message = f"{param}: {message}"
        return refusals.answer(request.scope, 400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return refusals.answer(request.scope, error.status_code, str(error.detail), code=code, headers=error.headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        """A server bug: OpenAI's shape all the same; the framework logs the traceback."""
        return JSONResponse(protocol.error_body(f"internal error ({type(error).__name__})", "server_error", None,
                                                "internal_error"), status_code=500)


def union_member(part) -> bool:
    """Whether a part of a validation error's location names a member of a union ("str", "list[int]"), not a field."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


class BodyLimit:
    """Answer 413 to a request body over `max_bytes`, whether or not it declares its length.

    The body is read here, whole, before the app sees it: a limit raised while FastAPI reads the
    body would come out as FastAPI's 400 "error parsing the body".
    """

    def __init__(self, app, max_bytes: int, refusals: Refusals):
        self.app, self.max_bytes, self.refusals = app, max_bytes, refusals

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self.refuse(scope, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left mid-upload: nobody to answer
                return
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                return await self.refuse(scope, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        async def replay():
            """The body once, then the client's own messages (a disconnect)."""
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def refuse(self, scope, send):
        response = self.refusals.answer(scope, 413, f"the request body is over {self.max_bytes} bytes",
                                        code="request_too_large")
        await response({"type": "http"}, None, send)
