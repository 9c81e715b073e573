"""LoRA as a parameter mode of the one trainer, and the `minimind lora` verb.

    minimind lora --init BASE --data FILE.jsonl --out ADAPTER [--lora-rank 8 --lora-alpha 16
                  --lora-dropout 0.0 --lora-targets q_proj v_proj ...]
    minimind lora merge --model BASE --lora ADAPTER --out MERGED

Training is the SFT objective with `lora_rank > 0`: the trainer builds the model from --init,
`attach_lora` freezes it and adds the adapters (so AdamW, clipping, DDP and checkpoints see
only adapter parameters), and the published result in OUT is the adapter alone. Any stage
that shows the --lora-* flags (e.g. dpo) trains this way when --lora-rank is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MiniMindError


def attach_lora(model, cfg) -> None:
    """Freeze the model built from cfg.init and attach fresh adapters per the --lora-* flags."""
    from ..model.lora import DEFAULT_TARGETS, LoRAConfig, add_lora

    if not cfg.init:
        raise MiniMindError(f"minimind {cfg.stage} with LoRA adapts an existing model: pass --init BASE_DIR")
    if cfg.fsdp:
        raise MiniMindError("--fsdp is not needed with LoRA (the adapter is tiny): drop --fsdp to use DDP")
    config = LoRAConfig(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                        targets=list(cfg.lora_targets or DEFAULT_TARGETS))
    add_lora(model, config, seed=cfg.seed, base_dir=cfg.init)


def merge_to_dir(model_dir: str | Path, lora_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Base + adapter -> a plain model directory (the base's tokenizer copied along)."""
    from ..checkpoint import load, save_model_dir
    from ..export.common import prepare_out_dir
    from ..model.lora import merge

    if Path(out_dir).resolve() in (Path(model_dir).resolve(), Path(lora_dir).resolve()):
        raise MiniMindError(f"{out_dir}: --out must be a new directory, not the base or the adapter")
    model, tokenizer = load(model_dir, lora=lora_dir)  # refuses an adapter of another base
    out = prepare_out_dir(out_dir, force)
    return save_model_dir(merge(model), out, tokenizer)  # float32, as merge computed it


def cmd_merge(args) -> None:
    out = merge_to_dir(args.model, args.lora, args.out, force=args.force)
    print(f"wrote {out}: {args.model} with {args.lora} folded in (a plain model directory)")


def register(verbs) -> None:
    """`minimind lora` (training, the stage's flags) with the `merge` action beside it."""
    from .commands import add_train_parser

    p = add_train_parser(verbs, "lora")
    p.allow_abbrev = False  # else `merge --lora` reads as an abbreviation of --lora-rank & co.
    actions = p.add_subparsers(metavar="merge", title="other actions")
    m = actions.add_parser("merge", help="fold an adapter into its base: a plain model directory",
                           argument_default=argparse.SUPPRESS)
    m.add_argument("--model", required=True, help="the base model directory the adapter was trained on")
    m.add_argument("--lora", required=True, help="the adapter directory")
    m.add_argument("--out", required=True, help="the model directory to create")
    m.add_argument("--force", action="store_true", default=False, help="overwrite a non-empty --out")
    m.set_defaults(func=cmd_merge)
