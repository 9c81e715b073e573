"""Helpers shared by several test modules (imported as `from helpers import ...`; pytest puts
this folder on sys.path)."""

import torch

from minimind.config import preset
from minimind.model import MiniMindForCausalLM


def scrambled_model(seed: int = 0, **overrides) -> MiniMindForCausalLM:
    """A nano model (config overrides allowed) whose matrices are redrawn with std 0.1, so
    its greedy text varies and its preferences differ from prompt to prompt (the default
    init is nearly uniform)."""
    model = MiniMindForCausalLM(preset("nano", **overrides)).init_weights(0).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model
