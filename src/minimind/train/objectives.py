"""What a training stage supplies to the one loop: its data and its loss (an Objective), and
which objective trains each stage (make_objective).

The loop divides the summed losses by the count over the whole global batch (all
micro-batches, all ranks), so the result is the same token mean whatever the gradient
accumulation or number of GPUs. The metrics dict holds sums over the same units as the loss
(e.g. DPO's reward accuracy summed over pairs): the loop logs each divided by the count.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import torch

from ..data import attention_mask_from_segments, build_datasets, iterate_batches
from ..model.losses import next_token_loss_sum
from .config import TrainConfig
from .distributed import DistInfo


def autocast(device: torch.device, dtype: torch.dtype):
    """The training precision's autocast (off in fp32: weights stay fp32, matmuls run in dtype)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@dataclass
class SetupContext:
    """What an objective may use in setup(), as the trainer built it: deliberately narrow, so
    an objective never reaches into the trainer's fields."""

    cfg: TrainConfig
    model: torch.nn.Module  # the starting weights (no checkpoint restored yet), on `device`
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype  # the compute precision (see autocast)
    dist: DistInfo
    train_ds: Any
    val_ds: Any | None
    out: Path

    def autocast(self):
        return autocast(self.device, self.dtype)


class Objective:
    """The contract between a stage and the loop. A subclass implements build_data, count and
    loss_sum; the other methods have defaults that suit objectives whose units are tokens of
    packed rows."""

    name = "objective"
    # Whether the run may torch.compile the model by itself (train/autocompile.py): only for
    # batches of one fixed shape, which compile once (not generation inside RL, not images).
    compiles_well = False

    def build_data(self, cfg: TrainConfig, tokenizer):
        """(train dataset, validation dataset or None), each with len(), get_batch(rows) and
        .stats (a dict with at least "docs" and "padding_fraction")."""
        raise NotImplementedError

    def setup(self, ctx: SetupContext) -> None:
        """Called once, after build_data, with the model on its device: load a frozen reference
        or teacher, precompute what the loss needs. Default: nothing."""

    def count(self, batch: dict) -> float:
        """How many units (tokens, or DPO's pairs) this micro-batch's loss sums over."""
        raise NotImplementedError

    def loss_sum(self, model, batch: dict):
        """(summed loss tensor, auxiliary loss tensor, metrics dict of sums over the same units)."""
        raise NotImplementedError

    def iterate_batches(
        self, ds, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1
    ):
        """One epoch's batches of this rank, from batch `start` on (data.iterate_batches: a
        seeded shuffle of packed rows, so resuming at `start` is exact)."""
        return iterate_batches(ds, batch_size, seed, epoch, start=start, rank=rank, world_size=world_size)

    def drop_last_unit(self, batch: dict) -> None:
        """Make the batch's last row count nowhere: the trainer's dummy evaluation row under
        FSDP (every rank must run every forward)."""
        batch["labels"][-1] = -100

    # An objective that trains more than the model (PPO's critic) or decides to hold updates
    # back (PPO's approximate-KL early stop) uses the three hooks below; the defaults do nothing.
    def before_step(self, lr_scale: float, scaler) -> bool:
        """Called on every rank after a step's backward passes, before the model's optimizer
        step. Step what else the objective trains here, its learning rate scaled as the model's
        is (lr_scale = this step's lr / --lr; through `scaler`, the trainer's GradScaler).
        False holds this step's model update back; the answer must be the same on every rank."""
        return True

    def state_dict(self) -> dict:
        """What a checkpoint must hold beyond the model and its optimizer for an exact resume
        (tensors, numbers and containers of them; train_state/objective.pt). Default: nothing."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict() when resuming (after setup, before the first batch)."""

    def describe_data(self, cfg: TrainConfig, train_ds, val_ds) -> str:
        """The `data: ...` line printed when training starts."""
        s = train_ds.stats
        return (
            f"{len(train_ds)} rows of {cfg.seq_len} tokens from {s.get('docs', '?')} documents, "
            f"{s.get('padding_fraction', 0) * 100:.1f}% padding"
            + (f", {len(val_ds)} validation rows" if val_ds is not None else "")
        )


class LMObjective(Objective):
    """Next-token cross entropy on every token whose label is not -100: pretraining (all
    tokens but each document's <bos>) and SFT (assistant turns only; LoRA is SFT with adapters)."""

    name = "lm"
    compiles_well = True  # packed rows of seq_len tokens: every batch has the same shape

    def build_data(self, cfg, tokenizer):
        return self.datasets(cfg, tokenizer, cfg.data, "pretrain" if cfg.stage == "pretrain" else "sft")

    @staticmethod
    def datasets(cfg, tokenizer, files: list[str], kind: str):
        """Packed train/validation datasets of `files` with the run's data settings."""
        return build_datasets(
            files,
            tokenizer,
            kind=kind,
            seq_len=cfg.seq_len,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
            cache_dir=cfg.cache_dir,
            on_bad_record=cfg.on_bad_record,
            random_system_prompt=cfg.random_system_prompt,
            strip_empty_think=cfg.strip_empty_think,
        )

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def loss_sum(self, model, batch: dict):
        out = model(batch["input_ids"], attention_mask=packed_attention_mask(batch), position_ids=batch["position_ids"])
        return next_token_loss_sum(out.logits, batch["labels"]), out.aux_loss, {}


# The objective that trains each stage, as "module:Class": a stage's module is imported only
# when it runs, and the stage modules (which build on LMObjective above) import this one, not
# the other way round.
STAGE_OBJECTIVES = {
    "pretrain": "minimind.train.objectives:LMObjective",
    "sft": "minimind.train.objectives:LMObjective",
    "reason": "minimind.train.reason:ReasonObjective",
    "distill": "minimind.train.distill:DistillObjective",
    "lora": "minimind.train.objectives:LMObjective",
    "dpo": "minimind.train.dpo:DPOObjective",
    "grpo": "minimind.rl.grpo:GRPOObjective",
    "vlm_pretrain": "minimind.train.vlm:VLMObjective",
    "vlm_sft": "minimind.train.vlm:VLMObjective",
    "agent": "minimind.rl.agent:AgentObjective",
    "ppo": "minimind.rl.ppo:PPOObjective",
}


def make_objective(stage: str) -> Objective:
    """A fresh objective for the stage (pretrain, sft, reason, distill, lora, dpo)."""
    module, name = STAGE_OBJECTIVES[stage].split(":")
    return getattr(import_module(module), name)()


def packed_attention_mask(batch: dict):
    """None when every row is one unpadded document (SDPA's fast causal path); otherwise a
    block-diagonal causal mask so packed documents never attend to each other."""
    segments = batch["segment_ids"]
    if bool((segments == 0).all()):
        return None
    return attention_mask_from_segments(segments)


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (what throughput counts)."""
    return int((batch["segment_ids"] >= 0).sum())


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
