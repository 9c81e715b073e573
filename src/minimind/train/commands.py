"""`minimind pretrain` and `minimind sft`: flags, an optional YAML config, and the stage defaults.

Precedence: the stage's defaults, then `--config FILE.yaml` (same keys as the flags, with
dashes or underscores), then the flags given on the command line.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from importlib import import_module
from pathlib import Path

from ..errors import MiniMindError
from .config import TrainConfig

# MiniMind's defaults where they make sense (reference section 1.2), and why we differ:
#  - pretrain: lr 5e-4, batch 32 x accumulation 8, as MiniMind. seq_len 512: MiniMind's script
#    uses 340 while its README recommends ~768; with packing no document is cut short.
#  - sft: lr 1e-5, batch 16, accumulation 1, seq_len 768, as MiniMind.
#  - both: 1 epoch (MiniMind's published timings are per epoch), a warmup of 1% of the
#    steps and weight decay on matrices only (MiniMind has no warmup and decays everything).
STAGE_DEFAULTS = {
    "pretrain": dict(lr=5e-4, batch_size=32, grad_accum=8, seq_len=512, epochs=1.0),
    "sft": dict(lr=1e-5, batch_size=16, grad_accum=1, seq_len=768, epochs=1.0),
    "reason": dict(lr=1e-5, batch_size=16, grad_accum=1, seq_len=1024, epochs=1.0),
    # distill: SFT's settings (MiniMind: lr 5e-6, batch 32, seq_len 340, 6 epochs; alpha 0.5, T 1.5).
    "distill": dict(lr=1e-5, batch_size=16, grad_accum=1, seq_len=768, epochs=1.0),
    # lora: MiniMind uses lr 1e-4, batch 32 unpacked rows of 340 tokens, 10 epochs, rank 16
    # without scaling. Packed rows hold several short conversations, so a smaller batch keeps
    # small sets (lora_identity: 91 conversations) at several steps per epoch. The update is
    # scaled by alpha/r (rank can change without retuning lr); no weight decay.
    "lora": dict(lr=1e-4, batch_size=8, grad_accum=1, seq_len=384, epochs=10.0, weight_decay=0.0, lora_rank=8),
    # dpo: MiniMind uses lr 4e-8, which leaves the loss at 0.693 (issues #430, #674); 5e-6 gave
    # the lowest held-out loss of 4e-8, 1e-6, 5e-6, 2e-5 (benchmarks/README.md). batch = pairs;
    # no weight decay (it pulls towards zero, not towards the reference); seq_len 1024 as MiniMind.
    "dpo": dict(lr=5e-6, batch_size=8, grad_accum=1, seq_len=1024, epochs=1.0, weight_decay=0.0, val_fraction=0.05),
}
STAGE_HELP = {
    "pretrain": "pretrain a model on raw text",
    "sft": "supervised fine-tuning on conversations",
    "reason": "reasoning SFT: think first with open_thinking, answer directly without",
    "distill": "white-box distillation: match a teacher's token distributions (KL) on conversations",
    "lora": "LoRA fine-tuning on conversations: train a small adapter, the base stays frozen",
    "dpo": "DPO on preference pairs ({\"chosen\", \"rejected\"}) against a frozen reference",
}
# The objective (data + loss) that trains each stage, as "module:Class" so a stage's code is
# imported only when it runs.
STAGE_OBJECTIVES = {
    "pretrain": "minimind.train.objectives:LMObjective",
    "sft": "minimind.train.objectives:LMObjective",
    "reason": "minimind.train.reason:ReasonObjective",
    "distill": "minimind.train.distill:DistillObjective",
    "lora": "minimind.train.objectives:LMObjective",
    "dpo": "minimind.train.dpo:DPOObjective",
}


def stage_fields(stage: str) -> list:
    """The TrainConfig fields a stage takes as settings. A field meant for some stages only
    says so in its metadata: `field(default=..., metadata={"stages": ("dpo",)})`."""
    return [f for f in fields(TrainConfig) if f.name != "stage" and stage in f.metadata.get("stages", (stage,))]


def make_objective(stage: str):
    module, name = STAGE_OBJECTIVES[stage].split(":")
    return getattr(import_module(module), name)()

FLAG_HELP = {
    "data": "JSONL files ({\"text\"} for pretrain, {\"conversations\"} for sft)",
    "out": "output model directory (checkpoints, metrics.jsonl, the final model)",
    "init": "start from this model directory",
    "preset": "start from a fresh model of this preset (with --tokenizer)",
    "tokenizer": "tokenizer directory for --preset",
    "max_steps": "optimizer steps (default: from --epochs)",
    "epochs": "passes over the data",
    "batch_size": "rows per micro-batch per process",
    "grad_accum": "micro-batches per optimizer step",
    "seq_len": "tokens per packed row",
    "lr": "peak learning rate",
    "min_lr": "final learning rate of the cosine (default lr/10)",
    "warmup_steps": "linear warmup steps (default 1%% of the steps)",
    "weight_decay": "AdamW weight decay on matrices",
    "grad_clip": "max gradient norm",
    "save_every": "checkpoint every N optimizer steps (and at the end)",
    "keep_last": "checkpoints to keep",
    "eval_every": "validation loss every N steps (0: only at the end)",
    "eval_batches": "validation batches per evaluation",
    "val_fraction": "share of documents held out for validation",
    "log_every": "log every N steps",
    "sample_every": "print greedy samples every N steps (0: never)",
    "seed": "seed for initialisation, data order and dropout",
    "resume": "continue from the newest checkpoint in --out (exactly)",
    "device": "auto, cpu, cuda, cuda:N, mps",
    "dtype": "auto, fp32, bf16, fp16 (auto: bf16 on GPUs and on CPUs with bf16 units, else fp32)",
    "compile": "torch.compile the model",
    "grad_checkpointing": "recompute activations in backward (less memory, ~30%% slower)",
    "fsdp": "shard the model over the torchrun processes (FSDP) instead of replicating it (DDP)",
    "tracker": "also log to wandb, swanlab and/or tensorboard",
    "project": "project name for trackers",
    "run_name": "run name for trackers (default: the --out folder name)",
    "on_bad_record": "error (default) or skip bad data records",
    "cache_dir": "where tokenized data is cached (default ~/.cache/minimind/tokenized)",
    "random_system_prompt": "sft: prepend a random system prompt to 20%% of conversations (MiniMind's trick)",
    "strip_empty_think": "sft: drop empty <think></think> blocks from 80%% of conversations (MiniMind's trick)",
    "think_mix": "reason: share of conversations trained to think (the rest answer directly)",
    "think_weight": "reason: loss weight of </think>, the blank line and the first answer token",
    "tag_penalty": "reason: weight of the unlikelihood of <think>/</think> once the turn's think block is closed",
    "teacher": "distill: the teacher model directory (same tokenizer as the student)",
    "distill_alpha": "distill: weight of the KL term; 1 - alpha weighs the cross entropy (MiniMind: 0.5)",
    "distill_temperature": "distill: softmax temperature of the KL term, scaled back by T^2 (MiniMind: 1.5)",
    "distill_kl": "distill: forward = KL(teacher||student) (default), reverse = KL(student||teacher)",
    "lora_rank": "LoRA rank r (lora: default 8; other stages: 0 = no LoRA)",
    "lora_alpha": "LoRA alpha: the update is scaled by alpha / rank (default 16)",
    "lora_dropout": "dropout on the LoRA input (default 0)",
    "lora_targets": "layers to adapt: last name parts (q_proj ...) or globs of full names (default: all attention and MLP projections)",
    "dpo_beta": "dpo: beta, the strength of the pull towards the reference (default 0.1)",
    "dpo_loss": "dpo: sigmoid (DPO, default), ipo or hinge",
    "dpo_label_smoothing": "dpo: share of pairs assumed mislabelled (conservative DPO, sigmoid loss; default 0)",
    "dpo_length_norm": "dpo: score a reply by its mean token log-prob instead of the sum (no length bias)",
    "dpo_sft_weight": "dpo: weight of an SFT term, the chosen reply's token-mean NLL (default 0)",
    "ref": "dpo: reference model directory (default: the --init model), same tokenizer",
    "ref_mode": "dpo: cached (reference log-probs computed once, default) or online (reference run every step)",
    "progress": "show a progress bar",
}


def add_train_parser(verbs, stage: str):
    help_text = STAGE_HELP[stage]
    p = verbs.add_parser(stage, help=help_text, argument_default=argparse.SUPPRESS,
                         description=f"{help_text}. Defaults: " + ", ".join(f"{k}={v}" for k, v in STAGE_DEFAULTS[stage].items()))
    p.add_argument("--config", help="YAML file with any of these settings (flags override it)")
    for f in stage_fields(stage):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "progress":
            p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
        elif f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=FLAG_HELP[f.name])
        elif f.name in ("data", "tracker", "lora_targets"):
            p.add_argument(flag, nargs="+", help=FLAG_HELP[f.name])
        else:
            kind = {"int | None": int, "int": int, "float | None": float, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, help=FLAG_HELP[f.name])
    p.set_defaults(func=lambda args: run_stage(stage, args))
    return p


def load_yaml_config(path: str, stage: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise MiniMindError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise MiniMindError(f"{p}:{mark.line + 1 if mark else '?'}: invalid YAML") from None
    if not isinstance(data, dict):
        raise MiniMindError(f"{p}: expected a mapping of settings")
    known = {f.name for f in stage_fields(stage)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise MiniMindError(f"{p}: unknown setting {key!r} for minimind {stage}")
        out[name] = [value] if name in ("data", "tracker", "lora_targets") and isinstance(value, str) else value
    return out


def stage_config(stage: str, args: argparse.Namespace) -> TrainConfig:
    settings = dict(STAGE_DEFAULTS[stage])
    given = {k: v for k, v in vars(args).items() if k not in ("func", "verb", "config")}
    if getattr(args, "config", None):
        settings.update(load_yaml_config(args.config, stage))
    settings.update(given)
    if not settings.get("data"):
        raise MiniMindError(f"minimind {stage} needs --data FILE... (or `data:` in --config)")
    if "out" not in settings:
        settings["out"] = f"out/{stage}"
    for name in ("batch_size", "grad_accum", "seq_len", "save_every", "log_every", "eval_batches", "keep_last"):
        if name in settings and settings[name] is not None and settings[name] < 1:
            raise MiniMindError(f"--{name.replace('_', '-')} must be at least 1, got {settings[name]}")
    if settings.get("on_bad_record", "error") not in ("error", "skip"):
        raise MiniMindError("--on-bad-record must be error or skip")
    try:
        return TrainConfig(stage=stage, **settings)
    except TypeError as e:
        raise MiniMindError(f"invalid settings: {e}") from None


def run_stage(stage: str, args: argparse.Namespace) -> None:
    from .trainer import train

    out = train(stage_config(stage, args), make_objective(stage))
    print(f"done: {out}")
