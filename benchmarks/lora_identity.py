"""LoRA identity: does a small adapter give a model a new identity, on questions it never saw?

Recipe (all on ../shared/data, nothing downloaded):
  1. a base chat model that has never heard the new name: a fresh `nano` model (or
     --base-preset tiny) with the minimind3 tokenizer, SFT briefly on sft_sharegpt_zh_1k
     (skipped with --base DIR);
  2. lora_identity.jsonl with "MiniMind" renamed to --name (default Zephyr), so a claimed
     identity is visibly the adapter's; 80% of its conversations train the adapter
     (`minimind lora`, rank 16), 20% are held out; --replay N adds N general conversations
     from the base's own SFT data to the adapter's data (rehearsal), so the adapter learns
     when the name is the answer rather than that it always is;
  3. greedy answers, base vs base + adapter, to the held-out questions of the data set and
     to paraphrased identity questions written here (zh and en, none in the data), plus
     unrelated control questions (how often the adapter drags its name into other topics);
  4. the base weights' sha256 before and after, the merged model's max |logit difference|
     from base + adapter, adapter size vs model size, training time.

    python benchmarks/lora_identity.py
    python benchmarks/lora_identity.py --base out/sft --work /tmp/lora-identity --replay 80
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# Identity questions in other words than any in lora_identity.jsonl.
PARAPHRASES = [
    "Could you tell me what your name is?",
    "Who am I chatting with right now?",
    "Please introduce yourself briefly.",
    "What should I call you?",
    "Which assistant is answering me?",
    "Hey, what are you?",
    "请问你的名字是什么？",
    "我现在是在和谁聊天？",
    "简单介绍一下你自己吧。",
    "你是哪个助手？",
    "我该怎么称呼你？",
    "能说说你是谁吗？",
]
# Not about identity: the adapter should not answer these with its name.
CONTROLS = [
    "What is the capital of France?",
    "How many days are in a week?",
    "Give me a tip for sleeping better.",
    "Why is the sky blue?",
    "Name three fruits.",
    "What is 7 plus 5?",
    "一年有几个季节？",
    "请推荐一种健康的早餐。",
    "水的沸点是多少度？",
    "怎样才能学好英语？",
    "北京是哪个国家的首都？",
    "给我讲一个简短的故事。",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_base(work: Path, preset: str, steps: int) -> Path:
    from minimind.train.trainer import TrainConfig, train

    shutil.rmtree(work / "base", ignore_errors=True)
    t0 = time.perf_counter()
    base = train(
        TrainConfig(
            stage="sft",
            data=[str(SHARED / "minimind_format/sft_sharegpt_zh_1k.jsonl")],
            out=str(work / "base"),
            preset=preset,
            tokenizer=str(SHARED / "tokenizer/minimind3"),
            max_steps=steps,
            batch_size=16,
            seq_len=256,
            lr=2e-3,
            val_fraction=0.01,
            progress=False,
            log_every=50,
            save_every=10**6,
            cache_dir=str(work / "cache"),
        )
    )
    print(f"base built in {time.perf_counter() - t0:.0f}s: {base}", flush=True)
    return base


def split_identity_data(work: Path, name: str, seed: int, replay: int) -> tuple[Path, list[str]]:
    """Rename the identity, keep 80% of the conversations for training (plus `replay` general
    conversations from the base's SFT data); return the train file and the held-out
    conversations' first questions."""
    rows = [json.loads(line) for line in (SHARED / "minimind_format/lora_identity.jsonl").open(encoding="utf-8")]
    for row in rows:
        for m in row["conversations"]:
            m["content"] = m["content"].replace("MiniMind", name)
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * 0.8)
    general = [
        json.loads(line) for line in (SHARED / "minimind_format/sft_sharegpt_zh_1k.jsonl").open(encoding="utf-8")
    ]
    general = [r for r in general if name.lower() not in json.dumps(r, ensure_ascii=False).lower()]
    train_rows = rows[:cut] + random.Random(seed + 1).sample(general, replay)
    train_file = work / "identity_train.jsonl"
    train_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train_rows), encoding="utf-8")
    held_out = [r["conversations"][0]["content"] for r in rows[cut:]]
    return train_file, held_out


def answers(model, tok, questions: list[str]) -> list[str]:
    from minimind.infer import SamplingParams, generate

    prompts = [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q in questions]
    return [c.text for c in generate(model, tok, prompts, SamplingParams(max_new_tokens=48, temperature=0.0))]


def rate(texts: list[str], name: str) -> float:
    return sum(name.lower() in t.lower() for t in texts) / len(texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="a chat model directory to adapt (default: build one)")
    ap.add_argument("--work", default="/tmp/minimind-lora-identity", help="scratch folder")
    ap.add_argument("--name", default="Zephyr", help="the new identity (replaces MiniMind in the data)")
    ap.add_argument("--base-preset", default="nano", help="preset of the base built when no --base")
    ap.add_argument("--base-steps", type=int, default=150, help="SFT steps of the base built when no --base")
    ap.add_argument(
        "--replay",
        type=int,
        default=0,
        help="general conversations (the base's SFT data) mixed into the adapter's data",
    )
    ap.add_argument("--epochs", type=float, default=40.0, help="LoRA epochs over the training conversations")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from minimind.checkpoint import load
    from minimind.train.lora import merge_to_dir
    from minimind.train.trainer import TrainConfig, train

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.base) if args.base else build_base(work, args.base_preset, args.base_steps)
    train_file, held_out = split_identity_data(work, args.name, args.seed, args.replay)
    sha_before = sha256(base / "model.safetensors")

    shutil.rmtree(work / "adapter", ignore_errors=True)
    t0 = time.perf_counter()
    adapter = train(
        TrainConfig(
            stage="lora",
            data=[str(train_file)],
            out=str(work / "adapter"),
            init=str(base),
            epochs=args.epochs,
            batch_size=8,
            seq_len=128,
            lr=args.lr,
            weight_decay=0.0,
            val_fraction=0.0,
            lora_rank=args.rank,
            lora_alpha=2.0 * args.rank,
            progress=False,
            log_every=20,
            save_every=10**6,
            seed=args.seed,
            cache_dir=str(work / "cache"),
        )
    )
    train_s = time.perf_counter() - t0
    logged = [json.loads(line) for line in (adapter / "metrics.jsonl").open() if '"loss"' in line]
    losses, steps = [r["loss"] for r in logged], logged[-1]["step"]
    sha_after = sha256(base / "model.safetensors")

    plain, tok = load(base)
    adapted, _ = load(base, lora=adapter)
    sets = {
        "held-out data questions": held_out,
        "paraphrased (written here)": PARAPHRASES,
        "control (not identity)": CONTROLS,
    }
    results = {}
    for label, questions in sets.items():
        before, after = answers(plain, tok, questions), answers(adapted, tok, questions)
        results[label] = (len(questions), rate(before, args.name), rate(after, args.name))
        for q, a in list(zip(questions, after))[:3]:
            print(f"  [{label}] {q!r} -> {a[:80]!r}")

    merged_dir = merge_to_dir(base, adapter, work / "merged", force=True)
    merged, _ = load(merged_dir)
    ids = [tok.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True) for q in PARAPHRASES]
    with torch.no_grad():
        diff = max(
            (merged(torch.tensor([x])).logits - adapted(torch.tensor([x])).logits).abs().max().item() for x in ids
        )
        scale = max(adapted(torch.tensor([x])).logits.abs().max().item() for x in ids)

    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    model_bytes = (base / "model.safetensors").stat().st_size
    trainable = sum(p.numel() for n, p in adapted.named_parameters() if ".lora." in n)
    total = sum(p.numel() for n, p in plain.named_parameters())
    print()
    print(
        f"base {base} ({total / 1e6:.2f}M parameters); identity {args.name!r}; LoRA r={args.rank} "
        f"alpha={2 * args.rank}, {steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
        f"{args.replay} general conversations replayed"
    )
    print("| questions | n | base says the name | base + adapter says the name |")
    print("|---|---|---|---|")
    for label, (n, before, after) in results.items():
        print(f"| {label} | {n} | {before:.0%} | {after:.0%} |")
    print()
    print(
        f"| base weights sha256 before / after | {sha_before[:16]}... / {sha_after[:16]}... "
        f"({'unchanged' if sha_before == sha_after else 'CHANGED'}) |"
    )
    print(f"| merged vs base + adapter, max abs logit diff | {diff:.2e} (logits up to {scale:.1f}) |")
    print(
        f"| adapter size vs model size | {adapter_bytes / 1e6:.2f} MB vs {model_bytes / 1e6:.2f} MB "
        f"({trainable:,} vs {total:,} parameters, {100 * trainable / total:.2f}%) |"
    )
    print(f"| LoRA training time | {train_s:.0f}s ({steps} steps) |")


if __name__ == "__main__":
    main()
