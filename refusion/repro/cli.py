"""`refusion repro`: the paper's comparison (ARM vs MDM vs ReFusion) reproduced in miniature.

Only argument parsing lives here; the stages are in `refusion.repro.pipeline`, the report in
`refusion.repro.report`. Heavy imports wait until the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys


DESCRIPTION = """Reproduce the paper's comparison in miniature, from scratch, end to end:

  1. generate two synthetic task families with exactly checkable answers and held-out test sets:
     mini-gsm8k (multi-step arithmetic word problems, worked equations ending 'The answer is N.')
     and mini-json (a sentence written as a JSON record, checked by parsing it);
  2. build a small BPE tokenizer from the training text (chat template, <|mask|>);
  3. train three identical small Llama models on identical data and budget with `refusion train`'s
     objectives: ARM (ar), MDM (mdm, responses EOS-padded as in LLaDA), ReFusion (refusion); then
     ARM trained on with the ar objective for the extra steps (the control, and a stronger ARM), and
     ReFusion fine-tuned from the trained ARM with extra steps: the paper's recipe, and variants
     (--ar-across-slots: next-token labels across slot boundaries; --prefix-share 0.5: half the
     examples a clean left-to-right prefix with a masked tail; both; --prefix-share 1); and from
     ARM trained longer: the paper's recipe, --prefix-share 0.5 --ar-across-slots (also with
     --mdm-weight 0.25), --prefix-share 1;
  4. evaluate with `refusion eval`: ARM with ar; MDM with mdm and fast-dllm; each ReFusion model with
     refusion (several thresholds, and one slot per block: the left-to-right variant), ar and lossless;
  5. write results.json, results.md (table, goals, the command that re-measures each row) and
     accuracy_vs_speed.png.

Every stage is skipped when its output exists, so an interrupted run continues where it stopped
(training from its last checkpoint). Text in OUTPUT/analysis.md, when present, is appended to
results.md."""

EPILOG = """examples:
  refusion repro --output benchmarks/repro                 # the full run (see results.md for timings)
  refusion repro --output /tmp/repro --quick               # tiny models, about a minute: checks the pipeline
  refusion repro --output runs/repro --steps 300 --limit 50
  refusion repro --output runs/repro --finetune-steps 0    # only the three models trained from scratch
"""


def repro_command(args: argparse.Namespace) -> None:
    """Train ARM, MDM and ReFusion from scratch on synthetic tasks and compare their accuracy and speed."""
    from ..checks import output_dir
    from .pipeline import ReproConfig, quick_config, run
    from .report import write_report

    output = output_dir(args.output)
    config = quick_config(output) if args.quick else ReproConfig(output=output)
    if args.steps is not None:
        config.steps = args.steps
    if args.finetune_steps is not None:
        config.finetune_steps = args.finetune_steps
    if args.limit is not None:
        config.test_limit = args.limit
    config.check()
    summaries = run(config, progress=not args.no_progress, log=lambda line: print(line, file=sys.stderr, flush=True))
    command = reproducing_command(args)
    meta = {"command": command, "description": describe(config), "steps": config.steps, "test_limit": config.test_limit,
            "max_new_tokens": config.max_new_tokens, "dtype": config.dtype}
    analysis = output / "analysis.md"
    paths = write_report(summaries, output, meta, config.test_limit, config.max_new_tokens,
                         notes=analysis.read_text() if analysis.is_file() else None)
    print(f"results: {paths['markdown']} (table), {paths['json']}, {paths['plot']}")


def reproducing_command(args: argparse.Namespace) -> str:
    parts = ["refusion", "repro", "--output", args.output] + ["--quick"] * args.quick
    parts += [f"--{name.replace('_', '-')}={value}" for name in ("steps", "finetune_steps", "limit") if (value := getattr(args, name)) is not None]
    return " ".join(shlex.quote(part) for part in parts)


def describe(config) -> str:
    fine_tuned = (f" (arm-longer and the conversions: {config.finetune_steps} more at lr {config.finetune_lr}, from the "
                  "trained ARM; refusion-from-arm-longer*: from arm-longer)" if config.finetune_steps else "")
    return (f"Llama {config.layers} layers, hidden {config.hidden}, {config.heads} heads, vocab {config.vocab_size}; "
            f"{config.steps} steps of batch {config.batch_size} at lr {config.lr} on {2 * config.train_size} problems"
            f"{fine_tuned}; first {config.test_limit} test problems per task, {config.max_new_tokens} new tokens at most, "
            f"greedy, batch 1, {config.dtype}, {config.threads} CPU thread")


def register(subparsers) -> None:
    parser = subparsers.add_parser("repro", help="reproduce the paper's ARM / MDM / ReFusion comparison in miniature",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="where data, models, evaluation outputs and results go (reused to resume)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per model, the same for all three (default 1500; --quick: 6)")
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="steps of ReFusion fine-tuning on top of the trained ARM, for each recipe (default 1500; "
                             "--quick: 3); 0 leaves the fine-tuned models out")
    parser.add_argument("--limit", type=int, default=None,
                        help="held-out problems evaluated per task (default all 200; --quick: 2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, a few steps, two problems per task: checks the pipeline in about a minute")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=repro_command)
