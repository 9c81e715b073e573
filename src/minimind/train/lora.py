"""LoRA as a parameter mode of the one trainer, and folding an adapter into its base.

    minimind lora --init BASE --data FILE.jsonl --out ADAPTER [--lora-rank 8 --lora-alpha 16
                  --lora-dropout 0.0 --lora-targets q_proj v_proj ...]
    minimind lora merge --model BASE --lora ADAPTER --out MERGED

Training is the SFT objective with `lora_rank > 0`: the trainer builds the model from --init,
`attach_lora` freezes it and adds the adapters (so AdamW, clipping, DDP and checkpoints see
only adapter parameters), and the published result in OUT is the adapter alone. Any stage
that shows the --lora-* flags (e.g. dpo) trains this way when --lora-rank is given. The verbs
themselves are in train/commands.py.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load, save_model_dir
from ..errors import MiniMindError
from ..export.common import prepare_out_dir
from ..model.lora import DEFAULT_TARGETS, LoRAConfig, add_lora, merge
from ..tokenizer import Tokenizer, tokenizer_fingerprint


def attach_lora(model, cfg) -> None:
    """Freeze the model built from cfg.init and attach fresh adapters per the --lora-* flags
    (TrainConfig.validate has checked that there is an --init base and no --fsdp)."""
    config = LoRAConfig(
        rank=cfg.lora_rank,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        targets=list(cfg.lora_targets or DEFAULT_TARGETS),
    )
    add_lora(model, config, seed=cfg.seed, base_dir=cfg.init)
    # The tokenizer too (part by part): loading refuses the adapter on a base whose weights
    # match but whose tokenizer does not.
    config.base["base_tokenizer"] = tokenizer_fingerprint(Tokenizer.from_dir(cfg.init))


def merge_to_dir(model_dir: str | Path, lora_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Base + adapter -> a plain model directory (the base's tokenizer copied along)."""
    if Path(out_dir).resolve() in (Path(model_dir).resolve(), Path(lora_dir).resolve()):
        raise MiniMindError(f"{out_dir}: --out must be a new directory, not the base or the adapter")
    model, tokenizer = load(model_dir, lora=lora_dir)  # refuses an adapter of another base
    out = prepare_out_dir(out_dir, force)
    return save_model_dir(merge(model), out, tokenizer)  # float32, as merge computed it
