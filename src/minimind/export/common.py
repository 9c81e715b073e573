"""Helpers shared by every import and export: strict loading, RoPE layouts, files.

Two RoPE layouts exist in the wild and converters must not mix them up:
  * "rotate half" (MiniMind, transformers' Llama/Qwen, llama.cpp's NEOX type): dimension i of
    a head is paired with dimension i + head_dim/2;
  * "interleaved" (Meta's original Llama, MiniMind's first `.pth` layout, llama.cpp's NORM
    type used by its `llama` architecture): dimension 2i is paired with 2i + 1.
Both rotate pair i by the same angle, so converting is only a reordering of the rows of the
q and k projections inside each head (attention scores q.k are unchanged by it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from ..checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model
from ..config import ModelConfig
from ..errors import MiniMindError
from ..model import MiniMindForCausalLM, count_parameters

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'fp32' / 'fp16' / 'bf16' -> torch dtype; None or 'auto' -> None (keep as stored)."""
    if name in (None, "auto"):
        return None
    if name not in DTYPES:
        raise MiniMindError(f"unknown dtype {name!r}; choose from: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def stored_dtype(sd: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating dtype the tensors were saved in (fp32 when they disagree)."""
    dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _names(names, n: int = 4) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_tensors(config: ModelConfig, sd: dict[str, torch.Tensor], source: str) -> None:
    """Raise one clear error if `sd` is not exactly the tensors `config` needs.

    Names every unknown, missing or mis-shaped tensor (up to a few of each), so a user sees
    `model.layers.3.self_attn.k_proj.weight has shape (64, 512), expected (128, 512)` instead
    of a half-loaded model (MiniMind's strict=False) or a 40-line traceback.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in MiniMindForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    problems = []
    unknown = set(sd) - set(expected)
    missing = set(expected) - set(sd)
    if unknown:
        problems.append(f"unknown tensor{'s' * (len(unknown) > 1)} {_names(unknown)}")
    if missing:
        problems.append(f"missing tensor{'s' * (len(missing) > 1)} {_names(missing)}")
    for k in sorted(set(sd) & set(expected)):
        if tuple(sd[k].shape) != expected[k]:
            problems.append(f"{k} has shape {tuple(sd[k].shape)}, expected {expected[k]}")
        elif not sd[k].is_floating_point():
            problems.append(f"{k} has dtype {sd[k].dtype}, expected a floating-point tensor")
    if problems:
        raise MiniMindError(f"{source}: " + "; ".join(problems[:4]))


def build_model(config: ModelConfig, sd: dict[str, torch.Tensor], source: str) -> MiniMindForCausalLM:
    """A model (fp32, eval mode) holding exactly the tensors of `sd`, checked by check_tensors."""
    check_tensors(config, sd, source)
    with torch.device("meta"):  # no time spent on a random init that is overwritten anyway
        model = MiniMindForCausalLM(config)
    model = model.to_empty(device="cpu")
    model.tie_weights()
    params = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            params[k].copy_(v)
    return model.eval()


def load_model_dir(model_dir: str | Path) -> tuple[MiniMindForCausalLM, torch.dtype]:
    """Our model directory -> (fp32 model in eval mode, the dtype its weights were saved in)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MiniMindError(f"{model_dir}: model directory not found")
    if not (model_dir / CONFIG_NAME).is_file():
        raise MiniMindError(f"{model_dir / CONFIG_NAME}: file not found (is {model_dir} a minimind model directory?)")
    model = load_model(model_dir)  # strict: every tensor, every shape
    with safe_open(str(model_dir / WEIGHTS_NAME), framework="pt") as f:
        first = next(iter(f.keys()))
        stored = f.get_slice(first).get_dtype()
    stored = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}.get(stored, torch.float32)
    return model.float(), stored


def to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from rotate-half to interleaved pairs (llama.cpp's
    `permute` for its `llama` architecture): per head, rows [0..D/2) and [D/2..D) are woven
    together as 0, D/2, 1, D/2+1, ..."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of to_interleaved: per head, even rows first, then odd rows."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def prepare_out_dir(out: str | Path, force: bool) -> Path:
    """Create `out`; refuse a non-empty one unless `force` (never mix two models' files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MiniMindError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise MiniMindError(f"{out}: directory exists and is not empty (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def copy_tokenizer_files(src: str | Path, out: Path) -> list[str]:
    """Copy tokenizer.json and tokenizer_config.json from `src` into `out`; returns the names
    copied. Missing files are skipped (the caller says what that means for the user)."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, out / name)
            copied.append(name)
    return copied


def describe(config: ModelConfig) -> str:
    """A one-line summary of a config, for the messages the commands print."""
    total, active = count_parameters(config)
    kind = "dense"
    if config.use_moe:
        kind = f"MoE {config.num_experts} experts top-{config.num_experts_per_tok}"
        if config.n_shared_experts:
            kind += f" + {config.n_shared_experts} shared"
    return (
        f"{total / 1e6:.2f}M parameters, {kind}, hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads / "
        f"{config.num_key_value_heads} KV heads, head_dim {config.head_dim}, "
        f"q/k norm {'on' if config.qk_norm else 'off'}, vocab {config.vocab_size}"
    )
