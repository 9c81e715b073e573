"""`minimind vlm init / pretrain / sft`: stages of the one trainer. What --train freezes stays
exactly as it was, what it names moves, and a stopped run resumes to the same weights. A frozen
encoder's features are encoded once and cached, with the loss of encoding every batch; two DDP
processes give the weights of one."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from minimind.checkpoint import load_model, save_model_dir
from minimind.cli import main
from minimind.config import preset
from minimind.data.shapes import build_shape_set
from minimind.errors import MiniMindError
from minimind.model import MiniMindForCausalLM
from minimind.model.vision import PatchEncoder
from minimind.model.vlm import MiniMindVLM
from minimind.train.config import TrainConfig
from minimind.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("vlm")
    save_model_dir(MiniMindForCausalLM(preset("nano", tokenizer=tok)).init_weights(0), root / "lm", tok)
    argv = ["vlm", "init", "--lm", str(root / "lm"), "--encoder", "patch", "--out", str(root / "init")]
    assert main(argv + ["--image-size", "32", "--patch-size", "8", "--hidden-size", "32", "--num-heads", "2"]) == 0
    data = build_shape_set(root / "shapes", train=48, test=4, size=32)
    return root, data


def run(root, data, out, **settings):
    settings = {"max_steps": 4, "batch_size": 4, "seq_len": 128, "val_fraction": 0.0, "progress": False, **settings}
    cfg = TrainConfig.for_stage("vlm_sft", data=[str(data["train"])], init=str(root / "init"), out=str(out), **settings)
    return train(cfg)


def losses(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r], [r["val_loss"] for r in lines if "val_loss" in r]


def test_init_writes_a_vision_model_with_the_lm_weights(setup):
    root, _ = setup
    vlm, lm = load_model(root / "init"), load_model(root / "lm")
    assert isinstance(vlm, MiniMindVLM) and vlm.vision_config.image_tokens == 16
    assert all(torch.equal(v, vlm.lm.state_dict()[k]) for k, v in lm.state_dict().items())


def test_frozen_parts_stay_and_trained_parts_move(setup, tmp_path):
    root, data = setup
    before = load_model(root / "init").state_dict()
    after = load_model(run(root, data, tmp_path / "sft", lr=1e-2)).state_dict()  # projector + first/last layer
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    last = preset("nano").num_hidden_layers - 1
    assert any(k.startswith("projector.") for k in moved)
    assert any(k.startswith("lm.model.layers.0.") for k in moved)
    assert all(k.startswith(("projector.", "lm.model.layers.0.", f"lm.model.layers.{last}.")) for k in moved), moved
    assert "lm.model.embed_tokens.weight" not in moved and not any(k.startswith("vision.") for k in moved)


def test_cli_pretrain_trains_the_projector_only(setup, tmp_path):
    root, data = setup
    out = tmp_path / "pre"
    argv = ["vlm", "pretrain", "--init", str(root / "init"), "--data", str(data["train"]), "--out", str(out)]
    argv += ["--max-steps", "2", "--batch-size", "4", "--seq-len", "128", "--val-fraction", "0", "--no-progress"]
    assert main(argv) == 0
    before, after = load_model(root / "init").state_dict(), load_model(out).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("projector.") for k in moved)


@pytest.mark.parametrize("parts", [["all"], ["projector", "first_last"]], ids=["encoder trains", "features cached"])
def test_resume_is_exact(setup, tmp_path, parts):
    root, data = setup
    whole = load_model(run(root, data, tmp_path / "whole", train=parts, lr=1e-3)).state_dict()
    first = tmp_path / "resumed"
    run(root, data, first, train=parts, lr=1e-3, save_every=2)  # checkpoints at steps 2 and 4
    shutil.rmtree(first / "checkpoints" / "step-00000004")
    resumed = load_model(run(root, data, first, train=parts, lr=1e-3, save_every=2, resume=True)).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def count_encodes(monkeypatch) -> list:
    """Patch our encoder's forward to note how many pictures each call encodes."""
    calls, forward = [], PatchEncoder.forward

    def counted(self, pixel_values):
        calls.append(len(pixel_values))
        return forward(self, pixel_values)

    monkeypatch.setattr(PatchEncoder, "forward", counted)
    return calls


def test_cached_features_give_the_loss_and_weights_of_pixels(setup, tmp_path, monkeypatch, capsys):
    """A frozen encoder's features come from the cache, encoded once: the losses (training and
    validation) and the trained weights are those of encoding the pictures in every batch."""
    root, data = setup
    calls = count_encodes(monkeypatch)
    # fp32: in bf16, encoding 48 pictures at once or 4 at a time may round differently on some CPUs.
    settings = {"lr": 1e-2, "val_fraction": 0.2, "eval_every": 2, "log_every": 1, "dtype": "fp32"}
    settings["cache_dir"] = str(tmp_path / "cache")
    plain = run(root, data, tmp_path / "pixels", feature_cache=False, **settings)
    assert len(calls) > 4 and "image features" not in capsys.readouterr().out  # every batch encodes
    calls.clear()
    cached = run(root, data, tmp_path / "cached", **settings)
    images = sum(1 for _ in open(data["train"]))
    assert sum(calls) == images  # every picture once (training and validation), then none
    assert f"image features: {images} images encoded once" in capsys.readouterr().out
    (l1, v1), (l2, v2) = losses(plain), losses(cached)
    assert len(l1) == 4 and len(v1) >= 2
    assert l2 == pytest.approx(l1, rel=1e-5) and v2 == pytest.approx(v1, rel=1e-5)
    one, two = load_model(plain).state_dict(), load_model(cached).state_dict()
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, atol=1e-6, rtol=1e-5)


def test_feature_cache_is_reused_and_rebuilt_when_damaged(setup, tmp_path, monkeypatch, capsys):
    root, data = setup
    calls = count_encodes(monkeypatch)
    settings = {"max_steps": 2, "cache_dir": str(tmp_path / "cache")}
    first = load_model(run(root, data, tmp_path / "a", **settings)).state_dict()
    assert "encoded once" in capsys.readouterr().out and calls
    (cache,) = (tmp_path / "cache").glob("train-features-*")
    mtime = (cache / "features.npy").stat().st_mtime_ns
    calls.clear()
    again = load_model(run(root, data, tmp_path / "b", **settings)).state_dict()
    assert "reused from the cache" in capsys.readouterr().out and calls == []  # nothing encoded
    assert (cache / "features.npy").stat().st_mtime_ns == mtime
    (cache / "meta.json").write_text("{")  # damaged: rebuilt, never trusted
    rebuilt = load_model(run(root, data, tmp_path / "c", **settings)).state_dict()
    assert "encoded once" in capsys.readouterr().out and calls
    assert json.loads((cache / "meta.json").read_text())["images"] == sum(calls)
    assert all(torch.equal(first[k], again[k]) and torch.equal(first[k], rebuilt[k]) for k in first)


def test_a_trained_encoder_is_not_cached(setup, tmp_path, monkeypatch, capsys):
    root, data = setup
    calls = count_encodes(monkeypatch)
    run(root, data, tmp_path / "enc", max_steps=2, train=["projector", "encoder"], cache_dir=str(tmp_path / "cache"))
    assert "image features" not in capsys.readouterr().out and len(calls) == 2  # one encode per batch
    assert not list((tmp_path / "cache").glob("*-features-*"))


def test_a_transformers_tower_is_cached_even_with_train_all(setup, tmp_path, capsys):
    """A tower never trains, so --train all still reads its features from the cache: the same
    losses and weights as encoding every batch."""
    transformers = pytest.importorskip("transformers", reason="the SigLIP tower test needs transformers")
    root, data = setup
    config = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64, patch_size=16
    )
    torch.manual_seed(0)
    transformers.SiglipVisionModel(config).save_pretrained(tmp_path / "siglip")
    init = ["vlm", "init", "--lm", str(root / "lm"), "--encoder", str(tmp_path / "siglip")]
    assert main([*init, "--out", str(tmp_path / "init")]) == 0
    settings = {"max_steps": 2, "train": ["all"], "lr": 1e-3, "log_every": 1, "dtype": "fp32"}
    settings["cache_dir"] = str(tmp_path / "cache")
    plain = run(tmp_path, data, tmp_path / "pixels", feature_cache=False, **settings)
    cached = run(tmp_path, data, tmp_path / "cached", **settings)
    assert "image features: 48 images encoded once" in capsys.readouterr().out
    assert losses(cached)[0] == pytest.approx(losses(plain)[0], rel=1e-5)
    one, two = load_model(plain).state_dict(), load_model(cached).state_dict()
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, atol=1e-6, rtol=1e-5)


def test_two_gloo_processes_match_one_process(setup, tmp_path):
    """torchrun with 2 CPU processes and batch 2 each = 1 process with batch 4 (DDP): the same
    losses and weights, the frozen encoder's features cached by one process and read by both."""
    root, data = setup

    def cmd(out, batch):
        flags = f"--max-steps 3 --batch-size {batch} --seq-len 128 --val-fraction 0.2 --eval-every 3 --lr 1e-2"
        flags += " --dtype fp32 --log-every 1 --no-progress"
        paths = ["--init", str(root / "init"), "--data", str(data["train"]), "--out", str(out)]
        return ["vlm", "sft", *paths, *flags.split()]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINIMIND_CACHE": str(tmp_path / "cache")}
    run_one = [sys.executable, "-m", "minimind.cli", *cmd(tmp_path / "one", 4)]
    one = subprocess.run(run_one, capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    env["MINIMIND_CACHE"] = str(tmp_path / "cache2")  # the two processes build their own cache
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run_two = [*torchrun, "-m", "minimind.cli", *cmd(tmp_path / "two", 2)]
    two = subprocess.run(run_two, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x 2 processes" in two.stdout and "image features: " in two.stdout
    assert len(list((tmp_path / "cache2").glob("train-features-*"))) == 1
    (l1, v1), (l2, v2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == 3 and len(v1) >= 1
    assert l2 == pytest.approx(l1, abs=1e-4) and v2 == pytest.approx(v1, abs=1e-4)
    a, b = load_model(tmp_path / "one").state_dict(), load_model(tmp_path / "two").state_dict()
    for k, v in a.items():
        torch.testing.assert_close(b[k], v, atol=1e-4, rtol=1e-3)


def test_vlm_stage_needs_a_vision_model(setup, tmp_path):
    root, data = setup
    with pytest.raises(MiniMindError, match="pass --init DIR"):
        TrainConfig.for_stage("vlm_sft", data=[str(data["train"])], preset="nano", tokenizer=str(root / "lm"))
    cfg = TrainConfig.for_stage("vlm_sft", data=[str(data["train"])], init=str(root / "lm"), out=str(tmp_path / "x"))
    with pytest.raises(MiniMindError, match="not a vision-language model"):
        train(cfg)
