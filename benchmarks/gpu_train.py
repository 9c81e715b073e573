"""One GPU run, one table: training and batched generation against the original MiniMind code.

    python benchmarks/gpu_train.py                       # on a GPU: minimind-3 (64M), seq 512 and 2048
    python benchmarks/gpu_train.py --device cpu --tiny   # a smoke check of the script on a CPU

Training: the original's model, dataset class and step (benchmarks/train_throughput.py:
OriginalStep, with its GPU default, bf16 autocast) against our trainer's step in bf16 (fused
AdamW), and with --compile also ours torch.compile'd; interleaved rounds, median shown;
tokens/s counts real tokens; MFU is against the measured bf16 matmul peak of this GPU.
The first step of each mode (warm-up, compile) is reported apart.

Generation: --gen-batch prompts of --prompt-len random tokens, greedy, exactly --new-tokens
each: our engine's generate against the original model's own generate, holding the same
weights; the ids must agree.

Needs the original code (../shared/reference/minimind-upstream); exits 2 without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, machine_line  # noqa: E402
from train_throughput import OriginalStep, OurStep, ours_from, upstream  # noqa: E402

from minimind.infer import SamplingParams, generate  # noqa: E402
from minimind.train.flops import flops_per_token, measured_peak_flops  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(hidden, layers, seq_len, batch, args, device) -> list[dict]:
    bf16 = torch.bfloat16
    modes = {
        "original (bf16 autocast, its GPU default)": lambda: OriginalStep(hidden, layers, seq_len, batch, True, device),
        "ours bf16": lambda: OurStep(hidden, layers, seq_len, batch, bf16, device=device),
    }
    if args.compile:
        modes["ours bf16 compiled"] = lambda: OurStep(hidden, layers, seq_len, batch, bf16, True, device)
    steps, first = {}, {}
    for name, make in modes.items():
        started = time.perf_counter()
        steps[name] = make()
        steps[name]()
        sync(device)
        first[name] = time.perf_counter() - started
    rates = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, step in steps.items():
            sync(device)
            tokens, started = 0, time.perf_counter()
            for _ in range(args.steps):
                tokens += step()
            sync(device)
            rates[name].append(tokens / (time.perf_counter() - started))
    flops = flops_per_token(steps["ours bf16"].config, seq_len)
    peak = measured_peak_flops(device, bf16)
    base = statistics.median(rates[next(iter(modes))])
    rows = []
    for name in modes:
        tps = statistics.median(rates[name])
        rows.append(
            {
                "what": f"train h{hidden} x {layers}, seq {seq_len}, batch {batch}",
                "mode": name,
                "tokens_per_s": tps,
                "mfu": tps * flops / peak,
                "ratio": tps / base,
                "first_step_s": first[name],
            }
        )
    for step in steps.values():  # free the GPU for the next configuration
        del step.model, step.optimizer
    return rows


def bench_generate(hidden, layers, args, device) -> list[dict]:
    model_minimind, _ = upstream()
    torch.manual_seed(0)
    original = model_minimind.MiniMindForCausalLM(
        model_minimind.MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers)
    )
    with torch.no_grad():  # std 0.1: a random model's greedy text would otherwise repeat one token
        for p in original.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    ours = ours_from(original).to(device, torch.bfloat16).eval()
    original = original.to(device, torch.bfloat16).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(36, ours.config.vocab_size, (args.gen_batch, args.prompt_len), generator=g).to(device)
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0, stop_token_ids=())

    class Ids:  # our engine needs only ids here
        eos_token_id = None

        def decode(self, ids, skip_special_tokens=False):
            return ""

    def run_ours():
        return [c.token_ids for c in generate(ours, Ids(), prompt.tolist(), params)]

    def run_original():
        out = original.generate(
            prompt,
            max_new_tokens=args.new_tokens,
            do_sample=False,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            eos_token_id=None,
        )
        return out[:, args.prompt_len :].tolist()

    results = {}
    for name, fn in (("original generate", run_original), ("ours", run_ours)):
        fn()  # warm-up
        sync(device)
        started = time.perf_counter()
        ids = fn()
        sync(device)
        results[name] = (args.gen_batch * args.new_tokens / (time.perf_counter() - started), ids)
    same = sum(a == b for a, b in zip(results["ours"][1], results["original generate"][1]))
    what = f"generate h{hidden} x {layers}, batch {args.gen_batch}, {args.new_tokens} new tokens, bf16"
    base = results["original generate"][0]
    return [
        {"what": what, "mode": name, "tokens_per_s": tps, "ratio": tps / base, "rows_equal": f"{same}/{args.gen_batch}"}
        for name, (tps, _) in results.items()
    ]


def markdown(rows) -> str:
    lines = ["| what | mode | tokens/s | MFU | vs original | first step (s) |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{r['mfu'] * 100:.1f}%" if "mfu" in r else ""
        first = f"{r['first_step_s']:.1f}" if "first_step_s" in r else r.get("rows_equal", "")
        lines.append(f"| {r['what']} | {r['mode']} | {r['tokens_per_s']:,.0f} | {mfu} | {r['ratio']:.2f}x | {first} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="h128 x 2, seq 128, few steps: a smoke check (CPU)")
    p.add_argument("--seq-lens", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--batch-tokens", type=int, default=32768, help="tokens per training batch (default 32768)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode per round (default 10)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also ours with torch.compile")
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    upstream()  # exits 2 without the original code
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --device cpu --tiny for a smoke check", file=sys.stderr)
        return 2
    hidden, layers = 768, 8  # minimind-3 (63.91M)
    if args.tiny:
        hidden, layers, args.seq_lens, args.batch_tokens = 128, 2, [128], 256
        args.steps, args.rounds, args.gen_batch, args.new_tokens, args.prompt_len = 1, 1, 2, 8, 8
    info = describe_machine(device.type)
    print(machine_line(info), flush=True)
    rows = []
    for seq_len in args.seq_lens:
        rows += bench_train(hidden, layers, seq_len, max(1, args.batch_tokens // seq_len), args, device)
        print(markdown(rows[-2:]), flush=True)
    rows += bench_generate(hidden, layers, args, device)
    print("\n" + markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
