"""The MiniMind causal language model: a pre-norm decoder-only transformer.

    h = embed(tokens)
    for each layer:  h = h + Attention(RMSNorm(h));  h = h + FFN(RMSNorm(h))
    logits = lm_head(RMSNorm(h))          # lm_head shares the embedding matrix (tied)

State-dict names follow MiniMind and transformers' Qwen3 (`model.layers.0.self_attn.q_proj.weight`,
`lm_head.weight`, ...), so checkpoints move between the three without renaming.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .cache import KVCache
from .layers import Attention, RMSNorm, SwiGLU, decoding_attention, linear, rope_cos_sin, rope_inv_freq
from .losses import IGNORE_INDEX, next_token_loss_sum
from .moe import MoEFeedForward


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, L, vocab] (or the last `logits_to_keep` positions)
    loss: torch.Tensor | None = None  # mean next-token cross entropy, when labels are given
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss (0 for dense models)
    hidden_states: torch.Tensor | None = None  # final normalised hidden states


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MoEFeedForward(config) if config.use_moe else SwiGLU(config.hidden_size, config.intermediate_size)
        self.dropout = config.dropout

    def forward(self, h, cos, sin, mask, is_causal, cache):
        h = h + self._drop(self.self_attn(self.input_layernorm(h), cos, sin, mask, is_causal, cache))
        out = self.mlp(self.post_attention_layernorm(h))
        out, aux = out if isinstance(out, tuple) else (out, None)
        return h + self._drop(out), aux

    def _drop(self, x):
        # skipped entirely when off: at one token per step every call counts
        return F.dropout(x, self.dropout, training=True) if self.dropout and self.training else x


class MiniMindModel(nn.Module):
    """Embeddings, the decoder layers and the final norm (state-dict prefix `model.`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = config.dropout
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # recompute each layer in backward to save memory
        self.init_rope()

    def init_rope(self) -> None:
        """Compute the RoPE frequencies from the config. A plain attribute, not a buffer, so
        `model.to(torch.bfloat16)` cannot round them (bf16 angles would blur positions)."""
        with torch.device("cpu"):
            self.inv_freq, self.rope_scale = rope_inv_freq(self.config)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None):
        """`inputs_embeds` [B, L, hidden] replaces the token embeddings (the vision-language
        model puts image features into them); `input_ids` still gives the shape."""
        B, L = input_ids.shape
        past = cache.length if cache is not None else 0
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if self.dropout and self.training:
            h = F.dropout(h, self.dropout, training=True)
        mask, is_causal = build_attention_mask(attention_mask, B, L, past, h.device)
        if position_ids is None:
            position_ids = default_position_ids(attention_mask, B, L, past, h.device)
        if self.inv_freq.device != h.device:
            self.inv_freq = self.inv_freq.to(h.device)
        cos, sin = rope_cos_sin(self.inv_freq, position_ids, self.rope_scale, h.dtype)
        aux_total = None  # summed MoE balance losses (None for dense models)
        # with a KV cache (generation) nearly every call has a new attention shape: see decoding_attention
        with decoding_attention(h.device) if cache is not None else nullcontext():
            for layer in self.layers:
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    h, aux = checkpoint(layer, h, cos, sin, mask, is_causal, cache, use_reentrant=False)
                else:
                    h, aux = layer(h, cos, sin, mask, is_causal, cache)
                if aux is not None:
                    aux_total = aux if aux_total is None else aux_total + aux
        if cache is not None:
            cache.length += L
        if aux_total is None:
            aux_total = torch.zeros((), device=h.device)
        return self.norm(h), aux_total


def default_position_ids(attention_mask, B, L, past, device):
    """Positions of the new tokens. With a padding mask, each row counts only its real tokens,
    so a left-padded prompt gets the same positions (0, 1, ...) as it would alone."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(past, past + L, device=device).expand(B, L)
    pos = attention_mask.long().cumsum(-1) - 1
    return pos[:, -L:].clamp(min=0)


def build_attention_mask(attention_mask, B, L, past, device):
    """Return (mask, is_causal) for the attention layers.

    `attention_mask` may be None, a [B, past + L] padding mask (1 = real token, as in
    transformers), or a ready boolean [B, 1, L, past + L] mask (True = may attend), e.g. one
    that keeps packed documents apart. The common cases need no mask tensor at all: a plain
    causal prefill uses SDPA's built-in causal path, and a one-token decode step attends to
    everything cached.

    The model is causal whatever the mask says: a [B, 1, L, L] mask without a cache is cut to
    the lower triangle, so it can only take keys away (other documents, padding), never let a
    token see a later one. is_causal is then True, mask or not, and Attention may skip the
    keys after each block of queries (blocked_causal_attention) instead of reading them all.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask.to(device=device, dtype=torch.bool)
        if past > 0 or mask.shape[-1] != L:  # new tokens against a cache: used as given
            return mask, False
        return mask & torch.ones(L, L, dtype=torch.bool, device=device).tril(), True
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if past == 0:
            return None, L > 1
        if L == 1:
            return None, False
    T = past + L
    query_pos = torch.arange(past, T, device=device)[:, None]
    key_pos = torch.arange(T, device=device)[None, :]
    mask = (key_pos <= query_pos)[None, None].expand(B, 1, L, T)  # causal
    if padded:
        mask = mask & attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
        # A padding query sees no real key; let it see itself so softmax stays finite
        # (its output is never used, but NaNs would leak through 0 * NaN in later layers).
        mask = mask | (key_pos == query_pos)[None, None]
    return mask, past == 0  # without a cache, every key sits at or before its query


class MiniMindForCausalLM(nn.Module):
    """The full language model. `model(input_ids).logits` -> [B, L, vocab]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make lm_head use the embedding matrix itself (again after `to_empty`, which
        allocates every parameter separately)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, seed: int | None = None) -> MiniMindForCausalLM:
        """GPT-2 style initialisation: N(0, 0.02) everywhere, residual outputs scaled down by
        sqrt(2 * layers) so the residual stream's variance does not grow with depth. (MiniMind
        keeps PyTorch's defaults, which give the tied embedding std 1 and huge first logits.)"""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 1:  # norm weights
                nn.init.ones_(p)
            else:
                scale = (
                    (2 * self.config.num_hidden_layers) ** -0.5
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 1.0
                )
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=gen) * std * scale)
        return self

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache=None,
        labels=None,
        logits_to_keep: int = 0,
        inputs_embeds=None,
    ) -> CausalLMOutput:
        """`labels` are the input ids themselves (shifted inside, -100 = ignore), as in
        transformers. `logits_to_keep=n` computes logits for the last n positions only
        (generation needs just the last one, saving a [L, vocab] matmul). `inputs_embeds`:
        see MiniMindModel.forward."""
        h, aux = self.model(input_ids, attention_mask, position_ids, cache, inputs_embeds)
        (logits,) = linear(h[:, -logits_to_keep:] if logits_to_keep else h, self.lm_head, training=self.training)
        loss = None
        if labels is not None:
            loss = next_token_loss_sum(logits, labels) / (labels[:, 1:] != IGNORE_INDEX).sum()
        return CausalLMOutput(logits=logits, loss=loss, aux_loss=aux, hidden_states=h)

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `capacity` positions, in the dtype
        the attention will produce (the autocast dtype under autocast)."""
        p, c = self.lm_head.weight, self.config
        dtype = torch.get_autocast_dtype(p.device.type) if torch.is_autocast_enabled(p.device.type) else p.dtype
        return KVCache(
            c.num_hidden_layers, batch_size, c.num_key_value_heads, c.head_dim, capacity, device=p.device, dtype=dtype
        )

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device


def count_parameters(config: ModelConfig) -> tuple[int, int]:
    """(total, active-per-token) parameter counts from the config alone, tied weights once.

    Active counts only the k routed experts a token actually passes through (plus the
    router and shared experts); for dense models it equals the total.
    """
    h, d = config.hidden_size, config.head_dim
    attn = h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    if config.attention_bias:
        attn += d * (2 * config.num_key_value_heads + config.num_attention_heads) + h
    if config.qk_norm:
        attn += 2 * d
    norms = 2 * h
    if config.use_moe:
        expert = 3 * h * config.moe_intermediate_size
        router = h * config.num_experts
        shared = config.n_shared_experts * expert
        ffn_total = router + shared + config.num_experts * expert
        ffn_active = router + shared + config.num_experts_per_tok * expert
    else:
        ffn_total = ffn_active = 3 * h * config.intermediate_size
    embed = config.vocab_size * h
    head = 0 if config.tie_word_embeddings else config.vocab_size * h
    base = embed + head + h + config.num_hidden_layers * (attn + norms)
    return (base + config.num_hidden_layers * ffn_total, base + config.num_hidden_layers * ffn_active)
