"""The FastAPI application: routes, OpenAI-style errors, the body-size limit and the web page.

`create_app(model, tokenizer, config)` serves an already-loaded model, so tests and notebooks need
no files on disk. Every error, including malformed JSON and unknown routes, answers OpenAI's
`{"error": {"message", "type", "param", "code"}}` shape. Knows nothing about decoding.
"""

from __future__ import annotations

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


def create_app(model, tokenizer, config: ServerConfig) -> FastAPI:
    engine = Engine(model, tokenizer, max_waiting=config.limits.max_waiting)
    started = int(time.time())
    app = FastAPI(title="refusion", description="OpenAI-compatible API for ReFusion decoding", docs_url="/docs",
                  redoc_url=None)
    app.state.engine = engine
    app.state.config = config
    app.router.add_event_handler("shutdown", engine.close)

    @app.get("/health")
    def health() -> dict:
        c = engine.counters
        return {"status": "ok", "model": config.model_name, "busy": engine.busy, "waiting": engine.waiting,
                "served": c.served, "cancelled_waiting": c.cancelled_waiting, "cancelled_decoding": c.cancelled_decoding,
                "failed": c.failed}

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
        if body.stream:
            return StreamingResponse(handlers.stream(prepared, engine, config.model_name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await handlers.complete(prepared, engine, config.model_name, request.is_disconnected)
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
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=config.limits.max_body_bytes)
    return app


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        body = protocol.error_body(f"the server is busy: {error}; retry later", "rate_limit_error", None, "queue_full")
        return JSONResponse(body, status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif not param:
            message = f"the request body must be a JSON object ({message})"
        elif param:
            message = f"{param}: {message}"
        return JSONResponse(protocol.error_body(message, param=param), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return JSONResponse(protocol.error_body(str(error.detail), code=code), status_code=error.status_code)


class BodyLimit:
    """Answer 413 to a request body over `max_bytes`, whether or not it declares its length."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self.refuse(send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise ApiError(413, f"the request body is over {self.max_bytes} bytes", code="request_too_large")
            return message

        await self.app(scope, counted_receive, send)

    async def refuse(self, send):
        response = JSONResponse(protocol.error_body(f"the request body is over {self.max_bytes} bytes",
                                                    code="request_too_large"), status_code=413)
        await response({"type": "http"}, None, send)
