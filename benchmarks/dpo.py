"""DPO on real preference data: does the loss fall and does the policy generalise?

Recipe (all on ../shared/data, nothing downloaded):
  1. an SFT model with the minimind3 tokenizer (the pairs are Chinese medical Q&A): a fresh
     `tiny` model pretrained briefly on the text of two shared chat sets, then SFT on them
     (skipped with --sft DIR);
  2. `minimind dpo` on dpo_medicalgpt_zh_500.jsonl with 20% of the pairs held out, at our
     default learning rate and at MiniMind's 4e-8 (extra rates with --lrs);
  3. prints, per run: the training loss of the first and last steps, the held-out loss and
     reward accuracy of the trained policy, the time; and the padding of random batches
     against length-grouped ones.

    python benchmarks/dpo.py                     # builds the SFT model, then the DPO runs
    python benchmarks/dpo.py --sft out/sft --lrs 1e-6 2e-5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MINIMIND_LR = 4e-8  # trainer/train_dpo.py's default


def chat_text_corpus(files: list[Path], out: Path) -> Path:
    """{"text"} documents from the messages of chat files: pretraining text in the pairs' language."""
    with out.open("w", encoding="utf-8") as f:
        for path in files:
            for line in path.open(encoding="utf-8"):
                messages = json.loads(line)["conversations"]
                f.write(
                    json.dumps(
                        {"text": "\n".join(m["content"] for m in messages if m.get("content"))}, ensure_ascii=False
                    )
                    + "\n"
                )
    return out


def build_sft(work: Path, shared: Path, pretrain_steps: int, sft_steps: int) -> Path:
    from minimind.train.trainer import TrainConfig, train

    chats = [
        shared / "minimind_format/sft_sharegpt_zh_1k.jsonl",
        shared / "minimind_format/lora_medical_medicalgpt_1k.jsonl",
    ]
    text = chat_text_corpus(chats, work / "pretrain_text.jsonl")
    for stage in ("pretrain", "sft"):
        shutil.rmtree(work / stage, ignore_errors=True)
    common = {"progress": False, "log_every": 50, "save_every": 10**6, "cache_dir": str(work / "cache")}
    t0 = time.perf_counter()
    pre = train(
        TrainConfig(
            stage="pretrain",
            data=[str(text)],
            out=str(work / "pretrain"),
            preset="tiny",
            tokenizer=str(shared / "tokenizer/minimind3"),
            max_steps=pretrain_steps,
            batch_size=16,
            seq_len=512,
            lr=2e-3,
            val_fraction=0.01,
            **common,
        )
    )
    sft = train(
        TrainConfig(
            stage="sft",
            data=[str(c) for c in chats],
            out=str(work / "sft"),
            init=str(pre),
            max_steps=sft_steps,
            batch_size=16,
            seq_len=512,
            lr=1e-3,
            val_fraction=0.01,
            **common,
        )
    )
    print(f"SFT model built in {time.perf_counter() - t0:.0f}s: {sft}", flush=True)
    return sft


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_dpo(sft: Path, data: Path, out: Path, lr: float, epochs: float, **kw) -> dict:
    from minimind.train.dpo import DPOObjective
    from minimind.train.trainer import TrainConfig, train

    settings = {
        "lr": lr,
        "epochs": epochs,
        "val_fraction": 0.2,
        "eval_batches": 1000,
        "log_every": 1,
        "save_every": 10**6,
        "progress": False,
        **kw,
    }
    t0 = time.perf_counter()
    train(TrainConfig.for_stage("dpo", data=[str(data)], out=str(out), init=str(sft), **settings), DPOObjective())
    seconds = time.perf_counter() - t0
    rows = records(out)
    steps = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r][-1]
    k = max(1, len(steps) // 10)  # first and last 10% of the steps
    mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)
    return {
        "lr": lr,
        "steps": len(steps),
        "first_loss": mean(steps[:k], "loss"),
        "last_loss": mean(steps[-k:], "loss"),
        "last_train_acc": mean(steps[-k:], "reward_accuracy"),
        "val_loss": val["val_loss"],
        "val_reward_accuracy": val["val_reward_accuracy"],
        "val_reward_margin": val["val_reward_margin"],
        "seconds": seconds,
    }


def padding_report(sft: Path, data: Path, batch_size: int, seq_len: int) -> tuple[float, float]:
    """Padding share of one epoch: random batches (pad to the longest) vs length-grouped ones."""
    from minimind.data.batches import epoch_order
    from minimind.data.pairs import (
        build_pair_datasets,
        length_grouped_batches,
        padding_fraction,
    )
    from minimind.tokenizer import Tokenizer

    ds, _ = build_pair_datasets([str(data)], Tokenizer.from_dir(sft), seq_len, 0.2, 42)
    order = epoch_order(len(ds), 42, 0)
    random_batches = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return padding_fraction(ds, random_batches), padding_fraction(
        ds, length_grouped_batches(ds.lengths, batch_size, 42, 0)
    )


def main(argv=None) -> int:
    from minimind.train.commands import STAGE_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default=str(SHARED), help="the shared data folder")
    p.add_argument("--work", default="out/bench_dpo", help="where models and runs are written")
    p.add_argument("--sft", help="use this SFT model directory (minimind3 tokenizer) instead of building one")
    p.add_argument("--pretrain-steps", type=int, default=800)
    p.add_argument("--sft-steps", type=int, default=300)
    p.add_argument("--epochs", type=float, default=2.0, help="DPO epochs per run")
    p.add_argument("--lrs", type=float, nargs="*", default=[], help="extra learning rates to compare")
    args = p.parse_args(argv)
    shared, work = Path(args.shared), Path(args.work)
    data = shared / "minimind_format/dpo_medicalgpt_zh_500.jsonl"
    if not data.is_file():
        print(f"shared data not found at {shared} (--shared DIR)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    sft = Path(args.sft) if args.sft else build_sft(work, shared, args.pretrain_steps, args.sft_steps)
    default_lr = STAGE_DEFAULTS["dpo"]["lr"]
    results = []
    for lr in [default_lr, MINIMIND_LR, *args.lrs]:
        out = work / f"dpo_lr{lr:g}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
        results.append(run_dpo(sft, data, out, lr, args.epochs))
        print(json.dumps(results[-1]), flush=True)
    d = STAGE_DEFAULTS["dpo"]
    rand, grouped = padding_report(sft, data, d["batch_size"], d["seq_len"])
    print(
        f"\nDPO on dpo_medicalgpt_zh_500 (400 train / 100 held-out pairs), {args.epochs:g} epochs, "
        f"batch {d['batch_size']} pairs, seq_len {d['seq_len']}, beta 0.1, sigmoid loss"
    )
    print(
        "| lr | steps | train loss first -> last | held-out loss | held-out reward accuracy | held-out margin | time |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        tag = " (default)" if r["lr"] == default_lr else " (MiniMind)" if r["lr"] == MINIMIND_LR else ""
        print(
            f"| {r['lr']:g}{tag} "
            f"| {r['steps']} | {r['first_loss']:.4f} -> {r['last_loss']:.4f} | {r['val_loss']:.4f} "
            f"| {100 * r['val_reward_accuracy']:.1f}% | {r['val_reward_margin']:+.3f} | {r['seconds']:.0f}s |"
        )
    print(f"\npadding of one epoch: random batches {100 * rand:.1f}%, length-grouped batches {100 * grouped:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
