"""The MiniMind model: layers, mixture of experts and the causal LM."""

from .minimind import CausalLMOutput, KVCache, MiniMindForCausalLM, count_parameters

__all__ = ["CausalLMOutput", "KVCache", "MiniMindForCausalLM", "count_parameters"]
