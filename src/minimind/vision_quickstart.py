"""`minimind quickstart --vision`: a model that sees, trained end to end on a CPU in minutes.

    shapes (drawn)  ->  tokenizer  ->  language model (new)  ->  + patch encoder + projector
                    ->  vlm sft (everything trains)  ->  held-out questions, and a blank image

Nothing is downloaded: data/shapes.py draws coloured shapes with Pillow and asks about their
colour, shape, count and position, in English and Chinese. The exam asks held-out pictures;
the same questions about a blank picture show what the model guesses without seeing (about
chance, or the most common answer), so the difference is what it learnt to see.
Run again with the same flags, a stopped run continues from its checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .checkpoint import load, save_model_dir
from .config import preset
from .data.shapes import CHANCE, TYPES, build_shape_set
from .data.vision import expand_images
from .errors import MiniMindError
from .files import atomic_write_text
from .infer import Engine, SamplingParams, Sequence
from .model import MiniMindForCausalLM
from .tokenizer import Tokenizer, train_tokenizer
from .train.trainer import TrainConfig, train
from .train.vlm import init_vlm

# The default run: about 5 minutes on 2 quiet CPU cores with bf16 units (2,400 steps took 6.2).
DEFAULTS = {"train": 3000, "test": 200, "steps": 2000, "batch_size": 16, "lr": 2e-3}


def vision_quickstart(
    out: str = "out/quickstart-vision",
    steps: int | None = None,
    train_images: int | None = None,
    test_images: int | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run the whole vision pipeline into `out`; returns the report (also OUT/report.json)."""
    try:
        import PIL  # noqa: F401  (drawing and reading pictures)
    except ImportError:
        raise MiniMindError('the vision quickstart needs Pillow: pip install -e ".[vision]"') from None
    started = time.time()
    out = Path(out)
    steps = steps or DEFAULTS["steps"]
    n_train = train_images or DEFAULTS["train"]
    n_test = test_images or min(DEFAULTS["test"], max(20, n_train // 15))  # a small run tests few
    print(f"== 1/4 drawing {n_train} + {n_test} pictures of shapes ==", flush=True)
    data = build_shape_set(out / "data", train=n_train, test=n_test, seed=seed)

    print("== 2/4 tokenizer and a new language model ==", flush=True)
    tok_dir, lm_dir, vlm_dir = out / "tokenizer", out / "lm", out / "vlm-init"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([str(data["train"])], vocab_size=640, out_dir=str(tok_dir), holdout_fraction=0)
    tok = Tokenizer.from_dir(tok_dir)
    if not (vlm_dir / "model.safetensors").is_file():
        config = preset("nano", tokenizer=tok, max_position_embeddings=512)
        save_model_dir(MiniMindForCausalLM(config).init_weights(seed), lm_dir, tok)
        init_vlm(lm_dir, "patch", vlm_dir, image_size=64, patch_size=16, hidden_size=128, seed=seed, force=True)

    print(f"== 3/4 training encoder, projector and language model together ({steps} steps) ==", flush=True)
    sft_dir = out / "vlm"
    done = (sft_dir / "model.safetensors").is_file() and not (sft_dir / "checkpoints").is_dir()
    if not done or _steps_of(sft_dir) != steps:
        cfg = TrainConfig.for_stage(
            "vlm_sft",
            data=[str(data["train"])],
            init=str(vlm_dir),
            out=str(sft_dir),
            train=["all"],
            lr=DEFAULTS["lr"],
            batch_size=DEFAULTS["batch_size"],
            seq_len=256,
            max_steps=steps,
            warmup_steps=min(20, steps),
            val_fraction=0.0,
            save_every=max(50, steps // 4),
            log_every=max(1, min(25, steps // 4)),
            seed=seed,
            device=device,
            progress=progress,
            resume=(sft_dir / "checkpoints").is_dir(),
            overwrite=not (sft_dir / "checkpoints").is_dir() and sft_dir.exists(),
        )
        train(cfg)

    print("== 4/4 held-out pictures, and a blank one ==", flush=True)
    model, tok = load(sft_dir, device="cpu")
    records = [json.loads(line) for line in Path(data["test"]).read_text(encoding="utf-8").splitlines()]
    seen = exam(model, tok, records, out / "data")
    blank = exam(model, tok, records, out / "data", blank=data["blank"])
    report = {"steps": steps, "seconds": round(time.time() - started), "seen": seen, "blank": blank}
    table = format_table(seen, blank)
    print(table, flush=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(out / "report.md", table + "\n")
    print(f"done in {report['seconds']}s. Model: {sft_dir}", flush=True)
    return report


def _steps_of(model_dir: Path) -> int | None:
    """The steps a finished run trained (from its metrics), to redo a run asked for other steps."""
    metrics = model_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=None)


def exam(model, tok, records: list[dict], root: Path, blank: Path | None = None, batch: int = 64) -> dict:
    """Greedy answers to every held-out question: accuracy per type, and a few examples."""
    from PIL import Image

    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    T = model.vision_config.image_tokens
    right = {k: [0, 0] for k in TYPES}
    examples = []
    for i in range(0, len(records), batch):
        rows = []
        for r in records[i : i + batch]:
            prompt = tok.encode_chat(expand_images(r["conversations"], T), add_generation_prompt=True)
            path = blank if blank is not None else root / r["images"][0]
            with Image.open(path) as image:
                rows.append(Sequence(model, tok, prompt, params, images=model.preprocess([image])))
        engine = Engine(model)
        engine.add(rows)
        while engine.sequences:
            engine.step()
        for r, s in zip(records[i : i + batch], rows):
            reply = s.completion().text.strip().rstrip("。.")
            ok = reply == r["answer"]
            right[r["type"]][0] += ok
            right[r["type"]][1] += 1
            if len(examples) < 4:
                examples.append({"question": r["conversations"][0]["content"][8:], "reply": reply, "right": ok})
    acc = {k: (a / n if n else 0.0) for k, (a, n) in right.items()}
    acc["all"] = sum(a for a, _ in right.values()) / max(1, sum(n for _, n in right.values()))
    return {"accuracy": acc, "counts": {k: n for k, (_, n) in right.items()}, "examples": examples}


def format_table(seen: dict, blank: dict) -> str:
    lines = [
        "exact match on held-out pictures (never seen in training):",
        "  | question      | chance | picture | blank picture |",
        "  |---------------|--------|---------|---------------|",
    ]
    for k in (*TYPES, "all"):
        n = sum(seen["counts"].values()) if k == "all" else seen["counts"][k]
        chance = f"{CHANCE[k] * 100:5.1f}%" if k in CHANCE else "     -"
        seen_k, blank_k = seen["accuracy"][k] * 100, blank["accuracy"][k] * 100
        lines.append(f"  | {f'{k} ({n})':<13} | {chance} | {seen_k:6.1f}% | {blank_k:12.1f}% |")
    for e in seen["examples"]:
        lines.append(f"  e.g. {e['question']} -> {e['reply']!r} ({'right' if e['right'] else 'wrong'})")
    return "\n".join(lines)


def check_args(steps, train_images, test_images) -> None:
    for name, value in (("--steps", steps), ("--train-images", train_images), ("--test-images", test_images)):
        if value is not None and value < 1:
            raise MiniMindError(f"{name} must be at least 1, got {value}")
