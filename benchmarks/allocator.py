"""What keeping freed memory buys (`refusion.hardware.keep_freed_memory`, which every `refusion` command applies):
`ar` at batch 1 and 16 and lossless at batch 1, with glibc's malloc as it comes and with freed memory kept, each
setting in processes of its own (an allocator is set once per process), the two taking turns round by round.

    python3 benchmarks/allocator.py --threads 2 --rounds 3 --output benchmarks/bench/allocator.txt

Per setting and round: tokens/s, page faults and CPU seconds in the kernel (system) and outside it (user) over
the timed decodes; then the median of each over the rounds, and `ar`'s batch-16 speed over its batch-1 speed.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

RUNS = (("ar", 1), ("ar", 16), ("lossless", 1))


def measure(args) -> dict:
    """In this process: each run's tokens/s, page faults and CPU seconds (system, user)."""
    import torch

    import refusion
    from refusion.bench import builtin_prompts
    from refusion.hardware import keep_freed_memory, set_threads
    from refusion.prompting import encode_prompt

    set_threads(args.threads)
    if args.keep:
        assert keep_freed_memory(), "glibc's malloc only"
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    prompts = [encode_prompt(tokenizer, text) for text in builtin_prompts()[:args.batch]]
    for decoder, rows in RUNS:  # kernels built and widths timed outside the timing
        refusion.generate(model, tokenizer, prompts[:rows] if rows > 1 else prompts[0], decoder=decoder,
                          max_new_tokens=8)
    results = {}
    for decoder, rows in RUNS:
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        if rows > 1:
            outputs = refusion.generate(model, tokenizer, prompts[:rows], decoder=decoder,
                                        max_new_tokens=args.max_new_tokens)
        else:
            outputs = [refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=args.max_new_tokens)
                       for ids in prompts[:args.alone]]
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
        results[f"{decoder} batch {rows}"] = {
            "tokens_per_second": sum(len(output.tokens) for output in outputs) / seconds,
            "page_faults": after.ru_minflt - before.ru_minflt,
            "system_seconds": after.ru_stime - before.ru_stime,
            "user_seconds": after.ru_utime - before.ru_utime}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="prompts of the batched run")
    parser.add_argument("--alone", type=int, default=16, help="prompts decoded one at a time (the batch's first)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--output", default=None)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the child process's setting
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    settings = {"as it comes": [], "freed memory kept": []}
    for round_ in range(args.rounds):
        for setting, rounds in settings.items():
            command = [sys.executable, __file__, "--child", "--model", args.model, "--threads", args.threads,
                       "--batch", str(args.batch), "--alone", str(args.alone), "--max-new-tokens",
                       str(args.max_new_tokens)] + (["--keep"] if setting == "freed memory kept" else [])
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            rounds.append(json.loads(output.strip().splitlines()[-1]))
            print(f"round {round_ + 1}/{args.rounds}, {setting}: "
                  + ", ".join(f"{run} {values['tokens_per_second']:.1f} tok/s, {values['page_faults']} faults"
                              for run, values in rounds[-1].items()), flush=True)
    lines = [f"python3 benchmarks/allocator.py --threads {args.threads} --rounds {args.rounds} --batch {args.batch} "
             f"--alone {args.alone} --max-new-tokens {args.max_new_tokens}  ({args.model}, bf16)",
             "| malloc | run | tokens/s | page faults | system s | user s |", "|---|---|---|---|---|---|"]
    for setting, rounds in settings.items():
        for run in rounds[0]:
            median = {key: statistics.median(r[run][key] for r in rounds) for key in rounds[0][run]}
            lines.append(f"| {setting} | {run} | {median['tokens_per_second']:.1f} | {median['page_faults']:.0f} | "
                         f"{median['system_seconds']:.2f} | {median['user_seconds']:.2f} |")
    for setting, rounds in settings.items():
        ratios = [r["ar batch 16"]["tokens_per_second"] / r["ar batch 1"]["tokens_per_second"] for r in rounds]
        lines.append(f"\n{setting}: ar batch 16 / batch 1, by round: " + ", ".join(f"{x:.2f}x" for x in ratios))
    from turns import report

    report(lines, args.output)


if __name__ == "__main__":
    main()
