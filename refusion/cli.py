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
    "refusion.distill.drafts_cli",
    "refusion.bench.cli",
]


DECODER_HELP = ("refusion (plan-and-infill, the paper's method), lossless (drafts from the mask head checked by the "
                "AR head: ar's text, faster), ar (one token per forward), or mdm / fast-dllm for masked-diffusion "
                "models. Default: lossless when the model has a mask token (mdm when it was trained with the "
                "mdm objective), else ar")


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    """The decoding knobs shared by generate, eval, serve and bench, from the decoders' declarations.

    Values are read as text and checked by the declarations (`refusion.decoding.options`), so a bad
    value gets the same message here, in the API and in the server. None means the default.
    """
    from .decoding.dispatch import DECODERS
    from .decoding.options import MAX_NEW_TOKENS, SEED, TEMPERATURE, all_options

    group = parser.add_argument_group("decoding")
    group.add_argument("--decoder", default=None, help=DECODER_HELP)
    for option in (MAX_NEW_TOKENS, TEMPERATURE, SEED):
        group.add_argument(f"--{option.flag}", default=option.default, metavar="N" if option.kind is int else "X",
                           help=option.describe())
    for name, (option, decoders) in all_options(DECODERS).items():
        metavar = "{" + ",".join(option.choices) + "}" if option.choices else name.split("_")[-1].upper()
        described = option.describe()
        for decoder in decoders:  # the tag names them; the API's descriptions keep their own "lossless: "
            described = described.removeprefix(f"{decoder}: ")
        group.add_argument(f"--{option.flag}", default=None, metavar=metavar,
                           help=f"[{', '.join(decoders)}] {described}")


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the model runs: device, dtype, CPU threads."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="inference dtype (default auto: bfloat16 on a GPU or a CPU with native bf16 "
                            "(AVX512-BF16 or AMX), else float32)")
    group.add_argument("--threads", default="auto",
                       help="CPU threads (default auto: the cores other processes leave idle, at least 1)")
    group.add_argument("--kernels", default="invariant", choices=["invariant", "native"],
                       help="invariant (default): a bf16 model on a CPU computes each token alike whatever else a "
                            "forward feeds, so every decoder and batch size writes the text `ar` writes alone; "
                            "native: PyTorch's own kernels, 1-11%% faster, "
                            "parting at bf16 near-ties (BENCHMARKS.md)")


def apply_runtime_options(args: argparse.Namespace):
    """Set the thread count and keep freed memory for reuse; return (dtype, device, threads) for `load`."""
    import torch

    from .checks import device as check_device
    from .hardware import keep_freed_memory, resolve_dtype, set_threads

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = set_threads(args.threads)
    keep_freed_memory()
    return resolve_dtype(args.dtype, device), device, threads


def decoder_options(args: argparse.Namespace) -> dict:
    """decoder, max_new_tokens, temperature, seed and every decoder option, as parsed (None = default)."""
    from .decoding.dispatch import DECODERS
    from .decoding.options import all_options

    names = ["decoder", "max_new_tokens", "temperature", "seed", *all_options(DECODERS)]
    return {name: getattr(args, name) for name in names}


def resolve_decoder(requested: str | None, model) -> str:
    """The decoder to use: as requested, or the model's default (`default_decoder`)."""
    from .decoding.dispatch import default_decoder

    if requested:
        return requested
    decoder = default_decoder(model)
    if decoder == "ar":
        print("note: this model has no <|mask|> token, so it decodes with --decoder ar", file=sys.stderr)
    return decoder


def precheck_decoder_options(options: dict) -> None:
    """Check and convert the parsed values in place, before spending time loading a model."""
    from .decoding.dispatch import DECODERS, check_options
    from .decoding.options import MAX_NEW_TOKENS, SEED, TEMPERATURE

    decoder = options["decoder"]
    if decoder is not None and decoder not in DECODERS:
        raise RefusionError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    for option in (MAX_NEW_TOKENS, TEMPERATURE, SEED):
        if options.get(option.name) is not None:
            options[option.name] = option.check(options[option.name])
    knobs = {k: v for k, v in options.items() if k not in ("decoder", "max_new_tokens", "temperature", "seed")}
    # Without --decoder, a ReFusion model decodes with lossless: its options are the ones to check.
    checked = check_options(decoder or "lossless", knobs, options["max_new_tokens"] or 1)
    options.update({name: checked[name] for name, value in knobs.items() if value is not None and name in checked})


def generate_command(args: argparse.Namespace) -> None:
    """Generate text for one prompt and report its speed."""
    from . import generate, load
    from .decoding.dispatch import check_stop
    from .prompting import encode_prompt

    if not args.prompt.strip():
        raise RefusionError("the prompt is empty")
    options = decoder_options(args)
    precheck_decoder_options(options)
    stop = check_stop(args.stop)
    dtype, device, _ = apply_runtime_options(args)
    model, tokenizer = load(args.model, dtype=dtype, device=device, kernels=args.kernels)
    options["decoder"] = resolve_decoder(options["decoder"], model)
    input_ids = encode_prompt(tokenizer, args.prompt, chat=args.chat)

    def show(text: str) -> None:
        """Print text as soon as it is final (generate holds back what could become a stop string)."""
        sys.stdout.write(text)
        sys.stdout.flush()

    result = generate(model, tokenizer, input_ids, on_text=None if args.json else show, stop=stop, **options)
    if args.json:
        print(json.dumps({"text": result.text, "model": args.model, **result.stats(), "prompt_tokens": result.prompt_tokens,
                          "settings": result.settings}))
        return
    sys.stdout.write("\n")
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
    add_runtime_options(gen)
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
