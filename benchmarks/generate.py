"""Decode throughput of minimind.infer.generate against transformers' and the original MiniMind's generate.

    python benchmarks/generate.py                 # minimind2-small and tiny, batch 1 and 8
    python benchmarks/generate.py --models tiny --batches 1 --new-tokens 64
    python benchmarks/generate.py --compare /tmp/before/src   # also another checkout's minimind
    python benchmarks/generate.py --compile --batches 1       # also ours with the compiled decode step

For each preset we build our model with random weights and load the very same tensors into
the transformers class with the same architecture (strict load, names match exactly):
  * qk_norm presets (minimind-3 layout: tiny, nano, minimind3) -> Qwen3ForCausalLM
  * MiniMind2 presets (no q/k norm)                             -> LlamaForCausalLM
and, for the minimind-3 layout, into the original MiniMind's own `MiniMindForCausalLM` (imported
as-is from ../shared/reference/minimind-upstream; its parameter names are ours) whose own
`generate` (do_sample=False) is timed as a third peer; it is skipped, with a note, when
../shared is not there, and for MiniMind2 presets, which today's original code cannot build.
The logits of all sides are checked to agree before anything is timed. Both decode greedily from
the same ~32-token prompts for exactly --new-tokens tokens (no stop token on either side),
after a warm-up run; the best of 3 runs (the two sides take turns) is reported as generated
tokens per second (the 32-token prefill is included in the time). The ids are compared too.

--compare SRC adds a third side: the `minimind` package of another source tree (e.g. a git
worktree of an earlier commit), loaded in this process under another name and given the same
weights, so a change to the engine is measured before against after in one run (its ratio
column is ours / theirs). --sample adds a sampled run (temperature 0.8, top-p 0.9, seeded) of
ours against the other tree, where transformers' sampler would draw different tokens anyway.

--compile adds, at batch 1, ours with the compiled decode step (infer/compiled.py) on a copy of
the same model: its first run (the compile, plus one generation) is reported in seconds, then it
takes turns with the others like any side. (At batch 8 every row runs to the end together, so
no step would be a one-row step.)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from minimind import MiniMindForCausalLM, preset  # noqa: E402
from minimind.infer import SamplingParams, generate  # noqa: E402
from minimind.infer.compiled import compile_decode  # noqa: E402

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizer" / "minimind3"


class NoTextTokenizer:
    """Stand-in when no tokenizer directory is at hand: the benchmark only needs ids."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return ""


def load_tokenizer(path: str | None):
    path = Path(path) if path else SHARED_TOKENIZER
    if not path.is_dir():
        return NoTextTokenizer()
    from minimind.tokenizer import Tokenizer

    return Tokenizer.from_dir(path)


def build_pair(name: str, seed: int = 0, with_hf: bool = True):
    """Our model with random weights, and the transformers twin holding the same tensors
    (None without transformers)."""
    cfg = preset(name)
    ours = MiniMindForCausalLM(cfg).init_weights(seed).eval()
    # Scramble to std 0.1: with the small default init a random model greedily repeats its
    # last token, which would make the "identical output" check meaningless.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    if not with_hf:
        return ours, None
    import transformers

    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "hidden_act": "silu",
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": None,
        "pad_token_id": cfg.pad_token_id,
    }
    if cfg.qk_norm:
        hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, mlp_bias=False))
    hf.load_state_dict(ours.state_dict(), strict=True)
    hf.eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides make exactly N tokens
    hf.generation_config.pad_token_id = cfg.pad_token_id
    return ours, hf


def load_other_minimind(src: str):
    """The `minimind` package of another source tree, imported as `minimind_other` beside ours
    (its modules import each other relatively, so they resolve inside the alias)."""
    init = Path(src) / "minimind" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--compare {src}: no minimind/__init__.py there (give the tree's src folder)")
    spec = importlib.util.spec_from_file_location("minimind_other", init, submodule_search_locations=[str(init.parent)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["minimind_other"] = package
    spec.loader.exec_module(package)
    return package


def other_twin(other, name: str, ours):
    """The other tree's model class holding our model's very tensors."""
    model = importlib.import_module("minimind_other.model").MiniMindForCausalLM(other.preset(name)).eval()
    model.load_state_dict({k: v.float().cpu() for k, v in ours.state_dict().items()}, strict=True)
    return model, importlib.import_module("minimind_other.infer")


UPSTREAM = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "minimind-upstream"


def original_twin(ours):
    """The original MiniMind model class holding our model's tensors, or None when its code is
    not here or cannot build this layout (today's original has q/k norms: minimind-3 only)."""
    if not UPSTREAM.is_dir() or not ours.config.qk_norm:
        return None
    from train_throughput import upstream

    model_minimind, _ = upstream()
    c = ours.config
    config = model_minimind.MiniMindConfig(
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        intermediate_size=c.intermediate_size,
        vocab_size=c.vocab_size,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
    )
    model = model_minimind.MiniMindForCausalLM(config).eval()
    model.load_state_dict({k: v.float() for k, v in ours.state_dict().items()}, strict=True)
    return model


def check_logits(ours, hf, prompt: torch.Tensor) -> float:
    with torch.no_grad():
        a = ours(prompt).logits
        b = hf(prompt).logits
    diff = (a - b).abs().max().item()
    assert diff < 1e-3, f"logits differ by {diff}: the two models are not the same network"
    return diff


def best_of(fns, repeats: int) -> list[tuple[float, object]]:
    """Best wall time of each function over `repeats` runs, after one warm-up run each.
    The functions take turns, so a burst of load from elsewhere hits both sides alike."""
    outs = [fn() for fn in fns]  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return list(zip(best, outs))


def bench(
    name: str,
    batch: int,
    new_tokens: int,
    prompt_len: int,
    repeats: int,
    tokenizer,
    other=None,
    sample: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    with_hf: bool = True,
    compiled: bool = False,
):
    ours, hf = build_pair(name, with_hf=with_hf)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(36, ours.config.vocab_size, (batch, prompt_len), generator=g)  # no special tokens
    diff = check_logits(ours, hf, prompt) if hf is not None else float("nan")  # fp32 on the CPU: one network?
    original = original_twin(ours)
    if original is not None:
        with torch.no_grad():
            gap = (ours(prompt).logits - original(prompt).logits).abs().max().item()
        assert gap < 1e-3, f"the original model's logits differ by {gap}"
        original = original.to(device, dtype)
    ours, prompt = ours.to(device, dtype), prompt.to(device)
    hf = hf.to(device, dtype) if hf is not None else None
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())

    def run_ours():
        return [c.token_ids for c in generate(ours, tokenizer, prompt.tolist(), params)]

    def run_hf():
        if hf is None:  # without transformers: this side is skipped
            return [[] for _ in range(batch)]
        with torch.inference_mode():
            out = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        return out[:, prompt_len:].tolist()

    def run_original():
        out = original.generate(
            prompt, max_new_tokens=new_tokens, do_sample=False, top_k=0, top_p=1.0, temperature=1.0, eos_token_id=None
        )
        return out[:, prompt_len:].tolist()

    sides = [run_ours, run_hf] + ([run_original] if original is not None else [])
    if other is not None:
        twin, other_infer = other_twin(other, name, ours)
        twin = twin.to(device, dtype)
        other_params = other_infer.SamplingParams(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=())
        sides.append(
            lambda: [c.token_ids for c in other_infer.generate(twin, tokenizer, prompt.tolist(), other_params)]
        )
    if other is not None and sample:
        hot = {"max_new_tokens": new_tokens, "temperature": 0.8, "top_p": 0.9, "seed": 0, "stop_token_ids": ()}
        sides.append(lambda: generate(ours, tokenizer, prompt.tolist(), SamplingParams(**hot)))
        sides.append(lambda: other_infer.generate(twin, tokenizer, prompt.tolist(), other_infer.SamplingParams(**hot)))
    compile_s = None
    if compiled and batch == 1:
        fast = copy.deepcopy(ours)  # its own model: compile_decode turns it on for the model
        compile_decode(fast)

        def run_compiled():
            return [c.token_ids for c in generate(fast, tokenizer, prompt.tolist(), params)]

        t0 = time.perf_counter()
        run_compiled()
        compile_s = time.perf_counter() - t0
        sides.append(run_compiled)
    timed = best_of(sides, repeats)
    if compile_s is not None:
        t_compiled, ids_compiled = timed.pop()
    (t_ours, ids_ours), (t_hf, ids_hf) = timed[:2]
    n = batch * new_tokens
    same = ids_ours == ids_hf
    first_diff = None
    if not same:
        first_diff = min(
            next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(ids_ours, ids_hf)
        )
    result = {
        "model": name,
        "batch": batch,
        "ours": n / t_ours,
        "hf": n / t_hf,
        "ratio": t_hf / t_ours,
        "same": same,
        "first_diff": first_diff,
        "logit_diff": diff,
    }
    if compile_s is not None:
        result.update(
            compiled=n / t_compiled,
            compiled_over_ours=t_ours / t_compiled,
            compiled_over_hf=t_hf / t_compiled,
            compile_s=compile_s,
            compiled_same=ids_compiled == ids_ours,
        )
    if original is not None:
        t_orig, ids_orig = timed[2]
        result.update(original=n / t_orig, original_ratio=t_orig / t_ours, original_same=ids_orig == ids_ours)
    timed = timed[:2] + timed[3:] if original is not None else timed
    if other is not None:
        t_other, ids_other = timed[2]
        result.update(other=n / t_other, other_ratio=t_other / t_ours, other_same=ids_other == ids_ours)
    if other is not None and sample:
        (t_hot, _), (t_hot_other, _) = timed[3:]
        result.update(sampled=n / t_hot, sampled_other=n / t_hot_other, sampled_ratio=t_hot_other / t_hot)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["minimind2-small", "tiny"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: ../shared/data/tokenizer/minimind3)")
    ap.add_argument("--compare", metavar="SRC", help="also time the minimind package in SRC (another tree's src/)")
    ap.add_argument("--sample", action="store_true", help="with --compare: also a sampled run of both")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--no-transformers", action="store_true", help="skip the transformers side (not installed)")
    ap.add_argument("--compile", action="store_true", help="at batch 1, also ours with the compiled decode step")
    args = ap.parse_args()
    other = load_other_minimind(args.compare) if args.compare else None
    if args.threads:
        torch.set_num_threads(args.threads)

    version = "not used" if args.no_transformers else __import__("transformers").__version__
    print(machine_line(device="cuda" if args.device.startswith("cuda") else "cpu"))
    print(f"transformers {version}; the original MiniMind: {UPSTREAM if UPSTREAM.is_dir() else 'not here (skipped)'}")
    print(
        f"greedy, {args.dtype} on {args.device}, prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} new tokens, best of {args.repeats}\n"
    )
    tokenizer = load_tokenizer(args.tokenizer)
    header = f"| {'model':<16} | batch | ours tok/s | transformers tok/s | ratio | same ids |"
    header += " original tok/s | ours / original | same ids |"
    if other is not None:
        print(f"--compare: {args.compare}")
        header += " other tok/s | ours / other | same ids |"
        if args.sample:
            header += " sampled: ours | other | ours / other |"
    if args.compile:
        header += " compiled tok/s | / ours | / transformers | first run s | same ids |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in args.models:
        for batch in args.batches:
            r = bench(
                name,
                batch,
                args.new_tokens,
                args.prompt_len,
                args.repeats,
                tokenizer,
                other,
                args.sample,
                args.device,
                getattr(torch, args.dtype),
                not args.no_transformers,
                args.compile,
            )
            same = "yes" if r["same"] else f"no (from token {r['first_diff']})"
            line = (
                (
                    f"| {r['model']:<16} | {r['batch']:>5} | {r['ours']:>10.1f} | {r['hf']:>18.1f} | "
                    f"{r['ratio']:>4.2f}x | {same} |"
                )
                if not args.no_transformers
                else f"| {r['model']:<16} | {r['batch']:>5} | {r['ours']:>10.1f} | - | - | - |"
            )
            if "original" in r:
                same_orig = "yes" if r["original_same"] else "no"
                line += f" {r['original']:>14.1f} | {r['original_ratio']:>14.2f}x | {same_orig} |"
            else:
                line += " - | - | - |"
            if other is not None:
                line += f" {r['other']:>11.1f} | {r['other_ratio']:>11.2f}x | {'yes' if r['other_same'] else 'no'} |"
            if "sampled" in r:
                line += f" {r['sampled']:>14.1f} | {r['sampled_other']:>5.1f} | {r['sampled_ratio']:>11.2f}x |"
            if "compiled" in r:
                line += (
                    f" {r['compiled']:>14.1f} | {r['compiled_over_ours']:>5.2f}x | {r['compiled_over_hf']:>12.2f}x |"
                    f" {r['compile_s']:>11.1f} | {'yes' if r['compiled_same'] else 'no'} |"
                )
            elif args.compile:
                line += " - | - | - | - | - |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
