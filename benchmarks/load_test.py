"""Load test for `refusion serve`: concurrent clients, disconnects, bad bodies, bounded requests, memory over time.

Starts `refusion serve` as its own process on 127.0.0.1 (the command a user runs), then:
1. bounded: adversarial requests with max_tokens <= 16 (huge slot sizes, blocks, steps, block lengths, branches,
   long prompts), one at a time on the idle server: each must answer (200 or 4xx) within --bounded-limit seconds;
2. load: --clients concurrent clients send requests (chat and text, streamed and not; some disconnect mid-stream,
   some send malformed bodies) until --requests are sent, or for --duration seconds (a soak). The server's RSS is
   sampled throughout; a 5xx, a connection error or an error inside a 200 stream counts as an error.
3. disconnect: a long streamed request is dropped; the time until /health shows the model free again is reported.

Writes result.json and result.md to --output and prints the Markdown.

    python3 benchmarks/load_test.py --clients 16 --requests 200 --output benchmarks/load/burst
    python3 benchmarks/load_test.py --clients 16 --duration 600 --output benchmarks/load/soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "List three prime numbers.",
           "Explain what a hash map is in one sentence.", "What is 12 times 7?", "Name a color of the sky at dusk."]
BAD_BODIES = [b"{", b"[]", b'{"model": 3}', json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
              json.dumps({"model": "MODEL", "messages": [], "max_tokens": 4}).encode(),
              json.dumps({"model": "MODEL", "prompt": "hi", "max_tokens": -1}).encode(),
              json.dumps({"model": "MODEL", "prompt": "hi", "max_tokens": 4, "seed": 2**70}).encode(),
              json.dumps({"model": "MODEL", "prompt": "hi", "max_tokens": 4, "stop": ["\ud800"]}).encode(),
              json.dumps({"model": "MODEL", "prompt": "hi", "max_tokens": 4, "temperature": "hot"}).encode()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "refusion", "serve", "--model", args.model, "--port", str(port),
               "--model-name", "m", "--log-level", "warning", "--max-waiting", str(args.max_waiting), *args.serve_args]
    log = open(Path(args.output) / "server.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not start within 10 minutes")


def bounded_requests() -> list[dict]:
    """max_tokens <= 16 with every knob that sizes work pushed to its extreme."""
    base = {"model": "m", "prompt": "Tell me a story.", "max_tokens": 16}
    return [
        {**base, "decoder": "refusion", "slot_size": 4096},
        {**base, "decoder": "refusion", "slot_size": 1024, "blocks": 1, "slot_threshold": 0.0, "token_threshold": 1.0},
        {**base, "decoder": "refusion", "slot_size": 16, "kv": "recompute", "slot_threshold": 1.0},
        {**base, "decoder": "mdm", "block_length": 1_000_000},
        {**base, "decoder": "mdm", "steps": 16, "block_length": 1},
        {**base, "decoder": "fast-dllm", "block_length": 1_000_000, "threshold": 1.0},
        {**base, "decoder": "lossless", "branches": 64, "depth": 16, "max_branches": 64, "max_depth": 16},
        {**base, "decoder": "ar"},
        {**base, "max_tokens": 1, "decoder": "refusion", "slot_size": 1024},
        {**base, "prompt": "word " * 3000, "max_tokens": 16},  # a long prompt: prefill is the work
        {**base, "prompt": "word " * 3000, "max_tokens": 16, "decoder": "mdm", "block_length": 1_000_000},
        {**base, "prompt": "word " * 3000, "max_tokens": 16, "decoder": "fast-dllm", "threshold": 1.0},
        {**base, "prompt": "word " * 3000, "max_tokens": 16, "decoder": "refusion", "slot_size": 16, "kv": "recompute"},
    ]


async def timed(client: httpx.AsyncClient, body: dict) -> tuple[int, float]:
    started = time.perf_counter()
    response = await client.post("/v1/completions", json=body)
    return response.status_code, time.perf_counter() - started


class Load:
    """Counts of what the clients saw, latencies and tokens."""

    def __init__(self):
        self.status: dict[str, int] = {}
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.tokens = 0
        self.sent = 0

    def count(self, what: str) -> None:
        self.status[what] = self.status.get(what, 0) + 1


async def one_request(client: httpx.AsyncClient, load: Load, rng: random.Random) -> None:
    roll = rng.random()
    prompt = rng.choice(PROMPTS)
    max_tokens = rng.choice([8, 16, 32, 48])
    if roll < 0.1:  # a malformed body: must be 4xx
        body = rng.choice(BAD_BODIES).replace(b"MODEL", b"m")
        response = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        load.count(f"bad body -> {response.status_code}")
        if response.status_code >= 500 or response.status_code < 400:
            load.errors.append(f"bad body {body[:60]!r} got {response.status_code}")
        return
    stream = roll < 0.55
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {"model": "m", "max_tokens": max_tokens, "stream": stream,
            **({"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt})}
    if stream and chat:
        body["stream_options"] = {"include_usage": True}
    disconnect = stream and rng.random() < 0.25
    started = time.perf_counter()
    if not stream:
        response = await client.post(path, json=body)
        load.count(str(response.status_code))
        if response.status_code == 200:
            load.tokens += response.json()["usage"]["completion_tokens"]
            load.latencies.append(time.perf_counter() - started)
        elif response.status_code != 429:
            load.errors.append(f"{path} got {response.status_code}: {response.text[:200]}")
        return
    async with client.stream("POST", path, json=body) as response:
        load.count(f"stream {response.status_code}")
        if response.status_code != 200:
            if response.status_code != 429:
                load.errors.append(f"stream {path} got {response.status_code}")
            return
        chunks = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                load.latencies.append(time.perf_counter() - started)
                return
            data = json.loads(payload)
            if "error" in data:
                load.errors.append(f"error inside a stream: {data['error']}")
                return
            if data.get("usage"):
                load.tokens += data["usage"]["completion_tokens"]
            chunks += 1
            if disconnect and chunks >= 2:
                load.count("stream disconnected by client")
                return  # leaving the block closes the connection mid-stream
        load.errors.append(f"stream {path} ended without [DONE]")


async def clients(url: str, pid: int, args, load: Load, memory: list[tuple[float, float]]) -> float:
    rng = random.Random(args.seed)
    started = time.monotonic()
    stop_at = started + args.duration if args.duration else None

    def more() -> bool:
        return load.sent < args.requests if stop_at is None else time.monotonic() < stop_at

    async def client_loop(index: int) -> None:
        own = random.Random(rng.random())
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            while more():
                load.sent += 1
                try:
                    await one_request(client, load, own)
                except (httpx.HTTPError, json.JSONDecodeError) as error:
                    load.errors.append(f"client {index}: {type(error).__name__}: {error}")

    async def sample_memory() -> None:
        while True:
            memory.append((time.monotonic() - started, rss_mb(pid)))
            await asyncio.sleep(args.sample_every)

    sampler = asyncio.ensure_future(sample_memory())
    await asyncio.gather(*(client_loop(i) for i in range(args.clients)))
    sampler.cancel()
    memory.append((time.monotonic() - started, rss_mb(pid)))
    return time.monotonic() - started


async def disconnect_stop_seconds(url: str) -> float:
    """Drop a long stream after its first text; seconds until /health shows the model free."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        body = {"model": "m", "prompt": "Count from one to one thousand in words.", "max_tokens": 2000, "stream": True,
                "decoder": "ar", "stop": None}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"text":""' not in line:
                    break
        left = time.perf_counter()
        while (await client.get("/health")).json()["busy"]:
            await asyncio.sleep(0.02)
            if time.perf_counter() - left > 60:
                break
        return time.perf_counter() - left


def markdown(result: dict) -> str:
    load, bounded = result["load"], result["bounded"]
    lines = [f"## Load test: {result['command']}", "",
             f"model {result['model']}, {load['clients']} concurrent clients, {load['requests_sent']} requests in "
             f"{load['seconds']:.0f} s on {os.cpu_count()} CPU cores", "",
             "| measure | value |", "|---|---|",
             f"| errors (5xx, connection errors, errors inside a 200 stream) | {len(load['errors'])} |",
             f"| responses by status | {', '.join(f'{k}: {v}' for k, v in sorted(load['status'].items()))} |",
             f"| completed requests: latency p50 / p95 | {load['latency_p50']:.2f} s / {load['latency_p95']:.2f} s |",
             f"| aggregate completion tokens/s | {load['tokens_per_second']:.1f} |",
             f"| server RSS after warm-up / at the end | {result['rss_before_mb']:.0f} MB / {result['rss_after_mb']:.0f} MB "
             f"({result['rss_change_percent']:+.1f}%) |",
             f"| bounded requests (max_tokens <= 16, extreme knobs, alone): slowest | {bounded['slowest_seconds']:.2f} s "
             f"(statuses {bounded['statuses']}) |",
             f"| dropped stream: model free again after | {result['disconnect_stop_seconds']:.2f} s |", ""]
    if load["errors"]:
        lines += ["Errors:", "", *[f"- {e}" for e in load["errors"][:20]], ""]
    return "\n".join(lines)


def plot_memory(result: dict, path: Path) -> None:
    """The server's RSS against time under load: flat is what a soak should show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds, megabytes = zip(*result["memory_mb_over_time"])
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot(seconds, megabytes, marker=".")
    axes.axhline(result["rss_before_mb"], color="grey", linestyle=":", label="after warm-up")
    axes.set_xlabel("seconds under load")
    axes.set_ylabel("server RSS (MB)")
    axes.set_ylim(0, max(megabytes) * 1.15)
    axes.set_title(f"{result['load']['clients']} clients, {result['load']['requests_sent']} requests, "
                   f"{len(result['load']['errors'])} errors", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="refusion-smollm2-135m")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="requests to send in all (ignored with --duration)")
    parser.add_argument("--duration", type=float, default=None, help="send requests for this many seconds (a soak)")
    parser.add_argument("--max-waiting", type=int, default=64)
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--bounded-limit", type=float, default=5.0, help="seconds a bounded request may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="benchmarks/load/burst")
    parser.add_argument("serve_args", nargs="*", help="extra `refusion serve` arguments, after --")
    args = parser.parse_args()
    Path(args.output).mkdir(parents=True, exist_ok=True)

    process, url = start_server(args)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:  # warm-up: first forwards, the lossless calibration
            for _ in range(3):
                client.post("/v1/completions", json={"model": "m", "prompt": "Hello", "max_tokens": 16})

        async def bounded() -> list[tuple[int, float]]:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                return [await timed(client, body) for body in bounded_requests()]

        bounded_results = asyncio.run(bounded())
        rss_before = rss_mb(process.pid)
        load, memory = Load(), []
        seconds = asyncio.run(clients(url, process.pid, args, load, memory))
        stop_seconds = asyncio.run(disconnect_stop_seconds(url))
        health = httpx.get(f"{url}/health").json()
        rss_after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)

    latencies = sorted(load.latencies) or [float("nan")]
    result = {
        "command": " ".join(["python3", "benchmarks/load_test.py", *sys.argv[1:]]),
        "model": args.model,
        "bounded": {"requests": bounded_requests(), "seconds": [s for _, s in bounded_results],
                    "statuses": sorted({c for c, _ in bounded_results}),
                    "slowest_seconds": max(s for _, s in bounded_results),
                    "over_limit": [b for b, (_, s) in zip(bounded_requests(), bounded_results) if s > args.bounded_limit]},
        "load": {"clients": args.clients, "requests_sent": load.sent, "seconds": seconds, "status": load.status,
                 "errors": load.errors, "latency_p50": statistics.median(latencies),
                 "latency_p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                 "tokens_per_second": load.tokens / seconds},
        "rss_before_mb": rss_before, "rss_after_mb": rss_after,
        "rss_change_percent": 100 * (rss_after - rss_before) / rss_before,
        "memory_mb_over_time": memory, "disconnect_stop_seconds": stop_seconds, "health_at_end": health,
    }
    for bound in result["bounded"]["requests"]:
        bound["prompt"] = bound["prompt"][:40] + ("..." if len(bound["prompt"]) > 40 else "")
    (Path(args.output) / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    (Path(args.output) / "result.md").write_text(text)
    plot_memory(result, Path(args.output) / "memory.png")
    print(text)
    if load.errors or result["bounded"]["over_limit"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
