"""Which forward widths round alike: the first fed token's logits, computed in forwards of every width 1..N.

On a CPU, PyTorch's bf16 kernels take different paths by the shapes they are given, each with its own
rounding; a token's logits then depend on the width of the forward that computed them, which is why, under
`--kernels native`, a lossless decode (wide verification forwards) and `ar` (one-token forwards) part at
near-ties in bf16. Prints, for each kind of kernels, the classes of widths whose logits are bitwise equal:
under the invariant kernels (`refusion.invariant_kernels`) there is one.

    python3 benchmarks/width_rounding.py --model refusion-smollm2-135m --dtype bfloat16 --threads 2 --widths 64
"""

from __future__ import annotations

import argparse

import torch

import refusion
from refusion import kv_cache
from refusion.attention import rows_mask
from refusion.decoding.runner import ModelRunner
from refusion.invariant_kernels import KERNELS, use


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--widths", type=int, default=64)
    parser.add_argument("--prompt", default="Tell me about the history of Rome in a few sentences.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=getattr(torch, args.dtype))
    for kernels in KERNELS:
        use(model, kernels)
        print(f"{kernels} kernels:")
        report_classes(ModelRunner(model), refusion.encode_prompt(tokenizer, args.prompt), args.widths)


def report_classes(runner: ModelRunner, ids: torch.Tensor, widths: int) -> None:
    context = ids.shape[1] - 1
    logits = {}
    for width in range(1, widths + 1):
        cache = kv_cache.new_cache()
        runner(ids[:, :-1], torch.arange(context)[None], cache, logits_to_keep=1)
        fed = torch.cat([ids[:, -1:], torch.full((1, width - 1), 5)], dim=1)  # the last prompt token, then filler
        mask = rows_mask(torch.zeros(1, context, dtype=torch.bool), torch.ones(width, width).tril().bool()[None],
                         runner.dtype)
        logits[width] = runner(fed, torch.arange(context, context + width)[None], cache, mask,
                               logits_to_keep=torch.arange(width))[0, 0].float()
    classes: list[list[int]] = []
    for width, row in logits.items():
        same = next((c for c in classes if torch.equal(logits[c[0]], row)), None)
        (same.append(width) if same is not None else classes.append([width]))
    for members in classes:
        gap = (logits[members[0]] - logits[1]).abs().max().item()
        print(f"  widths {members[0]}-{members[-1]} ({len(members)}): largest logit difference from width 1: {gap:.4f}")


if __name__ == "__main__":
    main()
