"""Mixture-of-experts feed-forward: a router picks the top-k experts for every token.

Layout and forward values match MiniMind (minimind-3-moe: 4 experts, top-1; MiniMind2-MoE:
4 routed + 1 shared expert, top-2) and transformers' Qwen3-MoE, so weights move between them
unchanged. One deliberate difference in the *gradient*: see `route`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .layers import SwiGLU


class MoEFeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.aux_loss_coef = config.router_aux_loss_coef
        size = config.moe_intermediate_size
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, size) for _ in range(config.num_experts))
        self.shared_experts = nn.ModuleList(SwiGLU(config.hidden_size, size) for _ in range(config.n_shared_experts))

    def route(self, x: torch.Tensor):
        """Router probabilities [N, E], and the chosen experts and their weights [N, k].

        With `norm_topk_prob` the k weights are divided by their sum. MiniMind divides by the
        live sum, so with top-1 the weight is exactly 1 and its gradient is 0: the router then
        learns only from the tiny balancing loss, never from the language-model loss. We
        divide by the *detached* sum instead. The forward values are identical (so weights
        stay interchangeable with MiniMind and Qwen3-MoE), but the gradient d weight / d prob
        = 1 / sum is non-zero, so the LM loss teaches the router which expert helps.
        """
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True).detach()
        return probs, experts, weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (output, auxiliary load-balancing loss) for input [B, L, hidden]."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, hidden], N = B * L tokens
        probs, experts, weights = self.route(x)

        # Sort the N*k (token, expert) assignments by expert, then run each expert once
        # on the contiguous block of tokens routed to it.
        flat_experts = experts.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_of = order // self.top_k  # which token each sorted assignment came from
        counts = torch.bincount(flat_experts, minlength=self.num_experts)
        sorted_weights = weights.reshape(-1)[order].to(x.dtype)[:, None]
        out = torch.zeros_like(x)
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):
            if count:
                idx = token_of[start : start + count]
                out.index_add_(0, idx, expert(x[idx]) * sorted_weights[start : start + count])
            start += count
        for shared in self.shared_experts:
            out = out + shared(x)

        aux = x.new_zeros((), dtype=torch.float32)
        if self.training and self.aux_loss_coef > 0:
            # Switch-Transformer balance loss: E * sum_i f_i * P_i, where f_i is the fraction
            # of routing slots given to expert i and P_i its mean router probability.
            # Minimal (= 1 * coef) when both are uniform.
            f = counts.float() / flat_experts.numel()
            aux = self.num_experts * (f * probs.mean(dim=0)).sum() * self.aux_loss_coef
        return out.reshape(shape), aux
