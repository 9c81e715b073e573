"""Does `minimind reason` teach the think-then-answer format, and only when asked?

1. Hold out --held-out prompts from the shared math data (GSM8K train and NuminaMath-CoT, in
   proportion to their sizes) and write the rest to WORK/train.jsonl.
2. For each --think-weight W: train a fresh --preset model with the minimind3 tokenizer by
   reasoning SFT alone (no pretraining: the format is what is measured, not the maths),
   the same seed and data for every W.
3. Generate greedily, batched, for every held-out prompt twice: open_thinking on and off.
   --repetition-penalty (default 1.1) keeps the tiny model from looping. Each completion is
   classified by minimind.infer.thinking.check_thinking: "think" (a
   non-empty <think> block then a non-empty answer), "none" (no tags) or "malformed"
   (a completion cut off at --max-new-tokens counts as malformed); counts per source file too.
4. Print one table row per W: well-formed rate with thinking on, rate of think blocks
   (well-formed or not) with thinking off, training and generation time.

    python benchmarks/reasoning.py            # the figures in benchmarks/README.md (a GPU: ~2.5 min)
    python benchmarks/reasoning.py --weights 1 --steps 300 --seq-len 512 --held-out 32   # a quick look

The defaults train 2 x 2500 steps of 16 x 1024 tokens (about 20 passes over the 2M tokens of
data, 41M tokens per model): about a minute per model on an H100, hours on 2 CPU cores.

Needs ../shared/data (see its README). Everything goes to --work (default /tmp).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from minimind.infer import SamplingParams, generate
from minimind.infer.thinking import check_thinking

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = ("sft_gsm8k_train.jsonl", "sft_numina_math_cot_1k.jsonl")


def split_data(work: Path, held_out: int, seed: int) -> list[tuple[str, str]]:
    """Write the training file; return the held-out (source file, user prompt) pairs."""
    # split("\n"), not splitlines(): the JSON strings hold U+2028 and friends, which are not
    # JSONL line ends
    rows = {f: [line for line in (SHARED / "minimind_format" / f).read_text(encoding="utf-8").split("\n") if line]
            for f in FILES}
    total = sum(len(r) for r in rows.values())
    rng = random.Random(seed)
    prompts, train = [], []
    for f, lines in rows.items():
        n = round(held_out * len(lines) / total)
        hold = set(rng.sample(range(len(lines)), n))
        prompts += [(f, json.loads(lines[i])["conversations"][0]["content"]) for i in sorted(hold)]
        train += [line for i, line in enumerate(lines) if i not in hold]
    rng.shuffle(train)
    (work / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    return prompts


def train_one(work: Path, args, weight: float) -> tuple[Path, float]:
    from minimind.train.reason import ReasonObjective
    from minimind.train.trainer import TrainConfig, train

    out = work / f"reason-w{weight:g}"
    cfg = TrainConfig(stage="reason", data=[str(work / "train.jsonl")], out=str(out), preset=args.preset,
                      tokenizer=str(SHARED / "tokenizer" / "minimind3"), max_steps=args.steps, batch_size=args.batch_size,
                      seq_len=args.seq_len, lr=args.lr, warmup_steps=args.steps // 20, val_fraction=0.0,
                      think_mix=args.think_mix, think_weight=weight, device=args.device, save_every=10**9,
                      keep_last=1, log_every=max(1, args.steps // 10), seed=args.seed, progress=False,
                      cache_dir=str(work / "cache"))
    started = time.perf_counter()
    train(cfg, ReasonObjective())
    return out, time.perf_counter() - started


def evaluate(model_dir: Path, prompts: list[tuple[str, str]], args, penalty: float) -> dict:
    from minimind.checkpoint import load
    from minimind.device import resolve_device

    model, tok = load(model_dir, device=str(resolve_device(args.device)))
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, repetition_penalty=penalty)
    result, started = {}, time.perf_counter()
    for thinking in (True, False):
        kinds, problems, examples, tagged = Counter(), Counter(), [], 0
        for i in range(0, len(prompts), args.gen_batch):
            chunk = prompts[i:i + args.gen_batch]
            ids = [tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True, open_thinking=thinking)
                   for _, p in chunk]
            for (source, _), c in zip(chunk, generate(model, tok, ids, params)):
                check = check_thinking(c.text, opened=thinking, finished=c.finish_reason == "stop")
                kinds[check.kind] += 1
                kinds[f"{check.kind} ({source.split('_')[1]})"] += 1
                tagged += "<think>" in c.text or "</think>" in c.text
                problems[check.problem] += bool(check.problem)
                if len(examples) < 2:
                    examples.append(c.text[:300])
        result["on" if thinking else "off"] = {"kinds": dict(kinds), "with_tags": tagged, "problems": dict(+problems),
                                                 "examples": examples}
    result["generate_s"] = time.perf_counter() - started
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/minimind-reasoning-bench")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 3.0], help="--think-weight values to compare")
    ap.add_argument("--think-mix", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--held-out", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--repetition-penalty", type=float, nargs="+", default=[1.1],
                    help="values to compare (a tiny model decoding greedily tends to loop)")
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared data at {SHARED}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prompts = split_data(work, args.held_out, args.seed)
    rows = []
    for weight in args.weights:
        model_dir, train_s = train_one(work, args, weight)
        for penalty in args.repetition_penalty:
            r = evaluate(model_dir, prompts, args, penalty)
            n = len(prompts)
            on, off = r["on"], r["off"]
            rows.append((weight, penalty, on["kinds"].get("think", 0) / n, off["with_tags"] / n,
                         off["kinds"].get("none", 0) / n, train_s, r["generate_s"]))
            print(json.dumps({"think_weight": weight, "repetition_penalty": penalty, **r}, ensure_ascii=False, indent=1),
                  flush=True)
    print(f"\n{args.preset}, {args.steps} steps x {args.batch_size} rows of {args.seq_len}, lr {args.lr:g}, "
          f"think-mix {args.think_mix:g}; {len(prompts)} held-out prompts, greedy, max {args.max_new_tokens} new tokens\n")
    print("| think-weight | repetition penalty | on: well-formed think + answer | off: with think tags "
          "| off: plain answer | train s | generate s |")
    print("|---|---|---|---|---|---|---|")
    for w, pen, on_ok, off_bad, off_ok, ts, gs in rows:
        print(f"| {w:g} | {pen:g} | {on_ok:.1%} | {off_bad:.1%} | {off_ok:.1%} | {ts:.0f} | {gs:.0f} |")


if __name__ == "__main__":
    main()
