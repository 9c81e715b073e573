"""PPO's critic: a value model initialised from the policy.

    critic = ValueModel(policy)            # a copy of the policy's trunk + a scalar head
    values = critic(input_ids, attention_mask)   # [B, L] float32: V(prefix up to each token)

It is what MiniMind's train_ppo.py calls the critic (its CriticModel: the SFT weights plus a
`value_head` Linear(hidden, 1)), with its state-dict names (`model.*`, `value_head.*`), minus two
of its defects: the final RMSNorm is applied once (MiniMind's applies it twice), and no unused
copy of the lm_head is kept. The head starts at zero, so the first values are 0 (no baseline
yet) instead of the noise a random head would feed into the first advantages.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ValueModel(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(policy.model)  # embeddings, layers and final norm: the trunk
        self.value_head = nn.Linear(policy.config.hidden_size, 1, device=policy.lm_head.weight.device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        h, _ = self.model(input_ids, attention_mask)
        # The head in float32 even under autocast: a value is one number per token, and bf16
        # (3 significant digits) would round the returns it is fitted to.
        with torch.autocast(h.device.type, enabled=False):
            return self.value_head(h.float()).squeeze(-1)
