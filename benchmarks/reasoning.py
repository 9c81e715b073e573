"""Does `minimind reason` teach the think-then-answer format, and only when asked?

1. Hold out --held-out prompts from the shared math data (GSM8K train and NuminaMath-CoT, in
   proportion to their sizes) and write the rest to WORK/train.jsonl.
2. For each --think-weight W and each --tag-penalty P: train a fresh --preset model with the
   minimind3 tokenizer by reasoning SFT alone (no pretraining: the format is what is
   measured, not the maths), the same seed and data for every model. A model an earlier run
   with the same settings left in --work is reused.
3. Teacher-forced, thinking off: how much probability each model puts on a think tag along
   the data's own answers to the held-out prompts (stray_tag_odds below): a continuous
   figure for the "no tags with thinking off" goal, much finer than counting failures.
4. Generate greedily, batched, for every held-out prompt twice: open_thinking on and off.
   --repetition-penalty (default 1.1) keeps the tiny model from looping. Each completion is
   classified by minimind.infer.thinking.check_thinking: "think" (a
   non-empty <think> block then a non-empty answer), "none" (no tags) or "malformed"
   (a completion cut off at --max-new-tokens counts as malformed); counts per source file too.
5. Print one table row per model: well-formed rate with thinking on, rate of replies with
   think tags with thinking off, the teacher-forced tag odds, training and generation time.

    python benchmarks/reasoning.py            # the figures in benchmarks/README.md (a GPU: ~5 min)
    python benchmarks/reasoning.py --steps 400 --seq-len 512 --max-new-tokens 512   # 2 CPU cores: ~1.5 h

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

import torch

from minimind.infer import SamplingParams, generate
from minimind.infer.thinking import check_thinking

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = ("sft_gsm8k_train.jsonl", "sft_numina_math_cot_1k.jsonl")


def split_data(work: Path, held_out: int, seed: int) -> list[tuple[str, str, str]]:
    """Write the training file; return the held-out (source file, user prompt, data's answer)."""
    # split("\n"), not splitlines(): the JSON strings hold U+2028 and friends, which are not
    # JSONL line ends
    rows = {
        f: [line for line in (SHARED / "minimind_format" / f).read_text(encoding="utf-8").split("\n") if line]
        for f in FILES
    }
    total = sum(len(r) for r in rows.values())
    rng = random.Random(seed)
    prompts, train = [], []
    for f, lines in rows.items():
        n = round(held_out * len(lines) / total)
        hold = set(rng.sample(range(len(lines)), n))
        turns = [json.loads(lines[i])["conversations"] for i in sorted(hold)]
        prompts += [(f, c[0]["content"], c[1]["content"]) for c in turns]
        train += [line for i, line in enumerate(lines) if i not in hold]
    rng.shuffle(train)
    (work / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    return prompts


def train_one(work: Path, args, weight: float, penalty: float) -> tuple[Path, float | None]:
    """Train one model, or reuse the one an earlier run of the same settings left in --work
    (train s is then None)."""
    from minimind.train.reason import ReasonObjective
    from minimind.train.trainer import TrainConfig, train

    out = work / (
        f"reason-{args.preset}-{args.steps}x{args.batch_size}x{args.seq_len}-lr{args.lr:g}-mix{args.think_mix:g}"
        f"-seed{args.seed}-w{weight:g}-p{penalty:g}"
    )
    if (out / "model.safetensors").is_file():
        print(f"reusing {out} (delete it to train again)", flush=True)
        return out, None
    cfg = TrainConfig(
        stage="reason",
        data=[str(work / "train.jsonl")],
        out=str(out),
        preset=args.preset,
        tokenizer=str(SHARED / "tokenizer" / "minimind3"),
        max_steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.steps // 20,
        val_fraction=0.0,
        think_mix=args.think_mix,
        think_weight=weight,
        tag_penalty=penalty,
        device=args.device,
        save_every=10**9,
        keep_last=1,
        log_every=max(1, args.steps // 10),
        seed=args.seed,
        progress=False,
        cache_dir=str(work / "cache"),
    )
    started = time.perf_counter()
    train(cfg, ReasonObjective())
    return out, time.perf_counter() - started


@torch.no_grad()
def stray_tag_odds(model, tok, prompts, device, batch_size: int = 16, seq_len: int = 1024) -> dict:
    """Teacher-forced, thinking off: the held-out prompt, the empty block, and the data's own
    answer as the direct reply (working and result, as direct training examples have it). At
    every answer token, the probability that the model writes <think> or </think> instead.
    A finer figure than counting greedy failures: `expected` is the mean number of tags a
    reply would contain if sampled at T = 1 along the data's path, `over_half` the share of
    replies where some position prefers a tag to every other token together (where greedy
    decoding along that path would write one), `worst` where the highest probability is
    (source file, answer token, the answer's length in tokens, the text just before it)."""
    from minimind.train.reason import ReasonObjective

    obj = ReasonObjective()
    obj.use_tokenizer(tok)
    sums, worst, where = [], [], None
    for i in range(0, len(prompts), batch_size):
        rows = []
        for source, prompt, answer in prompts[i : i + batch_size]:
            head = tok.encode_chat(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, open_thinking=False
            )
            rows.append((source, head, (head + tok.encode(answer))[:seq_len]))
        n = max(len(ids) for _, _, ids in rows)
        ids = torch.tensor([ids + [tok.pad_token_id] * (n - len(ids)) for _, _, ids in rows], device=device)
        logits = model(ids).logits.float()
        log_p = obj.tag_log_probs(logits.flatten(0, 1)).view(logits.shape[:2])
        for (source, head, full), lp in zip(rows, log_p):
            p = lp[len(head) - 1 : len(full) - 1].exp()  # the positions that predict the answer's tokens
            sums.append(float(p.sum()))
            worst.append(float(p.max()))
            if worst[-1] == max(worst):
                at = int(p.argmax())
                where = {
                    "source": source,
                    "token": at,
                    "of": len(p),
                    "before": tok.decode(full[len(head) : len(head) + at])[-200:],
                }
    return {
        "expected": sum(sums) / len(sums),
        "over_half": sum(w > 0.5 for w in worst) / len(worst),
        "max": max(worst),
        "worst": where,
    }


def evaluate(model_dir: Path, prompts: list[tuple[str, str]], args, penalty: float) -> dict:
    from minimind.checkpoint import load
    from minimind.device import resolve_device

    device = resolve_device(args.device)
    model, tok = load(model_dir, device=str(device))
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0, repetition_penalty=penalty)
    result, started = {"stray_tag_odds": stray_tag_odds(model, tok, prompts, device)}, time.perf_counter()
    for thinking in (True, False):
        kinds, problems, examples, tagged = Counter(), Counter(), [], 0
        for i in range(0, len(prompts), args.gen_batch):
            chunk = prompts[i : i + args.gen_batch]
            ids = [
                tok.encode_chat([{"role": "user", "content": p}], add_generation_prompt=True, open_thinking=thinking)
                for _, p, _ in chunk
            ]
            for (source, _, _), c in zip(chunk, generate(model, tok, ids, params)):
                check = check_thinking(c.text, opened=thinking, finished=c.finish_reason == "stop")
                kinds[check.kind] += 1
                kinds[f"{check.kind} ({source.split('_')[1]})"] += 1
                tagged += "<think>" in c.text or "</think>" in c.text
                problems[check.problem] += bool(check.problem)
                if len(examples) < 2:
                    examples.append(c.text[:300])
        result["on" if thinking else "off"] = {
            "kinds": dict(kinds),
            "with_tags": tagged,
            "problems": dict(+problems),
            "examples": examples,
        }
    result["generate_s"] = time.perf_counter() - started
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/minimind-reasoning-bench")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0], help="--think-weight values to compare")
    ap.add_argument(
        "--tag-penalties",
        type=float,
        nargs="+",
        default=[0.0, 1.0],
        help="--tag-penalty values to compare (each with every --weights value)",
    )
    ap.add_argument("--think-mix", type=float, default=0.7)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--held-out", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument(
        "--repetition-penalty",
        type=float,
        nargs="+",
        default=[1.1],
        help="values to compare (a tiny model decoding greedily tends to loop)",
    )
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
        for tag_penalty in args.tag_penalties:
            model_dir, train_s = train_one(work, args, weight, tag_penalty)
            for penalty in args.repetition_penalty:
                r = evaluate(model_dir, prompts, args, penalty)
                n = len(prompts)
                on, off, odds = r["on"], r["off"], r["stray_tag_odds"]
                rows.append(
                    (
                        weight,
                        tag_penalty,
                        penalty,
                        on["kinds"].get("think", 0) / n,
                        off["with_tags"] / n,
                        off["kinds"].get("none", 0) / n,
                        odds["expected"],
                        odds["over_half"],
                        train_s,
                        r["generate_s"],
                    )
                )
                print(
                    json.dumps(
                        {"think_weight": weight, "tag_penalty": tag_penalty, "repetition_penalty": penalty, **r},
                        ensure_ascii=False,
                        indent=1,
                    ),
                    flush=True,
                )
    print(
        f"\n{args.preset}, {args.steps} steps x {args.batch_size} rows of {args.seq_len}, lr {args.lr:g}, "
        f"think-mix {args.think_mix:g}; {len(prompts)} held-out prompts, greedy, max {args.max_new_tokens} new tokens\n"
    )
    print(
        "| think-weight | tag penalty | repetition penalty | on: well-formed think + answer | off: with think tags "
        "| off: plain answer | off, data's answer: expected tags per reply | replies with p(tag) > 0.5 | train s "
        "| generate s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w, tp, pen, on_ok, off_bad, off_ok, expected, over_half, ts, gs in rows:
        print(
            f"| {w:g} | {tp:g} | {pen:g} | {on_ok:.1%} | {off_bad:.1%} | {off_ok:.1%} "
            f"| {expected:.3f} | {over_half:.1%} "
            f"| {'reused' if ts is None else f'{ts:.0f}'} | {gs:.0f} |"
        )


if __name__ == "__main__":
    main()
