"""Peak memory of the paper's mode against the number of slots completed in parallel.

    python3 benchmarks/slot_memory.py [--model refusion-smollm2-135m] [--prompt-tokens 1500] [--slots 1,2,4,8,16]

All n slots of one block are selected at once (slot threshold 0) after a long prompt, so that the
prompt's KV cache dominates: a copy of it per slot would add n times its size. Each n runs in a fresh
process (an allocator keeps memory it freed, which would hide growth), loads the model, prefills a
warm-up, then reports the peak resident memory during the decode above the resident memory before it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def measure(model_name: str, prompt_tokens: int, slots: int, dtype: str) -> dict:
    import torch

    import refusion
    from refusion.bench.runner import PeakMemory

    torch.set_num_threads(1)
    model, tokenizer = refusion.load(model_name, dtype=dtype)
    words = ("the quick brown fox jumps over the lazy dog " * prompt_tokens).split()
    ids = tokenizer(" ".join(words), return_tensors="pt").input_ids[:, :prompt_tokens]
    config = model.config
    heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache_mb = 2 * config.num_hidden_layers * heads * head_dim * ids.shape[1] * model.dtype.itemsize / 2**20
    options = {"decoder": "refusion", "slot_size": 4, "blocks": 1, "max_new_tokens": 4 * slots,
               "slot_threshold": 0.0, "token_threshold": 0.0}
    refusion.generate(model, tokenizer, ids[:, :64], **options)  # warm-up: kernels, allocator pools
    before = PeakMemory._rss_mb()
    with PeakMemory(torch.device("cpu")) as memory:
        result = refusion.generate(model, tokenizer, ids, **options)
    return {"slots": slots, "prompt_tokens": int(ids.shape[1]), "prompt_cache_mb": round(cache_mb, 1),
            "peak_above_start_mb": round(memory.peak_mb - before, 1), "forwards": result.forward_passes,
            "new_tokens": len(result.tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--prompt-tokens", type=int, default=1500)
    parser.add_argument("--slots", default="1,2,4,8,16")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: one measurement
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, args.prompt_tokens, args.one, args.dtype)))
        return
    print("| slots in parallel | prompt tokens | prompt KV cache (MB) | peak above start (MB) | forwards |")
    print("|---|---|---|---|---|")
    for slots in (int(part) for part in args.slots.split(",")):
        child = subprocess.run([sys.executable, __file__, "--model", args.model, "--prompt-tokens",
                                str(args.prompt_tokens), "--dtype", args.dtype, "--one", str(slots)],
                               capture_output=True, text=True, check=True)
        row = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"| {row['slots']} | {row['prompt_tokens']} | {row['prompt_cache_mb']} | {row['peak_above_start_mb']} "
              f"| {row['forwards']} |", flush=True)


if __name__ == "__main__":
    main()
