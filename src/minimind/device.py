"""Choosing the device and the number format, the same way in every command."""

from __future__ import annotations

import torch

from .errors import MiniMindError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice is checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MiniMindError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MiniMindError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MiniMindError("--device mps was asked for, but MPS is not available")
    return device


def resolve_inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA GPUs that support it, fp16 on MPS, fp32 on the CPU (where small
    models decode fastest in fp32: the time goes into per-token overheads, not matmuls)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise MiniMindError(f"unknown dtype {name!r} (use auto, fp32, bf16 or fp16)")
    return DTYPES[name]
