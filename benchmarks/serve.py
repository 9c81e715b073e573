"""Throughput of `minimind serve` with 1, 4 and 16 concurrent streaming clients.

    python benchmarks/serve.py                          # a random `tiny` model, 1 / 4 / 16 clients
    python benchmarks/serve.py --model out/quickstart/sft --clients 1 8 --new-tokens 128
    python benchmarks/serve.py --compare /tmp/before/src     # against another tree's server

Starts a real server process on a free loopback port, then for each concurrency level runs
that many clients at once, each sending --requests streaming chat requests one after the
other (greedy, exactly --new-tokens tokens each: `ignore_eos`). Reported per level:

  * aggregate tok/s: completion tokens of all requests / wall time of the level
  * TTFT: time from sending a request to its first content chunk (median and worst)
  * speedup: aggregate tok/s relative to 1 client

Continuous batching is what makes the aggregate grow: the server decodes every active
request in one batch step, and a request that arrives mid-generation joins at the next step.
The clients run in this process (asyncio + httpx), sharing the CPU with the server, as a
real load generator on the same machine would.

--compare SRC starts a second server from another source tree (PYTHONPATH=SRC, e.g. a git
worktree of an earlier commit) on the same model; at each level the two run in the order
A B B A (the second of a pair measured faster, whichever it was), each keeps its better run,
and the table gains their ratio. --temperature T makes the requests sampled (seeded) instead of greedy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from minimind import MiniMindForCausalLM, preset
from minimind.checkpoint import save_model_dir
from minimind.tokenizer import Tokenizer

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizer" / "minimind3"
QUESTIONS = [
    "Tell me about the sea.",
    "What is 12 times 7?",
    "你好，请介绍一下你自己。",
    "Write a short poem.",
    "Why is the sky blue?",
    "List three fruits.",
    "天空为什么是蓝色的？",
    "How do plants grow?",
]


def random_model_dir(name: str, tokenizer_dir: Path, out: Path) -> Path:
    """A model with random weights, scrambled to std 0.1 so its text varies (see generate.py)."""
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    model = MiniMindForCausalLM(preset(name, vocab_size=tokenizer.vocab_size)).init_weights(0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_model_dir(model, out, tokenizer)
    return out


def start_server(model_dir: Path, max_batch: int, src: str | None = None) -> tuple[subprocess.Popen, str]:
    """`minimind serve` in a subprocess (from the source tree `src` when given)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": src} if src else None
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minimind.cli",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit("the server exited; see its output above")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("the server did not answer /health within 2 minutes")


async def one_request(
    client: httpx.AsyncClient, url: str, question: str, new_tokens: int, temperature: float = 0.0, seed: int = 0
) -> tuple[int, float]:
    """Stream one chat answer; return (completion tokens, seconds to the first content)."""
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": new_tokens,
        "temperature": temperature,
        "seed": seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(
                c["delta"].get("content") or c["delta"].get("reasoning_content") for c in chunk.get("choices", [])
            ):
                first = time.perf_counter() - start
    return tokens, first if first is not None else time.perf_counter() - start


async def level(url: str, clients: int, requests: int, new_tokens: int, temperature: float = 0.0) -> dict:
    """`clients` clients at once, each sending `requests` requests in a row."""
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:

        async def user(i: int):
            return [
                await one_request(
                    client, url, QUESTIONS[(i + k) % len(QUESTIONS)], new_tokens, temperature, i * 100 + k
                )
                for k in range(requests)
            ]

        start = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(user(i) for i in range(clients))) for r in rs]
        wall = time.perf_counter() - start
    ttft = [t for _, t in results]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": sum(n for n, _ in results),
        "wall": wall,
        "tok_s": sum(n for n, _ in results) / wall,
        "ttft_median": statistics.median(ttft),
        "ttft_max": max(ttft),
    }


def best_of_turns(urls: list[str], clients: int, args) -> list[dict]:
    """One level on every server: with one server, once; with two, in the order A B B A, keeping
    each server's better run (whichever runs second in a pair measured faster, on either side)."""

    def run(url):
        return asyncio.run(level(url, clients, args.requests, args.new_tokens, args.temperature))

    if len(urls) == 1:
        return [run(urls[0])]
    results = [[], []]
    for order in ((0, 1), (1, 0)):
        for i in order:
            results[i].append(run(urls[i]))
    return [max(runs, key=lambda r: r["tok_s"]) for runs in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a model directory (default: a random --preset model)")
    ap.add_argument("--preset", default="tiny", help="preset of the random model (default tiny)")
    ap.add_argument("--tokenizer", default=str(SHARED_TOKENIZER), help="tokenizer of the random model")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after the other (default 2)")
    ap.add_argument("--new-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0: seeded sampling")
    ap.add_argument("--compare", metavar="SRC", help="also serve from the source tree SRC and compare")
    args = ap.parse_args()

    sides = [None] + ([args.compare] if args.compare else [])
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (
            Path(args.model)
            if args.model
            else random_model_dir(args.preset, Path(args.tokenizer), Path(tmp) / args.preset)
        )
        servers = [start_server(model_dir, max(args.clients), src) for src in sides]
        try:
            for _, url in servers:
                asyncio.run(level(url, 1, 1, 8))  # warm-up: first-call allocations, lazy imports
            rows = [best_of_turns([url for _, url in servers], c, args) for c in args.clients]
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait()

    mode = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, seeded"
    print(
        f"model {args.model or 'random ' + args.preset}, {args.new_tokens} tokens per request ({mode}, ignore_eos), "
        f"{args.requests} requests per client; torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    compare = f" {args.compare} tok/s | ours / it |" if args.compare else ""
    print("| clients | requests | aggregate tok/s | speedup | TTFT median | TTFT max |" + compare)
    print(
        "|---------|----------|-----------------|---------|-------------|----------|" + ("---|---|" if compare else "")
    )
    base = rows[0][0]["tok_s"]
    for row in rows:
        r = row[0]
        line = (
            f"| {r['clients']:7d} | {r['requests']:8d} | {r['tok_s']:15.1f} | {r['tok_s'] / base:6.2f}x "
            f"| {r['ttft_median'] * 1000:8.0f} ms | {r['ttft_max'] * 1000:5.0f} ms |"
        )
        if args.compare:
            line += f" {row[1]['tok_s']:.1f} | {r['tok_s'] / row[1]['tok_s']:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()
