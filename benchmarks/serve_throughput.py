"""Aggregate tokens/s of `refusion serve` with concurrent streaming clients against the same requests one at a time.

Starts `refusion serve` as its own process (the command a user runs; its continuous batching on),
warms it up, then for each decoder sends the same --requests streamed completions (built-in bench
prompts, greedy, --max-tokens each):
1. one at a time, from one client: what a server without batching gives;
2. from --clients concurrent clients: they join the running batch as others leave it.
Per phase: aggregate tokens/s (completion tokens / wall time), p50/p95 latency and time to first
text, and how many answers equal the one-at-a-time answer. Server RSS before and after. Writes
result.json and result.md to --output and prints the Markdown.

    python3 benchmarks/serve_throughput.py --output benchmarks/load/batching -- --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from load_test import rss_mb, start_server
from refusion.bench.prompts import builtin_prompts


async def one(client: httpx.AsyncClient, body: dict) -> dict:
    started = time.perf_counter()
    first, text, tokens = None, "", 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error in stream: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("text") and first is None:
                    first = time.perf_counter() - started
                text += choice.get("text") or ""
    seconds = time.perf_counter() - started
    return {"text": text, "tokens": tokens, "seconds": seconds, "first_text_seconds": first if first is not None else seconds}


async def phase(url: str, bodies: list[dict], clients: int) -> dict:
    """All bodies, `clients` at a time (each client takes the next body when its last one ends)."""
    answers: list[dict | None] = [None] * len(bodies)
    queue = list(range(len(bodies)))

    async def client_loop(client):
        while queue:
            index = queue.pop(0)
            answers[index] = await one(client, bodies[index])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    seconds = time.perf_counter() - started
    latencies = sorted(answer["seconds"] for answer in answers)
    firsts = sorted(answer["first_text_seconds"] for answer in answers)
    tokens = sum(answer["tokens"] for answer in answers)
    return {"clients": clients, "requests": len(bodies), "seconds": round(seconds, 2), "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 2),
            "latency_p50": round(statistics.median(latencies), 2), "latency_p95": round(percentile(latencies, 0.95), 2),
            "first_text_p50": round(statistics.median(firsts), 2), "first_text_p95": round(percentile(firsts, 0.95), 2),
            "texts": [answer["text"] for answer in answers]}


def percentile(sorted_values: list[float], share: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(share * len(sorted_values)))]


def markdown(result: dict) -> str:
    lines = [f"`{result['command']}` ({result['model']}, {result['requests']} requests of {result['max_tokens']} tokens)",
             "", "| decoder | clients | wall s | tokens | aggregate tokens/s | vs one at a time | p50 / p95 latency s "
             "| p50 / p95 first text s | answers equal to one at a time |", "|---|---|---|---|---|---|---|---|---|"]
    for decoder, phases in result["decoders"].items():
        alone = phases[0]
        for run in phases:
            lines.append(f"| {decoder} | {run['clients']} | {run['seconds']} | {run['tokens']} | {run['tokens_per_second']} "
                         f"| {run['tokens_per_second'] / alone['tokens_per_second']:.2f}x | {run['latency_p50']} / "
                         f"{run['latency_p95']} | {run['first_text_p50']} / {run['first_text_p95']} | "
                         f"{run['same_as_alone']}/{run['requests']} |")
    lines += ["", f"Server RSS after warm-up / at the end: {result['rss_before_mb']:.0f} MB / {result['rss_after_mb']:.0f} MB", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--decoders", default="ar,lossless")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--output", default="benchmarks/load/batching")
    parser.add_argument("serve_args", nargs="*", help="extra `refusion serve` arguments, after --")
    args = parser.parse_args()
    args.max_waiting = max(64, args.requests)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    prompts = builtin_prompts()
    process, url = start_server(args)
    result = {"command": " ".join(["python3", "benchmarks/serve_throughput.py", *sys.argv[1:]]), "model": args.model,
              "requests": args.requests, "max_tokens": args.max_tokens, "decoders": {}}
    try:
        with httpx.Client(base_url=url, timeout=600) as client:  # warm-up: first forwards, the lossless calibration
            for decoder in args.decoders.split(","):
                client.post("/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 8, "decoder": decoder})
        result["rss_before_mb"] = rss_mb(process.pid)
        for decoder in args.decoders.split(","):
            bodies = [{"model": "m", "prompt": prompts[index % len(prompts)], "max_tokens": args.max_tokens,
                       "decoder": decoder, "stream": True, "stream_options": {"include_usage": True}}
                      for index in range(args.requests)]
            phases = [asyncio.run(phase(url, bodies, 1)), asyncio.run(phase(url, bodies, args.clients))]
            for run in phases:
                run["same_as_alone"] = sum(a == b for a, b in zip(run["texts"], phases[0]["texts"]))
            result["decoders"][decoder] = phases
        result["rss_after_mb"] = rss_mb(process.pid)
        result["health_at_end"] = httpx.get(f"{url}/health").json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    (Path(args.output) / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (Path(args.output) / "result.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
