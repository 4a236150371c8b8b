"""What packed forwards of many widths leave in a process's memory, with and without filling them up to a few widths.

The server's joins (and a batch's first step) feed several prompts laid end to end in one forward: its width is
the sum of their lengths, a new one almost every time. CPU kernels and the allocator keep what they built for each
shape. This feeds --packs packs of 2-6 random prompts of 20-60 tokens (`runner.cache_prefixes`, the join's own
call) and prints the process's RSS every 50 packs, once filled up to `packed_width` and once at the sums (each in a
process of its own, freed memory kept as every command keeps it).

    python3 benchmarks/packed_widths.py --output benchmarks/bench/packed-widths.txt
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys

import torch

REPORT_EVERY = 50


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def feed(model_name: str, packs: int, fill: bool) -> list[tuple[int, float]]:
    import refusion
    from refusion import hardware
    from refusion.decoding import runner as runners

    torch.set_num_threads(1)
    hardware.keep_freed_memory()
    model, _ = refusion.load(model_name, dtype=torch.bfloat16)
    if not fill:
        runners.PACKED_STEP = (0, 1, 1)
    runner = runners.ModelRunner(model)
    rng = random.Random(0)
    samples = []
    for index in range(packs + 1):
        prefixes = [[rng.randint(10, 1000) for _ in range(rng.randint(20, 60))] for _ in range(rng.randint(2, 6))]
        runners.cache_prefixes(runner, prefixes, [0] * len(prefixes))
        if index % REPORT_EVERY == 0:
            samples.append((index, rss_mb()))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--packs", type=int, default=300)
    parser.add_argument("--output")
    parser.add_argument("--fill", choices=("on", "off"), help=argparse.SUPPRESS)  # one side, in a process of its own
    args = parser.parse_args()
    if args.fill:
        print(" ".join(f"{index}:{rss:.0f}" for index, rss in feed(args.model, args.packs, args.fill == "on")))
        return
    lines = [f"$ python3 benchmarks/packed_widths.py{f' --output {args.output}' if args.output else ''}",
             f"{args.model}, bf16, {args.packs} packs of 2-6 random prompts of 20-60 tokens; RSS MB after each "
             f"{REPORT_EVERY} packs"]
    for fill in ("on", "off"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--packs", str(args.packs), "--fill",
                              fill], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        lines.append(f"filled to packed_width: {'yes' if fill == 'on' else 'no '}  {out}")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.output:
        from refusion.files import write_text

        write_text(args.output, report)


if __name__ == "__main__":
    main()
