"""Import a transformers checkpoint directory so our trainer can continue training it.

    minimind import hf Qwen3-0.6B/ --out models/qwen3

Accepted: Qwen3ForCausalLM, Qwen3MoeForCausalLM, LlamaForCausalLM, and Qwen2MoeForCausalLM as
written by our own export (zero shared-expert gate, zero q/k/v biases; see hf_export.py),
saved as safetensors (one file, or shards listed in model.safetensors.index.json), any
vocabulary size. MoE experts may be one tensor per expert (the Hub layout, transformers
4.x) or fused (`experts.gate_up_proj` [E, 2I, H] and `experts.down_proj` [E, H, I], what
transformers 5.x writes). Features our model does not compute (sliding-window attention,
MLP biases, activations other than SiLU, RoPE scaling other than YaRN, ...) are refused with
the config key that asks for them, rather than imported into a silently different model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..checkpoint import save_model_dir
from ..config import ModelConfig
from ..errors import MiniMindError
from ..files import read_json_object
from ..tokenizer import Tokenizer
from .common import build_model, copy_tokenizer_files, parse_dtype, prepare_out_dir, stored_dtype

SUPPORTED = {"Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "LlamaForCausalLM", "Qwen2MoeForCausalLM"}


def read_hf_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise MiniMindError(f"{model_dir}: directory not found")
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found (is {model_dir} a transformers model directory?)")
    return read_json_object(path)


def _rope(d: dict, where: str) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from either the 4.x keys or 5.x's `rope_parameters`."""
    params = d.get("rope_parameters") or {}
    theta = d.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling") or ({k: v for k, v in params.items() if k != "rope_theta"} or None)
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            scaling = None
        elif kind != "yarn":
            raise MiniMindError(f"{where}: rope scaling type {kind!r} is not supported (only yarn)")
        else:
            scaling = {"type": "yarn", **{k: v for k, v in scaling.items() if k not in ("type", "rope_type")}}
    if float(d.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))) != 1.0:
        raise MiniMindError(f"{where}: partial_rotary_factor is not supported (RoPE on every dimension only)")
    return float(theta), scaling


def config_from_hf(d: dict, where: str) -> tuple[str, ModelConfig]:
    """(architecture, our ModelConfig) for a transformers config.json dict, or a clear error."""
    arch = (d.get("architectures") or [None])[0]
    if arch not in SUPPORTED:
        raise MiniMindError(
            f"{where}: architecture {arch or d.get('model_type')!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED))})"
        )
    if d.get("hidden_act", "silu") != "silu":
        raise MiniMindError(f"{where}: hidden_act {d['hidden_act']!r} is not supported (only silu)")
    if d.get("use_sliding_window") or (arch == "LlamaForCausalLM" and d.get("sliding_window")):
        raise MiniMindError(f"{where}: use_sliding_window is set; sliding-window attention is not supported")
    if any(t != "full_attention" for t in d.get("layer_types") or []):
        raise MiniMindError(f"{where}: layer_types has sliding-window layers; not supported")
    if d.get("mlp_bias"):
        raise MiniMindError(f"{where}: mlp_bias is set; MLP biases are not supported")
    if arch.endswith("MoeForCausalLM") and (d.get("mlp_only_layers") or d.get("decoder_sparse_step", 1) != 1):
        raise MiniMindError(f"{where}: mlp_only_layers/decoder_sparse_step mix dense and MoE layers; not supported")
    theta, scaling = _rope(d, where)

    def need(*keys):  # the first of these keys present (transformers renamed a few over time)
        for key in keys:
            if isinstance(d.get(key), (int, float)) and not isinstance(d.get(key), bool):
                return d[key]
        raise MiniMindError(f"{where}: missing or non-numeric {keys[0]}")

    heads = need("num_attention_heads")
    eos = d.get("eos_token_id")
    fields = dict(
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_hidden_layers=need("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or need("hidden_size") // heads,
        max_position_embeddings=d.get("max_position_embeddings", 2048 if arch == "LlamaForCausalLM" else 32768),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=bool(d.get("attention_bias", False)) and arch != "Qwen2MoeForCausalLM",
        qk_norm=arch.startswith("Qwen3"),
        moe_intermediate_size=d.get("moe_intermediate_size", d["intermediate_size"]),
    )
    for key, name in (("bos_token_id", "bos_token_id"), ("pad_token_id", "pad_token_id")):
        if isinstance(d.get(key), int):
            fields[name] = d[key]
    if isinstance(eos, list) and eos:
        eos = eos[0]
    if isinstance(eos, int):
        fields["eos_token_id"] = eos
    if arch.endswith("MoeForCausalLM"):
        fields.update(
            use_moe=True,
            num_experts=need("num_experts", "num_local_experts"),
            num_experts_per_tok=need("num_experts_per_tok"),
            norm_topk_prob=bool(d.get("norm_topk_prob", False)),  # transformers' default
            router_aux_loss_coef=d.get("router_aux_loss_coef", 0.001),
            n_shared_experts=1 if arch == "Qwen2MoeForCausalLM" else 0,
        )
        shared = d.get("shared_expert_intermediate_size")
        if arch == "Qwen2MoeForCausalLM" and shared != fields["moe_intermediate_size"]:
            raise MiniMindError(
                f"{where}: shared_expert_intermediate_size {shared} differs from "
                f"moe_intermediate_size {fields['moe_intermediate_size']}; not supported"
            )
    try:
        return arch, ModelConfig(**fields)
    except MiniMindError as e:
        raise MiniMindError(f"{where}: {e}") from None


def read_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: model.safetensors, or the shards of its index file."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise MiniMindError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
    elif (model_dir / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif any(model_dir.glob("*.bin")):
        raise MiniMindError(
            f"{model_dir}: only PyTorch .bin weights found; save them as safetensors first "
            "(model.save_pretrained(dir, safe_serialization=True))"
        )
    else:
        raise MiniMindError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    sd = {}
    for name in files:
        path = model_dir / name
        if not path.is_file():
            raise MiniMindError(f"{path}: shard listed in the index is missing")
        try:
            sd.update(load_file(str(path)))
        except (SafetensorError, OSError) as e:
            raise MiniMindError(f"{path}: not a valid safetensors file ({e})") from None
    return sd


def to_our_names(sd: dict[str, torch.Tensor], arch: str, config: ModelConfig, where: str) -> dict[str, torch.Tensor]:
    """Rename/split transformers tensors into our state dict (names mostly identical already)."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"(model\.layers\.\d+\.mlp)\.experts\.(gate_up_proj|down_proj)$", k)
        if m:  # transformers 5's fused experts: [E, 2I, H] and [E, H, I]
            p, kind = m.groups()
            for e in range(v.shape[0]):
                if kind == "gate_up_proj":
                    gate, up = v[e].chunk(2, dim=0)
                    out[f"{p}.experts.{e}.gate_proj.weight"], out[f"{p}.experts.{e}.up_proj.weight"] = gate, up
                else:
                    out[f"{p}.experts.{e}.down_proj.weight"] = v[e]
            continue
        if arch == "Qwen2MoeForCausalLM":
            if k.endswith(".mlp.shared_expert_gate.weight") or re.search(r"\.self_attn\.[qkv]_proj\.bias$", k):
                if torch.count_nonzero(v):
                    raise MiniMindError(
                        f"{where}: {k} is not zero; Qwen2-MoE's gated shared expert and "
                        "q/k/v biases are not supported (only MiniMind2-MoE exports)"
                    )
                continue
            if ".mlp.shared_expert." in k:
                k = k.replace(".mlp.shared_expert.", ".mlp.shared_experts.0.")
                if k.endswith("down_proj.weight"):
                    v = v / 2  # undo the export's exact x2 (the zero gate's sigmoid is 0.5)
        out[k] = v
    if config.tie_word_embeddings and "lm_head.weight" in out:
        if not torch.equal(out["lm_head.weight"], out.get("model.embed_tokens.weight", out["lm_head.weight"])):
            raise MiniMindError(
                f"{where}: tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight"
            )
        out.pop("lm_head.weight")
    return out


def _copy_tokenizer(model_dir: Path, out: Path) -> list[str]:
    """tokenizer.json + tokenizer_config.json; a separate chat_template.jinja (transformers 5
    writes one) is folded into tokenizer_config.json, where our Tokenizer reads it."""
    copied = copy_tokenizer_files(model_dir, out)
    jinja = model_dir / "chat_template.jinja"
    cfg_path = out / "tokenizer_config.json"
    if jinja.is_file() and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if not cfg.get("chat_template"):
            cfg["chat_template"] = jinja.read_text(encoding="utf-8")
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            copied.append("chat_template.jinja")
    return copied


def import_hf(model_dir: str | Path, out: str | Path, dtype: str | None = None, force: bool = False) -> dict:
    """Convert a transformers directory into our model directory. Returns a summary dict
    (architecture, config, tokenizer files copied, out)."""
    model_dir = Path(model_dir)
    d = read_hf_config(model_dir)
    arch, config = config_from_hf(d, str(model_dir / "config.json"))
    sd = to_our_names(read_safetensors(model_dir), arch, config, str(model_dir))
    model = build_model(config, sd, str(model_dir))
    keep = parse_dtype(dtype) or stored_dtype(sd)
    out = prepare_out_dir(out, force)
    save_model_dir(model, out, dtype=keep)
    copied = _copy_tokenizer(model_dir, out)
    if "tokenizer.json" in copied and "tokenizer_config.json" in copied:
        Tokenizer.from_dir(out)  # fail now, with the file named, rather than at chat time
    return {"architecture": arch, "config": config, "tokenizer": copied, "out": str(out)}
