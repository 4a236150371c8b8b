"""What a model offers lossless decoding: its forward cost by width, and how often its mask head guesses right.

    python3 benchmarks/model_probe.py --model refusion-smollm2-135m --dtype bfloat16 --threads 2

1. Forward cost by the number of new tokens fed, relative to one token (refusion's own measurement,
   `refusion.decoding.runner.width_costs`: a 128-token context, the median of three).
2. Draft accuracy: along each prompt's greedy `ar` text, at every second position T, the text so far
   is fed with three masks after it; for the mask at distance d (1 = the next token) it counts how
   often the AR text's token there is among the mask head's top-k guesses.
"""

import argparse
import json

import torch

import refusion
from refusion.bench import builtin_prompts
from refusion.bench.prompts import read_prompts
from refusion.decoding.runner import width_costs
from refusion.hardware import resolve_dtype, set_threads

TOPK = (1, 2, 4, 8)


def draft_accuracy(model, tokenizer, prompts, max_new_tokens, distances=3):
    mask = model.config.mask_token_id
    hits = {(d, k): 0 for d in range(distances) for k in TOPK}
    count = 0
    for prompt in prompts:
        ids = refusion.encode_prompt(tokenizer, prompt)
        text = refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=max_new_tokens).tokens
        seq = torch.cat([ids[0], torch.tensor(text, dtype=torch.long)])
        for T in range(ids.shape[1], len(seq) - distances, 2):
            fed = torch.cat([seq[:T], torch.full((distances,), mask)]).unsqueeze(0)
            with torch.no_grad():
                logits = model(input_ids=fed).logits[0, -distances:].float()
            logits[:, mask] = float("-inf")
            top = logits.topk(max(TOPK)).indices
            count += 1
            for d in range(distances):
                for k in TOPK:
                    hits[(d, k)] += int(seq[T + d]) in top[d, :k].tolist()
    return {d + 1: {k: hits[(d, k)] / count for k in TOPK} for d in range(distances)}, count


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--prompts", type=int, default=16, help="how many prompts draft accuracy reads (the first N)")
    parser.add_argument("--prompts-file", default=None,
                        help='{"prompt": ...} lines to read instead of the built-in prompts, e.g. the training distribution')
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line, last")
    args = parser.parse_args()
    set_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=resolve_dtype(args.dtype))
    costs = width_costs(model)
    print(f"{args.model}, {model.dtype}: forward cost by tokens fed, relative to one token")
    print("  " + "  ".join(f"{w}: {c:.2f}x" for w, c in costs.items()))
    prompts = read_prompts(args.prompts_file) if args.prompts_file else builtin_prompts()
    accuracy, count = draft_accuracy(model, tokenizer, prompts[: args.prompts], args.max_new_tokens)
    print(f"mask-head guesses right, over {count} positions (distance 1 = the next token)")
    for distance, by_k in accuracy.items():
        print(f"  distance {distance}: " + "  ".join(f"top-{k} {share:.2f}" for k, share in by_k.items()))
    if args.json:
        print(json.dumps({"model": args.model, "prompts": args.prompts_file or "built-in",
                          "dtype": str(model.dtype).removeprefix("torch."), "positions": count,
                          "forward_cost": {str(w): round(c, 3) for w, c in costs.items()},
                          "draft_accuracy": {str(d): {f"top{k}": round(v, 4) for k, v in by_k.items()}
                                             for d, by_k in accuracy.items()}}))


if __name__ == "__main__":
    main()
