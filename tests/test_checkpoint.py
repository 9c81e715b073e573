"""Model directories: save/load round trip and one clear error for every bad input."""

import json

import pytest
import torch
from safetensors.torch import save_file

import minimind
from minimind.checkpoint import load_model, save_model_dir
from minimind.config import preset
from minimind.errors import MiniMindError
from minimind.model import MiniMindForCausalLM


@pytest.fixture
def model_dir(tmp_path):
    model = MiniMindForCausalLM(preset("nano")).init_weights(0).eval()
    save_model_dir(model, tmp_path / "m")
    return tmp_path / "m", model


def test_round_trip_is_exact_and_keeps_embeddings_tied(model_dir):
    path, model = model_dir
    loaded = load_model(path)
    ids = torch.randint(0, 6400, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not loaded.training
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]


def test_load_in_bfloat16_keeps_rope_frequencies_in_float32(model_dir):
    loaded = load_model(model_dir[0], dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.inv_freq.dtype == torch.float32


def test_public_load_returns_model_and_tokenizer(model_dir, tok):
    path, _ = model_dir
    tok.save(path)
    model, tokenizer = minimind.load(path)
    assert tokenizer.eos_token_id == model.config.eos_token_id == 2


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_dir", "model directory not found"),
        ("no_config", "config.json: file not found"),
        ("bad_json", "config.json:2: invalid JSON"),
        ("wrong_type", "hidden_size should be a number"),
        ("bad_value", "must be a multiple of"),
        ("no_weights", "model.safetensors: weights file not found"),
        ("corrupt_weights", "not a valid safetensors file"),
        ("missing_tensor", "missing tensors model.norm.weight"),
        ("extra_tensor", "unexpected tensors model.layers.9.mlp.up_proj.weight"),
        ("wrong_shape", "model.norm.weight has shape (7,), config needs (128,)"),
        ("pickle", "not a valid safetensors file"),
    ],
)
def test_bad_model_directories_give_one_clear_line(model_dir, case, expected):
    path, model = model_dir
    weights, config = path / "model.safetensors", path / "config.json"
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if case == "no_dir":
        path = path / "nope"
    elif case == "no_config":
        config.unlink()
    elif case == "bad_json":
        config.write_text('{\n  "hidden_size": ,\n}')
    elif case == "wrong_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": "128"}))
    elif case == "bad_value":
        config.write_text(json.dumps({**json.loads(config.read_text()), "num_key_value_heads": 3}))
    elif case == "no_weights":
        weights.unlink()
    elif case == "corrupt_weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif case == "missing_tensor":
        del sd["model.norm.weight"]
        save_file(sd, weights)
    elif case == "extra_tensor":
        sd["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
        save_file(sd, weights)
    elif case == "wrong_shape":
        sd["model.norm.weight"] = torch.zeros(7)
        save_file(sd, weights)
    elif case == "pickle":  # a .pth renamed: must never be unpickled
        torch.save(sd, weights)
    with pytest.raises(MiniMindError) as err:
        load_model(path)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
