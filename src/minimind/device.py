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


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX). Without them
    PyTorch emulates bf16 matmuls, which runs many times *slower* than fp32 (measured on an
    AVX2-only EPYC: 0.8 vs 31 GFLOP/s), so bf16 autocast would be a trap."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_train_dtype(name: str, device: torch.device) -> torch.dtype:
    """Compute precision for training (weights stay fp32; autocast runs matmuls in it).
    `auto`: bf16 on GPUs that support it (else fp16 with a grad scaler), bf16 on CPUs with
    bf16 matrix units, otherwise fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        return torch.float32
    if name not in DTYPES:
        raise MiniMindError(f"unknown dtype {name!r} (use auto, fp32, bf16 or fp16)")
    if name == "fp16" and device.type == "cpu":
        raise MiniMindError("--dtype fp16 needs a GPU; on the CPU use bf16 or fp32")
    return DTYPES[name]
