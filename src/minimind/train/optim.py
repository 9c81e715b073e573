"""AdamW with sensible parameter groups, and the learning-rate schedule.

MiniMind applies AdamW's weight decay to every parameter (norms and the tied embedding
included), has no warmup and counts its cosine in micro-steps. We decay only the matrices of
linear layers, warm up linearly, and count the schedule in optimizer steps, so changing
gradient accumulation does not change the curve.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: linear-layer matrices get weight decay; norms, biases and embeddings don't
    (decaying a norm's gain or a token's embedding only fights the model)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))  # tied weights appear twice in parameters() of some wrappers
        (no_decay if p.dim() < 2 or id(p) in embeddings else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW; the fused CUDA kernel when on a GPU (one launch instead of one per tensor)."""
    fused = device_type == "cuda"
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8, fused=fused)


def lr_at(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup from lr/warmup to lr,
    then a cosine from lr down to min_lr at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
