"""The cheaper training step: the fused AdamW update equals the plain one, and a compiled model
trains to the same losses as the eager one (with checkpoints that do not know it was compiled).

The compile test runs only with MINIMIND_TEST_COMPILE=1: torch.compile builds C++ kernels
with the system compiler, which takes about a minute on a 2-core machine.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import pretrain_records, write_jsonl
from minimind.config import preset
from minimind.model import MiniMindForCausalLM
from minimind.train.optim import can_fuse, make_optimizer
from minimind.train.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_grads(seed: int) -> MiniMindForCausalLM:
    model = MiniMindForCausalLM(preset("nano")).init_weights(0)
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-2
    return model


def test_fused_adamw_update_equals_the_plain_one():
    fused_model, plain_model = _with_grads(1), _with_grads(1)
    fused = make_optimizer(fused_model, lr=1e-2, weight_decay=0.1)
    assert all(g["fused"] for g in fused.param_groups), "the CPU has a fused AdamW in this torch"
    # The same groups and settings, the textbook per-tensor loop.
    plain = make_optimizer(plain_model, lr=1e-2, weight_decay=0.1)
    for g in plain.param_groups:
        g["fused"], g["foreach"] = False, False
    for step in range(5):
        for a, b in zip(fused_model.parameters(), plain_model.parameters()):
            b.grad = a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(step)) * 1e-2
        fused.step(), plain.step()
    moved = 0
    for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(a, MiniMindForCausalLM(preset("nano")).init_weights(0).state_dict()[name])
    assert moved > 0  # the updates did something


def test_parameters_the_fused_kernel_cannot_take_go_the_foreach_way():
    assert can_fuse([torch.zeros(2, requires_grad=True)])
    assert not can_fuse([torch.zeros(2, dtype=torch.long)])


def _pretrain_losses(tmp_path, tok_dir, out, **settings) -> list[float]:
    """A nano pretraining run on 80 synthetic documents (fp32, losses logged every step); its
    logged losses. `settings` override the defaults below."""
    data = write_jsonl(tmp_path / "pre.jsonl", pretrain_records(80))
    defaults = dict(max_steps=3, batch_size=2, seq_len=64, log_every=1, save_every=3, eval_every=3, dtype="fp32")
    cfg = TrainConfig(
        stage="pretrain",
        data=[str(data)],
        out=str(out),
        preset="nano",
        tokenizer=str(tok_dir),
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        **{**defaults, **settings},
    )
    train(cfg)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.skipif(
    os.environ.get("MINIMIND_TEST_COMPILE") != "1",
    reason="torch.compile builds C++ kernels (about a minute here): set MINIMIND_TEST_COMPILE=1",
)
@pytest.mark.parametrize("seq_len", [64, 256])  # 256: attention runs blocked (65-512 tokens on the CPU)
def test_compiled_training_gives_the_eager_losses_and_plain_checkpoints(tok_dir, tmp_path, seq_len):
    def run(out, **kw):
        losses = _pretrain_losses(tmp_path, tok_dir, out, seq_len=seq_len, **kw)
        return losses, load_file(str(Path(out) / "model.safetensors"))

    eager_losses, eager_weights = run(tmp_path / "eager")
    compiled_losses, compiled_weights = run(tmp_path / "compiled", compile=True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert sorted(compiled_weights) == sorted(eager_weights)  # no `_orig_mod.` prefixes
    for k, v in compiled_weights.items():
        torch.testing.assert_close(v, eager_weights[k], rtol=1e-3, atol=1e-4, msg=k)


def test_a_bf16_step_casts_each_weight_once_whatever_its_micro_batches(tok_dir, tmp_path):
    """One autocast region spans a step's micro-batches (train/trainer.py), so autocast's cache
    casts a weight to bf16 once a step: 4 micro-batches cast the output matrix as often as 1 does
    (without the shared region: 4 times as often). Counted below autocast, at the dispatcher."""
    from torch.utils._python_dispatch import TorchDispatchMode

    data = write_jsonl(tmp_path / "pre.jsonl", pretrain_records(80))
    vocab_by_hidden = tuple(MiniMindForCausalLM(preset("nano")).lm_head.weight.shape)

    class CountCasts(TorchDispatchMode):
        casts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") is torch.bfloat16:
                self.casts += tuple(args[0].shape) == vocab_by_hidden and args[0].dtype is torch.float32
            return func(*args, **kwargs)

    def casts(grad_accum):
        cfg = TrainConfig(
            stage="pretrain",
            data=[str(data)],
            out=str(tmp_path / f"accum{grad_accum}"),
            preset="nano",
            tokenizer=str(tok_dir),
            max_steps=1,
            batch_size=2,
            grad_accum=grad_accum,
            seq_len=64,
            eval_every=0,
            val_fraction=0.0,
            dtype="bf16",
            cache_dir=str(tmp_path / "cache"),
            progress=False,
        )
        with CountCasts() as mode:
            train(cfg)
        return mode.casts

    one, four = casts(1), casts(4)
    assert one >= 1 and four == one


def test_auto_compile_only_where_it_can_pay_off(monkeypatch):
    from minimind.train import autocompile
    from minimind.train.autocompile import AUTO_COMPILE_MIN_REST_S, AUTO_COMPILE_MIN_REST_S_FP32, auto_compile_plan

    monkeypatch.setattr(autocompile, "compile_blocker", lambda device: None)
    cpu, bf16, fp32 = torch.device("cpu"), torch.bfloat16, torch.float32
    long_run = AUTO_COMPILE_MIN_REST_S + 60
    now, line = auto_compile_plan(True, long_run, cpu, bf16, 1, True)
    minutes = long_run // 60
    assert now and f"turning torch.compile on (about {minutes} min to go, at least 20 min in bfloat16" in line
    assert auto_compile_plan(True, AUTO_COMPILE_MIN_REST_S - 1, cpu, bf16, 1, True) == (False, None)  # too short
    # an fp32 step gains less from compiling (its matrix products stay as they are): it needs longer
    assert AUTO_COMPILE_MIN_REST_S_FP32 > long_run
    assert auto_compile_plan(True, long_run, cpu, fp32, 1, True) == (False, None)
    assert auto_compile_plan(True, AUTO_COMPILE_MIN_REST_S_FP32, cpu, fp32, 1, True)[0]
    assert auto_compile_plan(False, long_run, cpu, bf16, 1, True) == (False, None)  # --no-auto-compile
    assert auto_compile_plan(True, long_run, cpu, bf16, 2, True) == (False, None)  # DDP/FSDP wrap the model once
    assert auto_compile_plan(True, long_run, cpu, bf16, 1, False) == (False, None)  # RL, images: shapes change
    monkeypatch.setattr(autocompile, "compile_blocker", lambda device: "no C++ compiler")
    assert auto_compile_plan(True, long_run, cpu, bf16, 1, True) == (
        False,
        f"compile: staying eager with about {minutes} min to go (no C++ compiler)",
    )


def test_compile_blocker_names_what_is_missing(monkeypatch):
    from minimind.train.autocompile import compile_blocker

    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in compile_blocker(torch.device("cpu"))
    assert "mps" in compile_blocker(torch.device("mps"))


def test_a_long_run_compiles_after_its_first_steps_and_resumes_compiled(tok_dir, tmp_path, monkeypatch, capsys):
    """The run starts eager, times its first steps, finds the rest long enough (the threshold is
    0 here) and compiles from the next step; its checkpoints say from which step, and a run
    resumed after that compiles from its first step, giving the uninterrupted run's losses.
    Compiled with dynamo's eager backend: the wiring, not inductor (see the test above)."""
    import shutil

    from minimind.train import autocompile, trainer

    compiled = []

    def compile_model(model, fall_back_to_eager):
        assert fall_back_to_eager  # the user did not ask for it: a failure must not stop the run
        compiled.append(model)
        for layer in model.model.layers:  # as the real one does, each layer in place
            layer.compile(backend="eager")
        return model

    monkeypatch.setattr(trainer, "compile_model", compile_model)
    monkeypatch.setattr(trainer, "ESTIMATE_AFTER_S", 0.0)
    monkeypatch.setattr(autocompile, "AUTO_COMPILE_MIN_REST_S", 0)
    monkeypatch.setattr(autocompile, "AUTO_COMPILE_MIN_REST_S_FP32", 0)
    monkeypatch.setattr(autocompile, "compile_blocker", lambda device: None)

    def run(out, **kw):
        return _pretrain_losses(tmp_path, tok_dir, out, max_steps=8, save_every=2, keep_last=10, eval_every=0, **kw)

    out = tmp_path / "auto"
    losses = run(out)
    assert len(compiled) == 1 and "compile: turning torch.compile on" in capsys.readouterr().out
    states = {p.name: json.loads((p / "train_state/state.json").read_text()) for p in (out / "checkpoints").iterdir()}
    assert states["step-00000002"]["compiled_at"] is None
    assert states["step-00000006"]["compiled_at"] == 4  # timed from step 1 to 4, compiled from step 5

    shutil.rmtree(out / "checkpoints" / "step-00000008")  # the run "died" before its last save
    assert run(out, resume=True) == losses
    assert len(compiled) == 2  # the resumed run compiled at once, as the stopped one had

    assert run(tmp_path / "eager", auto_compile=False) == pytest.approx(losses, rel=1e-5)
    assert len(compiled) == 2
