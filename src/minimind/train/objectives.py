"""What a training stage supplies to the one loop: its data and its loss.

An objective has three methods:
    build_data(cfg, tokenizer)  -> (train_dataset, val_dataset or None)
    count(batch)                -> how many units (tokens) this micro-batch's loss sums over
    loss_sum(model, batch)      -> (summed loss tensor, auxiliary loss tensor, metrics dict)
and optionally:
    setup(trainer)              -> called once the model is on its device and the data is
                                   built (load a frozen reference/teacher, precompute log-probs)
    iterate_batches(...)        -> its own batching (see data.iterate_batches for the signature)
The loop divides the summed losses by the count over the whole global batch (all
micro-batches, all ranks), so the result is the same token mean whatever the gradient
accumulation or number of GPUs. The metrics dict holds sums over the same units as the loss
(e.g. DPO's reward accuracy summed over pairs): the loop logs each divided by the count.
Later stages (DPO, distillation, ...) are new objectives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class LMObjective:
    """Next-token cross entropy on every token whose label is not -100: pretraining (all
    tokens but each document's <bos>) and SFT (assistant turns only)."""

    name = "lm"

    def build_data(self, cfg, tokenizer):
        from ..data import build_datasets

        return build_datasets(
            cfg.data, tokenizer, kind="pretrain" if cfg.stage == "pretrain" else "sft", seq_len=cfg.seq_len, val_fraction=cfg.val_fraction,
            seed=cfg.seed, cache_dir=cfg.cache_dir, on_bad_record=cfg.on_bad_record,
            random_system_prompt=cfg.random_system_prompt, strip_empty_think=cfg.strip_empty_think,
        )

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def loss_sum(self, model, batch: dict):
        out = model(batch["input_ids"], attention_mask=packed_attention_mask(batch),
                    position_ids=batch["position_ids"])
        logits = out.logits[:, :-1]
        targets = batch["labels"][:, 1:]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        return ce, out.aux_loss, {}


def drop_last_row(batch: dict) -> None:
    """Make the batch's last row count nowhere (the trainer's dummy evaluation row under FSDP):
    every token-counting objective's default. An objective whose units are not tokens (DPO's
    pairs) has its own drop_last_unit."""
    batch["labels"][-1] = -100


def packed_attention_mask(batch: dict):
    """None when every row is one unpadded document (SDPA's fast causal path); otherwise a
    block-diagonal causal mask so packed documents never attend to each other."""
    segments = batch["segment_ids"]
    if bool((segments == 0).all()):
        return None
    from ..data import attention_mask_from_segments

    return attention_mask_from_segments(segments)


def real_tokens(batch: dict) -> int:
    """Tokens that are not padding (what throughput counts)."""
    return int((batch["segment_ids"] >= 0).sum())


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
