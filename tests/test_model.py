"""The model: sizes, equality with transformers' Qwen3 / Qwen3-MoE, KV cache, MoE routing."""

import pytest
import torch

from minimind.config import PRESETS, ModelConfig, preset
from minimind.model import MiniMindForCausalLM, count_parameters

# The parameter counts of the original MiniMind models, in millions (total, active), recomputed from its model
# code with the tied embedding counted once.
ORIGINAL_SIZES = {
    "minimind3": (63.91, 63.91),
    "minimind3-moe": (198.42, 63.94),
    "minimind2-small": (25.83, 25.83),
    "minimind2": (104.03, 104.03),
    "minimind2-moe": (145.03, 91.95),
}


def make(name="nano", seed=0, **overrides):
    return MiniMindForCausalLM(preset(name, **overrides)).init_weights(seed).eval()


@pytest.mark.parametrize("name", list(ORIGINAL_SIZES))
def test_presets_reproduce_original_sizes(name):
    total, active = ORIGINAL_SIZES[name]
    cfg = preset(name)
    with torch.device("meta"):  # count real modules without allocating 200M floats
        model = MiniMindForCausalLM(cfg)
    counted = sum(p.numel() for p in model.parameters())  # tied weights once
    assert round(counted / 1e6, 2) == total
    assert count_parameters(cfg) == (counted, count_parameters(cfg)[1])
    assert round(count_parameters(cfg)[1] / 1e6, 2) == active


def test_small_presets_are_small():
    assert 4e6 < count_parameters(preset("tiny"))[0] < 6e6
    assert 0.5e6 < count_parameters(preset("nano"))[0] < 1.5e6


def test_state_dict_names_follow_minimind_and_qwen3():
    keys = set(make("nano").state_dict())
    for k in [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]:
        assert k in keys
    moe = set(MiniMindForCausalLM(preset("minimind2-moe", num_hidden_layers=1)).state_dict())
    for k in [
        "model.layers.0.mlp.gate.weight",
        "model.layers.0.mlp.experts.3.up_proj.weight",
        "model.layers.0.mlp.shared_experts.0.gate_proj.weight",
    ]:
        assert k in moe
    assert not any("q_norm" in k for k in moe)  # MiniMind2 has no q/k norm


# ---------------------------------------------------------------- transformers as the peer

transformers = pytest.importorskip("transformers")


def qwen3_config(cfg: ModelConfig, moe=False):
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=True,
        attention_bias=False,
        rope_scaling=cfg.rope_scaling,
    )
    if not moe:
        return transformers.Qwen3Config(intermediate_size=cfg.intermediate_size, **common)
    return transformers.Qwen3MoeConfig(
        intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size,
        num_experts=cfg.num_experts,
        num_experts_per_tok=cfg.num_experts_per_tok,
        norm_topk_prob=cfg.norm_topk_prob,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        **common,
    )


def to_qwen3_moe_state_dict(sd, cfg):
    """Written here independently: transformers 5 stores the experts of a layer as fused
    [E, 2*I, H] gate_up and [E, H, I] down tensors."""
    out = {}
    for k, v in sd.items():
        if ".mlp.experts." not in k:
            out[k] = v
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}.mlp.experts"
        out[f"{p}.gate_up_proj"] = torch.stack(
            [
                torch.cat([sd[f"{p}.{e}.gate_proj.weight"], sd[f"{p}.{e}.up_proj.weight"]], 0)
                for e in range(cfg.num_experts)
            ]
        )
        out[f"{p}.down_proj"] = torch.stack([sd[f"{p}.{e}.down_proj.weight"] for e in range(cfg.num_experts)])
    return out


def test_logits_equal_transformers_qwen3_dense():
    ours = make("nano", seed=1)
    theirs = transformers.Qwen3ForCausalLM(qwen3_config(ours.config)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, ours.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)
        # padded batch: left padding with an attention mask, compared on the real tokens
        mask = torch.ones_like(ids)
        mask[1, :10] = 0
        a, b = ours(ids, attention_mask=mask).logits, theirs(ids, attention_mask=mask).logits
        torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
        alone = ours(ids[1:, 10:]).logits
        torch.testing.assert_close(a[1, 10:], alone[0], atol=1e-5, rtol=1e-5)


def test_logits_equal_transformers_qwen3_with_yarn():
    ours = (
        MiniMindForCausalLM(preset("nano").yarn(factor=4.0, original_max_position_embeddings=64)).init_weights(2).eval()
    )
    theirs = transformers.Qwen3ForCausalLM(qwen3_config(ours.config)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, ours.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)
        plain = MiniMindForCausalLM(preset("nano")).eval()
        plain.load_state_dict(ours.state_dict())
        assert not torch.allclose(plain(ids).logits, ours(ids).logits)  # the scaling does something


def test_logits_equal_transformers_qwen3_moe():
    cfg = preset("nano", use_moe=True, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=96)
    ours = MiniMindForCausalLM(cfg).init_weights(3).eval()
    theirs = transformers.Qwen3MoeForCausalLM(qwen3_config(cfg, moe=True)).eval()
    theirs.load_state_dict(to_qwen3_moe_state_dict(ours.state_dict(), cfg), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("name", ["nano", "tiny-moe"])
def test_kv_cache_decoding_equals_full_recomputation(name):
    model = make(name)
    ids = torch.randint(0, model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 64)
        steps = [model(ids[:, :12], cache=cache).logits]  # prefill
        steps.append(model(ids[:, 12:15], cache=cache).logits)  # a chunk on top of a cache
        steps += [model(ids[:, t : t + 1], cache=cache).logits for t in range(15, 30)]  # decode
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_with_left_padding_equals_unpadded_rows():
    model = make("nano")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(3, 6400, (1, 9), generator=g), torch.randint(3, 6400, (1, 5), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    nxt = torch.randint(3, 6400, (2, 1), generator=g)
    with torch.no_grad():
        cache = model.new_cache(2, 16)
        model(batch, attention_mask=mask, cache=cache)
        step = model(nxt, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), cache=cache).logits
        alone_b = model(torch.cat([b, nxt[1:]], 1)).logits[:, -1]
        alone_a = model(torch.cat([a, nxt[:1]], 1)).logits[:, -1]
    assert torch.isfinite(step).all()
    torch.testing.assert_close(step[1, -1], alone_b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, -1], alone_a[0], atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    model = make("nano")
    cache = model.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.ones(1, 5, dtype=torch.long), cache=cache)


# ---------------------------------------------------------------- training-side behaviour


def test_loss_is_shifted_cross_entropy_ignoring_minus_100():
    model = make("nano")
    ids = torch.randint(0, 6400, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100
    out = model(ids, labels=labels)
    logp = out.logits.float().log_softmax(-1)
    target = -logp[:, 4:-1].gather(-1, ids[:, 5:, None]).mean()
    torch.testing.assert_close(out.loss, target)


def test_moe_aux_loss_is_returned_in_training_only():
    model = make("tiny-moe")
    ids = torch.randint(0, 6400, (2, 32))
    model.train()
    aux = model(ids).aux_loss
    coef = model.config.router_aux_loss_coef
    # per layer: E * sum f_i P_i * coef >= coef (equality when routing is balanced)
    assert aux.item() >= model.config.num_hidden_layers * coef * 0.999
    aux.backward()
    assert model.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0
    model.eval()
    assert model(ids).aux_loss.item() == 0.0
    assert make("nano").train()(ids).aux_loss.item() == 0.0  # dense


def test_top1_router_learns_from_the_language_model_loss():
    """MiniMind's top-1 routing weight is exactly 1, so its router gets no LM-loss gradient.
    Ours keeps the forward value 1 but lets the gradient through."""
    model = make("tiny-moe")
    assert model.config.num_experts_per_tok == 1 and model.config.norm_topk_prob
    model.config.router_aux_loss_coef = 0.0
    for layer in model.model.layers:
        layer.mlp.aux_loss_coef = 0.0
    model.train()
    ids = torch.randint(0, 6400, (2, 32), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    assert out.aux_loss.item() == 0.0
    out.loss.backward()
    for layer in model.model.layers:
        assert layer.mlp.gate.weight.grad is not None and layer.mlp.gate.weight.grad.abs().sum() > 0
    # and the forward value is still exactly 1 per token
    mlp = model.model.layers[0].mlp
    _, _, weights = mlp.route(torch.randn(5, model.config.hidden_size))
    assert torch.equal(weights, torch.ones_like(weights))


def test_init_is_seeded_and_sane():
    a, b = make("nano", seed=5), make("nano", seed=5)
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k
    ids = torch.randint(0, 6400, (1, 16))
    with torch.no_grad():
        loss = a(ids, labels=ids).loss.item()
    assert abs(loss - torch.log(torch.tensor(6400.0)).item()) < 0.5  # near-uniform start


def test_bad_config_values_are_clear_errors():
    from minimind.errors import MiniMindError

    with pytest.raises(MiniMindError, match="multiple of"):
        ModelConfig(num_attention_heads=6, num_key_value_heads=4)
    with pytest.raises(MiniMindError, match="unknown preset"):
        preset("gpt5")
    assert set(ORIGINAL_SIZES) <= set(PRESETS)


def test_activation_checkpointing_gives_the_same_gradients():
    model = make("tiny-moe").train()
    ids = torch.randint(0, 6400, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        model.model.gradient_checkpointing = recompute
        out = model(ids, labels=ids)
        (out.loss + out.aux_loss).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)


def _sdpa_reference(q, k, v, mask):
    """SDPA on the same inputs, K/V heads copied out per query head (no enable_gqa needed)."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_blocked_causal_attention_equals_sdpa(dtype, packed):
    """The CPU training path for 65-512 tokens: same output and same gradients as SDPA, with
    grouped K/V heads, a length that is not a multiple of the block, and packed documents."""
    from minimind.data import attention_mask_from_segments
    from minimind.model.layers import blocked_causal_attention

    gen = torch.Generator().manual_seed(0)
    B, H, K, L, D = 2, 4, 2, 200, 16
    leaves = [torch.randn(B, n, L, D, generator=gen).to(dtype).requires_grad_() for n in (H, K, K)]
    grad_out = torch.randn(B, H, L, D, generator=gen).to(dtype)
    segments = torch.tensor([[0] * 90 + [1] * 70 + [2] * 40, [0] * 150 + [1] * 45 + [-1] * 5])
    mask = attention_mask_from_segments(segments) if packed else None
    results = []
    for attend in (blocked_causal_attention, _sdpa_reference):
        out = attend(*leaves, mask)
        out.backward(grad_out)
        results.append([out.detach().float()] + [t.grad.float() for t in leaves])
        for t in leaves:
            t.grad = None
    if dtype == torch.float32:
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    else:  # both round to bf16 at different points: compare each error against fp32 instead
        exact = [t.detach().float().requires_grad_() for t in leaves]
        out = _sdpa_reference(*exact, mask)
        out.backward(grad_out.float())
        truth = [out.detach()] + [t.grad for t in exact]
        for got, sdpa, want in zip(*results, truth):
            assert (got - want).abs().mean() <= 1.5 * (sdpa - want).abs().mean() + 1e-6


def test_training_forward_is_the_same_with_and_without_blocked_attention(monkeypatch):
    """Through the model: plain, left-padded and packed batches of 130 tokens give the same
    logits and gradients whether attention runs blocked or through SDPA."""
    import minimind.model.layers as layers
    from minimind.data import attention_mask_from_segments

    model = make("tiny").train()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 6400, (2, 130), generator=gen)
    padding = torch.ones(2, 130, dtype=torch.long)
    padding[1, :17] = 0
    packed = attention_mask_from_segments(torch.tensor([[0] * 60 + [1] * 70, [0] * 129 + [1]]))
    for attention_mask in (None, padding, packed):
        runs = []
        for blocked in (True, False):
            calls = []
            monkeypatch.setattr(layers, "use_blocked_attention", lambda q, p, c=calls, b=blocked: c.append(1) or b)
            model.zero_grad()
            out = model(ids, attention_mask=attention_mask)
            out.logits.float().square().mean().backward()
            assert calls, "attention never asked for the blocked path"
            runs.append([out.logits.detach()] + [p.grad.clone() for p in model.parameters()])
        for got, want in zip(*runs):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_a_mask_that_looks_ahead_is_cut_to_causal():
    """The model stays causal whatever a 4D mask allows: a token that the mask lets see a later
    one gets the same logits as without the mask, blocked attention or SDPA alike."""
    from minimind.model.minimind import build_attention_mask

    L = 100
    prefix = torch.ones(L, L, dtype=torch.bool).tril()
    prefix[:10, :10] = True  # the first 10 tokens would see each other both ways
    mask, is_causal = build_attention_mask(prefix[None, None], 1, L, 0, "cpu")
    assert is_causal and torch.equal(mask[0, 0], torch.ones(L, L, dtype=torch.bool).tril())

    model = make("tiny")
    ids = torch.randint(0, 6400, (1, L), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=prefix[None, None]).logits, model(ids).logits)
