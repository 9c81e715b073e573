"""Export a model directory to one GGUF file that stock llama.cpp runs (no patched converter).

    minimind export gguf --model out/sft --out minimind.gguf [--dtype f32|f16|bf16|q8_0]

Written with the `gguf` package, laid out as llama.cpp's convert_hf_to_gguf.py lays out the
matching transformers model: minimind-3 as qwen3 / qwen3moe, MiniMind2 as llama and
MiniMind2-MoE as bailingmoe. llama and bailingmoe rotate interleaved pairs, so their q/k rows are
reordered per head (common.to_interleaved). The tokenizer goes in whole, with pre-tokenizer
"gpt-2" (MiniMind's ByteLevel regex; "qwen2" would split numbers into digits). The table of
architectures and what is refused: the README's "llama.cpp (GGUF)" section.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import MiniMindError
from .common import load_model_dir, to_interleaved

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")


def _gguf():
    # The gguf package is optional (pip install "minimind[export]"): imported when an export runs.
    try:
        import gguf
    except ImportError:
        raise MiniMindError("GGUF export needs the gguf package: pip install 'minimind[export]'") from None
    return gguf


def gguf_architecture(config: ModelConfig, source: str = "model") -> str:
    """The llama.cpp architecture that computes `config` exactly, or a clear error."""
    if config.attention_bias:
        raise MiniMindError(f"{source}: attention biases are not supported by the GGUF export")
    if config.rope_scaling:
        raise MiniMindError(
            f"{source}: rope_scaling (YaRN) is not exported to GGUF; export the model without it "
            "and pass llama.cpp's --rope-scaling yarn options at run time"
        )
    if not config.use_moe:
        return "qwen3" if config.qk_norm else "llama"
    if config.n_shared_experts > 1:
        raise MiniMindError(
            f"{source}: {config.n_shared_experts} shared experts: no llama.cpp architecture has "
            "more than one (MiniMind2-MoE has one)"
        )
    if config.n_shared_experts == 1:
        if config.qk_norm:
            raise MiniMindError(
                f"{source}: q/k norm with a shared expert: no llama.cpp architecture computes this MoE layout exactly"
            )
        return "bailingmoe"
    if not config.norm_topk_prob:
        raise MiniMindError(
            f"{source}: norm_topk_prob is false, but llama.cpp's qwen3moe and llama MoE always "
            "renormalise the top-k router weights"
        )
    return "qwen3moe" if config.qk_norm else "llama"


# ----------------------------------------------------------------------------- tokenizer


def pre_tokenizer_name(spec: dict, source: str) -> str:
    """llama.cpp's name for the pre-tokenization of a tokenizer.json, or a clear error."""
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "gpt-2"  # ' ?\p{L}+| ?\p{N}+| ...': the GPT-2 regex, MiniMind's tokenizer
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers", [])
        regex = next((p.get("pattern", {}).get("Regex") for p in parts if p.get("type") == "Split"), None)
        # The pre-tokenizer regexes of Qwen2/Qwen3 (digits one by one) and Llama 3 (up to 3).
        head = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
        tail = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        known = {head + r"\p{N}" + tail: "qwen2", head + r"\p{N}{1,3}" + tail: "llama-bpe"}
        if regex in known:
            return known[regex]
    raise MiniMindError(
        f"{source}: pre-tokenizer {json.dumps(pre)[:120]} has no llama.cpp equivalent we know; "
        "llama.cpp would split text differently"
    )


def tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict:
    """Everything llama.cpp needs to tokenize exactly as our tokenizer does."""
    gguf = _gguf()
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise MiniMindError(
            f"{path}: file not found (GGUF needs the tokenizer; copy tokenizer.json and "
            "tokenizer_config.json into the model directory)"
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    cfg_path = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    model = spec.get("model", {})
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise MiniMindError(f"{path}: only byte-level BPE tokenizers can be exported to GGUF")
    tokens: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    types = {i: gguf.TokenType.NORMAL for i in tokens}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        # As llama.cpp's converter: special or <|...|>-looking tokens are CONTROL (matched only
        # when special tokens are parsed, hidden on output); <think>, <tool_call> stay visible.
        looks_special = added["content"].startswith("<|") and added["content"].endswith("|>")
        special = added.get("special", False) or looks_special
        types[added["id"]] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    if max(tokens) >= vocab_size:
        raise MiniMindError(f"{path}: token id {max(tokens)} does not fit the model's vocab_size {vocab_size}")
    token_list = [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)]  # rows no token uses
    type_list = [types.get(i, gguf.TokenType.UNUSED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    def token_id(key):
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        added = {a["content"]: a["id"] for a in spec.get("added_tokens", [])}
        return added.get(value, model["vocab"].get(value))

    template = cfg.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return {
        "tokens": token_list,
        "types": type_list,
        "merges": merges,
        "pre": pre_tokenizer_name(spec, str(path)),
        "bos": token_id("bos_token"),
        "eos": token_id("eos_token"),
        "pad": token_id("pad_token"),
        "unk": token_id("unk_token"),
        "add_bos": bool(cfg.get("add_bos_token", False)),
        "add_eos": bool(cfg.get("add_eos_token", False)),
        "chat_template": template,
    }


# ----------------------------------------------------------------------------- tensors


def gguf_tensors(model, arch: str) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, fp32 tensor in PyTorch layout) for every tensor, as llama.cpp names them."""
    gguf = _gguf()
    c = model.config
    names = gguf.get_tensor_name_map(_arch_enum(gguf, arch), c.num_hidden_layers)
    interleave = arch in ("llama", "bailingmoe")
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    if c.tie_word_embeddings:
        sd.pop("lm_head.weight")
        if arch == "bailingmoe":  # the one architecture here whose output tensor is not optional
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    out = []
    for i in range(c.num_hidden_layers if c.use_moe else 0):  # one tensor per layer for all experts
        p = f"model.layers.{i}.mlp"
        for proj in ("gate_proj", "up_proj", "down_proj"):  # [E, I, H] (gate, up) and [E, H, I] (down)
            stacked = torch.stack([sd.pop(f"{p}.experts.{e}.{proj}.weight") for e in range(c.num_experts)])
            out.append((names.get_name(f"{p}.experts.{proj}") + ".weight", stacked))
            if f"{p}.shared_experts.0.{proj}.weight" in sd:  # ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp
                out.append((f"blk.{i}.ffn_{proj[:-5]}_shexp.weight", sd.pop(f"{p}.shared_experts.0.{proj}.weight")))
    for k, v in sd.items():
        base, suffix = k.rsplit(".", 1)
        name = names.get_name(base)
        if name is None:
            raise MiniMindError(f"tensor {k} has no GGUF name for architecture {arch}")
        if interleave and k.endswith("self_attn.q_proj.weight"):
            v = to_interleaved(v, c.num_attention_heads)
        elif interleave and k.endswith("self_attn.k_proj.weight"):
            v = to_interleaved(v, c.num_key_value_heads)
        out.append((f"{name}.{suffix}", v))
    return out


def _arch_enum(gguf, arch: str):
    return next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)


def _encode(gguf, name: str, t: torch.Tensor, dtype: str):
    """(numpy data, GGML type) for one tensor. Like llama.cpp's converter, norms (1-D) and the
    MoE router stay f32, and q8_0 falls back to f16 for rows not a multiple of 32 values."""
    a = t.numpy().astype(np.float32)
    Q = gguf.GGMLQuantizationType
    if dtype == "f32" or a.ndim == 1 or name.endswith("ffn_gate_inp.weight"):
        return a, Q.F32
    if dtype == "q8_0" and a.shape[-1] % 32 == 0:
        return gguf.quants.quantize(a, Q.Q8_0), Q.Q8_0
    if dtype == "bf16":
        return gguf.quants.quantize(a, Q.BF16), Q.BF16
    return a.astype(np.float16), Q.F16


def export_gguf(
    model_dir: str | Path, out: str | Path, dtype: str = "f16", force: bool = False, name: str | None = None
) -> dict:
    """Write `model_dir` as a GGUF file. Returns a summary (architecture, dtype, tensors, out)."""
    gguf = _gguf()
    if dtype not in GGUF_DTYPES:
        raise MiniMindError(f"unknown GGUF dtype {dtype!r}; choose from: {', '.join(GGUF_DTYPES)}")
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and not force:
        raise MiniMindError(f"{out}: file exists (use --force to overwrite)")
    model, _ = load_model_dir(model_dir)
    c = model.config
    arch = gguf_architecture(c, str(model_dir))
    tok = tokenizer_metadata(model_dir, c.vocab_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_name(name or model_dir.resolve().name)
    w.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[dtype]
    )
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    # llama's MoE reads the expert width from feed_forward_length; the others ignore it for MoE
    w.add_feed_forward_length(c.moe_intermediate_size if c.use_moe else c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    if c.use_moe:
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_weights_norm(c.norm_topk_prob)
        w.add_expert_weights_scale(1.0)
        if arch == "bailingmoe":
            w.add_expert_shared_count(c.n_shared_experts)
            w.add_leading_dense_block_count(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("pad", w.add_pad_token_id),
        ("unk", w.add_unk_token_id),
    ):
        if tok[key] is not None:
            add(tok[key])
    w.add_add_bos_token(tok["add_bos"])
    w.add_add_eos_token(tok["add_eos"])
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])
    tensors = gguf_tensors(model, arch)
    for tname, t in tensors:
        data, qtype = _encode(gguf, tname, t, dtype)
        w.add_tensor(tname, data, raw_dtype=qtype)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"architecture": arch, "dtype": dtype, "tensors": len(tensors), "out": str(out), "pre_tokenizer": tok["pre"]}
