"""Batched sampling on a GPU, with and without cuDNN attention in the decode steps.

    python benchmarks/gpu_decode.py --model DIR      # a trained chat model (rows end at different times)
    python benchmarks/gpu_decode.py                  # a random tiny model, bf16

What `minimind generate-data`, `eval` and the reasoning benchmark do: many chat prompts of
different lengths, in batches of --batch, sampled (T 0.85, top-p 0.95), rows leaving the batch
as they finish. `minimind.model.layers.decoding_attention` keeps SDPA off its cuDNN backend
while generating, because cuDNN builds an execution plan for every new shape and decoding
meets a new one at every step (the keys grow by one; finished rows shrink the batch). This
script times the same work both ways: "ours" (as shipped) first, then "SDPA's default" on the
next --prompts prompts, so neither side reuses plans the other built. Reported: wall time,
generated tokens, tok/s, ms per decode step, and the speedup.

Needs CUDA (on a CPU both sides are the same code path). Prompts are GSM8K questions from
../shared/data; the model directory's tokenizer renders them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import time
from pathlib import Path

import torch

from minimind.infer import SamplingParams, generate

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_model_module = importlib.import_module("minimind.model.minimind")  # where the model's forward finds decoding_attention


def run_side(model, tok, prompts, batch: int, params: SamplingParams) -> dict:
    torch.cuda.synchronize()
    started, tokens, steps = time.perf_counter(), 0, 0
    for first in range(0, len(prompts), batch):
        done = generate(model, tok, prompts[first : first + batch], params)
        tokens += sum(c.completion_tokens for c in done)
        steps += max(c.completion_tokens for c in done)  # a batch runs as long as its longest row
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"s": seconds, "tokens": tokens, "tok_s": tokens / seconds, "ms_step": 1000 * seconds / steps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: a random tiny model with the minimind3 tokenizer)")
    ap.add_argument("--data", default=str(SHARED / "minimind_format" / "sft_gsm8k_train.jsonl"))
    ap.add_argument("--prompts", type=int, default=320, help="prompts per side")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU: off CUDA both sides run the same code")
    dtype = getattr(torch, args.dtype)
    if args.model:
        from minimind.checkpoint import load

        model, tok = load(args.model, device="cuda", dtype=dtype)
    else:
        from minimind import MiniMindForCausalLM, preset
        from minimind.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(SHARED / "tokenizer" / "minimind3")
        model = MiniMindForCausalLM(preset("tiny")).init_weights(0).to("cuda", dtype).eval()
    lines = [line for line in Path(args.data).read_text(encoding="utf-8").split("\n") if line][: 2 * args.prompts]
    if len(lines) < 2 * args.prompts:
        raise SystemExit(f"{args.data}: {len(lines)} conversations, need {2 * args.prompts}")
    prompts = [tok.encode_chat(json.loads(line)["conversations"][:1], add_generation_prompt=True) for line in lines]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.85, top_p=0.95, seed=0)
    generate(model, tok, prompts[:2], SamplingParams(max_new_tokens=4, temperature=0))  # CUDA context, kernels

    shipped = _model_module.decoding_attention
    ours = run_side(model, tok, prompts[: args.prompts], args.batch, params)
    _model_module.decoding_attention = lambda device: contextlib.nullcontext()
    try:
        default = run_side(model, tok, prompts[args.prompts :], args.batch, params)
    finally:
        _model_module.decoding_attention = shipped

    print(
        f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.model or 'random tiny'} in {args.dtype}; "
        f"{args.prompts} prompts per side in batches of {args.batch}, at most {args.max_new_tokens} new tokens\n"
    )
    print("| attention in decode steps | wall s | tokens | tok/s | ms per step |")
    print("|---|---|---|---|---|")
    for name, r in (("ours: flash / mem-efficient (no cuDNN)", ours), ("SDPA's default (cuDNN first)", default)):
        print(f"| {name} | {r['s']:.1f} | {r['tokens']} | {r['tok_s']:.0f} | {r['ms_step']:.1f} |")
    print(f"\nspeedup (tok/s): {ours['tok_s'] / default['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
