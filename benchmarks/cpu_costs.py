"""What forwards cost on this machine, as the lossless decoder and the batch see it.

1. First forward at a width against the next one at that width (CPU kernels built per input shape);
2. a batch's cost by the tokens each row feeds, relative to one each (`refusion.decoding.runner.width_costs`,
   as the decoder measures it: rows under the additive mask a batch is fed with).

    python3 benchmarks/cpu_costs.py --model refusion-smollm2-135m --threads 1 --rows 1,4,16
"""

from __future__ import annotations

import argparse
import time

import torch

import refusion
from refusion import kv_cache
from refusion.decoding.runner import ModelRunner, width_costs


def first_and_next(runner: ModelRunner, widths: list[int], context: int = 60) -> list[tuple[int, float, float]]:
    """(width, ms of its first forward, ms of the next) after `context` cached tokens."""
    cache = kv_cache.new_cache()
    runner(torch.full((1, context), 7), torch.arange(context)[None], cache, logits_to_keep=1)
    out = []
    for width in widths:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            runner(torch.full((1, width), 7), torch.arange(context, context + width)[None], cache,
                   logits_to_keep=torch.arange(width))
            times.append((time.perf_counter() - started) * 1000)
            kv_cache.truncate(cache, context)
        out.append((width, *times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="1,4,16", help="batch sizes whose costs to measure")
    parser.add_argument("--new-widths", default="13,27,41", help="widths not seen before, each fed twice")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = refusion.load(args.model, dtype=getattr(torch, args.dtype))
    runner = ModelRunner(model)
    print(f"{args.model}, {args.dtype}, {args.threads} thread(s)")
    for width, first, again in first_and_next(runner, [int(w) for w in args.new_widths.split(",")]):
        print(f"width {width}: first forward {first:.2f} ms, the next {again:.2f} ms")
    for rows in (int(r) for r in args.rows.split(",")):
        table = width_costs(model, rows)
        print(f"{rows} row(s): cost by tokens per row, relative to one:",
              " ".join(f"{width}:{cost:.2f}" for width, cost in table.items()))


if __name__ == "__main__":
    main()
