"""LoRA: training only the adapter, exact resume, save/load, merge, MiniMind .pth import, errors."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from minimind.checkpoint import load, load_model
from minimind.cli import main
from minimind.data.demo import build_demo_corpus
from minimind.errors import MiniMindError
from minimind.model.lora import (
    LoRAConfig,
    add_lora,
    load_adapter,
    lora_layers,
    merge,
    save_adapter,
)
from minimind.tokenizer import train_tokenizer
from minimind.train.trainer import TrainConfig, train


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A nano model directory with a small tokenizer, and conversations to fine-tune on."""
    root = tmp_path_factory.mktemp("lora")
    files = build_demo_corpus(root / "data", pretrain_docs=100)
    train_tokenizer([str(files["pretrain"]), str(files["sft"])], vocab_size=400, out_dir=str(root / "tok"))
    assert main(["init", "--preset", "nano", "--tokenizer", str(root / "tok"), "--out", str(root / "base")]) == 0
    assert (
        main(
            ["init", "--preset", "nano", "--tokenizer", str(root / "tok"), "--out", str(root / "other"), "--seed", "7"]
        )
        == 0
    )
    return {"root": root, "dir": root / "base", "other": root / "other", "sft": str(files["sft"])}


def lora_config(base, out, **kw):
    settings = {
        "stage": "lora",
        "data": [base["sft"]],
        "out": str(out),
        "init": str(base["dir"]),
        "max_steps": 6,
        "batch_size": 4,
        "seq_len": 64,
        "lr": 1e-2,
        "weight_decay": 0.0,
        "log_every": 1,
        "save_every": 3,
        "val_fraction": 0.05,
        "progress": False,
        "seed": 3,
        "lora_rank": 4,
        "lora_alpha": 8.0,
        "lora_dropout": 0.1,
    }
    return TrainConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def adapter(base):
    """An adapter trained for 6 steps (checkpoints at 3 and 6), and the base's hash before it."""
    before = sha256(base["dir"] / "model.safetensors")
    out = train(lora_config(base, base["root"] / "adapter"))
    return {"dir": out, "base_sha_before": before}


def losses(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_training_writes_the_adapter_alone_and_leaves_the_base_untouched(base, adapter):
    out = adapter["dir"]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.jsonl",
    ]
    assert sha256(base["dir"] / "model.safetensors") == adapter["base_sha_before"]
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert tensors and all(".lora.A.weight" in k or ".lora.B.weight" in k for k in tensors)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["rank"] == 4 and config["alpha"] == 8.0 and config["base"]["base_model"] == str(base["dir"].resolve())
    assert len(config["modules"]) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    first, last = losses(out)[0], losses(out)[-1]
    assert last < first  # the adapter learnt something

    plain, _ = load(base["dir"])
    adapted, _ = load(base["dir"], lora=out)
    ids = torch.randint(0, 400, (2, 12))
    assert not torch.allclose(logits(plain, ids), logits(adapted, ids))


def test_resume_from_a_lora_checkpoint_is_exact(base, adapter, tmp_path):
    """Drop the last checkpoint and the published adapter, resume from step 3: the same losses
    (dropout included) and a bit-identical adapter."""
    run = tmp_path / "run"
    shutil.copytree(adapter["dir"], run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (run / name).unlink()
    train(lora_config(base, run, resume=True))
    assert losses(run) == losses(adapter["dir"])
    want = load_file(str(adapter["dir"] / "adapter_model.safetensors"))
    for k, v in load_file(str(run / "adapter_model.safetensors")).items():
        assert torch.equal(v, want[k]), k


def test_merge_gives_the_logits_of_base_plus_adapter(base, adapter, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert (
        main(["lora", "merge", "--model", str(base["dir"]), "--lora", str(adapter["dir"]), "--out", str(merged)]) == 0
    )
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged.iterdir()}
    ids = torch.randint(0, 400, (2, 16))
    want = logits(load(base["dir"], lora=adapter["dir"])[0], ids)
    torch.testing.assert_close(logits(load(merged)[0], ids), want, atol=1e-5, rtol=0)


def test_save_and_load_round_trip_and_in_memory_merge(base, tmp_path):
    model = load_model(base["dir"])
    add_lora(model, LoRAConfig(rank=2, alpha=4.0, targets=["q_proj", "model.layers.1.mlp.*"]), base_dir=base["dir"])
    assert list(lora_layers(model)) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]
    assert all(p.requires_grad == (".lora." in n) for n, p in model.named_parameters())
    ids = torch.randint(0, 400, (1, 10))
    before = logits(model, ids)
    for layer in lora_layers(model).values():
        nn.init.normal_(layer.lora.B.weight, std=0.2)
    adapted = logits(model, ids)
    assert not torch.allclose(before, adapted)
    save_adapter(model, tmp_path / "a")
    again = load_adapter(load_model(base["dir"]), tmp_path / "a", base_dir=base["dir"])
    assert torch.equal(logits(again, ids), adapted)
    torch.testing.assert_close(logits(merge(again), ids), adapted, atol=1e-5, rtol=0)
    assert not lora_layers(again) and set(again.state_dict()) == set(load_model(base["dir"]).state_dict())


def test_chat_takes_an_adapter(base, adapter, capsys):
    assert (
        main(
            [
                "chat",
                "--model",
                str(base["dir"]),
                "--lora",
                str(adapter["dir"]),
                "--prompt",
                "hi",
                "--max-new-tokens",
                "4",
            ]
        )
        == 0
    )


# ---------------------------------------------------------------- bad input, clear errors


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_an_adapter_for_another_base_is_refused(base, adapter, tmp_path, capsys):
    with pytest.raises(MiniMindError, match="trained on another base"):
        load(base["other"], lora=adapter["dir"])
    err = _error(
        capsys,
        "lora",
        "merge",
        "--model",
        str(base["other"]),
        "--lora",
        str(adapter["dir"]),
        "--out",
        str(tmp_path / "m"),
    )
    assert "trained on another base" in err and not (tmp_path / "m").exists()
    # another architecture: a base of another size
    assert main(["init", "--preset", "tiny", "--tokenizer", str(base["dir"]), "--out", str(tmp_path / "tiny")]) == 0
    with pytest.raises(MiniMindError, match="another architecture"):
        load(tmp_path / "tiny", lora=adapter["dir"])
    # mismatched tensor shapes inside the adapter itself
    bad = tmp_path / "bad"
    shutil.copytree(adapter["dir"], bad, ignore=shutil.ignore_patterns("checkpoints"))
    tensors = load_file(str(bad / "adapter_model.safetensors"))
    key = min(tensors)
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    with pytest.raises(MiniMindError, match=f"{key} has shape \\(3, 3\\)"):
        load(base["dir"], lora=bad)
    with pytest.raises(MiniMindError, match="not a LoRA adapter"):
        load(base["dir"], lora=base["dir"])


def test_bad_lora_settings_fail_before_any_training(base, tmp_path, capsys):
    common = ["lora", "--data", base["sft"], "--out", str(tmp_path / "x"), "--no-progress"]
    err = _error(capsys, *common, "--init", str(base["dir"]), "--lora-targets", "q_proj", "qproj")
    assert "LoRA target 'qproj' matches no linear layer" in err and "q_proj" in err
    assert not (tmp_path / "x").exists()  # nothing tokenized, trained or written
    assert "whole number >= 1" in _error(capsys, *common, "--init", str(base["dir"]), "--lora-rank", "0")
    assert "pass --init BASE_DIR" in _error(capsys, *common, "--preset", "nano", "--tokenizer", str(base["dir"]))


# ---------------------------------------------------------------- MiniMind .pth adapters


def minimind_lora_pth(model, rank=4, seed=0) -> dict:
    """A state dict as MiniMind's train_lora.py saves it (model_lora.py save_lora): every square
    linear layer, `<name>.lora.A.weight` [r, in] and `.lora.B.weight` [out, r], fp16, here
    with the `module.` prefix of a DDP run."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.weight.shape[0] == m.weight.shape[1]:
            sd[f"module.{name}.lora.A.weight"] = (torch.randn(rank, m.in_features, generator=gen) * 0.1).half()
            sd[f"module.{name}.lora.B.weight"] = (torch.randn(m.out_features, rank, generator=gen) * 0.1).half()
    return sd


def test_minimind_pth_adapter_imports_and_computes_the_original_function(base, tmp_path, capsys):
    model = load_model(base["dir"])
    sd = minimind_lora_pth(model)
    torch.save(sd, tmp_path / "lora_identity_128.pth")
    assert (
        main(
            [
                "import",
                "minimind-lora",
                str(tmp_path / "lora_identity_128.pth"),
                "--base",
                str(base["dir"]),
                "--out",
                str(tmp_path / "imported"),
            ]
        )
        == 0
    )
    assert "rank 4 on 4 layers (o_proj, q_proj)" in capsys.readouterr().out
    # The reference: MiniMind's own mechanism, forward = original(x) + B(A(x)), unscaled.
    for name, m in model.named_modules():
        if f"module.{name}.lora.A.weight" in sd:
            a, b = sd[f"module.{name}.lora.A.weight"].float(), sd[f"module.{name}.lora.B.weight"].float()
            m.forward = lambda x, f=m.forward, a=a, b=b: f(x) + x @ a.T @ b.T
    ids = torch.randint(0, 400, (2, 12))
    imported, _ = load(base["dir"], lora=tmp_path / "imported")
    torch.testing.assert_close(logits(imported, ids), logits(model, ids), atol=1e-5, rtol=0)


def test_bad_minimind_pth_adapters_are_named(base, tmp_path, capsys):
    model = load_model(base["dir"])
    whole = tmp_path / "full_sft_128.pth"
    torch.save(model.state_dict(), whole)
    err = _error(
        capsys, "import", "minimind-lora", str(whole), "--base", str(base["dir"]), "--out", str(tmp_path / "o")
    )
    assert "holds no LoRA tensors" in err and "minimind import minimind-pth" in err
    sd = minimind_lora_pth(model, rank=4)
    key = next(k for k in sd if k.endswith("B.weight"))
    sd[key] = torch.zeros(7, 4, dtype=torch.float16)
    torch.save(sd, tmp_path / "wrong.pth")
    err = _error(
        capsys,
        "import",
        "minimind-lora",
        str(tmp_path / "wrong.pth"),
        "--base",
        str(base["dir"]),
        "--out",
        str(tmp_path / "o"),
    )
    assert "do not fit a 128 -> 128 layer with rank 4" in err
