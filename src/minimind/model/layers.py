"""The building blocks of a MiniMind / Qwen3 decoder layer.

RMSNorm, rotary position embeddings (with optional YaRN scaling), grouped-query attention
(through `F.scaled_dot_product_attention`, or on the CPU for 65-512 tokens without a cache,
blocked_causal_attention), and the SwiGLU feed-forward.
Shapes in comments: B batch, L new tokens, T all keys (cache + new), H query heads,
K key/value heads, D head_dim.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ModelConfig

# SDPA shares K/V heads itself since torch 2.5, without copying them per query head.
SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def decoding_attention(device: torch.device):
    """The context a forward pass with a KV cache (every generation step: minimind.infer's
    generate and the server's batcher) runs in: SDPA without its cuDNN backend on CUDA.

    On Hopper GPUs PyTorch prefers cuDNN attention for bf16, and cuDNN builds an execution
    plan for every new shape it meets. Training repeats one shape; decoding meets a new one
    at every step (the keys grow by one, finished rows leave the batch), and planning made
    each step 10x slower (benchmarks/README.md, "Generation on a GPU"). Flash and
    memory-efficient attention need no plans. Elsewhere (CPU) nothing changes.
    """
    if device.type != "cuda":
        return nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def linear(x: torch.Tensor, *projections: nn.Module, training: bool) -> tuple[torch.Tensor, ...]:
    """x through one or more projections of it (q/k/v; gate/up; o; down; lm_head): one output
    each. Eager, each projection is its own module call. Compiled for inference (the decode
    step of infer/compiled.py) on the CPU, where the weights are frozen constants, two things
    change, both invisible outside:

    - Projections of one input run as one product with their weights stacked. The stacking
      of constants happens once, at compile time, and a layer makes 4 products instead of 7
      (1.15-1.32x). Elsewhere (eager, or CUDA, where weights are not frozen) it would copy
      the weights at every call, so it is not done.
    - A product with a single row (a batch-1 decode step) is written as a multiply
      and a sum over the input dimension. Inductor turns that into one loop that streams the
      weights: 37 GB/s on a 2-vCPU AMD EPYC, where the packed fp32 matrix-vector products of
      MKL and oneDNN read 16 and 24 GB/s (benchmarks/README.md, "Compiled decode"). The sum
      is accumulated in fp32; the weights stay in their own dtype, so bf16 reads half the bytes.

    Plain nn.Linear only (a LoRA-wrapped projection keeps its own forward); checkpoints keep
    the separate q_proj/k_proj/... names either way."""
    frozen = not training and torch.compiler.is_compiling() and x.device.type == "cpu"  # see infer/compiled.py
    if not frozen or any(type(p) is not nn.Linear for p in projections):
        return tuple(p(x) for p in projections)
    weight = torch.cat([p.weight for p in projections]) if len(projections) > 1 else projections[0].weight
    bias = None
    if projections[0].bias is not None:
        bias = torch.cat([p.bias for p in projections]) if len(projections) > 1 else projections[0].bias
    if x.shape[:-1].numel() == 1:
        # [..., 1, in] * [out, in] summed over in -> [..., out]. No .float() on the weight:
        # freezing would fold that cast into an fp32 copy of a bf16 weight, twice the bytes.
        y = (x.unsqueeze(-2) * weight).sum(-1, dtype=torch.float32)
        y = (y if bias is None else y + bias).to(x.dtype)
    else:
        y = F.linear(x, weight, bias)
    return y.split([p.out_features for p in projections], dim=-1)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back (as MiniMind and Qwen3 do)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused kernel instead of five elementwise passes
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# ---------------------------------------------------------------------------- RoPE


def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies for each pair of head dimensions, and the attention factor.

    With `rope_scaling = {"type": "yarn", ...}` the frequencies are blended per dimension
    (YaRN): fast-rotating dimensions (which already see many periods inside the training
    context) keep their frequency, slow ones are divided by `factor`, with a linear ramp in
    between. That lets a model trained on short contexts read longer ones at inference.
    """
    dim, base = config.head_dim, config.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaling = config.rope_scaling
    if not scaling:
        return inv_freq, 1.0
    factor = float(scaling.get("factor", 16.0))
    orig_max = int(scaling.get("original_max_position_embeddings", 2048))
    beta_fast = float(scaling.get("beta_fast", 32.0))
    beta_slow = float(scaling.get("beta_slow", 1.0))
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:  # YaRN paper's default, as transformers uses
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(num_rotations: float) -> float:
        # the dimension index whose wavelength fits `num_rotations` times into orig_max
        return dim * math.log(orig_max / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a division by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq * (1 - ramp) + (inv_freq / factor) * ramp
    return inv_freq, float(attention_factor)


def rope_cos_sin(inv_freq: torch.Tensor, position_ids: torch.Tensor, scale: float, dtype: torch.dtype):
    """cos and *signed* sin tables [B, 1, L, D] for the given positions [B, L], in float32.

    Computed per forward from the positions (cheap: B*L*D/2 products) instead of a 32K-row
    table, so any position works and padded batches can start each row at 0. The first half
    of sin is negated so that apply_rope needs no negation (see there).
    """
    freqs = position_ids[:, :, None].float() * inv_freq[None, None, :]
    cos, sin = freqs.cos(), freqs.sin()
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype)[:, None], sin.to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair by its position's angle ("rotate half" layout):
    x * cos + (-x2, x1) * sin. Rolling x by D/2 gives (x2, x1); the sign sits in signed_sin."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


# ---------------------------------------------------------------------------- attention


ATTENTION_BLOCK = 64  # query rows per block in blocked_causal_attention


def use_blocked_attention(q: torch.Tensor, dropout: float) -> bool:
    """Whether causal self-attention without a cache should run as blocked_causal_attention
    rather than SDPA: on the CPU, for 2 to 8 blocks of queries, without attention dropout.

    PyTorch's CPU flash attention tiles keys in blocks of 512 (for these head sizes), so up
    to 512 tokens it computes the whole square of scores and masks out the upper half:
    causality saves no work. Stepping 64 query rows at a time through only the keys before
    them does half the work, and at 512 tokens one layer's forward and backward took 37.9
    against 49.4 ms (bf16, batch 4, 8 heads; benchmarks/README.md, "Training throughput").
    Beyond 512 tokens SDPA's own key blocks start skipping, and the blocked path would also
    keep every block's probabilities for backward, which grows with the square of the length.
    """
    L = q.shape[-2]
    return q.device.type == "cpu" and dropout == 0.0 and ATTENTION_BLOCK < L <= 8 * ATTENTION_BLOCK


def blocked_causal_attention(q, k, v, mask=None, block: int = ATTENTION_BLOCK):
    """Causal attention, q [B, H, L, D] against k, v [B, K, L, D], one block of query rows at
    a time; returns [B, H, L, D] like SDPA, in v's dtype. `mask` [B, 1, L, L] (True = may
    attend) may restrict it further but must itself be causal: keys after a block are never
    looked at (the model's build_attention_mask cuts every mask to the causal triangle).

    Scores and softmax run in fp32 (under autocast the scores product runs in the compute
    dtype, as every product there does); the probabilities are cast to v's dtype for the
    second product. Grouped query heads (H = K * G) are reshaped, not copied: the G query
    heads of a group become G * rows of one product with their K/V. The backward is written
    out by hand (_BlockedCausalAttention)."""
    q = q.float() * q.shape[-1] ** -0.5  # the 1/sqrt(D) scale, applied once to q
    return _BlockedCausalAttention.apply(q, k.float(), v, mask, block)


class _BlockedCausalAttention(torch.autograd.Function):
    """blocked_causal_attention's forward and backward; q comes scaled, q and k in fp32.

    Left to autograd, every block's slices of q, k and v (k[:, :, :e]) would each get a
    gradient of the whole tensor's size, zero-filled and then copied into: 3 per block and
    layer, 4% of an fp32 training step at 512 tokens. Here each block adds its share into
    one dk and one dv instead. Per block, with p = softmax(q k^T) (p = 0 at masked keys):

        dv += p^T do        dp = do v^T        ds = p * (dp - rowsum(dp * p))
        dq  = ds k          dk += ds^T q
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, block):
        B, H, L, D = q.shape
        K = k.shape[1]
        G = H // K
        qg = q.view(B, K, G, L, D)
        causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril() if mask is None else None
        outs, probs = [], []
        for i in range(0, L, block):
            e = min(i + block, L)  # this block's queries are rows i..e-1; they see keys 0..e-1
            rows = e - i
            scores = (qg[:, :, :, i:e].reshape(B, K, G * rows, D) @ k[:, :, :e].mT).view(B, K, G, rows, e)
            allowed = causal[i:e, :e] if mask is None else mask[:, :, None, i:e, :e]
            p = torch.softmax(scores.masked_fill_(~allowed, float("-inf")), dim=-1).to(v.dtype)
            probs.append(p.view(B, K, G * rows, e))
            outs.append((probs[-1] @ v[:, :, :e]).view(B, K, G, rows, D))
        ctx.block, ctx.scores_dtype = block, scores.dtype
        ctx.save_for_backward(q, k, v, *probs)
        return torch.cat(outs, dim=3).view(B, H, L, D)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, *probs = ctx.saved_tensors
        B, H, L, D = q.shape
        K = k.shape[1]
        G = H // K
        # the scores product's gradients run in its own dtype (the compute dtype under autocast)
        qg, ks = q.view(B, K, G, L, D).to(ctx.scores_dtype), k.to(ctx.scores_dtype)
        dog = grad_out.to(v.dtype).reshape(B, K, G, L, D)
        dq, dk, dv = torch.empty_like(q).view(B, K, G, L, D), torch.zeros_like(k), torch.zeros_like(v)
        for p, i in zip(probs, range(0, L, ctx.block)):
            e = min(i + ctx.block, L)
            rows = e - i
            do_i = dog[:, :, :, i:e].reshape(B, K, G * rows, D)
            dv[:, :, :e] += p.mT @ do_i
            dp = do_i @ v[:, :, :e].mT
            # softmax's own backward kernel, p * (dp - rowsum(dp * p)), in fp32
            ds = torch.ops.aten._softmax_backward_data(dp.float(), p.float(), -1, torch.float32)
            ds = ds.to(ctx.scores_dtype)
            dq[:, :, :, i:e] = (ds @ ks[:, :, :e]).view(B, K, G, rows, D)
            dk[:, :, :e] += ds.mT @ qg[:, :, :, i:e].reshape(B, K, G * rows, D)
        return dq.view(B, H, L, D), dk, dv, None, None


class Attention(nn.Module):
    """Grouped-query self-attention: H query heads share K key/value heads (H/K per group)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, self.n_heads * d, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * d, h, bias=bias)
        if config.qk_norm:  # Qwen3 / minimind-3: per-head RMSNorm keeps q.k logits tame
            self.q_norm = RMSNorm(d, config.rms_norm_eps)
            self.k_norm = RMSNorm(d, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.dropout = config.dropout

    def forward(self, x, cos, sin, mask=None, is_causal=False, cache=None):
        B, L, _ = x.shape
        q, k, v = linear(x, self.q_proj, self.k_proj, self.v_proj, training=self.training)
        q = q.view(B, L, self.n_heads, self.head_dim)
        k = k.view(B, L, self.n_kv_heads, self.head_dim)
        v = v.view(B, L, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, L, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # write the new K/V into the preallocated cache, read all of it
            k, v = cache.update(self.layer_idx, k, v)  # [B, K, T, D]
        # The output's dtype: the projections' (under autocast q and k leave RoPE in fp32,
        # as the residual stream's cos/sin are, while v stays in the compute dtype).
        out_dtype = v.dtype
        dtype = q.dtype
        if L == 1 and q.device.type == "cpu" and dtype != torch.float32:
            # One query against the cache (a decode step): PyTorch's CPU attention kernel runs
            # it 2-5x slower in bf16 than in fp32 (118 against 49 us at 256 keys, 444 against
            # 91 at 1024, casts included; benchmarks/README.md), so it runs in fp32.
            q, k, v = q.float(), k.float(), v.float()
        if cache is None and is_causal and use_blocked_attention(q, self.dropout if self.training else 0.0):
            out = blocked_causal_attention(q, k, v, mask)
            (out,) = linear(out.transpose(1, 2).reshape(B, L, -1), self.o_proj, training=self.training)
            return out
        gqa = self.n_kv_heads != self.n_heads  # each K/V head serves a group of query heads
        if gqa and not SDPA_HAS_GQA:  # torch < 2.5: copy K/V out to every query head
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal and mask is None,  # a mask already holds the causal part
            dropout_p=self.dropout if self.training else 0.0,
            **({"enable_gqa": gqa} if SDPA_HAS_GQA else {}),
        )
        (out,) = linear(out.transpose(1, 2).reshape(B, L, -1).to(out_dtype), self.o_proj, training=self.training)
        return out


class SwiGLU(nn.Module):
    """The feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        gate, up = linear(x, self.gate_proj, self.up_proj, training=self.training)
        (out,) = linear(F.silu(gate) * up, self.down_proj, training=self.training)
        return out
