"""Does agentic RL visibly work on a CPU? `minimind agent` against its SFT base, scored by
`minimind eval --task toolcall` (tool-call validity and answer accuracy) on held-out prompts.

    python benchmarks/rl_agent.py                     # seed 0
    python benchmarks/rl_agent.py --seeds 0 1 2 --rl-steps 300
    python benchmarks/rl_agent.py --quick             # a smoke run: every stage, tiny sizes

The task: "What is 37 times 48?" in MiniMind's agent-RL format (a system message offering the
built-in `calculate_math` tool, `gt` the product). Two-digit products are beyond a nano model,
so the way to the answer is to call the calculator and copy its result. Everything is made here,
nothing is downloaded:
  1. a small tokenizer trained on the task's rendered conversations;
  2. the SFT base: a fresh `nano` model fine-tuned on --sft-examples conversations of which a
     --noise share are bad demonstrations, half calling the calculator with a wrong argument
     name (`expr`: an invalid call, answered with an error) and half answering without a call,
     both then stating a wrong guess; the rest call the tool right and state its result. The
     answer quotes the number ('The answer is "2592".') as the tool's JSON does, so the digits
     are the same tokens in both (byte-level BPE merges " 2592" and "2592" differently) and
     stating the result is copying it;
  3. `minimind agent` from the base on other prompts, rewarded by answer_in_text=1 (the product
     stated in the final reply) and tool_calls=0.5 ((valid - invalid) / calls);
  4. `minimind eval --task toolcall` (greedy, 3 turns) of both on --eval held-out prompts.
Both models are saved as model directories under --work. Reported per seed: validity and
accuracy before and after, and the minutes each stage took. Figures need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from minimind.data.template import render_minimind3
from minimind.rl.tools import BUILTIN_SCHEMAS, ToolBox
from minimind.tokenizer import SPECIAL_TOKENS, train_tokenizer
from minimind.train.config import TrainConfig
from minimind.train.trainer import train

CALC = [s for s in BUILTIN_SCHEMAS if s["function"]["name"] == "calculate_math"]
SYSTEM = {"role": "system", "content": "", "tools": json.dumps(CALC, ensure_ascii=False)}


def call(arguments: dict) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": json.dumps([{"name": "calculate_math", "arguments": arguments}]),
    }


def conversation(a: int, b: int, rng: random.Random, noise: float) -> list[dict]:
    """A solved prompt: right (call, result, answer) or, with probability `noise`, a bad demonstration."""
    box = ToolBox(["calculate_math"])
    question = {"role": "user", "content": f"What is {a} times {b}?"}
    guess = a * b + rng.choice([-1, 1]) * rng.randint(1, 99)
    if rng.random() >= noise:
        result = box.call("calculate_math", {"expression": f"{a}*{b}"}).observation
        answer = json.loads(result)["result"]
        return [SYSTEM, question, call({"expression": f"{a}*{b}"}), {"role": "tool", "content": result}] + [
            {"role": "assistant", "content": f'The answer is "{answer}".'}
        ]
    if rng.random() < 0.5:  # a call with a wrong argument name: the tool answers with an error
        error = box.call("calculate_math", {"expr": f"{a}*{b}"}).observation
        return [SYSTEM, question, call({"expr": f"{a}*{b}"}), {"role": "tool", "content": error}] + [
            {"role": "assistant", "content": f'The answer is "{guess}".'}
        ]
    return [SYSTEM, question, {"role": "assistant", "content": f'The answer is "{guess}".'}]


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def make_data(work: Path, seed: int, n_sft: int, n_rl: int, n_eval: int, noise: float) -> dict:
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n_sft + n_rl + n_eval:
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        if (a, b) not in seen:
            seen.add((a, b))
            pairs.append((a, b))
    sft = [{"conversations": conversation(a, b, rng, noise)} for a, b in pairs[:n_sft]]

    def prompt(a, b):  # the agent-RL format: an assistant placeholder and the answer in gt
        conv = [SYSTEM, {"role": "user", "content": f"What is {a} times {b}?"}, {"role": "assistant", "content": ""}]
        return {"conversations": conv, "gt": [str(a * b)]}

    # Text for the tokenizer: the rendered conversations without special tokens and blank lines
    # (like MiniMind's, the tokenizer then has no "\n\n" token; the template's "</think>\n\n"
    # tokenizes the same in a generation prompt and in a whole conversation).
    texts = [render_minimind3(r["conversations"]) or "" for r in sft]
    for special in SPECIAL_TOKENS:
        texts = [t.replace(special, " ") for t in texts]
    texts = [re.sub(r"\n\s*\n", "\n", t) for t in texts]
    return {
        "sft": write(work / "sft.jsonl", sft),
        "rl": write(work / "agent_rl.jsonl", [prompt(a, b) for a, b in pairs[n_sft : n_sft + n_rl]]),
        "eval": write(work / "agent_rl_heldout.jsonl", [prompt(a, b) for a, b in pairs[n_sft + n_rl :]]),
        "text": write(work / "tokenizer_text.jsonl", [{"text": t} for t in texts]),
    }


def toolcall(model_dir: Path, data: Path, max_new_tokens: int) -> dict:
    """`minimind eval --task toolcall` on the held-out file, as a user runs it; its metrics."""
    cmd = [sys.executable, "-m", "minimind.cli", "eval", "--model", str(model_dir), "--task", "toolcall"]
    cmd += ["--data", str(data), "--max-turns", "3", "--max-new-tokens", str(max_new_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"eval failed:\n{done.stderr[-3000:]}")
    print(*[line for line in done.stdout.splitlines() if line.startswith("toolcall")], sep="\n", flush=True)
    return json.loads((model_dir / "eval" / "toolcall.json").read_text())["metrics"]


def run_seed(seed: int, args) -> dict:
    work = Path(args.work) / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work, seed, args.sft_examples, args.rl_prompts, args.eval, args.noise)
    train_tokenizer([str(data["text"])], vocab_size=args.vocab, out_dir=str(work / "tokenizer"))
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
    train(
        TrainConfig.for_stage(
            "agent",
            data=[str(data["rl"])],
            init=str(work / "sft"),
            out=str(work / "agent"),
            max_steps=args.rl_steps,
            batch_size=args.rl_batch,
            num_generations=args.generations,
            max_gen_len=args.max_gen_len,
            max_turns=3,
            seq_len=384,
            lr=args.rl_lr,
            iterations=2,
            save_every=args.rl_steps - args.rl_steps % 2 or 2,
            kl_beta=0.0,
            loss=args.loss,
            reward="answer_in_text=1,tool_calls=0.5",
            **common,
        )
    )
    t2 = time.perf_counter()
    before = toolcall(work / "sft", data["eval"], args.max_gen_len)
    after = toolcall(work / "agent", data["eval"], args.max_gen_len)
    return {"seed": seed, "sft": before, "rl": after, "sft_min": (t1 - t0) / 60, "rl_min": (t2 - t1) / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--work", default="out/bench-rl-agent")
    ap.add_argument("--sft-examples", type=int, default=2000)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--noise", type=float, default=0.7, help="share of bad SFT demonstrations")
    ap.add_argument("--rl-prompts", type=int, default=1000)
    ap.add_argument("--rl-steps", type=int, default=200, help="optimizer steps (2 per batch of rollouts)")
    ap.add_argument("--rl-batch", type=int, default=16, help="prompts per batch of rollouts")
    ap.add_argument("--generations", type=int, default=4, help="trajectories per prompt")
    ap.add_argument("--rl-lr", type=float, default=3e-5)
    ap.add_argument("--max-gen-len", type=int, default=48, help="tokens per reply (rollouts and eval)")
    ap.add_argument("--loss", default="cispo", choices=["cispo", "grpo", "dr_grpo"])
    ap.add_argument("--eval", type=int, default=200, help="held-out prompts")
    ap.add_argument("--vocab", type=int, default=800)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every stage runs")
    args = ap.parse_args()
    if args.quick:
        args.sft_examples, args.sft_steps, args.rl_prompts, args.rl_steps = 200, 30, 32, 4
        args.rl_batch, args.eval = 4, 16
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = [run_seed(s, args) for s in args.seeds]
    print(
        f"\n{args.eval} held-out calculator prompts, `minimind eval --task toolcall` (greedy, 3 turns); "
        f"SFT {args.sft_steps} steps on {args.noise:.0%} bad demonstrations, agent {args.rl_steps} steps "
        f"({args.loss}, {args.rl_batch} prompts x {args.generations} trajectories)"
    )
    print("| seed | validity SFT | validity agent | accuracy SFT | accuracy agent | SFT min | agent min |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, a = r["sft"], r["rl"]
        print(
            f"| {r['seed']} | {b['validity']:.1%} | {a['validity']:.1%} | {b['accuracy']:.1%} | {a['accuracy']:.1%} "
            f"| {r['sft_min']:.1f} | {r['rl_min']:.1f} |"
        )


if __name__ == "__main__":
    main()
