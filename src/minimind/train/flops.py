"""Model FLOPs utilisation: how much of the machine's matmul speed training actually uses."""

from __future__ import annotations

import time

import torch

from ..config import ModelConfig
from ..model import count_parameters

_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM's estimate as nanoGPT uses it:
    6 x the parameters a token passes through in matmuls, plus 12 x layers x attention
    width x context for the attention scores and their weighted sum."""
    _, active = count_parameters(cfg)
    matmul_params = active - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attention = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
    return 6 * matmul_params + attention


def measured_peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None) -> float:
    """FLOP/s of a large square matmul on this device in this dtype, measured (and cached):
    the realistic ceiling for MFU, instead of a datasheet number this machine never reaches."""
    key = (str(device), dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(10):  # the best of 10: one slow trial (another process, a frequency dip) is common
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    _PEAK_CACHE[key] = 2 * n**3 / best
    return _PEAK_CACHE[key]
