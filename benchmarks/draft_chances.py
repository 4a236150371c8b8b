"""How often lookup and draft-table drafts agree with the AR head, by source and match length.

Decodes the prompts with `ar` (greedy), then walks each text: at every position, the draft the
lossless decoder would take from the text so far (`NgramIndex`) and from the model's draft table,
and whether its first token is the text's next one, and each later one given the ones before were.
What a draft's first token is worth where nothing else is fed beside it, as in a batch of 16 rows
(`benchmarks/batch_pricing.py` at `e7ef966` priced batch rows' drafts by these chances: more tokens
a forward, fewer tokens/s; BENCHMARKS.md). --skip leaves out the prompts a batch bench runs on.

    python3 benchmarks/draft_chances.py --skip 16 --output benchmarks/bench/draft-chances.txt
"""

from __future__ import annotations

import argparse
import collections

import torch

import refusion
from refusion.bench.prompts import builtin_prompts
from refusion.decoding.lookup import NgramIndex
from refusion.prompting import prompt_token_ids
from refusion.files import write_text

MOST = 4  # tokens per draft examined


def tally(prompts: list[list[int]], texts: list[list[int]], table) -> dict:
    """(source, match, token index) -> [judged, agreed]: index 0 is the first token, i > 0 given 0 .. i-1 agreed."""
    counts = collections.defaultdict(lambda: [0, 0])
    for prompt, text in zip(prompts, texts):
        index = NgramIndex(prompt)
        for t in range(len(text)):
            drafts = [("lookup", *index.draft(MOST))]
            if table is not None:
                tail = text[:t] if t >= table.longest else prompt + text[:t]
                drafts.append(("table", *table.draft(tail, MOST)))
            for source, match, tokens in drafts:
                for i, token in enumerate(tokens[: len(text) - t]):
                    counts[(source, match, i)][0] += 1
                    if token != text[t + i]:
                        break
                    counts[(source, match, i)][1] += 1
            index.extend([text[t]])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--skip", type=int, default=16, help="built-in prompts left out at the start")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = refusion.load(args.model, dtype=torch.bfloat16)
    prompts = [prompt_token_ids(tokenizer, prompt) for prompt in builtin_prompts()[args.skip:]]
    generations = refusion.generate(model, tokenizer, prompts, decoder="ar", max_new_tokens=args.max_new_tokens)
    counts = tally(prompts, [list(g.tokens) for g in generations], getattr(model, "_refusion_draft_table", None))
    lines = [f"{args.model}: {len(prompts)} built-in prompts from number {args.skip + 1}, `ar` texts of at most "
             f"{args.max_new_tokens} tokens", "", "| source | match | first token right | token 2, given 1 | "
             "token 3, given 1-2 | token 4, given 1-3 |", "|---|---|---|---|---|---|"]
    for source, match in sorted({(source, match) for source, match, _ in counts}):
        cells = []
        for i in range(MOST):
            judged, agreed = counts.get((source, match, i), (0, 0))
            cells.append(f"{agreed / judged:.2f} ({judged})" if judged else "-")
        lines.append(f"| {source} | {match} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.output:
        write_text(args.output, f"$ python3 benchmarks/draft_chances.py --skip {args.skip} --output {args.output}\n"
                   + report)


if __name__ == "__main__":
    main()
