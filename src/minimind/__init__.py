"""minimind: train a small language model from scratch, end to end, in plain PyTorch.

import minimind
model, tokenizer = minimind.load("out/quickstart")
"""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["load", "load_model", "save_model_dir", "ModelConfig", "preset", "MiniMindError", "MiniMindForCausalLM"]

# Imported on first use (PEP 562), so `minimind --help` and other light commands don't pay
# for importing torch.
_WHERE = {
    "load": ".checkpoint",
    "load_model": ".checkpoint",
    "save_model_dir": ".checkpoint",
    "ModelConfig": ".config",
    "preset": ".config",
    "MiniMindError": ".errors",
    "MiniMindForCausalLM": ".model",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'minimind' has no attribute {name!r}")
