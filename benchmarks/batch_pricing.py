"""How lossless batch rows price their lookup and table drafts: by the chance their tokens agree with the AR head
(`DraftChance`, now) or by a geometric guess from what drafts added beyond the mask chains (before `ce14da6`).

In one process, `ar` and both pricings take turns, round by round, on the same prompts in batches of --batch-size,
each starting from the priors (`lossless.forget`). Prints tokens/s, the ratio to `ar`, tokens per forward (a
row's tokens over the forwards it took part in) and whether every text equals `ar`'s.

    python3 benchmarks/batch_pricing.py --batch-size 16 --rounds 3 --threads 2 --output benchmarks/bench/batch-pricing.txt
"""

from __future__ import annotations

import argparse
import time

import torch

import refusion
from refusion.bench.prompts import builtin_prompts
from refusion.decoding import lossless
from refusion.decoding.batching import Spare
from refusion.files import write_text


def geometric_spare(self, drafts, b, d, cost):
    """The pricing before: a draft's tokens accepted one after another with a constant chance q, q / (1 - q) being
    what drafts of its source and match added beyond the mask chains on average."""
    gains = []
    for j, draft in enumerate(drafts):
        mean = max(draft.gain.mean(draft.match), 0.0)
        chance = mean / (1 + mean)
        gains += [(chance ** (i + 1), j) for i in range(len(draft.tokens))]
    gains.sort(key=lambda gain: -gain[0])
    self.spare_drafts, self.spare_order = drafts, [j for _, j in gains]
    return Spare(self.shape.expected(b, d), [gain for gain, _ in gains], cost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=16, help="built-in prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)

    def ids(prompt: str) -> list[int]:
        out = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return list(out if isinstance(out, list) else out["input_ids"])

    prompts = [ids(prompt) for prompt in builtin_prompts()[: args.limit]]
    groups = [prompts[i:i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    chance_spare = lossless.LosslessRow._spare
    settings = {"ar": ("ar", None), "lossless, geometric pricing (before)": ("lossless", geometric_spare),
                "lossless, chance pricing (now)": ("lossless", chance_spare)}
    refusion.generate(model, tokenizer, groups[0], decoder="lossless", max_new_tokens=8)  # warm-up, cost calibration
    seconds = dict.fromkeys(settings, 0.0)
    tokens, forwards, texts = dict.fromkeys(settings, 0), dict.fromkeys(settings, 0), {}
    try:
        for _ in range(args.rounds):
            for name, (decoder, spare) in settings.items():
                if spare is not None:
                    lossless.LosslessRow._spare = spare
                lossless.forget(model)
                for group in groups:
                    started = time.perf_counter()
                    generations = refusion.generate(model, tokenizer, group, decoder=decoder,
                                                    max_new_tokens=args.max_new_tokens)
                    seconds[name] += time.perf_counter() - started
                    tokens[name] += sum(len(g.tokens) for g in generations)
                    forwards[name] += sum(g.forward_passes for g in generations)
                    texts.setdefault(name, []).append([list(g.tokens) for g in generations])
    finally:
        lossless.LosslessRow._spare = chance_spare
    ar_speed = tokens["ar"] / seconds["ar"]
    lines = [f"{args.model}, bf16, {args.threads} thread(s), batches of {args.batch_size}, {len(prompts)} prompts, "
             f"at most {args.max_new_tokens} tokens, {args.rounds} rounds", "",
             "| setting | tokens/s | vs ar | tokens/forward | texts equal to ar |", "|---|---|---|---|---|"]
    for name in settings:
        speed = tokens[name] / seconds[name]
        lines.append(f"| {name} | {speed:.2f} | {speed / ar_speed:.2f}x | {tokens[name] / forwards[name]:.2f} | "
                     f"{'yes' if texts[name] == texts['ar'] else 'NO'} |")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.output:
        command = (f"$ python3 benchmarks/batch_pricing.py --batch-size {args.batch_size} --rounds {args.rounds} "
                   f"--threads {args.threads} --output {args.output}\n")
        write_text(args.output, command + report)


if __name__ == "__main__":
    main()
