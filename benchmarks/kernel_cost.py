"""What the invariant kernels cost and what they buy: `ar` and lossless under PyTorch's own kernels and under
the invariant ones, in one process, the four settings taking turns prompt by prompt.

    python3 benchmarks/kernel_cost.py --model refusion-smollm2-135m --threads 2 --max-new-tokens 96 \
        --output benchmarks/bench/kernel-cost.txt

Per setting: tokens/s and its ratio to `ar` under the same kernels, and the prompts whose text equals that
`ar`'s (bf16, greedy). The kernels are switched on the one loaded model (`refusion.invariant_kernels.use`).
"""

import argparse

import torch

import refusion
from refusion.bench import builtin_prompts
from refusion.hardware import set_threads
from refusion.invariant_kernels import use
from refusion.prompting import encode_prompt
from turns import report, take_turns

SETTINGS = [("ar", "native"), ("lossless", "native"), ("ar", "invariant"), ("lossless", "invariant")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    prompts = [encode_prompt(tokenizer, text) for text in builtin_prompts()[: args.limit]]
    for kernels in ("native", "invariant"):  # warm up: kernels built, costs measured, outside the timing
        use(model, kernels)
        for decoder in ("ar", "lossless"):
            refusion.generate(model, tokenizer, prompts[0], decoder=decoder, max_new_tokens=8)

    def decode(setting, ids):
        decoder, kernels = setting
        use(model, kernels)
        return refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=args.max_new_tokens)

    totals = take_turns(prompts, SETTINGS, decode)
    lines = [f"python3 benchmarks/kernel_cost.py --model {args.model} --threads {args.threads} --max-new-tokens "
             f"{args.max_new_tokens} --limit {args.limit}  (bf16, {len(prompts)} built-in prompts, torch {torch.__version__})",
             "| decoder | kernels | tokens/s | vs ar, same kernels | vs ar, native | text identical to ar, same kernels |",
             "|---|---|---|---|---|---|"]
    speed = {setting: total.tokens_per_second for setting, total in totals.items()}
    for decoder, kernels in SETTINGS:
        same = totals[decoder, kernels].identical(totals["ar", kernels])
        lines.append(f"| {decoder} | {kernels} | {speed[decoder, kernels]:.2f} | "
                     f"{speed[decoder, kernels] / speed['ar', kernels]:.2f}x | "
                     f"{speed[decoder, kernels] / speed['ar', 'native']:.2f}x | {same}/{len(prompts)} |")
    report(lines, args.output)


if __name__ == "__main__":
    main()
