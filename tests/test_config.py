"""Settings have one home (TrainConfig's fields), are checked before anything loads, and a model's
shape can be set from the command line on top of a preset."""

import argparse
import json
import typing

import pytest

from minimind.cli import build_parser, main
from minimind.config import PRESETS, SHAPE_FLAGS, preset
from minimind.errors import MiniMindError
from minimind.model import count_parameters
from minimind.train.config import RESUME_FIXED, STAGES, TrainConfig, setting_types, stage_defaults, stage_fields
from minimind.train.objectives import Objective, SetupContext, make_objective


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- one home per setting


def test_every_setting_documents_itself():
    for f in TrainConfig.__dataclass_fields__.values():
        assert f.metadata["help"], f.name
        assert set(f.metadata["stages"]) <= set(STAGES) and set(f.metadata["per_stage"]) <= set(STAGES), f.name
    assert {"seq_len", "batch_size", "seed", "teacher", "lora_rank", "shape"} <= set(RESUME_FIXED)
    assert "lr" not in RESUME_FIXED  # a resumed run may change its learning rate


def test_flags_are_derived_from_the_fields():
    """Each stage's parser has exactly a flag per field of that stage, typed from the annotations."""
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    types = setting_types()
    assert types["max_steps"] is int and types["min_lr"] is float and types["teacher"] is str
    assert typing.get_origin(types["data"]) is list and types["fsdp"] is bool
    vlm = next(a for a in verbs["vlm"]._actions if isinstance(a, argparse._SubParsersAction)).choices
    for stage in STAGES:
        parser_of = vlm[stage[4:]] if stage.startswith("vlm_") else verbs[stage]  # `minimind vlm pretrain|sft`
        dests = {a.dest for a in parser_of._actions} - {"help", "config", "verb", argparse.SUPPRESS}  # lora: merge
        names = {f.name for f in stage_fields(stage)} - {"shape"} | (set(SHAPE_FLAGS) if stage == "pretrain" else set())
        assert dests == names, stage
    assert "teacher" not in {a.dest for a in verbs["sft"]._actions}  # a distill-only setting


def test_stage_defaults_come_from_the_fields():
    assert stage_defaults("dpo")["lr"] == 5e-6 and stage_defaults("pretrain")["grad_accum"] == 8
    cfg = TrainConfig.for_stage("lora", data=["x.jsonl"], init="base")
    assert (cfg.lr, cfg.lora_rank, cfg.epochs, cfg.out) == (1e-4, 8, 10.0, "out/lora")
    assert TrainConfig.for_stage("lora", data=["x.jsonl"], init="base", lr=3e-4).lr == 3e-4  # given beats default


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(lr=-1.0), "--lr must be positive, got -1.0"),
        (dict(batch_size=0), "--batch-size must be at least 1"),
        (dict(val_fraction=1.0), "--val-fraction must be in [0, 1)"),
        (dict(on_bad_record="ignore"), "unknown --on-bad-record 'ignore'; choose from: error or skip"),
        (dict(tracker=["wandb", "mlflow"]), "unknown --tracker 'mlflow'"),
        (dict(preset="gpt5", tokenizer="t", init=None), "unknown --preset 'gpt5'"),
        (dict(data=[]), "needs --data FILE"),
        (dict(init=None), "--init DIR, or --preset NAME with --tokenizer DIR"),
        (dict(teacher="t"), "--teacher is a setting of minimind distill, not of minimind sft"),
        (dict(dpo_beta=0.5), "--dpo-beta is a setting of minimind dpo, not of minimind sft"),
        (dict(shape={"hidden_size": 64}), "--hidden-size is a setting of minimind pretrain, not of minimind sft"),
    ],
)
def test_bad_settings_name_the_flag(settings, message):
    with pytest.raises(MiniMindError) as e:
        TrainConfig.for_stage("sft", **{"data": ["x.jsonl"], "init": "m", **settings})
    assert message in str(e.value)


@pytest.mark.parametrize(
    "stage, settings, message",
    [
        ("dpo", dict(dpo_loss="kto"), "unknown --dpo-loss 'kto'; choose from: sigmoid, ipo or hinge"),
        ("dpo", dict(dpo_label_smoothing=0.5), "--dpo-label-smoothing must be in [0, 0.5)"),
        ("dpo", dict(strip_empty_think=True), "both sides of a pair the same way"),
        ("dpo", dict(lora_rank=4, init=None, preset="nano", tokenizer="t"), "with LoRA adapts an existing model"),
        ("distill", dict(), "needs --teacher DIR"),
        ("distill", dict(teacher="t", distill_kl="sideways"), "choose from: forward or reverse"),
        ("distill", dict(teacher="t", distill_alpha=2.0), "--distill-alpha must be between 0 and 1"),
        ("reason", dict(think_mix=1.5), "--think-mix must be between 0 and 1"),
        ("lora", dict(fsdp=True), "--fsdp is not needed with LoRA"),
        ("lora", dict(lora_rank=0), "--lora-rank must be a whole number >= 1"),
        ("pretrain", dict(shape={"hidden_size": 64}), "--hidden-size reshape a fresh --preset model"),
        (
            "pretrain",
            dict(init=None, preset="nano", tokenizer="t", shape={"max_position_embeddings": 256}),
            "--seq-len 512 is longer than the model's context (--max-position-embeddings 256)",
        ),
    ],
)
def test_a_stage_checks_its_options_when_its_config_is_built(stage, settings, message):
    with pytest.raises(MiniMindError) as e:
        TrainConfig.for_stage(stage, **{"data": ["x.jsonl"], "init": "m", **settings})
    assert message in str(e.value)


def test_bad_flags_fail_before_anything_is_read(tmp_path, capsys):
    """Nothing exists at these paths: the error must come from the settings, not the loading."""
    common = ["--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "out"), "--no-progress"]
    cases = [
        (["pretrain", "--preset", "nano", "--tokenizer", "t", "--lr", "-0.1"], "--lr must be positive"),
        (["dpo", "--init", "m", "--dpo-loss", "kto"], "unknown --dpo-loss 'kto'"),
        (["distill", "--init", "m"], "needs --teacher DIR"),
        (["pretrain", "--preset", "nano", "--tokenizer", "t", "--num-heads", "3"], "--num-heads must divide"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv, *common)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_yaml_takes_shape_keys(tmp_path):
    from minimind.train.commands import load_yaml_config

    f = tmp_path / "run.yaml"
    f.write_text("data: a.jsonl\nhidden-size: 64\nnum_hidden_layers: 3\n")
    expected = {"data": ["a.jsonl"], "shape": {"hidden_size": 64, "num_hidden_layers": 3}}
    assert load_yaml_config(str(f), "pretrain") == expected
    with pytest.raises(MiniMindError, match="unknown setting 'hidden-size' for minimind sft"):
        load_yaml_config(str(f), "sft")


# ---------------------------------------------------------------- the objective contract


def test_every_stage_objective_keeps_the_contract():
    for stage in STAGES:
        objective = make_objective(stage)
        assert isinstance(objective, Objective), stage
        for method in ("build_data", "count", "loss_sum"):  # what each must implement itself
            assert getattr(type(objective), method) is not getattr(Objective, method), (stage, method)
    # setup gets a narrow context, never the trainer
    assert "trainer" not in SetupContext.__dataclass_fields__
    context = set(SetupContext.__dataclass_fields__)
    assert {"model", "device", "dtype", "dist", "train_ds", "val_ds", "out", "cfg"} <= context


# ---------------------------------------------------------------- model shape


def test_shape_overrides_derive_what_follows_from_them():
    base = preset("tiny")
    cfg = preset("tiny", shape={"hidden_size": 512, "num_hidden_layers": 6})
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.head_dim) == (512, 6, 512 // base.num_attention_heads)
    assert cfg.intermediate_size == 3 * 512  # tiny's FFN rule (3 x hidden), not tiny's 768
    # MiniMind2-Small widened and deepened is exactly MiniMind2 (its FFN rule follows the width)
    assert preset("minimind2-small", shape={"hidden_size": 768, "num_hidden_layers": 16}) == preset("minimind2")
    moe = preset("tiny", shape={"use_moe": True, "num_experts": 8, "num_experts_per_tok": 2})
    assert moe.use_moe and (moe.num_experts, moe.num_experts_per_tok) == (8, 2)
    assert not preset("tiny-moe", shape={"use_moe": False}).use_moe
    assert preset("nano", shape={"max_position_embeddings": 1024}).max_position_embeddings == 1024
    assert preset("nano", shape={}) == preset("nano")
    assert all(preset(name, shape={"num_hidden_layers": 1}).num_hidden_layers == 1 for name in PRESETS)


@pytest.mark.parametrize(
    "shape, message",
    [
        ({"hidden_size": 300}, "--num-heads (preset tiny: 8) must divide --hidden-size"),
        ({"hidden_size": 264}, "head_dim = 264 / 8 = 33 must be even"),
        ({"num_key_value_heads": 3}, "--num-kv-heads must divide --num-heads (preset tiny: 8)"),
        ({"num_experts": 8}, "--num-experts set(s) up experts, but the model is dense: add --use-moe"),
        (
            {"use_moe": True, "num_experts": 2, "num_experts_per_tok": 3},
            "--experts-per-tok must be at most --num-experts",
        ),
        ({"hidden_size": 0}, "--hidden-size must be a positive whole number, got 0"),
        ({"depth": 4}, "unknown model shape setting 'depth'"),
    ],
)
def test_bad_shapes_are_one_clear_error(shape, message):
    with pytest.raises(MiniMindError) as e:
        preset("tiny", shape=shape)
    assert message in str(e.value)


def test_info_shows_the_reshaped_model(capsys):
    code, out, _ = run(
        capsys,
        "info",
        "--preset",
        "tiny",
        "--json",
        "--hidden-size",
        "384",
        "--num-layers",
        "6",
        "--num-heads",
        "6",
        "--num-kv-heads",
        "2",
        "--use-moe",
        "--num-experts",
        "4",
        "--experts-per-tok",
        "2",
    )
    assert code == 0
    info = json.loads(out)
    expected = preset(
        "tiny",
        shape={
            "hidden_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "num_key_value_heads": 2,
            "use_moe": True,
            "num_experts": 4,
            "num_experts_per_tok": 2,
        },
    )
    assert (info["params_total"], info["params_active"]) == count_parameters(expected)
    assert info["config"]["head_dim"] == 64 and info["config"]["num_key_value_heads"] == 2
    code, out, _ = run(capsys, "info", "--preset", "tiny", "--num-hidden-layers", "8")  # the HF spelling too
    assert code == 0 and out.startswith("tiny --num-layers 8: ") and "8 layers" in out
    code, _, err = run(capsys, "info", "--preset", "tiny", "--num-heads", "5")
    assert code == 2 and "--num-heads must divide --hidden-size (preset tiny: 256)" in err


def test_init_and_pretrain_build_the_reshaped_model(tok_dir, tmp_path, capsys):
    from minimind.data.demo import build_demo_corpus

    code, out, _ = run(
        capsys,
        "init",
        "--preset",
        "nano",
        "--tokenizer",
        str(tok_dir),
        "--out",
        str(tmp_path / "m"),
        "--hidden-size",
        "64",
        "--num-layers",
        "3",
        "--max-position-embeddings",
        "256",
    )
    assert code == 0 and "nano --hidden-size 64 --num-layers 3 --max-position-embeddings 256" in out
    written = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (written["hidden_size"], written["num_hidden_layers"], written["max_position_embeddings"]) == (64, 3, 256)
    assert written["head_dim"] == 16 and written["intermediate_size"] == 192

    files = build_demo_corpus(tmp_path / "data", pretrain_docs=60)
    code, _, err = run(
        capsys,
        "pretrain",
        "--data",
        str(files["pretrain"]),
        "--preset",
        "nano",
        "--tokenizer",
        str(tok_dir),
        "--out",
        str(tmp_path / "pt"),
        "--hidden-size",
        "64",
        "--num-layers",
        "3",
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--seq-len",
        "64",
        "--cache-dir",
        str(tmp_path / "c"),
        "--no-progress",
    )
    assert code == 0, err
    trained = json.loads((tmp_path / "pt" / "config.json").read_text())
    assert (trained["hidden_size"], trained["num_hidden_layers"]) == (64, 3)
