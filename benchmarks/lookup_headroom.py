"""How far lookup drafts alone could go on texts a decoder already produced: a replay, no model run.

For every position of each `ar` text (prompt included in the context), the draft is what followed
the latest earlier occurrence of the last n tokens (n = 3, 2, 1); a forward commits the draft's
agreeing prefix and one more token. Prints tokens per forward for several draft lengths, and with
the 1, 2 or 3 latest distinct continuations verified together: the headroom of longer or more
lookup drafts than `refusion/decoding/lookup.py` offers.

    python3 benchmarks/lookup_headroom.py --outputs benchmarks/bench/smollm2-bf16/outputs.jsonl
"""

from __future__ import annotations

import argparse
import json

from refusion.model import load


def continuations(context: list[int], longest: int = 3) -> list[int]:
    """Start of what followed each earlier occurrence of the context's tail: longest match first, latest first."""
    starts = []
    for n in range(longest, 0, -1):
        tail = context[-n:]
        for start in range(len(context) - n - 1, -1, -1):
            if context[start:start + n] == tail:
                starts.append(start + n)
    return starts


def tokens_per_forward(texts: list[tuple[list[int], list[int]]], length: int, drafts: int) -> float:
    tokens = forwards = 0
    for prompt, text in texts:
        i = 0
        while i < len(text):
            context = prompt + text[:i]
            offered, firsts = [], set()
            for start in continuations(context):
                draft = context[start:start + length]
                if draft and draft[0] not in firsts:
                    offered.append(draft)
                    firsts.add(draft[0])
                if len(offered) == drafts:
                    break
            agreed = 0
            for draft in offered:
                k = 0
                while k < len(draft) and i + k < len(text) and draft[k] == text[i + k]:
                    k += 1
                agreed = max(agreed, k)
            step = min(agreed + 1, len(text) - i)
            i, tokens, forwards = i + step, tokens + step, forwards + 1
    return tokens / forwards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", required=True, help="a refusion bench outputs.jsonl")
    parser.add_argument("--model", default="refusion-smollm2-135m", help="whose tokenizer (default %(default)s)")
    parser.add_argument("--row", default="ar", help="which decoder's texts (default %(default)s)")
    args = parser.parse_args()
    _, tokenizer = load(args.model)
    rows = [json.loads(line) for line in open(args.outputs) if line.strip()]
    texts = [(tokenizer(row["prompt"])["input_ids"], tokenizer(row[args.row])["input_ids"]) for row in rows]
    print(f"{len(texts)} texts of {args.row}; tokens per forward from lookup drafts alone")
    print("| draft length | 1 draft | 2 drafts | 3 drafts |\n|---|---|---|---|")
    for length in (4, 10, 16, 32):
        cells = " | ".join(f"{tokens_per_forward(texts, length, drafts):.3f}" for drafts in (1, 2, 3))
        print(f"| {length} | {cells} |")


if __name__ == "__main__":
    main()
