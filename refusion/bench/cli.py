"""`refusion bench`: speed and quality of decoder settings, measured side by side in one process."""

from __future__ import annotations

import argparse
import json
import sys

BENCH_HELP = """Run decoder settings in turn on the same prompts, in one process, and report
per setting: tokens/s and its ratio to `ar` measured in this run, tokens per forward, forwards,
mean ms per forward by the number of tokens it fed, engine overhead (time outside the model's
forward), peak memory, and quality against `ar`: the share of prompts whose text is identical to
`ar`'s and the mean log-likelihood per token the model's AR head gives the text. Not counted: a
warm-up step per setting and prompt, and one forward at every width a decode may feed (CPU kernels
are built per input shape; a long-running process has built them all). An `ar` row is added when --decoders has none. The settings
take turns prompt by prompt, so that a machine that slows down or speeds up during the run weighs
on every row alike.

--batch-sizes 1,4,16 runs every setting once per batch size b, sending the prompts b at a time
(consecutive groups; the last may be smaller), one row per (setting, batch size): tokens/s is then
aggregate (all new tokens / wall time of all calls), latency is each request's batch wall time
(mean and p95), "vs ar" compares with `ar` at the same batch size, tokens per forward and forwards
stay per request, and "identical to ar" compares with `ar` at batch 1 (run too when not listed).
Every decoder decodes a group together (see `refusion.generate`). Default: 1.

--passes 3 runs all of it three times over, every batch size taking its turn within each pass, and
counts every pass in the speeds: batch sizes otherwise run one after another, and a slow spell of
the machine during one of them moves the ratios between them (texts are the first pass's).

--decoders takes specs separated by commas, options after a colon, in refusion.generate's names:
  ar,lossless,refusion                      the three decoders at their defaults
  refusion:kv=recompute,refusion:slot_size=8,blocks=2,lossless:branches=2,depth=3

Writes DIR/bench.md (table), bench.json, outputs.jsonl (every text) and bench.png (speed vs quality)."""

DEFAULT_DECODERS = "ar,lossless,refusion,refusion:kv=recompute"


def bench_command(args: argparse.Namespace) -> None:
    """Measure decoders side by side."""
    from .. import load
    from ..checks import output_dir
    from ..cli import apply_runtime_options
    from ..errors import RefusionError
    from .prompts import builtin_prompts, read_prompts
    from .report import machine, markdown, write
    from .runner import check_specs, parse_batch_sizes, parse_specs, run_bench

    if args.max_new_tokens < 1:
        raise RefusionError(f"--max-new-tokens must be a positive integer, got {args.max_new_tokens}")
    if args.limit is not None and args.limit < 1:
        raise RefusionError(f"--limit must be a positive integer, got {args.limit}")
    if args.passes < 1:
        raise RefusionError(f"--passes must be a positive integer, got {args.passes}")
    if args.output:
        output_dir(args.output)
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    specs = parse_specs(args.decoders)
    check_specs(specs, args.max_new_tokens)
    prompts = read_prompts(args.prompts) if args.prompts else builtin_prompts()
    prompts = prompts[: args.limit] if args.limit else prompts
    dtype, device, threads = apply_runtime_options(args)
    model, tokenizer = load(args.model, dtype=dtype, device=device, kernels=args.kernels)
    result = run_bench(model, tokenizer, prompts, specs, max_new_tokens=args.max_new_tokens, chat=args.chat,
                       progress=not args.no_progress, batch_sizes=batch_sizes, passes=args.passes)
    result = {"machine": machine(next(model.parameters()).device, dtype, threads), "model": args.model,
              "max_new_tokens": args.max_new_tokens, **result}
    if args.output:
        for path in write(result, args.output):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps({"machine": result["machine"], "model": args.model, "rows": result["rows"]}))
    else:
        print(markdown(result))


def register(subparsers) -> None:
    from ..cli import DEFAULT_MODEL, add_runtime_options

    bench = subparsers.add_parser("bench", help="measure decoders side by side: speed against ar, and quality",
                                  description=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, .gguf, hub id or built-in name (default {DEFAULT_MODEL})")
    bench.add_argument("--decoders", default=DEFAULT_DECODERS, metavar="SPEC,...", help=f"decoder settings to run (default {DEFAULT_DECODERS})")
    bench.add_argument("--prompts", default=None, metavar="FILE.jsonl",
                       help='prompts as {"prompt": ...} lines (default: the built-in set of 40 varied prompts)')
    bench.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    bench.add_argument("--batch-sizes", default="1", metavar="B,...",
                       help="send the prompts this many at a time, one row per setting and size (default 1)")
    bench.add_argument("--passes", type=int, default=1,
                       help="run everything this many times over, every batch size taking its turn in each pass; "
                            "speeds count every pass (default 1)")
    bench.add_argument("--max-new-tokens", type=int, default=96, help="generation budget per prompt (default 96)")
    bench.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                       help="send prompts through the tokenizer's chat template (default: on when it has one)")
    add_runtime_options(bench)
    bench.add_argument("--output", default=None, metavar="DIR", help="write bench.md, bench.json, outputs.jsonl and bench.png here")
    bench.add_argument("--json", action="store_true", help='print {"machine": ..., "model": ..., "rows": [...]} as the last line')
    bench.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    bench.set_defaults(func=bench_command)
