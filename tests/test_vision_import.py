"""`minimind import minimind-v-pth`: a state dict with MiniMind-V's names (language model +
vision_proj) becomes a vision-language model directory that computes what MiniMind-V computes,
checked against a reference written here from transformers' SigLIP and Qwen3 and plain
functions; a file that does not match is one clear error."""

import pytest
import torch
import torch.nn.functional as F

from helpers import scrambled_model
from minimind.checkpoint import load_model
from minimind.errors import MiniMindError
from minimind.export.minimind_v_pth import import_minimind_v_pth

transformers = pytest.importorskip("transformers", reason="the reference forward needs transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip")
    config = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=32
    )
    torch.manual_seed(0)
    transformers.SiglipVisionModel(config).save_pretrained(path)
    return path


def upstream_state_dict(seed=0):
    """What MiniMind-V's torch.save writes: the LM's names, vision_proj.mlp.{0,1,3}, RoPE tables."""
    lm = scrambled_model(seed)
    sd = {k: v.clone() for k, v in lm.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    h = lm.config.hidden_size
    sd.update(
        {
            "vision_proj.mlp.0.weight": 1 + 0.1 * torch.randn(32, generator=g),
            "vision_proj.mlp.0.bias": 0.1 * torch.randn(32, generator=g),
            "vision_proj.mlp.1.weight": 0.2 * torch.randn(h, 32, generator=g),
            "vision_proj.mlp.1.bias": 0.1 * torch.randn(h, generator=g),
            "vision_proj.mlp.3.weight": 0.2 * torch.randn(h, h, generator=g),
            "vision_proj.mlp.3.bias": 0.1 * torch.randn(h, generator=g),
            "model.freqs_cos": torch.zeros(4, 4),
        }
    )
    return lm.config, sd


def reference_logits(config, sd, tower, ids, pixels, image_id):
    """MiniMind-V's forward, written independently: SigLIP last_hidden_state -> LayerNorm,
    Linear, GELU, Linear -> the pad runs' embeddings (a loop per token) -> Qwen3."""
    siglip = transformers.SiglipVisionModel.from_pretrained(tower).eval()
    with torch.no_grad():
        feats = siglip(pixel_values=pixels).last_hidden_state
        x = F.layer_norm(feats, (32,), sd["vision_proj.mlp.0.weight"], sd["vision_proj.mlp.0.bias"])
        x = F.linear(F.gelu(F.linear(x, sd["vision_proj.mlp.1.weight"], sd["vision_proj.mlp.1.bias"])),
                     sd["vision_proj.mlp.3.weight"], sd["vision_proj.mlp.3.bias"])  # fmt: skip
        h = sd["model.embed_tokens.weight"][ids].clone()
        k = 0
        for b in range(ids.shape[0]):
            i = 0
            while i < ids.shape[1]:
                if ids[b, i] == image_id:
                    h[b, i : i + 64] = x[k]
                    i, k = i + 64, k + 1
                else:
                    i += 1
        qwen = transformers.Qwen3ForCausalLM(
            transformers.Qwen3Config(
                vocab_size=config.vocab_size,
                hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.num_hidden_layers,
                num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_key_value_heads,
                head_dim=config.head_dim,
                rms_norm_eps=config.rms_norm_eps,
                rope_theta=config.rope_theta,
                max_position_embeddings=config.max_position_embeddings,
                tie_word_embeddings=True,
                attention_bias=False,
            )
        ).eval()
        qwen.load_state_dict({k: v for k, v in sd.items() if k.startswith("model.layers") or k in (
            "model.embed_tokens.weight", "model.norm.weight")}, strict=False)  # fmt: skip
        qwen.tie_weights()
        return qwen(inputs_embeds=h).logits


def test_import_matches_an_independent_reference(tmp_path, tower, tok_dir, tok):
    config, sd = upstream_state_dict()
    torch.save({**sd, "vision_encoder.embeddings.patch_embedding.weight": torch.zeros(1)}, tmp_path / "v.pth")
    out, _ = import_minimind_v_pth(tmp_path / "v.pth", tmp_path / "vlm", tower, tokenizer=tok_dir)
    model = load_model(out)
    image_id = tok.token_to_id("<|image_pad|>")
    assert model.vision_config.image_tokens == 64 and model.vision_config.image_token_id == image_id
    ids = torch.randint(20, 300, (1, 150))
    ids[0, 3:67] = image_id
    ids[0, 67:131] = image_id  # two adjacent images
    pixels = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ours = model(ids, pixel_values=pixels).logits
    assert torch.allclose(ours, reference_logits(config, sd, tower, ids, pixels, image_id), atol=1e-4)


def test_mismatched_files_are_one_clear_error(tmp_path, tower):
    _, sd = upstream_state_dict()
    broken = dict(sd)
    broken.pop("vision_proj.mlp.3.bias")
    torch.save(broken, tmp_path / "a.pth")
    with pytest.raises(MiniMindError, match=r"a.pth: projector tensors .* missing vision_proj.mlp.3.bias"):
        import_minimind_v_pth(tmp_path / "a.pth", tmp_path / "a", tower)
    wrong = {**sd, "vision_proj.mlp.1.weight": torch.zeros(128, 48)}
    torch.save(wrong, tmp_path / "b.pth")
    with pytest.raises(MiniMindError, match=r"vision_proj.mlp.1.weight has shape \(128, 48\)"):
        import_minimind_v_pth(tmp_path / "b.pth", tmp_path / "b", tower)
    old = {k: v for k, v in sd.items() if not k.startswith("vision_proj")} | {
        "vision_proj.vision_proj.0.weight": torch.zeros(128, 768)
    }
    torch.save(old, tmp_path / "c.pth")
    with pytest.raises(MiniMindError, match="unexpected vision_proj.vision_proj.0.weight"):
        import_minimind_v_pth(tmp_path / "c.pth", tmp_path / "c", tower)
