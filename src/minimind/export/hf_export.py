"""Export a model directory as a plain transformers checkpoint (no trust_remote_code).

    minimind export hf --model out/sft --out minimind-hf [--dtype fp32|fp16|bf16]

Each MiniMind layout maps onto a standard transformers class that computes exactly the same
function (tests/test_export_hf.py checks the logits): Qwen3ForCausalLM, Qwen3MoeForCausalLM,
LlamaForCausalLM, and Qwen2MoeForCausalLM for MiniMind2-MoE, whose shared-expert gate is written
as zeros (sigmoid(0) = 0.5) with the shared expert's down projection doubled to undo it exactly.
Other layouts are refused. vLLM and SGLang serve the result as is; details in the README's
"transformers, vLLM, SGLang" section.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig
from ..errors import MiniMindError
from ..files import atomic_write
from .common import load_model_dir, parse_dtype, prepare_out_dir

DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_architecture(config: ModelConfig, source: str = "model") -> str:
    """The transformers class that reproduces `config` exactly, or a clear error."""
    if not config.use_moe:
        return "Qwen3ForCausalLM" if config.qk_norm else "LlamaForCausalLM"
    if config.qk_norm and config.n_shared_experts == 0:
        return "Qwen3MoeForCausalLM"
    if not config.qk_norm and config.n_shared_experts == 1 and not config.attention_bias:
        return "Qwen2MoeForCausalLM"
    if config.qk_norm:
        why = f"q/k norm with {config.n_shared_experts} shared experts"
    elif config.n_shared_experts == 0:
        why = "no q/k norm and no shared expert"
    else:
        why = f"no q/k norm with {config.n_shared_experts} shared experts"
    raise MiniMindError(
        f"{source}: no standard transformers class computes this MoE layout exactly ({why}); "
        "supported MoE layouts are minimind-3-moe (Qwen3MoeForCausalLM) and MiniMind2-MoE "
        "with one shared expert (Qwen2MoeForCausalLM)"
    )


def hf_config(config: ModelConfig, arch: str, dtype: torch.dtype) -> dict:
    """config.json for `arch`. Keys are the ones both transformers 4.x and 5.x read
    (`rope_theta`/`rope_scaling`; 5.x turns them into `rope_parameters` itself)."""
    c = config
    d = {
        "architectures": [arch],
        "model_type": {
            "Qwen3ForCausalLM": "qwen3",
            "Qwen3MoeForCausalLM": "qwen3_moe",
            "LlamaForCausalLM": "llama",
            "Qwen2MoeForCausalLM": "qwen2_moe",
        }[arch],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": _rope_scaling(c),
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "use_cache": True,
        "torch_dtype": DTYPE_NAMES[dtype],
    }
    if arch == "LlamaForCausalLM":
        d.update(mlp_bias=False, pretraining_tp=1)
    else:  # the Qwen families: full attention in every layer
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_hidden_layers)
    if c.use_moe:
        d.update(
            num_experts=c.num_experts,
            num_experts_per_tok=c.num_experts_per_tok,
            moe_intermediate_size=c.moe_intermediate_size,
            norm_topk_prob=c.norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            output_router_logits=False,
            router_aux_loss_coef=c.router_aux_loss_coef,
        )
    if arch == "Qwen2MoeForCausalLM":
        d.update(shared_expert_intermediate_size=c.moe_intermediate_size, qkv_bias=True)
    return d


def _rope_scaling(c: ModelConfig) -> dict | None:
    if not c.rope_scaling:
        return None
    s = dict(c.rope_scaling)
    kind = s.pop("type", s.pop("rope_type", "yarn"))
    return {"type": kind, "rope_type": kind, **s}  # 4.x reads "type", later versions "rope_type"


def hf_state_dict(model, arch: str) -> dict[str, torch.Tensor]:
    """Our state dict renamed/reshaped for `arch`. MoE experts are written one tensor per
    expert (`mlp.experts.E.gate_proj.weight`), the layout of the Qwen MoE checkpoints on the
    Hub: transformers 4.x loads it directly, 5.x fuses it on load, vLLM and llama.cpp's
    converter read it."""
    c = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight")
    if arch != "Qwen2MoeForCausalLM":
        return sd
    out = {}
    for k, v in sd.items():
        if ".mlp.shared_experts.0." in k:
            k = k.replace(".mlp.shared_experts.0.", ".mlp.shared_expert.")
            if k.endswith("down_proj.weight"):
                v = v * 2  # exact; the zero gate below multiplies by exactly 0.5
        out[k] = v
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        ref = sd[f"{p}.mlp.gate.weight"]
        out[f"{p}.mlp.shared_expert_gate.weight"] = torch.zeros(1, c.hidden_size, dtype=ref.dtype)
        for name, rows in (
            ("q_proj", c.num_attention_heads),
            ("k_proj", c.num_key_value_heads),
            ("v_proj", c.num_key_value_heads),
        ):
            out[f"{p}.self_attn.{name}.bias"] = torch.zeros(rows * c.head_dim, dtype=ref.dtype)
    return out


def generation_config(config: ModelConfig) -> dict:
    """Sampling defaults for transformers' generate(), as `minimind chat` uses them."""
    return {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "do_sample": True,
        "temperature": 0.85,
        "top_p": 0.95,
    }


def write_tokenizer(model_dir: Path, out: Path) -> bool:
    """Copy tokenizer.json and tokenizer_config.json (which carries the chat template).
    Returns False when the model directory has no tokenizer."""
    src_json, src_cfg = model_dir / "tokenizer.json", model_dir / "tokenizer_config.json"
    if not src_json.is_file() or not src_cfg.is_file():
        return False
    cfg = json.loads(src_cfg.read_text(encoding="utf-8"))
    # transformers needs a class name to pick a fast tokenizer without a tokenizer.model file.
    cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    atomic_write(out / "tokenizer.json", lambda tmp: Path(tmp).write_bytes(src_json.read_bytes()))
    _write_json(out / "tokenizer_config.json", cfg)
    return True


def _write_json(path: Path, obj) -> None:
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    )


def export_hf(model_dir: str | Path, out: str | Path, dtype: str | None = None, force: bool = False) -> dict:
    """Write `model_dir` as a transformers directory at `out`. Returns a summary dict
    (architecture, dtype, tokenizer written or not, out)."""
    model_dir = Path(model_dir)
    model, stored = load_model_dir(model_dir)
    arch = hf_architecture(model.config, str(model_dir))
    target = parse_dtype(dtype) or stored
    out = prepare_out_dir(out, force)
    sd = {k: v.to(target).contiguous() for k, v in hf_state_dict(model, arch).items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(sd, tmp, metadata={"format": "pt"}))
    _write_json(out / "config.json", hf_config(model.config, arch, target))
    _write_json(out / "generation_config.json", generation_config(model.config))
    has_tokenizer = write_tokenizer(model_dir, out)
    return {"architecture": arch, "dtype": DTYPE_NAMES[target], "tokenizer": has_tokenizer, "out": str(out)}
