"""Batch-1 decode speed with 1 thread against N threads, per model size: the data for choosing
the intra-op thread count of small decode batches (`minimind chat/serve --threads`).

    python benchmarks/decode_threads.py                          # tiny and minimind2-small, 1 and all cores
    python benchmarks/decode_threads.py --models nano --threads 1 2 --new-tokens 32

Each (model, threads) pair decodes the same prompt greedily for exactly --new-tokens tokens
through our engine, best of --repeats, the thread counts taking turns. On a busy machine more
threads can be much slower (OpenMP threads wait on a descheduled sibling), so run it quiet
and say so next to the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from minimind import MiniMindForCausalLM, preset  # noqa: E402
from minimind.infer import SamplingParams, generate  # noqa: E402


class Ids:  # the engine needs only ids here
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "minimind2-small"])
    p.add_argument("--threads", nargs="+", type=int, default=sorted({1, os.cpu_count() or 1}))
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(machine_line(), flush=True)
    print(f"batch 1, greedy, 32-token prompt, {args.new_tokens} new tokens, best of {args.repeats}\n")
    print("| model | " + " | ".join(f"{n} thread{'s' * (n > 1)} tok/s" for n in args.threads) + " | best |")
    print("|---|" + "---:|" * (len(args.threads) + 1))
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, stop_token_ids=())
    for name in args.models:
        model = MiniMindForCausalLM(preset(name)).init_weights(0).eval()
        prompt = torch.randint(36, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
        best = {n: float("inf") for n in args.threads}
        for n in args.threads:  # warm-up
            torch.set_num_threads(n)
            generate(model, Ids(), prompt.tolist(), params)
        for _ in range(args.repeats):
            for n in args.threads:
                torch.set_num_threads(n)
                started = time.perf_counter()
                generate(model, Ids(), prompt.tolist(), params)
                best[n] = min(best[n], time.perf_counter() - started)
        rates = {n: args.new_tokens / t for n, t in best.items()}
        winner = max(rates, key=rates.get)
        print(f"| {name} | " + " | ".join(f"{rates[n]:.1f}" for n in args.threads) + f" | {winner} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
