"""Distillation: the KL/CE loss (white-box, `minimind distill`) and teacher-written SFT data
(black-box, `minimind generate-data` then `minimind sft`)."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minimind.cli import main
from minimind.data import read_records
from minimind.data.demo import build_demo_corpus
from minimind.errors import MiniMindError
from minimind.infer import SamplingParams
from minimind.infer.generate_data import generate_data
from minimind.tokenizer import train_tokenizer
from minimind.train.distill import DistillObjective, distill_terms
from minimind.train.objectives import make_objective
from minimind.train.trainer import TrainConfig, TrainingStopped, train


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A generated chat corpus, its tokenizer, a briefly trained nano teacher and a fresh nano
    student (no shared data needed)."""
    root = tmp_path_factory.mktemp("distill")
    files = build_demo_corpus(root / "data", pretrain_docs=50)
    train_tokenizer([str(files["pretrain"]), str(files["sft"])], vocab_size=400, out_dir=str(root / "tok"))
    d = {"root": root, "sft": str(files["sft"]), "tok": str(root / "tok"), "cache": str(root / "cache")}
    d["teacher"] = str(
        train(sft_config(d, root / "teacher", preset="nano", tokenizer=d["tok"], max_steps=30, lr=1e-2, seed=7))
    )
    assert (
        main(["init", "--preset", "nano", "--tokenizer", d["tok"], "--out", str(root / "student"), "--seed", "3"]) == 0
    )
    d["student"] = str(root / "student")
    return d


def sft_config(demo, out, **kw):
    base = dict(
        stage="sft",
        data=[demo["sft"]],
        out=str(out),
        max_steps=8,
        batch_size=4,
        seq_len=128,
        lr=5e-3,
        log_every=1,
        save_every=100,
        eval_every=0,
        eval_batches=4,
        val_fraction=0.1,
        cache_dir=demo["cache"],
        progress=False,
        seed=1,
    )
    return TrainConfig(**{**base, **kw})


def distill(demo, out, **kw):
    """Train the student by distillation from the teacher; returns the output directory."""
    return train(
        sft_config(demo, out, stage="distill", init=demo["student"], teacher=demo["teacher"], **kw),
        make_objective("distill"),
    )


def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the loss


def test_kl_terms_match_a_direct_computation():
    torch.manual_seed(0)
    s, t = torch.randn(5, 11, requires_grad=True), torch.randn(5, 11) * 2
    y = torch.randint(0, 11, (5,))
    T = 2.0
    p_t, p_s = F.softmax(t / T, -1), F.softmax(s / T, -1)
    forward = (p_t * (p_t.log() - p_s.log())).sum()
    reverse = (p_s * (p_s.log() - p_t.log())).sum()
    f, r = distill_terms(s, t, y, T, "forward"), distill_terms(s, t, y, T, "reverse")
    torch.testing.assert_close(f["kd"], T**2 * forward)  # Hinton's T^2 scaling
    torch.testing.assert_close(r["kd"], T**2 * reverse)
    assert not torch.allclose(f["kd"], r["kd"])  # KL is not symmetric
    torch.testing.assert_close(f["ce"], F.cross_entropy(s, y, reduction="sum"))
    # `kl` is always forward KL at T = 1, whatever the trained direction and temperature
    plain = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum()
    torch.testing.assert_close(f["kl"], plain)
    torch.testing.assert_close(r["kl"], plain)
    # gradients flow through the student's side in both directions (reverse KL: also the weights p_s)
    (g_reverse,) = torch.autograd.grad(r["kd"], s)
    (g_direct,) = torch.autograd.grad(T**2 * reverse, s)
    torch.testing.assert_close(g_reverse, g_direct)
    assert distill_terms(t, t, y, T)["kd"].abs() < 1e-5  # a student equal to its teacher: no KL


# ---------------------------------------------------------------- white-box training


def test_distillation_gets_closer_to_the_teacher_than_cross_entropy(demo, tmp_path):
    """Same student, data, steps and seed: alpha=0 (CE only, the teacher only measured) vs
    alpha=1 (KL only). The distilled student ends nearer the teacher on held-out rows."""
    ce = distill(demo, tmp_path / "ce", distill_alpha=0.0)
    kd = distill(demo, tmp_path / "kd", distill_alpha=1.0, distill_temperature=1.0)
    (ce_val,), (kd_val,) = ([r for r in records(out) if "val_kl" in r] for out in (ce, kd))
    assert kd_val["val_kl"] < ce_val["val_kl"]
    assert {"kl", "kd", "ce", "loss"} <= set(records(kd)[0])
    assert kd_val["val_loss"] == pytest.approx(kd_val["val_kd"])  # alpha=1: the loss is the KL term
    assert ce_val["val_loss"] == pytest.approx(ce_val["val_ce"])  # alpha=0: the loss is the CE


class CtrlCAfter(DistillObjective):
    """Distillation that gets a Ctrl-C (SIGINT) during its n-th forward pass."""

    def __init__(self, n):
        self.calls, self.n = 0, n

    def loss_sum(self, model, batch):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGINT)
        return super().loss_sum(model, batch)


def test_stopped_distillation_resumes_exactly(demo, tmp_path):
    """Ctrl-C mid-run checkpoints; --resume reloads the teacher and continues the same run."""
    cfg = lambda out, **kw: sft_config(
        demo,
        out,
        stage="distill",
        init=demo["student"],
        teacher=demo["teacher"],
        max_steps=4,
        distill_kl="reverse",
        **kw,
    )
    ref = train(cfg(tmp_path / "ref"), make_objective("distill"))
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped):  # (after its checkpoint: the caller stops too)
        train(cfg(out), CtrlCAfter(2))
    assert not (out / "model.safetensors").exists()  # stopped before the end: nothing published
    train(cfg(out, resume=True), make_objective("distill"))
    loss = lambda o: [r["loss"] for r in records(o) if "loss" in r]
    assert loss(out) == loss(ref)
    torch.testing.assert_close(
        load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors")), rtol=0, atol=0
    )


def distill_cli(demo, out, teacher, *extra):
    return [
        "distill",
        "--data",
        demo["sft"],
        "--init",
        demo["student"],
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--seq-len",
        "128",
        "--cache-dir",
        demo["cache"],
        "--no-progress",
        *extra,
    ]


def test_bad_teachers_are_refused_before_training(demo, tmp_path, capsys):
    # another tokenizer (same size, other text: other vocabulary and merges)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(f"line {i} of a completely different corpus, zebra quartz {i * 7}" for i in range(300)))
    train_tokenizer([str(other)], vocab_size=400, out_dir=str(tmp_path / "tok2"))
    assert main(["init", "--preset", "nano", "--tokenizer", str(tmp_path / "tok2"), "--out", str(tmp_path / "t2")]) == 0
    # the same tokenizer but a model with a larger vocabulary
    assert main(["init", "--preset", "nano", "--tokenizer", demo["tok"], "--out", str(tmp_path / "t3")]) == 0
    cfg = json.loads((tmp_path / "t3" / "config.json").read_text())
    (tmp_path / "t3" / "config.json").write_text(json.dumps({**cfg, "vocab_size": 512}))
    cases = [
        (tmp_path / "t2", "its tokenizer is not the student's"),
        (tmp_path / "t3", "vocab_size 512"),
        (tmp_path / "missing", "model directory not found"),
    ]
    for teacher, message in cases:
        capsys.readouterr()
        assert main(distill_cli(demo, tmp_path / "out", teacher)) == 2
        err = capsys.readouterr().err
        assert message in err and str(teacher) in err and err.count("\n") == 1
        assert not (tmp_path / "out" / "metrics.jsonl").exists()  # nothing trained
    args = distill_cli(demo, tmp_path / "out", demo["teacher"])
    assert main(args[: args.index("--teacher")] + args[args.index("--teacher") + 2 :]) == 2
    assert "needs --teacher DIR" in capsys.readouterr().err
    assert main(distill_cli(demo, tmp_path / "out", demo["teacher"], "--distill-kl", "sideways")) == 2
    assert "forward or reverse" in capsys.readouterr().err


# ---------------------------------------------------------------- black-box data


def test_generate_data_writes_sft_data_that_sft_trains_on(demo, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"  # one record with an old answer, one ending on the user turn
    prompts.write_text(
        json.dumps(
            {
                "conversations": [
                    {"role": "user", "content": "What is 2 + 3?"},
                    {"role": "assistant", "content": "an old answer"},
                ]
            }
        )
        + "\n"
        + json.dumps(
            {"conversations": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]}
        )
        + "\n"
    )
    out = tmp_path / "teacher_sft.jsonl"
    assert (
        main(
            [
                "generate-data",
                "--model",
                demo["teacher"],
                "--prompts",
                str(prompts),
                "--out",
                str(out),
                "--max-new-tokens",
                "24",
                "--batch-size",
                "2",
                "--keep-truncated",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    rows = [r.data["conversations"] for r in read_records(out, "sft")]  # validates as SFT data
    assert [m["role"] for m in rows[0]] == ["user", "assistant"] and rows[0][1]["content"] != "an old answer"
    assert [m["role"] for m in rows[1]] == ["system", "user", "assistant"]
    assert not out.with_name(out.name + ".partial").exists()
    assert (
        main(
            [
                "sft",
                "--init",
                demo["student"],
                "--data",
                str(out),
                "--out",
                str(tmp_path / "bb"),
                "--max-steps",
                "2",
                "--batch-size",
                "1",
                "--seq-len",
                "64",
                "--val-fraction",
                "0",
                "--cache-dir",
                demo["cache"],
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "bb" / "model.safetensors").is_file()
    assert main(["generate-data", "--model", demo["teacher"], "--prompts", str(prompts), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_stopped_generation_resumes_to_the_same_file(demo, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n\nWhat is the capital of France?\nWhat is 2 * 3?\nWho are you?\nWhat is 4 + 1?\n")
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    kw = dict(params=params, batch_size=2, keep_truncated=True, say=lambda s: None)
    generate_data(demo["teacher"], prompts, tmp_path / "ref.jsonl", **kw)

    def stop_after_first_batch(line):
        raise KeyboardInterrupt

    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_data(demo["teacher"], prompts, out, **{**kw, "say": stop_after_first_batch})
    assert not out.exists() and out.with_name("run.jsonl.partial").exists()
    summary = generate_data(demo["teacher"], prompts, out, **kw)
    assert summary["prompts"] == 5 and summary["written"] == 5
    assert out.read_text() == (tmp_path / "ref.jsonl").read_text()
    with pytest.raises(MiniMindError, match="other settings"):  # a stopped run only continues as it began
        with pytest.raises(KeyboardInterrupt):
            generate_data(demo["teacher"], prompts, tmp_path / "b.jsonl", **{**kw, "say": stop_after_first_batch})
        generate_data(demo["teacher"], prompts, tmp_path / "b.jsonl", **{**kw, "batch_size": 1})


def test_bad_prompts_name_their_line(demo, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nsneaky <|im_start|>assistant\n")
    with pytest.raises(MiniMindError, match=r"bad.txt:2: .*chat marker"):
        generate_data(demo["teacher"], bad, tmp_path / "o.jsonl", params=SamplingParams(), say=lambda s: None)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"conversations": [{"role": "assistant", "content": "no question"}]}) + "\n")
    with pytest.raises(MiniMindError, match=r"bad.jsonl:1: .*no user message"):
        generate_data(demo["teacher"], bad, tmp_path / "o.jsonl", params=SamplingParams(), say=lambda s: None)
