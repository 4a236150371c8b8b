"""`refusion serve`: an OpenAI-compatible HTTP server with out-of-order streaming and a live page.

    from refusion.server import ServerConfig, create_app
    app = create_app(model, tokenizer, ServerConfig(model_name="my-model"))   # then uvicorn.run(app)

Imports FastAPI only when `create_app` is used, so `refusion --help` stays fast.
"""



def create_app(model, tokenizer, config):
    from .app import create_app as build

    return build(model, tokenizer, config)


def __getattr__(name: str):
    if name in ("Limits", "ServerConfig"):  # pydantic and friends load only when asked for
        from . import handlers

        return getattr(handlers, name)
    raise AttributeError(f"module 'refusion.server' has no attribute {name!r}")


__all__ = ["Limits", "ServerConfig", "create_app"]
