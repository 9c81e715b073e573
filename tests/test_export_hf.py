"""`minimind export hf` / `minimind import hf`: plain transformers is the other side.

Every exported directory is loaded with `AutoModelForCausalLM.from_pretrained(dir)` (no
trust_remote_code) and must give our logits (fp32, atol 1e-4); importing it back must give
our tensors bit for bit. Checkpoints that transformers itself wrote (sharded, untied, odd
vocabulary sizes, MoE) import into a model with transformers' logits.
"""

import json

import pytest
import torch

from minimind.checkpoint import load_model, save_model_dir
from minimind.cli import main
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.export import export_hf, import_hf
from minimind.model import MiniMindForCausalLM

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

MM2 = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=96,
    moe_intermediate_size=96,
)
LAYOUTS = {  # name: (preset, overrides, transformers class)
    "minimind3": ("nano", {}, "Qwen3ForCausalLM"),
    "minimind3-moe": (
        "nano",
        dict(use_moe=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
        "Qwen3MoeForCausalLM",
    ),
    "minimind2": ("minimind2-small", MM2, "LlamaForCausalLM"),
    "minimind2-moe": ("minimind2-moe", MM2, "Qwen2MoeForCausalLM"),
}
IDS = torch.randint(0, 6400, (2, 33), generator=torch.Generator().manual_seed(0))


def make_model_dir(path, name, seed=0, tokenizer=None, **extra):
    base, overrides, _ = LAYOUTS[name]
    model = MiniMindForCausalLM(preset(base, **overrides, **extra)).init_weights(seed).eval()
    save_model_dir(model, path, tokenizer)
    return model


def load_hf(path):
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_export_loads_in_transformers_with_equal_logits_and_imports_back_bit_for_bit(name, tmp_path):
    ours = make_model_dir(tmp_path / "ours", name)
    summary = export_hf(tmp_path / "ours", tmp_path / "hf")
    assert summary["architecture"] == LAYOUTS[name][2]
    theirs = load_hf(tmp_path / "hf")
    assert type(theirs).__name__ == LAYOUTS[name][2]
    with torch.no_grad():
        torch.testing.assert_close(theirs(IDS).logits, ours(IDS).logits, atol=1e-4, rtol=1e-4)

    import_hf(tmp_path / "hf", tmp_path / "back")
    back = load_model(tmp_path / "back")
    assert back.config == ours.config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_directory_has_tokenizer_chat_template_and_generation_config(tmp_path, tok):
    make_model_dir(tmp_path / "ours", "minimind3", tokenizer=tok)
    assert (
        main(["export", "hf", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "hf"), "--dtype", "bf16"]) == 0
    )
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert files == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] and "auto_map" not in config
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    messages = [{"role": "system", "content": "你是 MiniMind。"}, {"role": "user", "content": "Hello, 世界! 2024"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompt
    assert theirs.encode(prompt, add_special_tokens=False) == tok.encode(prompt)
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "hf")
    assert (gen.eos_token_id, gen.bos_token_id, gen.temperature) == (2, 1, 0.85)
    model = load_hf(tmp_path / "hf")
    rope = getattr(model.config, "rope_parameters", None) or {}  # transformers 5 moves rope_theta here
    assert model.dtype == torch.bfloat16 and rope.get("rope_theta", getattr(model.config, "rope_theta", None)) == 1e6


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_export_round_trips_at_that_precision(dtype, tmp_path):
    ours = make_model_dir(tmp_path / "ours", "minimind3-moe")
    export_hf(tmp_path / "ours", tmp_path / "hf", dtype=dtype)
    import_hf(tmp_path / "hf", tmp_path / "back")
    target = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    back = load_model(tmp_path / "back")
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.to(target).float()), k


def test_yarn_rope_scaling_survives_the_export(tmp_path):
    cfg = preset("nano").yarn(factor=4.0, original_max_position_embeddings=32)
    ours = MiniMindForCausalLM(cfg).init_weights(1).eval()
    save_model_dir(ours, tmp_path / "ours")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    ids = torch.randint(0, 6400, (1, 100), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "hf")(ids).logits, ours(ids).logits, atol=1e-4, rtol=1e-4)
    import_hf(tmp_path / "hf", tmp_path / "back")
    assert load_model(tmp_path / "back").config.rope_scaling == cfg.rope_scaling


# ------------------------------------------------------------------ checkpoints transformers wrote


def _tiny(cls_config, **kw):
    common = dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=5e5,
        rms_norm_eps=1e-5,
    )
    cfg = cls_config(**{**common, **kw})
    torch.manual_seed(0)
    return cfg


@pytest.mark.parametrize("kind", ["llama-untied-sharded-bias", "qwen3-tied", "qwen3moe-sharded"])
def test_import_of_checkpoints_saved_by_transformers(kind, tmp_path):
    if kind.startswith("llama"):
        model = transformers.LlamaForCausalLM(
            _tiny(transformers.LlamaConfig, tie_word_embeddings=False, attention_bias=True)
        )
    elif kind == "qwen3-tied":
        model = transformers.Qwen3ForCausalLM(_tiny(transformers.Qwen3Config, tie_word_embeddings=True))
    else:
        model = transformers.Qwen3MoeForCausalLM(
            _tiny(
                transformers.Qwen3MoeConfig,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=32,
                norm_topk_prob=False,
            )
        )
    with torch.no_grad():  # transformers' init leaves biases and router at zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith(("bias", "mlp.gate.weight")):
                p.normal_(0, 0.5)
    model.eval().save_pretrained(tmp_path / "hf", max_shard_size="200KB" if "sharded" in kind else "1GB")
    r = import_hf(tmp_path / "hf", tmp_path / "ours")
    ours = load_model(tmp_path / "ours")
    assert ours.config.vocab_size == 1000 and ours.config.rope_theta == 5e5
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    assert r["architecture"] == type(model).__name__


def test_fused_expert_tensors_import_like_per_expert_ones(tmp_path):
    """transformers 5 keeps a layer's experts as [E, 2I, H] gate_up and [E, H, I] down tensors;
    a directory saved that way imports to the same model."""
    from safetensors.torch import load_file, save_file

    make_model_dir(tmp_path / "ours", "minimind3-moe")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    sd = load_file(tmp_path / "hf" / "model.safetensors")
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts"
        sd[f"{p}.gate_up_proj"] = torch.stack(
            [torch.cat([sd.pop(f"{p}.{e}.gate_proj.weight"), sd.pop(f"{p}.{e}.up_proj.weight")]) for e in range(4)]
        )
        sd[f"{p}.down_proj"] = torch.stack([sd.pop(f"{p}.{e}.down_proj.weight") for e in range(4)])
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    import_hf(tmp_path / "hf", tmp_path / "back")
    a, b = load_model(tmp_path / "ours").state_dict(), load_model(tmp_path / "back").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ what cannot be converted exactly


def test_moe_layouts_without_an_exact_class_are_refused(tmp_path):
    make_model_dir(tmp_path / "ours", "minimind3-moe", n_shared_experts=1)
    with pytest.raises(MiniMindError, match="no standard transformers class computes this MoE layout exactly"):
        export_hf(tmp_path / "ours", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def _edit_config(path, **changes):
    d = json.loads((path / "config.json").read_text())
    d.update(changes)
    (path / "config.json").write_text(json.dumps(d))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(architectures=["GPT2LMHeadModel"]), "architecture 'GPT2LMHeadModel' is not supported"),
        (dict(use_sliding_window=True), "use_sliding_window is set"),
        (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
        (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope scaling type 'linear' is not supported"),
        (dict(num_key_value_heads=4), "model.layers.0.self_attn.k_proj.weight has shape (32, 128), expected (64, 128)"),
    ],
)
def test_import_errors_name_the_field_or_tensor(change, message, tmp_path, capsys):
    make_model_dir(tmp_path / "ours", "minimind2")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    _edit_config(tmp_path / "hf", **change)
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_import_errors_for_missing_files_and_non_exact_qwen2_moe(tmp_path):
    with pytest.raises(MiniMindError, match="config.json: file not found"):
        import_hf(tmp_path, tmp_path / "x")
    make_model_dir(tmp_path / "ours", "minimind2-moe")
    export_hf(tmp_path / "ours", tmp_path / "hf")
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "hf" / "model.safetensors")
    sd["model.layers.1.mlp.shared_expert_gate.weight"] += 0.1  # a real Qwen2-MoE: gated shared expert
    save_file(sd, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(MiniMindError, match="shared_expert_gate.weight is not zero"):
        import_hf(tmp_path / "hf", tmp_path / "back")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(MiniMindError, match="only PyTorch .bin weights found"):
        import_hf(tmp_path / "hf", tmp_path / "back")
