"""`refusion build-data`: instructions generated from templates, answered by the base model."""

from __future__ import annotations

import argparse
import json

from ..errors import RefusionError
from ..files import write_text


def build_data_command(args: argparse.Namespace) -> None:
    """Build a self-distillation training set: N templated instructions, each answered by the base model."""
    from ..checks import device, output_dir
    from ..decoding.options import SEED
    from ..model import load
    from .answers import answer_instructions, training_records
    from .instructions import build_instructions

    for name in ("count", "max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise RefusionError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    SEED.check(args.seed)
    families = parse_families(args.families) if args.families else None
    output = output_dir(args.output)
    if args.device:
        device(args.device)
    if not args.instructions_only:  # a model that does not load is reported before any file is written
        model, tokenizer = load(args.model, dtype=args.dtype, device=args.device)
    instructions = build_instructions(args.count, seed=args.seed, families=families)
    write_text(output / "instructions.jsonl", "".join(json.dumps(r) + "\n" for r in instructions))
    if args.instructions_only:
        print(f"wrote {len(instructions)} instructions to {output / 'instructions.jsonl'}")
        return
    counts = answer_instructions(model, tokenizer, instructions, output / "answers.jsonl",
                                 max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    kept = training_records(output / "answers.jsonl", output / "train.jsonl")
    print(f"{counts}; {kept} finished answers in {output / 'train.jsonl'} (train with: refusion train --data {output / 'train.jsonl'} ...)")


def parse_families(text: str) -> dict[str, float]:
    """"chat,list" (equal weights) or "chat=3,list=1" -> {family: weight}."""
    from .instructions import FAMILIES

    families = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in FAMILIES:
            raise RefusionError(f"--families: unknown family {name!r}; known: {', '.join(FAMILIES)}")
        try:
            families[name] = float(weight) if weight else 1.0
        except ValueError:
            raise RefusionError(f"--families: the weight of {name} must be a number, got {weight!r}") from None
        if not (0 < families[name] < float("inf")):
            raise RefusionError(f"--families: the weight of {name} must be a positive number, got {weight}")
    if not families:
        raise RefusionError("--families names no family")
    return families


def register(subparsers) -> None:
    parser = subparsers.add_parser("build-data", help="build self-distillation training data from templated instructions",
                                   description=build_data_command.__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the base model that answers (default smollm2-135m-instruct)")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="writes instructions.jsonl, answers.jsonl (resumable) and train.jsonl here")
    parser.add_argument("--count", type=int, default=5000, help="number of distinct instructions (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the instruction templates (default 0)")
    parser.add_argument("--families", default=None, metavar="NAME[=W],...",
                        help="instruction families and their weights, e.g. chat,list or word_problem=3,code=1 (default: "
                             "the benchmark-shaped mix the shipped adapter was trained on: word_problem, algebra, code, "
                             "multiple_choice, open; chat and list are everyday requests outside it)")
    parser.add_argument("--max-new-tokens", type=int, default=384, help="answer length limit; longer answers are dropped (default 384)")
    parser.add_argument("--batch-size", type=int, default=32, help="instructions answered per batch (default 32)")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype, e.g. bfloat16 on a GPU (default: as stored)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: cpu)")
    parser.add_argument("--instructions-only", action="store_true", help="only write instructions.jsonl")
    parser.set_defaults(func=build_data_command)
