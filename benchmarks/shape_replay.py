"""Replay the lossless decoder's choices under fixed forward costs: its tokens per unit of modelled cost.

The lossless decoder picks its tree (branches, depth, drafts) from a forward-cost table it measures once per
model; timings on a shared machine drift, so two policies are hard to compare by tokens/s. Here the decoder
decides with a given table (as if it had measured it), the texts are decoded for real (greedy, bf16, one
thread), and every forward narrower than the prompt (all but the prompt's own, which `ar` pays too) is
charged at a second, fixed table: the mean ms per forward by tokens fed of the lossless row of a bench run
(`--charge`, default the quiet 2-thread run in `benchmarks/bench/smollm2-bf16/bench.json`), relative to one
token. The result is deterministic for a given model and set of prompts.

    python3 benchmarks/shape_replay.py                                  # the default policy, deciding with the charged costs
    python3 benchmarks/shape_replay.py --decide-costs 1:1,2:1.05,4:1.1,8:1.25,16:1.4,32:1.8,64:2.8 \\
        --variants '{"no margin": {"constants": {"PLAIN_MARGIN": 0}}, "default": {}}'

`--variants` maps a name to `options` (keyword arguments of `refusion.generate`) and `constants` (module
constants of `refusion.decoding.lossless` set for that variant).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

import refusion
from refusion.bench.prompts import builtin_prompts, read_prompts
from refusion.decoding import lossless
from refusion.decoding.runner import interpolate_cost
from refusion.prompting import encode_prompt


def costs(text: str) -> dict[int, float]:
    return {int(width): float(cost) for width, cost in (item.split(":") for item in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--prompts", help="a {\"prompt\": ...} JSONL file (default: the built-in bench prompts)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--decide-costs", help="WIDTH:COST,... the decoder decides with (default: the charged costs)")
    parser.add_argument("--charge", default="benchmarks/bench/smollm2-bf16/bench.json",
                        help="a bench.json whose lossless row's ms per forward by width the forwards are charged at")
    parser.add_argument("--variants", default='{"default": {}}')
    args = parser.parse_args()

    torch.set_num_threads(1)
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    with open(args.charge) as file:
        row = next(row for row in json.load(file)["rows"] if row["label"] == "lossless")
    ms = {int(width): value for width, value in row["forward_ms_by_width"].items() if int(width) <= 20}
    charge = {width: value / ms[1] for width, value in ms.items()}
    prompts = read_prompts(args.prompts) if args.prompts else builtin_prompts()
    encoded = [encode_prompt(tokenizer, prompt, chat=True) for prompt in prompts[: args.limit]]
    for name, variant in json.loads(args.variants).items():
        saved = {key: getattr(lossless, key) for key in variant.get("constants", {})}
        for key, value in variant.get("constants", {}).items():
            setattr(lossless, key, value)
        decide = costs(args.decide_costs) if args.decide_costs else charge
        model._refusion_width_costs = {("cpu", torch.bfloat16): decide}
        lossless.forget(model)
        tokens = forwards = 0
        cost = 0.0
        by_width: collections.Counter = collections.Counter()
        for ids in encoded:
            result = refusion.generate(model, tokenizer, ids, decoder="lossless", max_new_tokens=args.max_new_tokens,
                                       **variant.get("options", {}))
            tokens, forwards = tokens + len(result.tokens), forwards + result.forward_passes
            for width, (count, _) in result.forward_profile.items():
                by_width[int(width)] += count
            cost += sum(count * interpolate_cost(charge, int(width))
                        for width, (count, _) in result.forward_profile.items() if int(width) < ids.shape[1])
        for key, value in saved.items():
            setattr(lossless, key, value)
        print(f"{name}: tokens/forward {tokens / forwards:.3f}, tokens per unit of cost {tokens / cost:.3f}, "
              f"one-token forwards {by_width[1]} of {forwards}", flush=True)


if __name__ == "__main__":
    main()
