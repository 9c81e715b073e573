"""Decode speed at batch 1: minimind.infer.generate against llama.cpp on the same GGUF.

    python benchmarks/generate_llamacpp.py                       # minimind3 and minimind2-small
    python benchmarks/generate_llamacpp.py --models tiny --threads 1 --new-tokens 64
    python benchmarks/generate_llamacpp.py --models minimind2-small --compile   # also ours compiled

For each preset we build our model with random weights (std 0.1, so greedy decoding does not
just repeat one token), export it with `minimind export gguf` (f32 and the --gguf-dtypes you
ask for) and load that file in llama.cpp through llama-cpp-python. Before timing, llama.cpp's
f32 logits for the prompt are checked against ours. Both sides then decode greedily from the
same 32-token prompt for exactly --new-tokens tokens (no stop token), with the same number of
threads. Decode tokens/s excludes the prefill: it is (N - 1) / (time for N tokens - time for
1 token), best of 3 runs after a warm-up. llama.cpp runs with its default f16 KV cache.
--compile adds ours with the compiled decode step (infer/compiled.py; the warm-up compiles).
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from minimind import MiniMindForCausalLM, preset
from minimind.checkpoint import save_model_dir
from minimind.export import export_gguf
from minimind.infer import SamplingParams, generate
from minimind.infer.compiled import compile_decode
from minimind.tokenizer import Tokenizer

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizer" / "minimind3"


def build(name: str, tokenizer: Tokenizer, out: Path, dtypes: list[str], seed: int = 0):
    """Our model (random, std 0.1) saved as a model directory, and its GGUF files by dtype."""
    model = MiniMindForCausalLM(preset(name)).init_weights(seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_model_dir(model, out / name, tokenizer)
    files = {}
    for dtype in dtypes:
        files[dtype] = out / f"{name}-{dtype}.gguf"
        export_gguf(out / name, files[dtype], dtype=dtype)
    return model, files


def best_decode_rate(run, new_tokens: int, repeats: int = 3) -> float:
    """Decode tokens/s: time(N tokens) - time(1 token) isolates the N-1 decode steps."""
    run(2)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(1)
        t1 = time.perf_counter()
        run(new_tokens)
        t2 = time.perf_counter()
        rates.append((new_tokens - 1) / ((t2 - t1) - (t1 - t0)))
    return max(rates)


def ours_runner(model, tokenizer, prompt):
    def run(n):
        params = SamplingParams(temperature=0, max_new_tokens=n, stop_token_ids=())  # greedy, never stops early
        return generate(model, tokenizer, [prompt], params)[0].token_ids

    return run


def llama_runner(llm, prompt):
    def run(n):
        llm.reset()
        llm.eval(prompt)
        out = []
        for _ in range(n):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))  # last logits, no copy
            if len(out) < n:
                llm.eval([out[-1]])
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["minimind3", "minimind2-small"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--gguf-dtypes", nargs="+", default=["f32", "q8_0"], help="GGUF files to time (f32 always checked)")
    ap.add_argument("--tokenizer", default=str(SHARED_TOKENIZER))
    ap.add_argument("--compile", action="store_true", help="also time ours with the compiled decode step")
    ap.add_argument("--compiled-dtype", choices=("fp32", "bf16"), default="fp32", help="its precision (default fp32)")
    args = ap.parse_args()

    import llama_cpp

    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    text = "MiniMind 是一个从零开始训练的小型语言模型。It is small, fast and easy to read. 让我们"
    prompt = tokenizer.encode(text)[:32]
    dtypes = ["f32"] + [d for d in args.gguf_dtypes if d != "f32"]
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, llama-cpp-python "
        f"{llama_cpp.__version__}, {args.threads} thread(s), batch 1, prompt {len(prompt)} tokens, "
        f"{args.new_tokens} new tokens, decode tokens/s (best of 3)"
    )
    head = "| model | ours fp32 | llama.cpp GGUF | llama.cpp tok/s | llama.cpp / ours |"
    if args.compile:
        head += f" ours compiled {args.compiled_dtype} | llama.cpp / compiled |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, files = build(name, tokenizer, Path(tmp), dtypes)
            ours = best_decode_rate(ours_runner(model, tokenizer, prompt), args.new_tokens)
            compiled = None
            if args.compile:
                fast = copy.deepcopy(model)  # its own model: compile_decode turns it on for the model
                fast = fast.to(torch.bfloat16) if args.compiled_dtype == "bf16" else fast
                compile_decode(fast)
                compiled = best_decode_rate(ours_runner(fast, tokenizer, prompt), args.new_tokens)
            for dtype, path in files.items():
                llm = llama_cpp.Llama(
                    model_path=str(path),
                    n_ctx=len(prompt) + args.new_tokens + 8,
                    n_threads=args.threads,
                    n_threads_batch=args.threads,
                    verbose=False,
                    logits_all=True,
                )  # public access to logits; costs one row per decode step
                if dtype == "f32":  # same function before timing anything
                    llm.eval(prompt)
                    with torch.no_grad():
                        want = model(torch.tensor([prompt])).logits[0, -1].numpy()
                    err = float(np.abs(llm.scores[llm.n_tokens - 1] - want).max() / np.abs(want).max())
                    assert err < 1e-2, f"{name}: llama.cpp logits differ from ours (relative {err:.2e})"
                rate = best_decode_rate(llama_runner(llm, prompt), args.new_tokens)
                line = f"| {name} | {ours:.1f} | {dtype} | {rate:.1f} | {rate / ours:.2f}x |"
                if compiled is not None:
                    line += f" {compiled:.1f} | {rate / compiled:.2f}x |"
                print(line, flush=True)
                del llm


if __name__ == "__main__":
    main()
