"""`minimind vlm init / pretrain / sft`: stages of the one trainer. What --train freezes stays
exactly as it was, what it names moves, and a stopped run resumes to the same weights."""

import shutil

import pytest
import torch

from minimind.checkpoint import load_model, save_model_dir
from minimind.cli import main
from minimind.config import preset
from minimind.data.shapes import build_shape_set
from minimind.errors import MiniMindError
from minimind.model import MiniMindForCausalLM
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


def test_resume_is_exact(setup, tmp_path):
    root, data = setup
    whole = load_model(run(root, data, tmp_path / "whole", train=["all"], lr=1e-3)).state_dict()
    first = tmp_path / "resumed"
    run(root, data, first, train=["all"], lr=1e-3, save_every=2)  # checkpoints at steps 2 and 4
    shutil.rmtree(first / "checkpoints" / "step-00000004")
    resumed = load_model(run(root, data, first, train=["all"], lr=1e-3, save_every=2, resume=True)).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_vlm_stage_needs_a_vision_model(setup, tmp_path):
    root, data = setup
    with pytest.raises(MiniMindError, match="pass --init DIR"):
        TrainConfig.for_stage("vlm_sft", data=[str(data["train"])], preset="nano", tokenizer=str(root / "lm"))
    cfg = TrainConfig.for_stage("vlm_sft", data=[str(data["train"])], init=str(root / "lm"), out=str(tmp_path / "x"))
    with pytest.raises(MiniMindError, match="not a vision-language model"):
        train(cfg)
