"""`refusion drafts`: build a model's n-gram draft table from its own answers (see `refusion.decoding.draft_table`)."""

from __future__ import annotations

import argparse

from ..errors import RefusionError

EPILOG = """examples:
  refusion build-data --model DIR --output data/      # the model's own answers to templated instructions
  refusion drafts --model DIR --data data/train.jsonl  # writes DIR/draft_table.safetensors
  refusion bench --model DIR --decoders ar,lossless,lossless:draft_table=off   # what the table adds

The lossless decoder verifies a chain from the table beside its other drafts whenever it loads a
model with one, and offers it only where it has paid (`--draft-table off` never does). The text is
still exactly `ar`'s. Answers written by the model itself draft best: they are what it will write.
"""


def drafts_command(args: argparse.Namespace) -> None:
    """Count what the model wrote after every 1..N tokens in a set of answers: the lossless decoder's draft table."""
    from pathlib import Path

    from tqdm import tqdm

    from ..checks import output_dir
    from ..decoding.draft_table import FILENAME, DraftTable
    from ..model import load, local_path
    from ..training.data import encode_example, read_pairs

    if args.longest < 1 or args.min_count < 1:
        raise RefusionError(f"--longest and --min-count must be positive integers, got {args.longest} and {args.min_count}")
    if args.output:
        output = Path(args.output).expanduser()
        output_dir(output.parent).mkdir(parents=True, exist_ok=True)
    elif local_path(args.model).is_dir():
        output = local_path(args.model) / FILENAME
    else:
        raise RefusionError(f"--model {args.model} is not a directory: say where the table goes with --output FILE")
    pairs = read_pairs(args.data)
    _, tokenizer = load(args.model)
    if tokenizer.eos_token_id is None:
        raise RefusionError("the tokenizer has no EOS token; answers must end with one")
    sequences = []
    for query, response in tqdm(pairs, desc="tokenizing", unit="answer", disable=args.no_progress):
        example = encode_example(tokenizer, query, response, tokenizer.eos_token_id)
        # The prompt's last tokens (the chat template's opening of the answer) let the table draft an answer's start.
        sequences.append(example.prompt_ids[-args.longest:] + example.response_ids)
    table = DraftTable.build(sequences, longest=args.longest, min_count=args.min_count)
    if not len(table):
        raise RefusionError(f"no context occurred {args.min_count} or more times in {', '.join(args.data)}")
    table.save(output)
    tokens = sum(map(len, sequences))
    print(f"wrote {len(table):,} contexts from {len(sequences):,} answers ({tokens:,} tokens) to {output}; "
          f"the lossless decoder uses it whenever it loads the model from that directory")


def register(subparsers) -> None:
    parser = subparsers.add_parser("drafts", help="build a model's n-gram draft table (lossless drafts) from its own answers",
                                   description=drafts_command.__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model whose tokenizer counts the tokens: a directory, built-in "
                                                       "name or hub id")
    parser.add_argument("--data", required=True, nargs="+", metavar="FILE",
                        help='JSON or JSONL files of {"query", "response"} or {"messages": [...]} records, as for train')
    parser.add_argument("--output", default=None, metavar="FILE",
                        help="where the table goes (default: draft_table.safetensors in the model's directory, "
                             "where loading the model finds it)")
    parser.add_argument("--longest", type=int, default=4, help="the longest context counted, in tokens (default 4)")
    parser.add_argument("--min-count", type=int, default=1,
                        help="keep a context only if its likeliest next token followed it this often (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=drafts_command)
