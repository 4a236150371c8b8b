"""How often a forward that may commit every selected slot does, in the paper's mode: the priors of `Rides`.

    python3 benchmarks/ride_rates.py --model refusion-smollm2-135m --dtype bfloat16 --threads 2 \
        --output benchmarks/bench/ride-rates.txt

Decodes the built-in bench prompts with `--decoder refusion` at its defaults (`rides="always"`, so every such
forward carries the next plan) and counts, by the situation `refusion.decoding.plan_infill.Rides` tells apart,
how many of those forwards committed every selected slot: a global verification first in its decode, after one
that committed all its drafts or after one that did not; a completion round by the most tokens a slot still
needed (1: sure, 2, 3 or more). A riding plan pays where that chance, times a plan forward's cost, exceeds what
its masks add to the forward (`python3 benchmarks/cpu_costs.py` for this CPU's costs by width).
"""

import argparse
from collections import Counter

import torch

import refusion
from refusion.bench import builtin_prompts
from refusion.decoding import plan_infill
from refusion.hardware import resolve_dtype, set_threads
from refusion.prompting import encode_prompt
from turns import report

committed, seen = Counter(), Counter()


class CountingRides(plan_infill.Rides):
    """`Rides` that also adds what each decode learns to the totals above."""

    def learn(self, situation, committed_everything):
        super().learn(situation, committed_everything)
        committed[situation] += committed_everything
        seen[situation] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=None, help="first N built-in prompts (default: all)")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    args = parser.parse_args()
    set_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=resolve_dtype(args.dtype))
    plan_infill.Rides = CountingRides
    prompts = builtin_prompts()[: args.limit]
    with torch.no_grad():
        for prompt in prompts:
            refusion.generate(model, tokenizer, encode_prompt(tokenizer, prompt), decoder="refusion",
                              max_new_tokens=args.max_new_tokens, rides="always")
    lines = [f"{args.model}, {args.dtype}, {len(prompts)} built-in prompts, at most {args.max_new_tokens} new tokens, "
             "--decoder refusion at its defaults (rides=always)", "",
             "| situation | forwards | committed every slot | chance | prior in plan_infill.RIDE_PRIORS |",
             "|---|---|---|---|---|"]
    for situation in sorted(seen, key=str):
        prior = plan_infill.RIDE_PRIORS.get(situation, 1.0)
        lines.append(f"| {situation} | {seen[situation]} | {committed[situation]} | "
                     f"{committed[situation] / seen[situation]:.2f} | {prior} |")
    report(lines, args.output)


if __name__ == "__main__":
    main()
