"""The settings of a training run (TrainConfig), kept apart from the loop so that building the
command-line parsers does not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field

# Settings that must not change when resuming, or the run would not continue exactly.
RESUME_FIXED = ("stage", "data", "seq_len", "batch_size", "grad_accum", "seed", "world_size", "val_fraction",
                "think_mix", "teacher", "lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


@dataclass
class TrainConfig:
    stage: str = "pretrain"
    data: list[str] = field(default_factory=list)
    out: str = "out/run"
    init: str | None = None  # a model directory to start from ...
    preset: str | None = None  # ... or a preset plus a tokenizer directory
    tokenizer: str | None = None
    max_steps: int | None = None  # optimizer steps; else computed from epochs
    epochs: float = 1.0
    batch_size: int = 32  # rows per micro-batch per process
    grad_accum: int = 1
    seq_len: int = 512
    lr: float = 5e-4
    min_lr: float | None = None  # default lr / 10 (where MiniMind's schedule ends)
    warmup_steps: int | None = None  # default 1% of the steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 1000
    keep_last: int = 3
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 20
    val_fraction: float = 0.01
    log_every: int = 10
    sample_every: int = 0  # 0: never
    seed: int = 42
    resume: bool = False
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    grad_checkpointing: bool = False
    fsdp: bool = False  # shard weights, gradients and optimizer state over the processes
    tracker: list[str] = field(default_factory=list)
    project: str = "minimind"
    run_name: str | None = None
    on_bad_record: str = "error"
    cache_dir: str | None = None
    random_system_prompt: bool = False
    strip_empty_think: bool = False
    think_mix: float = field(default=0.7, metadata={"stages": ("reason",)})  # share of conversations that think
    think_weight: float = field(default=1.0, metadata={"stages": ("reason",)})  # loss weight of the think/answer boundary
    tag_penalty: float = field(default=1.0, metadata={"stages": ("reason",)})  # unlikelihood of tags after the block closed
    # LoRA as a parameter mode (train/lora.py): lora_rank > 0 freezes the model and trains
    # low-rank adapters only; checkpoints and the published result are then the adapter alone.
    lora_rank: int = field(default=0, metadata={"stages": ("lora", "dpo")})
    lora_alpha: float = field(default=16.0, metadata={"stages": ("lora", "dpo")})
    lora_dropout: float = field(default=0.0, metadata={"stages": ("lora", "dpo")})
    lora_targets: list[str] = field(default_factory=list, metadata={"stages": ("lora", "dpo")})
    # White-box distillation (train/distill.py): loss = alpha * T^2 * KL_T + (1 - alpha) * CE.
    teacher: str | None = field(default=None, metadata={"stages": ("distill",)})
    distill_alpha: float = field(default=1.0, metadata={"stages": ("distill",)})
    distill_temperature: float = field(default=1.0, metadata={"stages": ("distill",)})
    distill_kl: str = field(default="forward", metadata={"stages": ("distill",)})
    # DPO (train/dpo.py): a frozen reference (the starting model unless --ref), beta, the loss variant.
    dpo_beta: float = field(default=0.1, metadata={"stages": ("dpo",)})
    dpo_loss: str = field(default="sigmoid", metadata={"stages": ("dpo",)})
    dpo_label_smoothing: float = field(default=0.0, metadata={"stages": ("dpo",)})
    dpo_length_norm: bool = field(default=False, metadata={"stages": ("dpo",)})
    dpo_sft_weight: float = field(default=0.0, metadata={"stages": ("dpo",)})
    ref: str | None = field(default=None, metadata={"stages": ("dpo",)})
    ref_mode: str = field(default="cached", metadata={"stages": ("dpo",)})
    progress: bool = True
