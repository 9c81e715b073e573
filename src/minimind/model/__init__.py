"""The MiniMind model: layers, mixture of experts and the causal LM."""

from .cache import KVCache
from .minimind import CausalLMOutput, MiniMindForCausalLM, count_parameters

__all__ = ["CausalLMOutput", "KVCache", "MiniMindForCausalLM", "count_parameters"]
