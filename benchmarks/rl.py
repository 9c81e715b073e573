"""Does RL visibly work on a CPU? GRPO (and PPO) against their SFT base on a task with verifiable answers.

    python benchmarks/rl.py                     # GRPO, seeds 0 1 2
    python benchmarks/rl.py --algo grpo ppo     # both, from the same SFT base of each seed
    python benchmarks/rl.py --seeds 0 --rl-steps 40

The task: addition word problems ("Tom has 23 apples and gets 19 more. How many apples now?"),
in MiniMind's RLAIF format with `gt`, answered by a number. The prompt is the question as the
user turn of the chat template; the reply is the number alone. Everything is made here, nothing
is downloaded:
  1. SFT data with noisy demonstrations, as real SFT data is: of the problems that need a
     carry, a --forget-carry share (60%) are answered as a child who forgets to carry the one
     would (23 + 19 = 32). A small tokenizer is trained on it;
  2. the SFT base: a fresh `nano` model (0.45M parameters) fine-tuned on it. It learns both
     habits, and greedy decoding picks the more frequent, wrong one on carrying problems;
  3. RL from the base on other problems (prompts only, the reward is `exact_answer` against
     `gt`): GRPO compares the 8 replies of a prompt; PPO gets the same prompts, replies and
     steps, its critic (--critic-lr) and GAE making the advantages;
  4. greedy exact match of each model on --eval problems none of them saw, overall and on
     those that need a carry.
The models are saved as model directories under --work (seedN/sft, seedN/grpo, seedN/ppo).
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
    held = [(q, a, a != c) for q, a, c in rows[n_sft + n_rl :]]

    def convo(q, reply):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]

    return {
        "sft": write(work / "sft.jsonl", [{"conversations": convo(q, f"{a}")} for q, a in sft]),
        "rl": write(work / "rl.jsonl", [{"conversations": convo(q, ""), "gt": [str(a)]} for q, a in rl]),
        "eval": held,
    }


def exact_match(model_dir: Path, problems: list[tuple[str, int, bool]]) -> tuple[float, float]:
    """Greedy exact match on all problems, and on those that need a carry."""
    model, tok = load(model_dir)
    prompts = [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q, _, _ in problems]
    done = generate(model, tok, prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    right = [exact_answer(c.text, {"gt": [str(a)]}) for c, (_, a, _) in zip(done, problems)]
    carry = [r for r, (_, _, needs_carry) in zip(right, problems) if needs_carry]
    return sum(right) / len(right), sum(carry) / max(len(carry), 1)


def run_seed(seed: int, args) -> dict:
    work = Path(args.work) / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, seed, args.sft_examples, args.rl_prompts, args.eval, args.forget_carry)
    train_tokenizer([str(data["sft"])], vocab_size=400, out_dir=str(work / "tokenizer"))
    common = dict(dtype=args.dtype, progress=False, seed=seed, log_every=50, overwrite=True)
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
    row = {"seed": seed, "sft_min": (time.perf_counter() - t0) / 60, "sft": exact_match(work / "sft", data["eval"])}
    for algo in args.algo:
        t1 = time.perf_counter()
        # the same prompts, replies per prompt and steps for both: PPO's critic and GAE make the
        # advantages where GRPO compares the 8 replies of a prompt
        own = {"loss": args.loss} if algo == "grpo" else {"critic_lr": args.critic_lr}
        train(
            TrainConfig.for_stage(
                algo,
                data=[str(data["rl"])],
                init=str(work / "sft"),
                out=str(work / algo),
                max_steps=args.rl_steps,
                batch_size=args.rl_batch,
                num_generations=8,
                max_gen_len=8,
                seq_len=128,
                lr=args.rl_lr,
                iterations=2,
                save_every=args.rl_steps - args.rl_steps % 2 or 2,
                kl_beta=0.0,
                reward="exact_answer=1",
                **own,
                **common,
            )
        )
        row[f"{algo}_min"] = (time.perf_counter() - t1) / 60
        row[algo] = exact_match(work / algo, data["eval"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", default="out/bench-rl")
    ap.add_argument("--sft-examples", type=int, default=3000)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--rl-prompts", type=int, default=2000)
    ap.add_argument(
        "--algo", nargs="+", default=["grpo"], choices=["grpo", "ppo"], help="the RL stages, each from the same base"
    )
    ap.add_argument("--rl-steps", type=int, default=150, help="RL optimizer steps (2 per batch of rollouts)")
    ap.add_argument("--rl-batch", type=int, default=32, help="prompts per step (8 replies each)")
    ap.add_argument("--rl-lr", type=float, default=5e-5, help="the policy's learning rate")
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
        f"\naddition word problems, {args.eval} held-out, greedy exact match (in brackets: on those "
        f"that need a carry); SFT {args.sft_steps} steps, RL {args.rl_steps} steps of {args.rl_batch} "
        f"prompts x 8 replies, lr {args.rl_lr:g}, loss {args.loss}, ppo critic lr {args.critic_lr:g}"
    )
    head = "| seed | SFT base | SFT min |" + "".join(
        f" after {a.upper()} | gain | {a.upper()} min |" for a in args.algo
    )
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = f"| {r['seed']} | {r['sft'][0]:.1%} ({r['sft'][1]:.0%}) | {r['sft_min']:.1f} |"
        for a in args.algo:
            gain = 100 * (r[a][0] - r["sft"][0])
            line += f" {r[a][0]:.1%} ({r[a][1]:.0%}) | {gain:+.1f} pt | {r[f'{a}_min']:.1f} |"
        print(line)


if __name__ == "__main__":
    main()
