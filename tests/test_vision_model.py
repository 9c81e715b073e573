"""The vision-language model: images fill their <|image_pad|> runs (adjacent ones too, checked
against a per-token loop written here), a VLM row generates the same alone as beside text rows,
the model directory round-trips strictly, and a tiny random SigLIP tower gives exactly 64
tokens per image and is never saved nor trained."""

import json

import pytest
import torch

from minimind.checkpoint import load_model, save_model_dir
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.infer import Engine, SamplingParams, Sequence
from minimind.model.vision import VisionConfig
from minimind.model.vlm import MiniMindVLM, set_trainable

pytestmark = pytest.mark.usefixtures("one_thread")
PAD = 12
GREEDY = {"temperature": 0.0, "stop_token_ids": ()}


def tiny_vlm(seed=0, **vision):
    v = VisionConfig(
        **{"image_size": 32, "patch_size": 8, "hidden_size": 32, "image_tokens": 16, "num_heads": 2, **vision}
    )
    torch.manual_seed(seed)
    model = MiniMindVLM(preset("nano"), v).init_weights(seed).eval()
    with torch.no_grad():  # larger weights than the init, so that images change the output
        for p in model.lm.parameters():
            if p.dim() > 1:
                p.mul_(5)
    return model


def reference_embeds(model, ids, pixel_values):
    """The injection written the slow, obvious way: walk each row, hand the next image's
    features to each run of T pad tokens."""
    T = model.vision_config.image_tokens
    feats = model.encode_images(pixel_values)
    h = model.lm.model.embed_tokens(ids).clone()
    k = 0
    for b in range(ids.shape[0]):
        i = 0
        while i < ids.shape[1]:
            if ids[b, i] == PAD:
                h[b, i : i + T] = feats[k]
                k += 1
                i += T
            else:
                i += 1
    return h


def test_images_fill_their_runs_including_adjacent_ones():
    model = tiny_vlm()
    ids = torch.randint(20, 200, (2, 70))
    ids[0, 2:18] = PAD  # one image
    ids[0, 30:62] = PAD  # two adjacent images: one run of 32
    ids[1, 40:56] = PAD
    pixels = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got = model.embed(ids, pixels)
        want = reference_embeds(model, ids, pixels)
        assert torch.allclose(got, want)
        plain = model.lm.model.embed_tokens(ids)
        assert torch.equal(got[ids != PAD], plain[ids != PAD])
        assert model(ids, pixel_values=pixels).logits.shape == (2, 70, 6400)


def test_mismatched_images_are_one_clear_error():
    model = tiny_vlm()
    ids = torch.randint(20, 200, (1, 40))
    ids[0, 2:18] = PAD
    with pytest.raises(MiniMindError, match="16 <.image_pad.> tokens .* 2 image"):
        model(ids, pixel_values=torch.randn(2, 3, 32, 32))
    ids[0, 2:26] = PAD  # 24 = one image and a half: a cut run
    ids[0, 30:38] = PAD
    with pytest.raises(MiniMindError, match="not one unbroken run"):
        model(ids, pixel_values=torch.randn(2, 3, 32, 32))


def test_vlm_row_generates_the_same_alone_and_beside_text_rows(tok):
    model = tiny_vlm(seed=1)
    params = SamplingParams(max_new_tokens=8, **GREEDY)
    prompt = tok.encode("Look:") + [PAD] * 16 + tok.encode(" what is it?")
    image = torch.randn(1, 3, 32, 32)

    def run(rows):
        engine = Engine(model)
        engine.add(rows)
        while engine.sequences:
            engine.step()
        return [r.completion().token_ids for r in rows]

    [alone] = run([Sequence(model, tok, prompt, params, images=image)])
    texts = [tok.encode("Once upon a time, in a small village far away"), tok.encode("你好")]
    rows = [Sequence(model, tok, texts[0], params), Sequence(model, tok, prompt, params, images=image)]
    rows.append(Sequence(model, tok, texts[1], params))
    assert run(rows)[1] == alone
    # the image matters (else the test above proves nothing)
    [other] = run([Sequence(model, tok, prompt, params, images=torch.randn(1, 3, 32, 32) * 3)])
    [none] = run([Sequence(model, tok, prompt, params)])
    assert other != alone or none != alone
    with pytest.raises(MiniMindError, match="16 <.image_pad.> tokens"):
        Sequence(model, tok, prompt, params, images=torch.randn(2, 3, 32, 32))


def test_model_directory_round_trips_strictly(tmp_path, tok):
    model = tiny_vlm()
    save_model_dir(model, tmp_path / "vlm", tok)
    config = json.loads((tmp_path / "vlm" / "config.json").read_text())
    assert config["vision"]["encoder"] == "patch" and config["vision"]["image_tokens"] == 16
    loaded = load_model(tmp_path / "vlm")
    assert isinstance(loaded, MiniMindVLM)
    ids = torch.randint(20, 200, (1, 30))
    ids[0, 5:21] = PAD
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(ids, pixel_values=pixels).logits, model(ids, pixel_values=pixels).logits)
    counts = set_trainable(loaded, ["projector"])
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("projector.") for n in trainable)
    assert counts["projector"] == sum(p.numel() for p in loaded.projector.parameters())
    set_trainable(loaded, ["projector", "first_last"])
    trainable = {n.split(".")[3] for n, p in loaded.named_parameters() if p.requires_grad and n.startswith("lm.")}
    assert trainable == {"0", str(loaded.config.num_hidden_layers - 1)}


def tiny_siglip(path):
    transformers = pytest.importorskip("transformers", reason="the SigLIP tower test needs transformers")
    config = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=32
    )
    torch.manual_seed(0)
    transformers.SiglipVisionModel(config).save_pretrained(path)
    return path


def test_siglip_tower_gives_64_tokens_and_is_frozen_and_never_saved(tmp_path, tok):
    tower = tiny_siglip(tmp_path / "siglip")
    v = VisionConfig(encoder="hf", path=str(tower), image_size=256, hidden_size=32, image_tokens=64)
    model = MiniMindVLM(preset("nano"), v).init_weights(0)
    pixels = torch.randn(2, 3, 256, 256)
    assert model.vision(pixels).shape == (2, 64, 32)
    assert model.encode_images(pixels).shape == (2, 64, model.config.hidden_size)
    before = {k: t.clone() for k, t in model.vision.state_dict().items()}
    set_trainable(model, ["all"])
    model.train()
    assert not model.vision.tower.training and not any(p.requires_grad for p in model.vision.parameters())
    with pytest.raises(MiniMindError, match="stays frozen"):
        set_trainable(model, ["encoder"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(20, 200, (2, 80))
    ids[:, 4:68] = PAD
    for _ in range(2):
        loss = model(ids, pixel_values=pixels, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.vision.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    save_model_dir(model, tmp_path / "vlm", tok)
    from safetensors import safe_open

    with safe_open(tmp_path / "vlm" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and not any(n.startswith("vision.") for n in names)
    loaded = load_model(tmp_path / "vlm")
    with torch.no_grad():
        model.eval()
        assert torch.allclose(loaded(ids, pixel_values=pixels).logits, model(ids, pixel_values=pixels).logits)
