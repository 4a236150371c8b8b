"""Which n-gram draft table makes lossless decoding faster: the model's own and others built by `refusion drafts`,
swapped on one loaded model, in one process, `ar` and each table taking turns prompt by prompt.

    python3 benchmarks/draft_tables.py --model refusion-smollm2-135m --tables NEW.safetensors --threads 2 \
        --max-new-tokens 96 --output benchmarks/bench/draft-tables.txt

Per setting: tokens/s and its ratio to `ar`, tokens per forward, drafts accepted per forward (all, and those from
the table), and the prompts whose text equals `ar`'s (bf16, greedy: every one must).
"""

import argparse
from pathlib import Path

import torch

import refusion
from refusion.bench import builtin_prompts
from refusion.decoding import lossless
from refusion.decoding.draft_table import DraftTable
from refusion.hardware import keep_freed_memory, set_threads
from refusion.prompting import encode_prompt
from turns import report, take_turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--tables", required=True, help="draft tables to compare with the model's own, comma-separated")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    tables = {"own": getattr(model, "_refusion_draft_table", None)}
    tables.update({Path(path).name: DraftTable.load(path) for path in args.tables.split(",")})
    prompts = [encode_prompt(tokenizer, text) for text in builtin_prompts()[: args.limit]]
    settings = ["ar", *tables]

    def decode(setting, ids, max_new_tokens):
        if setting == "ar":
            return refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=max_new_tokens)
        model._refusion_draft_table = tables[setting]
        return refusion.generate(model, tokenizer, ids, decoder="lossless", max_new_tokens=max_new_tokens)

    for setting in settings:  # warm-up: kernels built, costs measured, outside the timing
        decode(setting, prompts[0], 8)
    lossless.forget(model)
    totals = take_turns(prompts, settings, lambda setting, ids: decode(setting, ids, args.max_new_tokens))
    lines = [f"python3 benchmarks/draft_tables.py --model {args.model} --tables {args.tables} --threads {args.threads} "
             f"--max-new-tokens {args.max_new_tokens} --limit {args.limit}  (bf16, {len(prompts)} built-in prompts, "
             f"torch {torch.__version__})",
             "| setting | table contexts | tokens/s | vs ar | tokens/forward | drafts accepted/forward (table) "
             "| text identical to ar |", "|---|---|---|---|---|---|---|"]
    for setting, total in totals.items():
        table = tables.get(setting)
        size = "-" if setting == "ar" else (f"{len(table):,}" if table is not None else "none")
        drafts = "-" if setting == "ar" else (f"{total.counters['drafts_accepted'] / total.forwards:.2f} "
                                              f"({total.counters['table_accepted'] / total.forwards:.2f})")
        speed = total.tokens_per_second
        lines.append(f"| {'ar' if setting == 'ar' else 'lossless, ' + setting} | {size} | {speed:.2f} | "
                     f"{speed / totals['ar'].tokens_per_second:.2f}x | {total.tokens / total.forwards:.2f} | {drafts} | "
                     f"{total.identical(totals['ar'])}/{len(prompts)} |")
    report(lines, args.output)


if __name__ == "__main__":
    main()
