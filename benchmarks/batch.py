"""Aggregate tokens/second of decoders at batch 1 against larger batches, in one process.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch.py                      # ar, 16 prompts, 48 tokens, bf16, batch 1 and 16
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch.py --batch-sizes 1,4,16 --dtype float32
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch.py --decoders ar,lossless --batch-sizes 1,4,16

The first N built-in bench prompts go through the chat template; for each decoder, each batch size
decodes all of them greedily (N/b calls of `refusion.generate` with b prompts each) after an untimed warm-up.
Aggregate tokens/s = all new tokens / wall time of all calls. Also printed: the model forwards the
batches ran (each batched forward once) against the forwards the rows would take alone, and how
many rows wrote exactly the tokens they write at batch 1 (and, for other decoders, the tokens `ar` writes at batch 1). In float32 every row does; in bfloat16
the CPU's matrix kernels round differently by batch size, so a near-tie can go the other way and
the text part ways.
Other work on the machine skews the numbers badly with 2+ threads: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import refusion
from refusion.bench.prompts import builtin_prompts


def run(model, tokenizer, prompts: list[torch.Tensor], decoder: str, batch_size: int, max_new_tokens: int) -> dict:
    generations, batch_forwards = [], 0
    started = time.perf_counter()
    for start in range(0, len(prompts), batch_size):
        chunk = [ids[0] for ids in prompts[start : start + batch_size]]
        results = refusion.generate(model, tokenizer, chunk, decoder=decoder, max_new_tokens=max_new_tokens)
        generations += results
        batch_forwards += sum(count for count, _ in results[0].forward_profile.values())
    seconds = time.perf_counter() - started
    tokens = sum(g.new_tokens for g in generations)
    return {"decoder": decoder, "batch_size": batch_size, "prompts": len(prompts), "new_tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_second": round(tokens / seconds, 2), "forwards": batch_forwards,
            "row_forwards": sum(g.forward_passes for g in generations), "tokens": [g.tokens for g in generations]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--prompts", type=int, default=16, help="how many built-in prompts (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated, first one is the reference")
    parser.add_argument("--decoders", default="ar", help="comma-separated (default ar); ar, if given, first")
    args = parser.parse_args()

    model, tokenizer = refusion.load(args.model, dtype=getattr(torch, args.dtype), device=args.device)
    prompts = [refusion.encode_prompt(tokenizer, text) for text in builtin_prompts()[: args.prompts]]
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    decoders = args.decoders.split(",")
    for decoder in decoders:
        for size in sizes:  # untimed: each batch's first step (CPU kernels are built per input shape)
            run(model, tokenizer, prompts, decoder, size, 2)
    results = [run(model, tokenizer, prompts, decoder, size, args.max_new_tokens) for decoder in decoders for size in sizes]
    print(f"{args.model} {args.dtype}, {len(prompts)} prompts, {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'decoder':>9} {'batch':>5} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs b1':>6} {'vs ar':>6} "
          f"{'forwards':>9} {'row fwd':>8} {'same as b1':>10} {'same as ar':>10}")
    first = {}
    ar = {result["batch_size"]: result for result in results if result["decoder"] == "ar"}
    for result in results:
        reference = first.setdefault(result["decoder"], result)
        same = sum(a == b for a, b in zip(result["tokens"], reference["tokens"]))
        result["rows_same_as_first"] = same
        result["speedup_vs_first"] = round(result["tokens_per_second"] / reference["tokens_per_second"], 2)
        ar_row = ar.get(result["batch_size"])
        result["speedup_vs_ar"] = round(result["tokens_per_second"] / ar_row["tokens_per_second"], 2) if ar_row else None
        same_ar = sum(a == b for a, b in zip(result["tokens"], ar[sizes[0]]["tokens"])) if ar else None
        result["rows_same_as_ar_first"] = same_ar
        print(f"{result['decoder']:>9} {result['batch_size']:>5} {result['new_tokens']:>7} {result['seconds']:>8.2f} "
              f"{result['tokens_per_second']:>9.1f} {result['speedup_vs_first']:>5.2f}x "
              f"{result['speedup_vs_ar'] or float('nan'):>5.2f}x {result['forwards']:>9} {result['row_forwards']:>8} "
              f"{same:>7}/{len(prompts)} {'-' if same_ar is None else f'{same_ar}/{len(prompts)}':>10}")
    print(json.dumps([{key: value for key, value in r.items() if key != "tokens"} for r in results]))


if __name__ == "__main__":
    main()
