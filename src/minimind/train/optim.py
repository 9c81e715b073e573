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


def can_fuse(params) -> bool:
    """True when torch's fused AdamW kernel takes these parameters: plain floating-point
    tensors on a device it has the kernel for (CUDA, and the CPU since torch 2.4). FSDP's
    sharded DTensors and anything unusual go to the foreach path instead."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return all(
        type(p) in (torch.Tensor, nn.Parameter) and p.is_floating_point() and p.device.type in devices for p in params
    )


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    device_type: str = "cpu",
) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these parameters (CUDA and the CPU):
    one pass over each tensor for the whole update, instead of a dozen element-wise ops each
    reading and writing the parameter, its gradient and both moments. On a 2-core CPU this
    made the AdamW step of a 26M-parameter model about 8x cheaper (1.1 s -> 0.14 s).
    Elsewhere the foreach path (one op over a list of tensors). `device_type` is kept for
    callers; the parameters' own device decides."""
    groups = param_groups(model, weight_decay)
    fused = can_fuse(p for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused, foreach=None if fused else True)


def lr_at(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup from lr/warmup to lr,
    then a cosine from lr down to min_lr at the last step."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
