"""`refusion serve`: an OpenAI-compatible HTTP server with out-of-order streaming and a live page.

    from refusion.server import ServerConfig, create_app
    app = create_app(model, tokenizer, ServerConfig(model_name="my-model"))   # then uvicorn.run(app)

Imports FastAPI only when `create_app` is used, so `refusion --help` stays fast.
"""

from .handlers import Limits, ServerConfig


def create_app(model, tokenizer, config: ServerConfig):
    from .app import create_app as build

    return build(model, tokenizer, config)


__all__ = ["Limits", "ServerConfig", "create_app"]
