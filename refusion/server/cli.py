"""`refusion serve`: load a model once and serve it over an OpenAI-compatible HTTP API with a live page."""

from __future__ import annotations

import argparse
import inspect
import sys

from ..errors import RefusionError


def serve_command(args: argparse.Namespace) -> None:
    """Serve a model over HTTP: /v1/completions, /v1/chat/completions (streaming too), /v1/models, /health,
    and a live page at / that shows every position go from masked to planned to accepted.

    The decoding options below are the server's defaults; each request may override them with the
    extra body fields decoder and the decoder options (slot_size, blocks, slot_threshold, token_threshold, kv,
    branches, steps, block_length, threshold, ...: the same names as the flags below, with underscores).

    Requests decode together: each joins the running batch at its next step and leaves it when done
    (up to --max-batch-size at once, each with its own decoder, settings and stream).
    """
    from ..cli import apply_runtime_options, decoder_options, precheck_decoder_options, resolve_decoder
    from ..decoding.dispatch import NEEDS_MASK
    from ..model import load
    from .handlers import Limits, ServerConfig

    if not 0 < args.port < 65536:
        raise RefusionError(f"--port must lie in 1..65535, got {args.port}")
    for name in ("max_tokens_limit", "max_body_bytes", "max_waiting", "max_batch_size"):
        if getattr(args, name) < 1:
            raise RefusionError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise RefusionError(f"--max-prompt-tokens must be a positive integer, got {args.max_prompt_tokens}")
    defaults = decoder_options(args)
    precheck_decoder_options(defaults)
    check_can_listen(args.host, args.port)  # before the (slow) model load
    import uvicorn

    from .app import create_app

    print(f"loading {args.model} ...", file=sys.stderr)
    dtype, device, _ = apply_runtime_options(args)
    model, tokenizer = load(args.model, dtype=dtype, device=device, kernels=args.kernels)
    defaults["decoder"] = resolve_decoder(defaults["decoder"], model)
    if defaults["decoder"] in NEEDS_MASK and getattr(model.config, "mask_token_id", None) is None:
        raise RefusionError(f"--decoder {defaults['decoder']} needs a model trained with a <|mask|> token; {args.model} has none "
                            "(convert it with `refusion train --objective refusion`, or use --decoder ar)")
    limits = Limits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                    max_body_bytes=args.max_body_bytes, max_waiting=args.max_waiting,
                    max_batch_size=args.max_batch_size)
    config = ServerConfig(model_name=args.model_name or args.model, defaults=defaults, limits=limits)
    show_server_log(args.log_level)
    app = create_app(model, tokenizer, config)
    print(f"serving {config.model_name!r} with decoder {defaults['decoder']} on http://{args.host}:{args.port}/ "
          f"(OpenAI base_url http://{args.host}:{args.port}/v1)", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    except OSError as error:
        raise RefusionError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from error


def show_server_log(level: str) -> None:
    """Print the server's own log lines (each refused request, with its reason) at uvicorn's --log-level."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))  # aligned with uvicorn's lines
    logger = logging.getLogger("refusion")
    logger.addHandler(handler)
    logger.setLevel(level.upper())


def check_can_listen(host: str, port: int) -> None:
    """Bind the address once, as uvicorn will (SO_REUSEADDR), so that a busy port is a one-line error."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise RefusionError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error


def register(subparsers) -> None:
    from ..cli import DEFAULT_MODEL, add_decoder_options, add_runtime_options

    parser = subparsers.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API with a live page",
                                   description=inspect.cleandoc(serve_command.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model directory, .gguf file, hub id or built-in name (default {DEFAULT_MODEL})")
    parser.add_argument("--model-name", default=None, help="the id clients send as 'model' (default: the --model value)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    add_decoder_options(parser)
    add_runtime_options(parser)
    limits = parser.add_argument_group("limits (answered with HTTP 4xx)")
    limits.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask for (default 4096)")
    limits.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt in tokens (default: the model's context)")
    limits.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    limits.add_argument("--max-waiting", type=int, default=64,
                        help="requests that may wait for the model; more answer 429 (default 64)")
    limits.add_argument("--max-batch-size", type=int, default=16,
                        help="requests decoded together: each joins the running batch at its next step and "
                             "leaves it when done (default 16; 1 serves one at a time)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    parser.set_defaults(func=serve_command)
