"""The `refusion` command line: one function per command.

`generate` lives here; larger commands (train, eval, serve, ...) live beside the code they drive
and register themselves through a `register(subparsers)` function listed in `COMMAND_MODULES`.
Any `RefusionError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import RefusionError

DEFAULT_MODEL = "refusion-smollm2-135m"

# Modules that add sub-commands; each defines register(subparsers). Imported lazily by name.
COMMAND_MODULES = [
    "refusion.training.cli",
    "refusion.eval.cli",
    "refusion.server.cli",
    "refusion.repro.cli",
    "refusion.distill.cli",
    "refusion.bench.cli",
]


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    """The decoding knobs shared by generate, eval and serve. None means the decoder's default."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--decoder", default=None,
                       help="refusion (plan-and-infill), ar (one token per forward), or mdm / fast-dllm for "
                            "masked-diffusion models. Default: refusion when the model has a mask token, else ar")
    group.add_argument("--max-new-tokens", type=int, default=256, help="generation budget in tokens (default 256)")
    group.add_argument("--slot-size", type=int, default=None, help="tokens per slot, k (default 4)")
    group.add_argument("--blocks", type=int, default=None,
                       help="serial blocks, B; the generation length over B must be a multiple of k "
                            "(default: blocks of at most 4 slots)")
    group.add_argument("--slot-threshold", type=float, default=None,
                       help="plan: write in parallel every slot whose first token is above this probability (default 0.6)")
    group.add_argument("--token-threshold", type=float, default=None,
                       help="verify: accept drafted tokens whose AR probability is above this (default 0.3)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    group.add_argument("--kv", choices=["reuse", "recompute"], default=None,
                       help="after parallel completion, reuse each slot's own KV (default) or recompute it causally")
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--steps", type=int, default=None, help="mdm: total denoising steps (default max-new-tokens)")
    group.add_argument("--block-length", type=int, default=None, help="mdm / fast-dllm: tokens per semi-autoregressive block (default 32)")
    group.add_argument("--threshold", type=float, default=None, help="fast-dllm: unmask every token above this confidence (default 0.9)")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the model runs: device, dtype, CPU threads."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="inference dtype (default auto: bfloat16 on a GPU or a CPU with native bf16 "
                            "(AVX512-BF16 or AMX), else float32)")
    group.add_argument("--threads", default="auto",
                       help="CPU threads (default auto: the cores other processes leave idle, at least 1)")


def apply_runtime_options(args: argparse.Namespace):
    """Set the thread count; return (dtype, device, threads) for `load`."""
    import torch

    from .hardware import resolve_dtype, set_threads

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        raise RefusionError(f"unknown device {device!r} (expected cpu, cuda, cuda:N, ...)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RefusionError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    threads = set_threads(args.threads)
    return resolve_dtype(args.dtype, device), device, threads


def decoder_options(args: argparse.Namespace) -> dict:
    return {
        "decoder": args.decoder,
        "max_new_tokens": args.max_new_tokens,
        "slot_size": args.slot_size,
        "blocks": args.blocks,
        "slot_threshold": args.slot_threshold,
        "token_threshold": args.token_threshold,
        "temperature": args.temperature,
        "kv": args.kv,
        "seed": args.seed,
        "steps": args.steps, "block_length": args.block_length, "threshold": args.threshold,
    }


def resolve_decoder(requested: str | None, model) -> str:
    """The decoder to use: as requested, or refusion when the model has a mask token, else ar."""
    from .decoding.dispatch import default_decoder

    if requested:
        return requested
    decoder = default_decoder(model)
    if decoder == "ar":
        print("note: this model has no <|mask|> token, so it decodes with --decoder ar", file=sys.stderr)
    return decoder


def precheck_decoder_options(options: dict) -> None:
    """Reject bad settings before spending time loading a model."""
    from .decoding.dispatch import DECODERS, check_options

    decoder = options["decoder"]
    if decoder is not None and decoder not in DECODERS:
        raise RefusionError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    if options["max_new_tokens"] < 1:
        raise RefusionError(f"max-new-tokens must be a positive integer, got {options['max_new_tokens']}")
    knobs = {k: v for k, v in options.items() if k not in ("decoder", "max_new_tokens", "temperature", "seed")}
    check_options(decoder or "refusion", knobs, options["max_new_tokens"])


def generate_command(args: argparse.Namespace) -> None:
    """Generate text for one prompt and report its speed."""
    from . import generate, load
    from .decoding.dispatch import check_stop
    from .decoding.streaming import FinalText
    from .model import eos_token_ids
    from .prompting import encode_prompt

    if not args.prompt.strip():
        raise RefusionError("the prompt is empty")
    options = decoder_options(args)
    precheck_decoder_options(options)
    stop = check_stop(args.stop)
    model, tokenizer = load(args.model)
    options["decoder"] = resolve_decoder(options["decoder"], model)
    input_ids = encode_prompt(tokenizer, args.prompt, chat=args.chat)

    final = FinalText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), eos_token_ids(tokenizer, model),
                      args.max_new_tokens, stop)
    shown = ""

    def show_final_text(event: dict) -> None:
        """Print text once it is final, holding back what could still become a stop string."""
        nonlocal shown
        if final(event) and len(final.ready) > len(shown) and final.ready.startswith(shown):
            sys.stdout.write(final.ready[len(shown):])
            sys.stdout.flush()
            shown = final.ready

    result = generate(model, tokenizer, input_ids, on_event=None if args.json else show_final_text, stop=stop, **options)
    if args.json:
        print(json.dumps({"text": result.text, "model": args.model, **result.stats(), "prompt_tokens": result.prompt_tokens,
                          "settings": result.settings}))
        return
    sys.stdout.write(result.text[len(shown):] + "\n")
    stats = result.stats()
    print(f"[{stats['decoder']}] {stats['new_tokens']} tokens in {stats['seconds']:.2f}s = {stats['tokens_per_second']:.1f} tok/s, "
          f"{stats['forward_passes']} forwards, {stats['tokens_per_forward']:.2f} tokens/forward", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refusion", description="ReFusion: parallel autoregressive decoding for any causal LM.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate text for a prompt", description=generate_command.__doc__)
    gen.add_argument("prompt", help="the prompt text")
    gen.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, .gguf file, hub id or built-in name (default {DEFAULT_MODEL})")
    add_decoder_options(gen)
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                     help="apply the tokenizer's chat template (default: on when it has one)")
    gen.add_argument("--stop", action="append", metavar="TEXT",
                     help="end the generation as soon as the text holds TEXT (cut before it); repeatable")
    gen.add_argument("--json", action="store_true", help="print one JSON object with the text and speed statistics")
    gen.set_defaults(func=generate_command)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and name.startswith(error.name):
                continue  # that part of the project is not installed in this checkout
            raise
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except RefusionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
