"""`minimind info`: how big a model is and how much memory it needs.

The figures come from the config alone (nothing is allocated), so `info` answers instantly
even for the 198M MoE preset. Memory is an estimate: weights and optimizer state are exact
byte counts, activations are a per-token count of the tensors autograd keeps for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .model import count_parameters

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class MemoryEstimate:
    weights: int  # bytes
    kv_cache: int  # inference
    optimizer: int  # training: gradients + AdamW moments (+ fp32 master weights)
    activations: int  # training, without activation checkpointing

    @property
    def inference(self) -> int:
        return self.weights + self.kv_cache

    @property
    def training(self) -> int:
        return self.weights + self.optimizer + self.activations


def kv_cache_bytes(cfg: ModelConfig, tokens: int, dtype: str = "bf16") -> int:
    """K and V for every layer and every cached token."""
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * BYTES[dtype] * tokens


def activation_elements_per_token(cfg: ModelConfig) -> int:
    """Elements saved for backward per token, counted from the forward of one layer:
    norm inputs and outputs (4h), q/k/v/attention output with K/V expanded to all heads
    (4 * heads * head_dim), the FFN's gate, up, silu and product (4 * width per active
    expert), plus the logits and their softmax (2 * vocab) once per token."""
    h, heads = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim
    if cfg.use_moe:
        width = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
    else:
        width = cfg.intermediate_size
    per_layer = 4 * h + 4 * heads + 4 * width
    return cfg.num_hidden_layers * per_layer + 2 * cfg.vocab_size


def estimate_memory(cfg: ModelConfig, dtype: str, batch_size: int, seq_len: int) -> MemoryEstimate:
    """Memory for inference (weights + KV cache for batch x seq_len tokens) and for training
    with AdamW (fp32 master weights and moments; `dtype` is the compute precision)."""
    total, _ = count_parameters(cfg)
    tokens = batch_size * seq_len
    weights = total * BYTES[dtype]
    # AdamW: fp32 gradients + two fp32 moments; with bf16/fp16 compute also fp32 master weights
    optimizer = total * (4 + 8 + (4 if dtype != "fp32" else 0))
    activations = activation_elements_per_token(cfg) * tokens * BYTES[dtype]
    return MemoryEstimate(weights, kv_cache_bytes(cfg, tokens, dtype), optimizer, activations)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def model_info(cfg: ModelConfig, batch_size: int = 8, seq_len: int = 512) -> dict:
    """Everything `minimind info` reports, as a JSON-ready dict."""
    total, active = count_parameters(cfg)
    memory = {}
    for dtype in ("fp32", "bf16"):
        m = estimate_memory(cfg, dtype, batch_size, seq_len)
        memory[dtype] = {
            "weights_bytes": m.weights,
            "kv_cache_bytes": m.kv_cache,
            "inference_bytes": m.inference,
            "optimizer_bytes": m.optimizer,
            "activations_bytes": m.activations,
            "training_bytes": m.training,
        }
    return {
        "params_total": total,
        "params_active": active,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "kv_cache_bytes_per_token_bf16": kv_cache_bytes(cfg, 1, "bf16"),
        "memory": memory,
        "config": cfg.to_dict(),
    }


def format_info(name: str, info: dict) -> str:
    """The human-readable table printed by `minimind info`."""
    c = info["config"]
    total, active = info["params_total"], info["params_active"]
    lines = [
        f"{name}: {total / 1e6:.2f}M parameters"
        + (f" ({active / 1e6:.2f}M active per token)" if active != total else "")
    ]
    shape = (
        f"  hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
        f"({c['num_key_value_heads']} KV) x {c['head_dim']}, FFN {c['intermediate_size']}, vocab {c['vocab_size']}"
    )
    if c["use_moe"]:
        shape += f", MoE {c['num_experts']} experts top-{c['num_experts_per_tok']}" + (
            f" + {c['n_shared_experts']} shared" if c["n_shared_experts"] else ""
        )
    lines += [
        shape,
        f"  KV cache: {human(info['kv_cache_bytes_per_token_bf16'])} per token (bf16)",
        f"  memory at batch {info['batch_size']} x {info['seq_len']} tokens (estimate):",
        f"    {'':6s} {'weights':>10s} {'inference':>10s} {'training':>10s}"
        "   (training = weights + grads + AdamW + activations)",
    ]
    for dtype, m in info["memory"].items():
        lines.append(
            f"    {dtype:6s} {human(m['weights_bytes']):>10s} {human(m['inference_bytes']):>10s} "
            f"{human(m['training_bytes']):>10s}"
        )
    return "\n".join(lines)
