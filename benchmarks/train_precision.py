"""What bf16 mixed precision saves per training step on this machine: one forward and backward of a 135M model.

    OMP_NUM_THREADS=1 python3 benchmarks/train_precision.py > benchmarks/bench/train-precision.txt

refusion-smollm2-135m (merged, every weight trainable), a batch of 8 random sequences of 300 tokens,
float32 against torch.autocast(bfloat16) (what `refusion train --precision bfloat16` runs), alternating,
the first round of each untimed. Prints seconds per step and the ratio.
"""

import statistics
import time

import torch

import refusion


def step_seconds(model, ids, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main():
    model, _ = refusion.load("refusion-smollm2-135m", dtype=torch.float32)
    model.train().requires_grad_(True)
    ids = torch.randint(0, 49000, (8, 300), generator=torch.Generator().manual_seed(0))
    times = {"float32": [], "bfloat16": []}
    for round_ in range(4):
        for name in times:
            seconds = step_seconds(model, ids, bf16=name == "bfloat16")
            if round_:
                times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"threads {torch.get_num_threads()}, batch 8 x 300 tokens, forward + backward, median of 3")
    for name, median in medians.items():
        print(f"  {name}: {median:.1f} s ({', '.join(f'{t:.1f}' for t in times[name])})")
    print(f"  bf16 mixed precision: {medians['float32'] / medians['bfloat16']:.2f}x faster")


if __name__ == "__main__":
    main()
