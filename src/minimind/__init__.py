"""minimind: train a small language model from scratch, end to end, in plain PyTorch.

    import minimind
    model, tokenizer = minimind.load("out/quickstart")
"""

from .checkpoint import load, load_model, save_model_dir
from .config import ModelConfig, preset
from .errors import MiniMindError
from .model import MiniMindForCausalLM

__version__ = "0.1.0"
__all__ = ["load", "load_model", "save_model_dir", "ModelConfig", "preset", "MiniMindError", "MiniMindForCausalLM"]
