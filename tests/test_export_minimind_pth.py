"""`minimind import minimind-pth`: original MiniMind weights in, same logits out.

The state dicts here use MiniMind's exact key names and dtypes (fp16 as its trainers save,
fp32), for both generations, dense and MoE, and for the early MiniMind2 `MiniMindLM` layout.
The expected logits come from `reference_logits`, a compact re-implementation of the
original MiniMind forward pass, written independently of ours: it shares
no code with our model, so a mistake in the import (or in our model) shows up as a mismatch.
"""

import datetime
import math

import pytest
import torch
import torch.nn.functional as F

from minimind.checkpoint import load_model
from minimind.cli import main
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.export.minimind_pth import import_minimind_pth, infer_config, load_pth

# ------------------------------------------------------------------ the original, re-implemented


def ref_rmsnorm(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


def ref_rope(x, theta, interleaved):
    """x [B, L, H, D]. minimind-3 / MiniMind2: rotate halves with duplicated cos/sin tables.
    Early MiniMind2: complex multiplication of interleaved pairs (torch.polar)."""
    L, D = x.shape[1], x.shape[-1]
    freqs = 1.0 / (theta ** (torch.arange(0, D, 2)[: D // 2].float() / D))
    angles = torch.outer(torch.arange(L).float(), freqs)  # [L, D/2]
    if interleaved:
        pos_cis = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * pos_cis).flatten(3).type_as(x)
    cos = torch.cat([angles.cos(), angles.cos()], -1)[None, :, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[None, :, None, :]
    rotated = torch.cat((-x[..., D // 2 :], x[..., : D // 2]), dim=-1)
    return x * cos + rotated * sin


def ref_attention(x, w, c):
    B, L, _ = x.shape
    H, K, D = c["heads"], c["kv_heads"], c["hidden"] // c["heads"]
    q = (x @ w["q"].T).view(B, L, H, D)
    k = (x @ w["k"].T).view(B, L, K, D)
    v = (x @ w["v"].T).view(B, L, K, D)
    if "q_norm" in w:
        q, k = ref_rmsnorm(q, w["q_norm"], c["eps"]), ref_rmsnorm(k, w["k_norm"], c["eps"])
    q, k = ref_rope(q, 1e6, c["legacy"]), ref_rope(k, 1e6, c["legacy"])
    k = k[:, :, :, None].expand(B, L, K, H // K, D).reshape(B, L, H, D)  # repeat_kv
    v = v[:, :, :, None].expand(B, L, K, H // K, D).reshape(B, L, H, D)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)
    scores = scores + torch.full((L, L), float("-inf")).triu(1)
    out = F.softmax(scores.float(), dim=-1).type_as(q) @ v
    return out.transpose(1, 2).reshape(B, L, -1) @ w["o"].T


def ref_ffn(x, w):
    return (F.silu(x @ w["gate"].T) * (x @ w["up"].T)) @ w["down"].T


def ref_moe(x, experts, gate, shared, k, renorm):
    """MiniMind's MOEFeedForward (eval path): softmax router, top-k (unsorted), weights
    renormalised when `renorm`, experts weighted and summed, shared experts added."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    scores = (x @ gate.T).softmax(dim=-1)
    topk_weight, topk_idx = torch.topk(scores, k=k, dim=-1, sorted=False)
    if renorm:
        topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
    y = torch.zeros_like(x)
    for i, expert in enumerate(experts):
        rows, slots = (topk_idx == i).nonzero(as_tuple=True)
        if len(rows):
            y.index_add_(0, rows, ref_ffn(x[rows], expert) * topk_weight[rows, slots, None])
    for expert in shared:
        y = y + ref_ffn(x, expert)
    return y.view(shape)


def reference_logits(sd, c, ids):
    """The original MiniMind forward pass on a state dict with the original key names."""
    sd = {k: v.float() for k, v in sd.items()}
    names = LEGACY if c["legacy"] else CURRENT
    h = sd[names["embed"]][ids]
    for i in range(c["layers"]):
        n = {key: pat.replace("{i}", str(i)) for key, pat in names.items()}
        attn = {key: sd[n[key]] for key in ("q", "k", "v", "o")}
        if c["qk_norm"]:
            attn.update(q_norm=sd[n["q_norm"]], k_norm=sd[n["k_norm"]])
        h = h + ref_attention(ref_rmsnorm(h, sd[n["attn_norm"]], c["eps"]), attn, c)
        x = ref_rmsnorm(h, sd[n["ffn_norm"]], c["eps"])
        if c.get("experts"):
            ffn = lambda p: {key: sd[p.format(key=names[key + "_proj"])] for key in ("gate", "up", "down")}  # noqa: E731
            experts = [ffn(n["expert"].replace("{e}", str(e))) for e in range(c["experts"])]
            shared = [ffn(n["shared"])] if c.get("shared") else []
            renorm = c["top_k"] > 1 if c["generation"] == 2 else True  # MiniMind2: only when k > 1
            h = h + ref_moe(x, experts, sd[n["router"]], shared, c["top_k"], renorm)
        else:
            h = h + ref_ffn(x, {key: sd[n[key]] for key in ("gate", "up", "down")})
    return ref_rmsnorm(h, sd[names["norm"]], c["eps"]) @ sd[names["lm_head"]].T


# ------------------------------------------------------------------ MiniMind's key names

CURRENT = {  # model/model_minimind.py (minimind-3, and MiniMind2 since 2025-04)
    "embed": "model.embed_tokens.weight",
    "norm": "model.norm.weight",
    "lm_head": "lm_head.weight",
    "q": "model.layers.{i}.self_attn.q_proj.weight",
    "k": "model.layers.{i}.self_attn.k_proj.weight",
    "v": "model.layers.{i}.self_attn.v_proj.weight",
    "o": "model.layers.{i}.self_attn.o_proj.weight",
    "q_norm": "model.layers.{i}.self_attn.q_norm.weight",
    "k_norm": "model.layers.{i}.self_attn.k_norm.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "gate": "model.layers.{i}.mlp.gate_proj.weight",
    "up": "model.layers.{i}.mlp.up_proj.weight",
    "down": "model.layers.{i}.mlp.down_proj.weight",
    "router": "model.layers.{i}.mlp.gate.weight",
    "expert": "model.layers.{i}.mlp.experts.{e}.{key}.weight",
    "shared": "model.layers.{i}.mlp.shared_experts.0.{key}.weight",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
}
LEGACY = {  # model/model.py, class MiniMindLM (MiniMind2 as released in early 2025)
    "embed": "tok_embeddings.weight",
    "norm": "norm.weight",
    "lm_head": "output.weight",
    "q": "layers.{i}.attention.wq.weight",
    "k": "layers.{i}.attention.wk.weight",
    "v": "layers.{i}.attention.wv.weight",
    "o": "layers.{i}.attention.wo.weight",
    "attn_norm": "layers.{i}.attention_norm.weight",
    "ffn_norm": "layers.{i}.ffn_norm.weight",
    "gate": "layers.{i}.feed_forward.w1.weight",
    "up": "layers.{i}.feed_forward.w3.weight",
    "down": "layers.{i}.feed_forward.w2.weight",
    "router": "layers.{i}.feed_forward.gate.weight",
    "expert": "layers.{i}.feed_forward.experts.{e}.{key}.weight",
    "shared": "layers.{i}.feed_forward.shared_experts.{key}.weight",
    "gate_proj": "w1",
    "up_proj": "w3",
    "down_proj": "w2",
}


def minimind_state_dict(c, dtype, seed=0):
    """Random weights under MiniMind's names and shapes, lm_head tied (a MiniMind state dict
    holds both names, the same values)."""
    g = torch.Generator().manual_seed(seed)
    names = LEGACY if c["legacy"] else CURRENT
    H, D, hidden = c["heads"], c["hidden"] // c["heads"], c["hidden"]

    def w(*shape, std=0.08):
        return (torch.randn(*shape, generator=g) * std).to(dtype)

    def norm(n):  # not all ones, so a norm applied to the wrong tensor shows
        return (1 + 0.2 * torch.randn(n, generator=g)).to(dtype)

    sd = {names["embed"]: w(c["vocab"], hidden, std=1.0), names["norm"]: norm(hidden)}
    for i in range(c["layers"]):
        n = {key: pat.replace("{i}", str(i)) for key, pat in names.items()}
        sd[n["q"]], sd[n["k"]] = w(H * D, hidden), w(c["kv_heads"] * D, hidden)
        sd[n["v"]], sd[n["o"]] = w(c["kv_heads"] * D, hidden), w(hidden, H * D)
        if c["qk_norm"]:
            sd[n["q_norm"]], sd[n["k_norm"]] = norm(D), norm(D)
        sd[n["attn_norm"]], sd[n["ffn_norm"]] = norm(hidden), norm(hidden)
        ffn = {"gate": (c["ffn"], hidden), "up": (c["ffn"], hidden), "down": (hidden, c["ffn"])}
        if c.get("experts"):
            sd[n["router"]] = w(c["experts"], hidden, std=0.5)
            for e in range(c["experts"]):
                for key, shape in ffn.items():
                    sd[n["expert"].format(e=e, key=names[key + "_proj"])] = w(*shape)
            if c.get("shared"):
                for key, shape in ffn.items():
                    sd[n["shared"].format(key=names[key + "_proj"])] = w(*shape)
        else:
            for key, shape in ffn.items():
                sd[n[key]] = w(*shape)
    sd[names["lm_head"]] = sd[names["embed"]].clone()
    return sd


# minimind-3 reveals its head count through the q/k norms, so it gets an unusual one (4);
# MiniMind2 does not, so it uses MiniMind2's real 8 heads / 2 KV heads (the default).
M3 = dict(
    vocab=6400, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, generation=3, qk_norm=True, eps=1e-6, legacy=False
)
M2 = dict(
    vocab=6400, hidden=128, layers=2, heads=8, kv_heads=2, ffn=96, generation=2, qk_norm=False, eps=1e-5, legacy=False
)
CASES = {  # name: (config, dtype)
    "minimind3-dense-fp16": (M3, torch.float16),
    "minimind3-moe-fp32": (dict(M3, experts=4, top_k=1), torch.float32),
    "minimind2-dense-fp16": (M2, torch.float16),
    "minimind2-moe-fp32": (dict(M2, experts=4, top_k=2, shared=True), torch.float32),
    "minimind2-legacy-dense-fp16": (dict(M2, legacy=True), torch.float16),
    "minimind2-legacy-moe-fp32": (dict(M2, legacy=True, experts=4, top_k=2, shared=True), torch.float32),
}
IDS = torch.randint(0, 6400, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list(CASES))
def test_imported_model_computes_the_original_logits(name, tmp_path):
    c, dtype = CASES[name]
    sd = minimind_state_dict(c, dtype)
    torch.save(sd, tmp_path / "full_sft.pth")
    out, cfg = import_minimind_pth(tmp_path / "full_sft.pth", tmp_path / "model")
    # what the tensors reveal, plus the generation's defaults for the rest
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (c["hidden"], 2, c["ffn"])
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (c["heads"], 2, 16)
    assert (cfg.qk_norm, cfg.rms_norm_eps) == (c["qk_norm"], c["eps"])
    assert cfg.use_moe == bool(c.get("experts")) and cfg.tie_word_embeddings
    if cfg.use_moe:
        assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_shared_experts) == (
            4,
            c["top_k"],
            int(bool(c.get("shared"))),
        )
    model = load_model(out)
    assert next(iter(torch.load(tmp_path / "full_sft.pth").values())).dtype == dtype
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference_logits(sd, c, IDS), atol=1e-4, rtol=1e-4)


def test_minimind2_top1_moe_keeps_the_unnormalised_router_weight(tmp_path):
    """MiniMind2's MoEGate renormalises only when k > 1: with top-1 the expert output is scaled
    by its router probability (minimind-3 would scale by exactly 1)."""
    c = dict(CASES["minimind2-moe-fp32"][0], top_k=1)
    sd = minimind_state_dict(c, torch.float32, seed=3)
    torch.save(sd, tmp_path / "moe.pth")
    out, cfg = import_minimind_pth(tmp_path / "moe.pth", tmp_path / "m", num_experts_per_tok=1)
    assert cfg.num_experts_per_tok == 1 and cfg.norm_topk_prob is False
    with torch.no_grad():
        torch.testing.assert_close(load_model(out)(IDS).logits, reference_logits(sd, c, IDS), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["minimind3", "minimind3-moe", "minimind2-small", "minimind2", "minimind2-moe"])
def test_original_sizes_are_recognised_from_tensor_shapes(name):
    """The five released models: every shape inferred from the tensors (zero-stride tensors,
    so no memory is spent) equals the preset."""
    want = preset(name)
    with torch.device("meta"):
        from minimind.model import MiniMindForCausalLM

        shapes = {k: v.shape for k, v in MiniMindForCausalLM(want).state_dict().items()}
    sd = {k: torch.zeros(()).expand(s) for k, s in shapes.items()}  # lm_head present: tied
    got = infer_config(sd, name)
    for field in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "qk_norm",
        "rms_norm_eps",
        "use_moe",
        "num_experts",
        "num_experts_per_tok",
        "n_shared_experts",
        "moe_intermediate_size",
        "tie_word_embeddings",
    ):
        if field in ("num_experts", "num_experts_per_tok", "n_shared_experts") and not want.use_moe:
            continue
        assert getattr(got, field) == getattr(want, field), field


def test_cli_with_tokenizer_gives_a_ready_model(tmp_path, tok_dir, capsys):
    import minimind

    c, dtype = CASES["minimind3-dense-fp16"]
    sd = {f"module.{k}": v for k, v in minimind_state_dict(c, dtype).items()}  # saved from DDP
    torch.save({"model": sd, "optimizer": {"step": torch.tensor(3)}, "epoch": 1}, tmp_path / "ckpt_resume.pth")
    code = main(
        [
            "import",
            "minimind-pth",
            str(tmp_path / "ckpt_resume.pth"),
            "--out",
            str(tmp_path / "m"),
            "--tokenizer",
            str(tok_dir),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "wrote" in out and "q/k norm on" in out
    model, tok = minimind.load(tmp_path / "m")
    assert (model.config.bos_token_id, model.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id) == (1, 2)


# ------------------------------------------------------------------ bad input: one clear line


def _cli_error(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def pth(tmp_path):
    def write(sd, name="bad.pth"):
        torch.save(sd, tmp_path / name)
        return str(tmp_path / name)

    return write


def test_missing_unknown_and_misshaped_tensors_are_named(pth, tmp_path, capsys):
    c = M3
    sd = minimind_state_dict(c, torch.float16)
    del sd["model.layers.1.self_attn.k_proj.weight"]
    err = _cli_error(capsys, "import", "minimind-pth", pth(sd), "--out", str(tmp_path / "a"))
    assert "missing tensor model.layers.1.self_attn.k_proj.weight" in err
    sd = minimind_state_dict(c, torch.float16)
    sd["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    err = _cli_error(capsys, "import", "minimind-pth", pth(sd), "--out", str(tmp_path / "b"))
    assert "unknown tensor model.layers.0.mlp.extra.weight" in err
    sd = minimind_state_dict(c, torch.float16)
    sd["model.layers.1.self_attn.v_proj.weight"] = torch.zeros(48, 64)
    err = _cli_error(capsys, "import", "minimind-pth", pth(sd), "--out", str(tmp_path / "c"))
    assert "model.layers.1.self_attn.v_proj.weight has shape (48, 64), expected (32, 64)" in err
    assert not (tmp_path / "a").exists()  # nothing written on error


def test_bad_files_and_flags(pth, tmp_path, capsys):
    def error(path, *flags):
        return _cli_error(capsys, "import", "minimind-pth", str(path), "--out", str(tmp_path / "o"), *flags)

    assert "none.pth: file not found" in error(tmp_path / "none.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    assert "not a PyTorch state dict" in error(tmp_path / "text.pth")
    assert "refused to load" in error(pth({"w": torch.zeros(1), "day": datetime.date(2025, 1, 1)}))
    assert "expected a state dict" in error(pth([torch.zeros(1)]))
    c = CASES["minimind2-dense-fp16"][0]
    path = pth(minimind_state_dict(c, torch.float16), "m2.pth")
    err = _cli_error(capsys, "import", "minimind-pth", path, "--out", str(tmp_path / "o"), "--num-attention-heads", "5")
    assert "not divisible by 5 attention heads" in err
    err = _cli_error(
        capsys, "import", "minimind-pth", path, "--out", str(tmp_path / "o"), "--preset", "minimind2-small"
    )
    assert "preset minimind2-small has hidden_size 512 but model.embed_tokens.weight says 128" in err
    err = _cli_error(capsys, "import", "minimind-pth", path, "--out", str(tmp_path / "o"), "--preset", "minimind3")
    assert "preset minimind3 has q/k norm" in err


def test_load_pth_rejects_pickled_code(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is refused, not executed."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"w": Evil()}, f, protocol=2)
    with pytest.raises(MiniMindError, match="evil.pth"):
        load_pth(tmp_path / "evil.pth")
