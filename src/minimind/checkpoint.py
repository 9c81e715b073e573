"""Model directories: the unit every stage reads and writes.

    DIR/config.json              ModelConfig
    DIR/model.safetensors        weights (no pickle: loading can never run code)
    DIR/tokenizer.json           byte-level BPE
    DIR/tokenizer_config.json    special tokens and the chat template

Weights load strictly: a missing, unexpected or mis-shaped tensor is an error naming it,
never a silent partial load (MiniMind's `strict=False` trains half-random models unnoticed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import ModelConfig
from .errors import MiniMindError
from .files import atomic_write, read_safetensors
from .model import MiniMindForCausalLM
from .model.lora import ADAPTER_CONFIG, check_tokenizer, load_adapter
from .tokenizer import Tokenizer, tokenizer_fingerprint

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _tied_names(model) -> tuple[str, str]:
    """(lm_head, embedding) names in the model's state dict: a vision-language model keeps the
    language model's names under a prefix (`lm.`)."""
    prefix = getattr(model, "lm_prefix", "")
    return prefix + "lm_head.weight", prefix + "model.embed_tokens.weight"


def _unsaved(model, name: str) -> bool:
    """A tensor never written to our weights: a frozen transformers vision tower, which is
    read from its own directory (named in config.json)."""
    return name.startswith(tuple(getattr(model, "unsaved_prefixes", ())))


def weights_state_dict(model: MiniMindForCausalLM, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The state dict as stored on disk: tied lm_head left out (it *is* the embedding), and
    a frozen vision tower too."""
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().contiguous() for k, v in sd.items() if not _unsaved(model, k)}
    if model.config.tie_word_embeddings:
        sd.pop(_tied_names(model)[0], None)
    return sd


def save_weights(
    model: MiniMindForCausalLM, path: str | Path, dtype: torch.dtype | None = None, state_dict: dict | None = None
) -> None:
    sd = weights_state_dict(model, state_dict)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    sd = {k: v.cpu() for k, v in sd.items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))


def save_model_dir(
    model: MiniMindForCausalLM, out_dir: str | Path, tokenizer=None, dtype=None, state_dict: dict | None = None
) -> Path:
    """Write config, weights and (if given) the tokenizer files into `out_dir`. `state_dict`
    replaces model.state_dict() (e.g. one gathered from shards by FSDP)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG_NAME, lambda tmp: model.config.save(tmp))
    save_weights(model, out / WEIGHTS_NAME, dtype, state_dict)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def read_weights(path: str | Path, model: MiniMindForCausalLM) -> dict[str, torch.Tensor]:
    """Read a safetensors file and check it strictly against `model` (every tensor, every
    shape of its config); returns the full state dict, tied lm_head included."""
    path = Path(path)
    sd = read_safetensors(path, "weights file")
    full = model.state_dict()  # names and shapes (under FSDP: the full shapes)
    expected = {k: v for k, v in full.items() if not _unsaved(model, k)}
    tied = model.config.tie_word_embeddings
    head, embed = _tied_names(model)
    if tied and head in sd:
        # A tied model saved by a tool that writes both names: accept only a true copy.
        if embed in sd and not torch.equal(sd[head], sd[embed]):
            raise MiniMindError(f"{path}: tie_word_embeddings is true but {head} differs from {embed}")
        sd.pop(head)
    wanted = set(expected) - ({head} if tied else set())
    missing, unexpected = sorted(wanted - set(sd)), sorted(set(sd) - wanted)
    problems = []
    if missing:
        problems.append(f"missing tensors {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_short(unexpected)}")
    for k in sorted(wanted & set(sd)):
        if sd[k].shape != expected[k].shape:
            problems.append(f"{k} has shape {tuple(sd[k].shape)}, config needs {tuple(expected[k].shape)}")
    if problems:
        raise MiniMindError(f"{path}: weights do not match config.json: " + "; ".join(problems[:5]))
    if tied:
        sd[head] = sd[embed]
    sd.update({k: v for k, v in full.items() if _unsaved(model, k)})  # the frozen tower, as loaded
    return sd


def load_weights(model: MiniMindForCausalLM, path: str | Path) -> None:
    """Load a safetensors file into `model`, strictly (every tensor, every shape)."""
    model.load_state_dict(read_weights(path, model), strict=True)


def _short(names: list[str], n: int = 4) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> MiniMindForCausalLM:
    """Build the model from DIR/config.json and load DIR/model.safetensors into it."""
    d = Path(model_dir)
    if not d.is_dir():
        raise MiniMindError(f"{d}: model directory not found")
    config = ModelConfig.load(d / CONFIG_NAME)
    # Built on the CPU with its (wasted) random init: building on the meta device instead
    # imports torch._dynamo for the init functions, which costs more (2-9 s) than the init.
    if "vision" in config.extra:  # a vision-language model (config.json has a `vision` section)
        from .model.vlm import MiniMindVLM

        model = MiniMindVLM(config, base_dir=d)
    else:
        model = MiniMindForCausalLM(config)
    load_weights(model, d / WEIGHTS_NAME)
    model.eval()
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


def load(
    model_dir: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    lora: str | Path | None = None,
):
    """`model, tokenizer = minimind.load(DIR)`: a ready-to-use model (eval mode) and tokenizer.
    `lora=ADAPTER_DIR` puts a LoRA adapter (trained on this base) on top of it."""
    model = load_model(model_dir, device, dtype)
    tokenizer = Tokenizer.from_dir(model_dir)
    if lora is not None:
        model = load_adapter(model, lora, base_dir=model_dir)
        check_tokenizer(
            model.lora_config.base, tokenizer_fingerprint(tokenizer), model_dir, Path(lora) / ADAPTER_CONFIG
        )
    if tokenizer.vocab_size > model.config.vocab_size:
        raise MiniMindError(
            f"{model_dir}: tokenizer has {tokenizer.vocab_size} tokens "
            f"but config.json vocab_size is {model.config.vocab_size}"
        )
    return model, tokenizer
