"""Import a `.pth` state dict saved by the original MiniMind into a model directory.

    minimind import minimind-pth out/full_sft_768.pth --out models/sft --tokenizer TOKDIR

A MiniMind `.pth` holds only tensors: no config. Everything the tensors reveal is read from
them (vocabulary and hidden size from the embedding, layers from the names, head_dim from
the q/k norms, KV heads from k_proj, FFN width, experts, shared experts); the few numbers
no tensor shows (attention heads without q/k norm, top-k, eps, RoPE base) come from flags,
a --preset, or the defaults of the generation the tensors belong to:

  generation    recognised by                  heads  top-k  renormalise top-k  rms eps
  minimind-3    q_norm/k_norm tensors          (*)    1      always             1e-6
  MiniMind2     no q/k norm                    8      2      only if k > 1      1e-5
  MiniMind2 as first released (model/model.py, `MiniMindLM`): names tok_embeddings,
                layers.N.attention.wq, feed_forward.w1, ...; otherwise as MiniMind2
  (*) minimind-3's q/k norms reveal head_dim, so its head count comes from q_proj.

The first MiniMind2 layout also used complex ("interleaved") RoPE, so its q/k rows are
reordered to our rotate-half layout on import (see common.py): the same function results.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoint import save_model_dir
from ..config import PRESETS, ModelConfig, preset
from ..errors import MiniMindError
from ..tokenizer import Tokenizer
from .common import build_model, parse_dtype, prepare_out_dir, stored_dtype, to_rotate_half

# Defaults of the numbers a MiniMind state dict does not reveal, per generation.
GENERATION_DEFAULTS = {
    "minimind3": dict(num_attention_heads=8, num_experts_per_tok=1, rms_norm_eps=1e-6, router_aux_loss_coef=5e-4),
    "minimind2": dict(num_attention_heads=8, num_experts_per_tok=2, rms_norm_eps=1e-5, router_aux_loss_coef=0.01),
}

# Early MiniMind2 (`model/model.py`, class MiniMindLM) names -> today's names.
_LEGACY_RENAMES = [
    (r"^tok_embeddings\.weight$", "model.embed_tokens.weight"),
    (r"^output\.weight$", "lm_head.weight"),
    (r"^norm\.weight$", "model.norm.weight"),
    (r"^layers\.(\d+)\.attention\.wq\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^layers\.(\d+)\.attention\.wk\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^layers\.(\d+)\.attention\.wv\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^layers\.(\d+)\.attention\.wo\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^layers\.(\d+)\.attention_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"model.layers.\1.post_attention_layernorm."),
    (r"^layers\.(\d+)\.feed_forward\.gate\.", r"model.layers.\1.mlp.gate."),
    (r"^layers\.(\d+)\.feed_forward\.shared_experts\.", r"model.layers.\1.mlp.shared_experts.0."),
    (r"^layers\.(\d+)\.feed_forward\.", r"model.layers.\1.mlp."),
]
_FFN_RENAMES = {".w1.": ".gate_proj.", ".w3.": ".up_proj.", ".w2.": ".down_proj."}


def load_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a `.pth` with `weights_only=True` (a pickle that could run code is refused) and
    return its state dict, unwrapped from a resume checkpoint and DDP/compile prefixes."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    with open(path, "rb") as f:
        magic = f.read(2)
    # torch.save writes a zip archive (PK..), or a bare pickle (0x80 + protocol) in old versions
    if not (zipfile.is_zipfile(path) or magic[:1] == b"\x80"):
        raise MiniMindError(f"{path}: not a PyTorch state dict (neither a torch.save zip nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" (found {found.group(1)})" if found else ""
        raise MiniMindError(
            f"{path}: refused to load: it holds Python objects besides tensors{what}; only "
            "plain state dicts are read (weights_only=True), since a pickle can run code"
        ) from None
    except Exception as e:  # a damaged archive (zip/pickle errors differ by torch version)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise MiniMindError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # MiniMind's *_resume.pth
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise MiniMindError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise MiniMindError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        # DistributedDataParallel saves `module.x`, torch.compile `_orig_mod.x`.
        k = re.sub(r"^(module\.|_orig_mod\.)+", "", k)
        if re.search(r"(^|\.)(freqs_cos|freqs_sin|pos_cis|mask)$", k):
            continue  # RoPE tables / causal masks some versions saved: derived, not weights
        sd[k] = v
    return sd


def is_legacy(sd: dict) -> bool:
    """True for the first MiniMind2 layout (`MiniMindLM`: tok_embeddings, layers.N.attention...)."""
    return "tok_embeddings.weight" in sd or any(k.startswith("layers.") for k in sd)


def rename_legacy(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Early MiniMind2 names -> today's names (values untouched; see reorder_legacy_rope)."""
    out = {}
    for k, v in sd.items():
        new = k
        for pattern, repl in _LEGACY_RENAMES:
            new, n = re.subn(pattern, repl, new)
            if n:
                break
        if ".mlp." in new:
            for a, b in _FFN_RENAMES.items():
                new = new.replace(a, b)
        out[new] = v
    return out


def reorder_legacy_rope(sd: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The early layout rotated interleaved pairs (complex RoPE); ours rotates halves. The same
    model in our layout has each head's q/k rows reordered (even rows first, then odd)."""
    out = dict(sd)
    for k, v in sd.items():
        if k.endswith("self_attn.q_proj.weight"):
            out[k] = to_rotate_half(v, config.num_attention_heads)
        elif k.endswith("self_attn.k_proj.weight"):
            out[k] = to_rotate_half(v, config.num_key_value_heads)
    return out


def _layer_count(sd, source) -> int:
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    if not layers:
        raise MiniMindError(f"{source}: no model.layers.N.* tensors: not a MiniMind state dict")
    if layers != list(range(len(layers))):
        gap = next(i for i in range(len(layers) + 1) if i not in layers)
        raise MiniMindError(f"{source}: layer {gap} is missing (found layers {layers[0]}..{layers[-1]})")
    return len(layers)


def _shape(sd, key, source, dims: int) -> tuple:
    if key not in sd:
        raise MiniMindError(f"{source}: missing tensor {key}")
    shape = tuple(sd[key].shape)
    if len(shape) != dims:
        raise MiniMindError(f"{source}: {key} has shape {shape}, expected {dims} dimensions")
    return shape


def infer_config(sd: dict[str, torch.Tensor], source: str, preset_name: str | None = None, **flags) -> ModelConfig:
    """The ModelConfig of a MiniMind state dict (today's names), from its tensor shapes plus
    flags / a preset / the generation's defaults for what the shapes cannot tell.

    `flags` may set num_attention_heads, num_experts_per_tok, rms_norm_eps, rope_theta,
    max_position_embeddings (None = not given). A preset that disagrees with a tensor is an
    error naming that tensor.
    """
    flags = {k: v for k, v in flags.items() if v is not None}
    vocab, hidden = _shape(sd, "model.embed_tokens.weight", source, 2)
    layers = _layer_count(sd, source)
    attn = "model.layers.0.self_attn"
    qk_norm = f"{attn}.q_norm.weight" in sd
    generation = "minimind3" if qk_norm else "minimind2"
    known = dict(GENERATION_DEFAULTS[generation])
    if preset_name is not None:
        base = preset(preset_name)
        if base.qk_norm != qk_norm:
            raise MiniMindError(
                f"{source}: preset {preset_name} {'has' if base.qk_norm else 'has no'} q/k norm but "
                f"the state dict {'has' if qk_norm else 'has no'} {attn}.q_norm.weight"
            )
        known.update(
            num_attention_heads=base.num_attention_heads,
            num_experts_per_tok=base.num_experts_per_tok,
            rms_norm_eps=base.rms_norm_eps,
            rope_theta=base.rope_theta,
            max_position_embeddings=base.max_position_embeddings,
            router_aux_loss_coef=base.router_aux_loss_coef,
        )
    known.update(flags)

    q_rows = _shape(sd, f"{attn}.q_proj.weight", source, 2)[0]
    k_rows = _shape(sd, f"{attn}.k_proj.weight", source, 2)[0]
    if qk_norm:  # minimind-3 reveals head_dim; heads follow from q_proj
        head_dim = _shape(sd, f"{attn}.q_norm.weight", source, 1)[0]
        if "num_attention_heads" in flags or preset_name:
            if known["num_attention_heads"] * head_dim != q_rows:
                raise MiniMindError(
                    f"{source}: {known['num_attention_heads']} attention heads x head_dim {head_dim} "
                    f"(from {attn}.q_norm.weight) != {q_rows} rows of {attn}.q_proj.weight"
                )
        known["num_attention_heads"] = q_rows // head_dim
    else:  # MiniMind2: head_dim = hidden / heads, heads from a flag or the default 8
        heads = known["num_attention_heads"]
        if hidden % heads:
            raise MiniMindError(
                f"{source}: hidden size {hidden} is not divisible by {heads} attention heads "
                f"(set --num-attention-heads)"
            )
        head_dim = hidden // heads
    if q_rows % head_dim or k_rows % head_dim or q_rows // head_dim != known["num_attention_heads"]:
        raise MiniMindError(
            f"{source}: {attn}.q_proj.weight has {q_rows} rows and {attn}.k_proj.weight {k_rows}, "
            f"not multiples of head_dim {head_dim} x {known['num_attention_heads']} heads "
            f"(set --num-attention-heads)"
        )
    kv_heads = k_rows // head_dim

    mlp = "model.layers.0.mlp"
    use_moe = f"{mlp}.gate.weight" in sd
    if use_moe:
        num_experts = _shape(sd, f"{mlp}.gate.weight", source, 2)[0]
        ffn = _shape(sd, f"{mlp}.experts.0.gate_proj.weight", source, 2)[0]
        shared = len({m.group(1) for k in sd if (m := re.match(rf"{re.escape(mlp)}\.shared_experts\.(\d+)\.", k))})
        k = known["num_experts_per_tok"]
        if not 1 <= k <= num_experts:
            raise MiniMindError(
                f"{source}: top-k {k} is not between 1 and the {num_experts} experts of {mlp}.gate.weight"
            )
        # MiniMind2's MoEGate renormalises the k weights only when k > 1; minimind-3 always does.
        norm = True if qk_norm else k > 1
        moe = dict(
            use_moe=True,
            num_experts=num_experts,
            num_experts_per_tok=k,
            n_shared_experts=shared,
            moe_intermediate_size=ffn,
            intermediate_size=ffn,
            norm_topk_prob=norm,
        )
    else:
        ffn = _shape(sd, f"{mlp}.gate_proj.weight", source, 2)[0]
        moe = dict(intermediate_size=ffn, moe_intermediate_size=ffn)

    tied = "lm_head.weight" not in sd or torch.equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    fields = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        head_dim=head_dim,
        num_attention_heads=known["num_attention_heads"],
        num_key_value_heads=kv_heads,
        qk_norm=qk_norm,
        rms_norm_eps=known["rms_norm_eps"],
        router_aux_loss_coef=known["router_aux_loss_coef"],
        tie_word_embeddings=tied,
        **moe,
    )
    for name in ("rope_theta", "max_position_embeddings"):
        if name in known:
            fields[name] = known[name]
    if preset_name is not None:
        _check_against_preset(preset(preset_name), fields, preset_name, source)
    try:
        return ModelConfig(**fields)
    except MiniMindError as e:
        raise MiniMindError(f"{source}: {e}") from None


_REVEALED_BY = {  # which tensor shows each field, for "preset X disagrees with tensor Y"
    "vocab_size": "model.embed_tokens.weight",
    "hidden_size": "model.embed_tokens.weight",
    "num_hidden_layers": "model.layers.*",
    "head_dim": "model.layers.0.self_attn.q_norm.weight",
    "num_key_value_heads": "model.layers.0.self_attn.k_proj.weight",
    "intermediate_size": "model.layers.0.mlp.gate_proj.weight",
    "moe_intermediate_size": "model.layers.0.mlp.experts.0.gate_proj.weight",
    "num_experts": "model.layers.0.mlp.gate.weight",
    "n_shared_experts": "model.layers.0.mlp.shared_experts.*",
    "use_moe": "model.layers.0.mlp.gate.weight",
}


def _check_against_preset(base: ModelConfig, fields: dict, name: str, source: str) -> None:
    for field, tensor in _REVEALED_BY.items():
        if field not in fields or (field == "intermediate_size" and fields.get("use_moe")):
            continue
        if field in ("moe_intermediate_size", "num_experts", "n_shared_experts") and not fields.get("use_moe"):
            continue
        if getattr(base, field) != fields[field]:
            raise MiniMindError(
                f"{source}: preset {name} has {field} {getattr(base, field)} but {tensor} says {fields[field]}"
            )


def import_minimind_pth(
    path: str | Path,
    out: str | Path,
    tokenizer: str | Path | None = None,
    preset_name: str | None = None,
    dtype: str | None = None,
    force: bool = False,
    **flags,
) -> tuple[Path, ModelConfig]:
    """Convert a MiniMind `.pth` into a model directory (config.json, model.safetensors and,
    with `tokenizer`, the tokenizer files). Returns (directory, config)."""
    source = str(path)
    if preset_name is not None and preset_name not in PRESETS:
        preset(preset_name)  # raises the "unknown preset" error
    target = parse_dtype(dtype)  # a bad --dtype fails before any loading
    tok = Tokenizer.from_dir(tokenizer) if tokenizer is not None else None
    sd = load_pth(path)
    legacy = is_legacy(sd)
    if legacy:
        sd = rename_legacy(sd)
    config = infer_config(sd, source, preset_name, **flags)
    if legacy:
        sd = reorder_legacy_rope(sd, config)
    if tok is not None:
        if tok.vocab_size > config.vocab_size:
            raise MiniMindError(
                f"{tokenizer}: tokenizer has {tok.vocab_size} tokens but {source} has only "
                f"{config.vocab_size} embeddings"
            )
        config = replace(
            config, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
        )
    if config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    model = build_model(config, sd, source)
    keep = target or stored_dtype(sd)
    out_dir = prepare_out_dir(out, force)
    save_model_dir(model, out_dir, tok, dtype=keep)
    return out_dir, config
