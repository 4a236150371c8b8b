"""What a long prompt costs under each kind of kernel: one prefill forward by prompt length (PyTorch's attention
against float64), then seconds per request (prefill and a few tokens) for each decoder, in one process, the
settings taking turns.

    python3 benchmarks/long_prompt.py --threads 2 --output benchmarks/bench/long-prompt.txt

Settings: PyTorch's own kernels (`native`); the invariant kernels, where a prompt of
`invariant_kernels.LONG_PREFIX` tokens or more is cached apart under PyTorch's attention (`invariant`, the
default); and the invariant kernels with every prompt fed in float64 (`invariant, float64 prefill`: how they
were before prompts were cached apart). The prompt is "word " repeated (as `benchmarks/load_test.py`'s bounded
requests); each row also says whether its text equals the `invariant` row's `ar` text.
"""

import argparse
import time

import torch

import refusion
from refusion import invariant_kernels, kv_cache
from refusion.decoding.runner import ModelRunner
from refusion.files import write_text
from refusion.hardware import set_threads

SETTINGS = ("native", "invariant", "invariant, float64 prefill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--prefills", default="64,128,256,512,1024,3000",
                        help="prompt lengths, in tokens, of the prefill table")
    parser.add_argument("--words", default="250,1000,3000", help="prompt lengths, in repeated words")
    parser.add_argument("--decoders", default="ar,lossless,refusion,mdm,fast-dllm")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    decoders = args.decoders.split(",")
    long_prefix = invariant_kernels.LONG_PREFIX
    for setting in SETTINGS:  # warm-up: kernels chosen, forward costs measured, outside the timing
        _use(model, setting, long_prefix)
        for decoder in decoders:
            refusion.generate(model, tokenizer, tokenizer("Hello there.")["input_ids"], decoder=decoder, max_new_tokens=4)
    lines = [f"python3 benchmarks/long_prompt.py --threads {args.threads} --prefills {args.prefills} --words "
             f"{args.words} --decoders {args.decoders} --max-new-tokens {args.max_new_tokens}  ({args.model}, bf16, "
             f"torch {torch.__version__}; prompts of {long_prefix}+ tokens cached apart)", "",
             "One forward over a prompt, fastest of three (ms):", "",
             "| prompt tokens | PyTorch's attention | float64 attention | float64 / PyTorch's |", "|---|---|---|---|"]
    for tokens in map(int, args.prefills.split(",")):
        native, float64 = (_prefill_ms(model, tokens, kernels) for kernels in ("native", "invariant"))
        lines.append(f"| {tokens} | {native:.0f} | {float64:.0f} | {float64 / native:.2f}x |")
        print(lines[-1], flush=True)
    lines += ["", "Seconds per request:", "",
              "| prompt tokens | decoder | " + " | ".join(f"{s} s" for s in SETTINGS) + " | settings whose text equals the invariant `ar` text |",
              "|---|---|" + "---|" * len(SETTINGS) + "---|"]
    for words in map(int, args.words.split(",")):
        ids = tokenizer("word " * words)["input_ids"]
        reference = None
        for decoder in decoders:
            seconds, texts = {}, {}
            for setting in SETTINGS:
                _use(model, setting, long_prefix)
                started = time.perf_counter()
                result = refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=args.max_new_tokens)
                seconds[setting], texts[setting] = time.perf_counter() - started, result.tokens
            reference = texts["invariant"] if decoder == "ar" else reference
            equal = ", ".join(s for s in SETTINGS if reference is not None and texts[s] == reference) or "none"
            lines.append(f"| {len(ids)} | {decoder} | " + " | ".join(f"{seconds[s]:.2f}" for s in SETTINGS) +
                         f" | {equal} |")
            print(lines[-1], flush=True)
    invariant_kernels.LONG_PREFIX = long_prefix
    report = "\n".join(lines)
    print(report)
    if args.output:
        write_text(args.output, report + "\n")


def _prefill_ms(model, tokens: int, kernels: str) -> float:
    """One forward over `tokens` prompt tokens from an empty cache, as a decoder's first forward feeds them."""
    invariant_kernels.use(model, kernels)
    runner = ModelRunner(model)
    ids, positions = torch.full((1, tokens), 1000), torch.arange(tokens)[None]
    fastest = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        runner(ids, positions, kv_cache.new_cache(), logits_to_keep=1)
        fastest = min(fastest, time.perf_counter() - started)
    return fastest * 1000


def _use(model, setting: str, long_prefix: int) -> None:
    invariant_kernels.use(model, setting.split(",")[0])
    invariant_kernels.LONG_PREFIX = long_prefix if setting == "invariant" else 10**9


if __name__ == "__main__":
    main()
