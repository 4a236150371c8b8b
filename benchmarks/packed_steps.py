"""A batch's steps under the invariant attention: its rows side by side, padded to the widest, against laid end to
end in one row (`refusion.invariant_kernels.packs`), in one process, the two taking turns round by round.

    python3 benchmarks/packed_steps.py --threads 1 --rounds 5 --max-new-tokens 48 --output benchmarks/bench/packed-steps.txt

For `ar` and lossless at batch 16 (the first 16 bench prompts), medians over the rounds of: the first forward's
ms and the tokens it fed (every prompt whole); the later forwards' ms and mean tokens fed (a token a running row
for `ar`; lossless rows add their drafts); the whole decode's tokens/s. Every text must be the same either way.
"""

import argparse
import statistics
import time

import torch

import refusion
from refusion import invariant_kernels
from refusion.bench import builtin_prompts
from refusion.decoding import runner as runners
from refusion.files import write_text
from refusion.hardware import keep_freed_memory, set_threads
from refusion.prompting import encode_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    keep_freed_memory()
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    prompts = [encode_prompt(tokenizer, text) for text in builtin_prompts()[:16]]
    forwards = []  # (tokens fed, seconds) of each forward of the last decode
    forward = runners.ModelRunner.__call__

    def timed(self, ids, *rest, **named):
        started = time.perf_counter()
        logits = forward(self, ids, *rest, **named)
        forwards.append((ids.numel(), time.perf_counter() - started))
        return logits

    runners.ModelRunner.__call__ = timed
    packs = invariant_kernels.packs
    settings = {"padded": lambda model: False, "packed": packs}

    def run(decoder, setting, max_new_tokens):
        invariant_kernels.packs = settings[setting]
        forwards.clear()
        started = time.perf_counter()
        texts = [g.tokens for g in refusion.generate(model, tokenizer, prompts, decoder=decoder,
                                                     max_new_tokens=max_new_tokens)]
        seconds = time.perf_counter() - started
        later = forwards[1:]
        return texts, dict(first_tokens=forwards[0][0], first_ms=1000 * forwards[0][1],
                           later_ms=1000 * statistics.median(s for _, s in later),
                           later_tokens=statistics.mean(n for n, _ in later), forwards=len(forwards),
                           tokens_per_second=sum(map(len, texts)) / seconds)

    for decoder in ("ar", "lossless"):  # warm-up: kernels built per shape, batch costs measured
        for setting in settings:
            run(decoder, setting, 4)
    measured, texts = {}, {}
    for _ in range(args.rounds):
        for decoder in ("ar", "lossless"):
            for setting in settings:
                tokens, seen = run(decoder, setting, args.max_new_tokens)
                measured.setdefault((decoder, setting), []).append(seen)
                texts.setdefault((decoder, setting), tokens)
    median = {key: {name: statistics.median(seen[name] for seen in runs) for name in runs[0]}
              for key, runs in measured.items()}
    lines = [f"python3 benchmarks/packed_steps.py --threads {args.threads} --rounds {args.rounds} --max-new-tokens "
             f"{args.max_new_tokens}  (bf16, 16 built-in prompts of {sum(ids.numel() for ids in prompts)} tokens, "
             f"batch 16, torch {torch.__version__}; medians of {args.rounds} rounds)",
             "| decoder | steps | first forward: tokens fed / ms | later forwards: mean tokens fed / ms | forwards | "
             "tokens/s | vs padded | vs `ar` alike |",
             "|---|---|---|---|---|---|---|---|"]
    for (decoder, setting), seen in median.items():
        padded, ar = median[decoder, "padded"], median["ar", setting]
        lines.append(f"| {decoder} | {setting} | {seen['first_tokens']:.0f} / {seen['first_ms']:.1f} | "
                     f"{seen['later_tokens']:.1f} / {seen['later_ms']:.1f} | {seen['forwards']:.0f} | "
                     f"{seen['tokens_per_second']:.2f} | {seen['tokens_per_second'] / padded['tokens_per_second']:.2f}x | "
                     f"{seen['tokens_per_second'] / ar['tokens_per_second']:.2f}x |")
    same = all(texts[decoder, "padded"] == texts[decoder, "packed"] for decoder in ("ar", "lossless"))
    lossless_is_ar = all(texts["lossless", setting] == texts["ar", setting] for setting in settings)
    lines.append(f"every text the same either way: {same}; lossless's the same as `ar`'s: {lossless_is_ar}")
    report = "\n".join(lines)
    print(report)
    if args.output:
        write_text(args.output, report + "\n")


if __name__ == "__main__":
    main()
