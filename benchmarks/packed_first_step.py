"""A batch's first step under the invariant attention: the 16 bench prompts padded to the longest, one row each,
against laid end to end in one row, each attending to itself alone (`refusion.invariant_kernels.packed`), in one
process, the two taking turns round by round.

    python3 benchmarks/packed_first_step.py --threads 1 --rounds 5 --max-new-tokens 32 --output benchmarks/bench/packed-first-step.txt

Reports, for `ar` and lossless, the median over the rounds of the first forward's ms (and the tokens it fed) and of
the later forwards' median ms (which the first step's layout must leave alone), and whether every text is the
same either way (it must be).
"""

import argparse
import statistics
import time

import torch

import refusion
from refusion import invariant_kernels
from refusion.bench import builtin_prompts
from refusion.decoding import runner as runners
from refusion.hardware import keep_freed_memory, set_threads
from refusion.prompting import encode_prompt
from turns import report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
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
        texts = [g.tokens for g in refusion.generate(model, tokenizer, prompts, decoder=decoder,
                                                     max_new_tokens=max_new_tokens)]
        return texts, (forwards[0][0], forwards[0][1], statistics.median(s for _, s in forwards[1:]))

    for decoder in ("ar", "lossless"):  # warm-up: kernels built per shape
        for setting in settings:
            run(decoder, setting, 2)
    measured, texts = {}, {}
    for _ in range(args.rounds):
        for decoder in ("ar", "lossless"):
            for setting in settings:
                tokens, seen = run(decoder, setting, args.max_new_tokens)
                measured.setdefault((decoder, setting), []).append(seen)
                texts.setdefault((decoder, setting), tokens)
    lines = [f"python3 benchmarks/packed_first_step.py --threads {args.threads} --rounds {args.rounds} --max-new-tokens "
             f"{args.max_new_tokens}  (bf16, 16 "
             f"built-in prompts of {sum(ids.shape[1] for ids in prompts)} tokens, batch 16, torch {torch.__version__})",
             "| decoder | first step | tokens fed | ms | later forwards, ms |", "|---|---|---|---|---|"]
    for (decoder, setting), seen in measured.items():
        lines.append(f"| {decoder} | {setting} | {seen[0][0]} | {1000 * statistics.median(s[1] for s in seen):.1f} | "
                     f"{1000 * statistics.median(s[2] for s in seen):.1f} |")
    same = all(texts[decoder, "padded"] == texts[decoder, "packed"] for decoder in ("ar", "lossless"))
    lines.append(f"every text the same either way: {same}")
    report(lines, args.output)


if __name__ == "__main__":
    main()
