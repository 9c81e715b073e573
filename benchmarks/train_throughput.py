"""Training throughput: our packed loop vs a MiniMind-style padded loop, in one run.

Counts only real (non-padding) tokens per second. For each model (tiny, minimind2-small) and
each data set (pretraining text, SFT conversations from ../shared/data):

  minimind-style   every sample padded (or cut) to seq_len, fp32, a loss over the padded batch
                   (what MiniMind's trainer does on a CPU: no packing, no autocast)
  ours fp32        rows packed with whole documents (minimind.data), the same model, fp32
  ours bf16        the same with bf16 autocast (only where the CPU has bf16 matrix units,
                   or with --force-bf16: elsewhere PyTorch emulates bf16 and it is far slower)

and MFU against the machine's measured matmul peak. Run: python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minimind import MiniMindForCausalLM, preset
from minimind.data import build_datasets, iterate_batches, read_records
from minimind.device import cpu_has_fast_bf16
from minimind.tokenizer import Tokenizer
from minimind.train.flops import flops_per_token, measured_peak_flops
from minimind.train.objectives import LMObjective, real_tokens

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def minimind_style_batches(path: Path, kind: str, tok: Tokenizer, seq_len: int, batch_size: int):
    """MiniMind's datasets: one sample per row, right-padded with 0 (or cut) to seq_len."""
    from minimind.data.sft import encode_chats

    records = [r.data for r in read_records(path, kind)]
    if kind == "pretrain":
        seqs = [[tok.bos_token_id] + tok.encode(r["text"])[: seq_len - 2] + [tok.eos_token_id] for r in records]
        masks = [[1] * len(s) for s in seqs]
    else:
        encoded = encode_chats(tok, [r["conversations"] for r in records])
        seqs = [list(ids[:seq_len]) for ids, _ in encoded]
        masks = [list(m[:seq_len]) for _, m in encoded]
    for i in range(0, len(seqs) - batch_size + 1, batch_size):
        ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
        labels = torch.full((batch_size, seq_len), -100, dtype=torch.long)
        real = 0
        for b, (s, m) in enumerate(zip(seqs[i : i + batch_size], masks[i : i + batch_size])):
            ids[b, : len(s)] = torch.tensor(s)
            labels[b, : len(s)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(s), -100)
            real += len(s)
        yield ids, labels, real


def time_steps(step_fn, batches, steps: int, warmup: int = 1) -> tuple[float, int]:
    """Seconds and real tokens of `steps` timed steps after `warmup` untimed ones."""
    seconds, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        if i >= warmup + steps:
            break
        start = time.perf_counter()
        n = step_fn(batch)
        if i >= warmup:
            seconds += time.perf_counter() - start
            tokens += n
    return seconds, tokens


def run(
    model_name: str, kind: str, data: Path, tok: Tokenizer, seq_len: int, batch_size: int, steps: int, modes: list[str]
) -> list[dict]:
    results = []
    for mode in modes:
        torch.manual_seed(0)
        model = MiniMindForCausalLM(preset(model_name, vocab_size=tok.vocab_size)).init_weights(0).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        dtype = torch.bfloat16 if mode == "ours bf16" else torch.float32
        if mode == "minimind-style":

            def step(batch):
                ids, labels, real = batch
                out = model(ids)
                loss = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
                loss.backward(), opt.step(), opt.zero_grad(set_to_none=True)
                return real

            batches = minimind_style_batches(data, kind, tok, seq_len, batch_size)
        else:
            objective = LMObjective()
            train_ds, _ = build_datasets([str(data)], tok, kind, seq_len)

            def step(batch):
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    loss_sum, aux, _ = objective.loss_sum(model, batch)
                (loss_sum / max(objective.count(batch), 1) + aux).backward()
                opt.step(), opt.zero_grad(set_to_none=True)
                return real_tokens(batch)

            batches = iterate_batches(train_ds, batch_size, seed=0, epoch=0)
        seconds, tokens = time_steps(step, batches, steps)
        tps = tokens / seconds
        mfu = tps * flops_per_token(model.config, seq_len) / measured_peak_flops(torch.device("cpu"), dtype)
        results.append({"model": model_name, "data": kind, "mode": mode, "tokens_per_s": tps, "mfu": mfu})
        print(f"  {model_name:16s} {kind:8s} {mode:15s} {tps:9.0f} tok/s  MFU {mfu * 100:5.1f}%", flush=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "minimind2-small"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--force-bf16", action="store_true", help="also time bf16 on a CPU without bf16 units")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (the shared data) is not there", file=sys.stderr)
        return 0
    tok = Tokenizer.from_dir(SHARED / "tokenizer" / "minimind3")
    datasets = {
        "pretrain": SHARED / "minimind_format" / "pretrain_en_c4_wiki_demo.jsonl",
        "sft": SHARED / "minimind_format" / "sft_sharegpt_zh_1k.jsonl",
    }
    modes = ["minimind-style", "ours fp32"] + (["ours bf16"] if cpu_has_fast_bf16() or args.force_bf16 else [])
    fp32 = measured_peak_flops(torch.device("cpu"), torch.float32)
    bf16 = measured_peak_flops(torch.device("cpu"), torch.bfloat16)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak fp32 {fp32 / 1e9:.1f} GFLOP/s, "
        f"bf16 {bf16 / 1e9:.1f} GFLOP/s (bf16 units: {'yes' if cpu_has_fast_bf16() else 'no, bf16 is emulated'})"
    )
    print(f"seq_len {args.seq_len}, batch {args.batch_size}, {args.steps} timed steps after 1 warm-up")
    results = []
    for model_name in args.models:
        for kind, path in datasets.items():
            results += run(model_name, kind, path, tok, args.seq_len, args.batch_size, args.steps, modes)
    print("\nspeed-up over the MiniMind-style loop (real tokens/s):")
    for r in results:
        if r["mode"] != "minimind-style":
            base = next(
                b
                for b in results
                if b["model"] == r["model"] and b["data"] == r["data"] and b["mode"] == "minimind-style"
            )
            print(f"  {r['model']:16s} {r['data']:8s} {r['mode']:10s} {r['tokens_per_s'] / base['tokens_per_s']:5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
