"""Distillation: does a student learn its teacher better from the teacher's logits (white-box)
or from the teacher's answers (black-box) than from the data's answers alone?

One fixed data set (default ../shared/data sft_gsm8k_train.jsonl) is split into training
conversations and held-out ones. A teacher (--teacher DIR, or one trained here: preset tiny,
--teacher-steps) and students of preset nano, all with the teacher's tokenizer and every
student starting from the same initial weights, trained the same number of steps on the same
rows:

  ce only        minimind distill --distill-alpha 0 (the gradient is plain SFT cross entropy;
                 the teacher only runs to be measured)
  kd ...         minimind distill with the given alpha / temperature / direction
  black-box      minimind generate-data (the teacher answers the training prompts), then
                 minimind sft on those answers

Reported for each student on the held-out conversations (assistant tokens, T = 1): KL(teacher ||
student) per token, and the cross entropy on the data's answers. Run:

    python benchmarks/distill.py --teacher /path/to/teacher            # or without: trains one
    python benchmarks/distill.py --device cuda --steps 400             # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from minimind.checkpoint import load_model
from minimind.config import preset
from minimind.data import build_datasets
from minimind.data.formats import read_records
from minimind.infer import SamplingParams
from minimind.infer.generate_data import generate_data
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import Tokenizer
from minimind.train.distill import distill_terms
from minimind.train.objectives import make_objective, packed_attention_mask
from minimind.train.trainer import TrainConfig, train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WHITE_BOX = [  # (name, alpha, temperature, direction)
    ("ce only (alpha 0)", 0.0, 1.0, "forward"),
    ("kd alpha 0.5 T 1.5 forward", 0.5, 1.5, "forward"),
    ("kd alpha 1 T 1 forward", 1.0, 1.0, "forward"),
    ("kd alpha 0.5 T 1.5 reverse", 0.5, 1.5, "reverse"),
]


def split(data: Path, out: Path, n_heldout: int, n_train: int | None) -> tuple[Path, Path]:
    rows = [json.dumps(r.data, ensure_ascii=False) for r in read_records(data, "sft")]
    heldout, rest = rows[-n_heldout:], rows[:-n_heldout][:n_train]
    (out / "train.jsonl").write_text("\n".join(rest) + "\n", encoding="utf-8")
    (out / "heldout.jsonl").write_text("\n".join(heldout) + "\n", encoding="utf-8")
    return out / "train.jsonl", out / "heldout.jsonl"


@torch.no_grad()
def heldout_kl(student, teacher, tokenizer, heldout: Path, seq_len: int, device, batch_size: int = 16) -> dict:
    """Per assistant token of the held-out conversations: KL(teacher || student) at T = 1 and
    the cross entropy of student and teacher on the data's answers (fp32)."""
    ds, _ = build_datasets([str(heldout)], tokenizer, "sft", seq_len=seq_len, val_fraction=0.0)
    sums = {"kl": 0.0, "ce": 0.0, "teacher_ce": 0.0, "tokens": 0}
    for i in range(0, len(ds), batch_size):
        b = {
            k: v.to(device) if torch.is_tensor(v) else v
            for k, v in ds.get_batch(range(i, min(i + batch_size, len(ds)))).items()
        }
        mask = packed_attention_mask(b)
        s = student(b["input_ids"], attention_mask=mask, position_ids=b["position_ids"]).logits[:, :-1]
        t = teacher(b["input_ids"], attention_mask=mask, position_ids=b["position_ids"]).logits[:, :-1]
        y = b["labels"][:, 1:]
        keep = y != -100
        terms = distill_terms(s[keep], t[keep], y[keep])
        sums["kl"] += terms["kl"].item()
        sums["ce"] += terms["ce"].item()
        sums["teacher_ce"] += torch.nn.functional.cross_entropy(t[keep].float(), y[keep], reduction="sum").item()
        sums["tokens"] += int(keep.sum())
    n = max(sums["tokens"], 1)
    return {"kl": sums["kl"] / n, "ce": sums["ce"] / n, "teacher_ce": sums["teacher_ce"] / n, "tokens": sums["tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "minimind_format" / "sft_gsm8k_train.jsonl"))
    ap.add_argument("--teacher", help="teacher model directory (default: train a tiny one here)")
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizer" / "minimind3"), help="for a teacher trained here")
    ap.add_argument("--student-preset", default="nano")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps of every student")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3, help="students start from scratch: a pretraining-like lr")
    ap.add_argument("--heldout", type=int, default=300, help="conversations held out for the measurement")
    ap.add_argument("--train-rows", type=int, default=None, help="use only this many training conversations")
    ap.add_argument("--bb-prompts", type=int, default=2000, help="training prompts the teacher answers (black-box)")
    ap.add_argument("--bb-max-new-tokens", type=int, default=320)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one); results.json goes there")
    args = ap.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="minimind-distill-"))
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} is not empty: every run starts from scratch, give a new --out")
    work.mkdir(parents=True, exist_ok=True)
    train_file, heldout = split(Path(args.data), work, args.heldout, args.train_rows)
    common = dict(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        val_fraction=0.0,
        log_every=50,
        save_every=10**9,
        device=args.device,
        progress=False,
        cache_dir=str(work / "cache"),
    )
    timings = {}
    if args.teacher:
        teacher_dir = Path(args.teacher)
    else:
        started = time.perf_counter()
        teacher_dir = train(
            TrainConfig(
                stage="sft",
                data=[str(train_file)],
                out=str(work / "teacher"),
                preset="tiny",
                tokenizer=args.tokenizer,
                max_steps=args.teacher_steps,
                lr=2e-3,
                seed=1,
                **common,
            )
        )
        timings["teacher"] = time.perf_counter() - started
    tokenizer = Tokenizer.from_dir(teacher_dir)
    # Every student starts from these weights (the trainer's --init).
    cfg = preset(args.student_preset, tokenizer=tokenizer)
    from minimind.checkpoint import save_model_dir

    init = save_model_dir(MiniMindForCausalLM(cfg).init_weights(3), work / "student_init", tokenizer)
    student_cfg = dict(init=str(init), max_steps=args.steps, lr=args.lr, seed=2, **common)

    results = {}
    for name, alpha, temperature, direction in WHITE_BOX:
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        started = time.perf_counter()
        train(
            TrainConfig(
                stage="distill",
                data=[str(train_file)],
                out=str(out),
                teacher=str(teacher_dir),
                distill_alpha=alpha,
                distill_temperature=temperature,
                distill_kl=direction,
                **student_cfg,
            ),
            make_objective("distill"),
        )
        results[name] = {"dir": out, "train_s": time.perf_counter() - started}

    started = time.perf_counter()
    prompts = work / "bb_prompts.jsonl"
    lines = train_file.read_text(encoding="utf-8").split("\n")[: args.bb_prompts]  # not splitlines(): \u2028 is text
    prompts.write_text("\n".join(line for line in lines if line) + "\n", encoding="utf-8")
    from minimind.device import resolve_device

    dev = resolve_device(args.device)
    summary = generate_data(
        teacher_dir,
        prompts,
        work / "bb_data.jsonl",
        force=True,
        batch_size=64,
        device=args.device,
        params=SamplingParams(max_new_tokens=args.bb_max_new_tokens, temperature=0.85, top_p=0.95, seed=0),
        say=lambda s: None,
    )
    gen_s = time.perf_counter() - started
    started = time.perf_counter()
    bb = train(TrainConfig(stage="sft", data=[summary["out"]], out=str(work / "black_box"), **student_cfg))
    results[f"black-box ({summary['written']} teacher answers)"] = {
        "dir": bb,
        "train_s": time.perf_counter() - started,
        "generate_s": gen_s,
    }

    teacher = load_model(teacher_dir, device=dev)
    print(
        f"\nteacher {teacher_dir}; students {args.student_preset}, {args.steps} steps x {args.batch_size} rows x "
        f"{args.seq_len} tokens, lr {args.lr}; held-out: {args.heldout} conversations of {args.data}; device {dev}"
    )
    print(
        f"black-box data: {summary['written']} of {summary['prompts']} prompts kept, "
        f"finish {summary['finish_reasons']}, "
        f"{gen_s:.0f} s to generate"
    )
    print(f"\n{'student':<40} {'KL(teacher||student)':>21} {'vs ce only':>11} {'CE on data':>11} {'train s':>8}")
    base = None
    for name, r in results.items():
        m = heldout_kl(load_model(r["dir"], device=dev), teacher, tokenizer, heldout, args.seq_len, dev)
        r.update(m, dir=str(r["dir"]))
        base = base or m["kl"]
        print(f"{name:<40} {m['kl']:>21.4f} {m['kl'] / base:>10.2f}x {m['ce']:>11.4f} {r['train_s']:>8.0f}")
    print(f"{'(teacher itself)':<40} {0.0:>21.4f} {'':>11} {m['teacher_ce']:>11.4f}")
    (work / "results.json").write_text(
        json.dumps(
            {"args": vars(args), "results": results, "timings": timings, "black_box_data": summary},
            indent=1,
            default=str,
        )
    )
    print(f"\n{work / 'results.json'}")


if __name__ == "__main__":
    main()
