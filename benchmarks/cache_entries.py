"""What keeping a cache's entries in float64 under the invariant attention buys: `ar` and lossless at batch 1 and 16,
with the entries in float64 (converted once, as they are appended) against in the model's bf16 (converted by every
layer at every forward), in one process, the settings taking turns round by round.

    python3 benchmarks/cache_entries.py --threads 1 --rounds 2 --max-new-tokens 48 --output benchmarks/bench/cache-entries.txt

Per setting: tokens/s over the 16 first built-in prompts (at batch 1 one after another, at 16 in one batch), its
ratio to the same decoder and batch with bf16 entries, and whether every text is the same either way (it must be).
"""

import argparse
from types import SimpleNamespace

import torch

import refusion
from refusion import invariant_kernels
from refusion.bench import builtin_prompts
from refusion.hardware import keep_freed_memory, set_threads
from refusion.prompting import encode_prompt
from turns import report, take_turns

ENTRIES = {"float64": invariant_kernels.cache_entries, "bf16": lambda model: None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    prompts = [encode_prompt(tokenizer, text) for text in builtin_prompts()[:16]]
    settings = [(decoder, batch, entries) for batch in (1, 16) for decoder in ("ar", "lossless") for entries in ENTRIES]

    def decode(setting, max_new_tokens=args.max_new_tokens):
        decoder, batch, entries = setting
        invariant_kernels.cache_entries = ENTRIES[entries]
        if batch == 1:
            results = [refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=max_new_tokens)
                       for ids in prompts]
        else:
            results = refusion.generate(model, tokenizer, prompts, decoder=decoder, max_new_tokens=max_new_tokens)
        return SimpleNamespace(tokens=[token for result in results for token in result.tokens],
                               forward_passes=0, counters={})

    for setting in settings:  # warm-up: kernels built, forward costs measured
        decode(setting, 4)
    totals = take_turns(range(args.rounds), settings, lambda setting, _: decode(setting))
    lines = [f"python3 benchmarks/cache_entries.py --threads {args.threads} --rounds {args.rounds} --max-new-tokens "
             f"{args.max_new_tokens}  (bf16, 16 built-in prompts, torch {torch.__version__})",
             "| decoder | batch | cache entries | tokens/s | vs bf16 entries | every text the same |", "|---|---|---|---|---|---|"]
    for decoder, batch, entries in settings:
        total, bf16 = totals[decoder, batch, entries], totals[decoder, batch, "bf16"]
        lines.append(f"| {decoder} | {batch} | {entries} | {total.tokens_per_second:.2f} | "
                     f"{total.tokens_per_second / bf16.tokens_per_second:.3f}x | {total.texts == bf16.texts} |")
    report(lines, args.output)


if __name__ == "__main__":
    main()
