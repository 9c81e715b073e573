"""Does RL visibly work on a CPU? GRPO (or PPO) against its SFT base on a task with verifiable answers.

    python benchmarks/rl.py                     # seeds 0 1 2
    python benchmarks/rl.py --seeds 0 --grpo-steps 40
    python benchmarks/rl.py --algo ppo          # PPO on the same task, base and budget

The task: addition word problems ("Tom has 23 apples and buys 19 more. How many now?"), in
MiniMind's RLAIF format with `gt`, answered by a number. Everything is made here, nothing is
downloaded:
  1. a small tokenizer trained on the task's text;
  2. the SFT base: a fresh `nano` model fine-tuned on --sft-examples solved problems for
     --sft-steps steps, stopped early on purpose, so it knows the format and gets some sums right;
  3. GRPO from the base on other problems (prompts only, the reward is `exact_answer`); with
     --algo ppo, PPO with the same prompts, replies and steps: its critic (--critic-lr) and GAE
     make the advantages instead of the group of 8 replies;
  4. exact match of both, greedy, on --eval problems neither saw.
Both models are saved as model directories under --work. Reported per seed: the base's and the
RL model's held-out exact match, the gain in points, and the minutes each stage took.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch

from minimind.checkpoint import load
from minimind.infer import SamplingParams, generate
from minimind.rl.rewards import exact_answer
from minimind.tokenizer import train_tokenizer
from minimind.train.config import TrainConfig
from minimind.train.trainer import train

NAMES = ["Tom", "Ana", "Li Lei", "Sara", "Omar", "Mei", "Ivan", "Zoe"]
THINGS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "eggs"]


def problem(rng: random.Random) -> tuple[str, int, int]:
    """A word problem, its answer, and the answer of a child who forgets to carry the one."""
    a, b = rng.randint(10, 69), rng.randint(10, 29)
    who, what = rng.choice(NAMES), rng.choice(THINGS)
    no_carry = (a // 10 + b // 10) * 10 + (a + b) % 10
    return f"{who} has {a} {what} and gets {b} more. How many {what} now?", a + b, no_carry


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_data(work: Path, seed: int, n_sft: int, n_rl: int, n_eval: int, forget_carry: float) -> dict:
    """SFT, RL and held-out problems. In the SFT answers, a `forget_carry` share of the problems
    that need a carry are answered without it (23 + 19 = 32): noisy demonstrations, as real SFT
    data is. The SFT model learns both habits; the exact-answer reward tells RL which is right."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n_sft + n_rl + n_eval:
        q, answer, no_carry = problem(rng)
        if q not in seen:
            seen.add(q)
            rows.append((q, answer, no_carry))
    sft = [(q, c if rng.random() < forget_carry else a) for q, a, c in rows[:n_sft]]
    rl = [(q, a) for q, a, _ in rows[n_sft : n_sft + n_rl]]
    held = [(q, a) for q, a, _ in rows[n_sft + n_rl :]]

    def convo(q, reply):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]

    return {
        "sft": write(work / "sft.jsonl", [{"conversations": convo(q, f"{a}")} for q, a in sft]),
        "rl": write(work / "rl.jsonl", [{"conversations": convo(q, ""), "gt": [str(a)]} for q, a in rl]),
        "eval": [(q, a) for q, a in held],
    }


def exact_match(model_dir: Path, problems: list[tuple[str, int]]) -> float:
    model, tok = load(model_dir)
    prompts = [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q, _ in problems]
    done = generate(model, tok, prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    return sum(exact_answer(c.text, {"gt": [str(a)]}) for c, (_, a) in zip(done, problems)) / len(problems)


def run_seed(seed: int, args) -> dict:
    work = Path(args.work) / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, seed, args.sft_examples, args.rl_prompts, args.eval, args.forget_carry)
    train_tokenizer([str(data["sft"])], vocab_size=400, out_dir=str(work / "tokenizer"))
    common = dict(dtype=args.dtype, progress=False, seed=seed, log_every=10, overwrite=True)
    t0 = time.perf_counter()
    train(
        TrainConfig.for_stage(
            "sft",
            data=[str(data["sft"])],
            preset="nano",
            tokenizer=str(work / "tokenizer"),
            out=str(work / "sft"),
            max_steps=args.sft_steps,
            batch_size=16,
            seq_len=256,
            lr=2e-3,
            save_every=args.sft_steps,
            val_fraction=0.0,
            **common,
        )
    )
    t1 = time.perf_counter()
    own = {"loss": args.loss} if args.algo == "grpo" else {"critic_lr": args.critic_lr}
    train(
        TrainConfig.for_stage(
            args.algo,
            data=[str(data["rl"])],
            init=str(work / "sft"),
            out=str(work / args.algo),
            max_steps=args.grpo_steps,
            batch_size=args.grpo_batch,
            num_generations=8,
            max_gen_len=8,
            seq_len=128,
            lr=args.grpo_lr,
            iterations=2,
            save_every=args.grpo_steps - args.grpo_steps % 2 or 2,
            kl_beta=0.0,
            reward="exact_answer=1",
            **own,
            **common,
        )
    )
    t2 = time.perf_counter()
    before, after = exact_match(work / "sft", data["eval"]), exact_match(work / args.algo, data["eval"])
    return {"seed": seed, "sft": before, "rl": after, "sft_min": (t1 - t0) / 60, "rl_min": (t2 - t1) / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="out/bench-rl")
    ap.add_argument("--sft-examples", type=int, default=3000)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--rl-prompts", type=int, default=2000)
    ap.add_argument("--algo", default="grpo", choices=["grpo", "ppo"], help="the RL stage (default grpo)")
    ap.add_argument("--grpo-steps", type=int, default=300, help="RL steps (grpo or ppo)")
    ap.add_argument("--grpo-batch", type=int, default=32, help="prompts per step (8 replies each)")
    ap.add_argument("--grpo-lr", type=float, default=3e-5, help="the policy's learning rate (grpo or ppo)")
    ap.add_argument("--critic-lr", type=float, default=1e-4, help="ppo: the critic's learning rate")
    ap.add_argument(
        "--forget-carry", type=float, default=0.6, help="share of carrying SFT answers written without the carry"
    )
    ap.add_argument("--loss", default="cispo", choices=["cispo", "grpo", "dr_grpo"])
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--dtype", default="fp32")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = [run_seed(s, args) for s in args.seeds]
    print(
        f"\naddition word problems, {args.eval} held-out, greedy exact match; "
        + (f"loss {args.loss}, " if args.algo == "grpo" else f"critic lr {args.critic_lr:g}, ")
        + f"SFT {args.sft_steps} steps, {args.algo.upper()} {args.grpo_steps} steps"
    )
    name = args.algo.upper()
    print(f"| seed | SFT base | after {name} | gain | SFT min | {name} min |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['sft']:.1%} | {r['rl']:.1%} | {100 * (r['rl'] - r['sft']):+.1f} pt "
            f"| {r['sft_min']:.1f} | {r['rl_min']:.1f} |"
        )


if __name__ == "__main__":
    main()
