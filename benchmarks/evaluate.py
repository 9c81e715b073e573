"""C-Eval (val split) accuracy and time of `minimind eval` on a model, and what batching buys.

    python benchmarks/evaluate.py --model out/quickstart
    python benchmarks/evaluate.py --model out/sft --limit 5 --shots 5

Runs the letter-log-probability scorer (minimind.evaluate.choice) on the shared C-Eval val
split (../shared/data/eval/ceval), with chat and raw prompts, at batch 16 and at batch 1
(one question per forward pass), and prints accuracy, questions per second and the speed-up of
batching; the batch-1 and batch-16 predictions are checked to agree.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from minimind import load
from minimind.evaluate.choice import evaluate_choice, load_exam

CEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval" / "ceval"


def timed(model, tok, exam, template: str, batch_size: int) -> tuple[dict, float]:
    start = time.perf_counter()
    result = evaluate_choice(model, tok, exam, template, batch_size, log=lambda *a: None)
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(CEVAL))
    ap.add_argument("--limit", type=int, help="questions per subject (default: all 1346)")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-1-limit", type=int, default=3, help="questions per subject for the batch-1 run (slow)")
    args = ap.parse_args()

    model, tok = load(args.model)
    exam = load_exam(args.data, "ceval", shots=args.shots, limit=args.limit)
    small = load_exam(args.data, "ceval", shots=args.shots, limit=args.batch_1_limit)
    print(
        f"{args.model}, C-Eval val {args.shots}-shot; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print("| prompts | questions | accuracy | mean over subjects | chance | P(letters) | seconds | questions/s |")
    print("|---|---|---|---|---|---|---|---|")
    for template in ("chat", "raw"):
        r, seconds = timed(model, tok, exam, template, 16)
        m = r["metrics"]
        print(
            f"| {template} | {m['n']} | {m['accuracy']:.2%} | {m['accuracy_macro']:.2%} | {m['chance']:.0%} | "
            f"{m['letter_mass']:.3f} | {seconds:.1f} | {m['n'] / seconds:.1f} |"
        )
    batched, t16 = timed(model, tok, small, "chat", 16)
    single, t1 = timed(model, tok, small, "chat", 1)
    same = batched["details"]["subjects"] == single["details"]["subjects"]
    n = batched["metrics"]["n"]
    print(
        f"\nbatching ({n} questions, chat prompts): batch 1 {n / t1:.1f} q/s, batch 16 {n / t16:.1f} q/s, "
        f"speed-up {t1 / t16:.2f}x; same per-subject results: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
