"""`minimind grpo`: the losses against a plain per-token reference, the ratio moving on the
second update, exact resume (after a crash between two batches of rollouts, and after Ctrl-C
inside one), the --init model left untouched, and the command line."""

import json
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from helpers import rl_records, scrambled_model, write_jsonl
from minimind.checkpoint import save_model_dir
from minimind.rl.grpo import kl_k3, policy_loss, token_logprobs
from minimind.train.config import TrainConfig
from minimind.train.state import list_checkpoints
from minimind.train.trainer import TrainingStopped, train

pytestmark = pytest.mark.usefixtures("one_thread")

# A reward that varies between a group's replies of an untrained model (so advantages are not
# all zero): the share of the letter "a" in the reply. It can crash or press Ctrl-C on demand.
REWARD = """
import os, signal
calls = 0

def share_of_a(text, record):
    global calls
    calls += 1
    if os.environ.get("GRPO_TEST_CRASH_AT") == str(calls):
        raise RuntimeError("crash for the test")
    if os.environ.get("GRPO_TEST_STOP_AT") == str(calls):
        os.kill(os.getpid(), signal.SIGINT)
    return text.count("a") / max(len(text), 1)
"""


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory, tok_dir):
    from minimind.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("grpo")
    save_model_dir(scrambled_model(), root / "base", Tokenizer.from_dir(tok_dir))
    write_jsonl(root / "rl.jsonl", rl_records(16))
    (root / "reward_a.py").write_text(REWARD)
    return root


def config(root, out, **kw):
    settings = dict(
        data=[str(root / "rl.jsonl")],
        init=str(root / "base"),
        out=str(out),
        max_gen_len=12,
        num_generations=4,
        batch_size=2,
        max_steps=4,
        save_every=2,
        log_every=1,
        dtype="fp32",
        progress=False,
        lr=3e-3,
        seq_len=128,
        reward="",
        reward_fn=[f"{root / 'reward_a.py'}:share_of_a"],
    )
    return TrainConfig.for_stage("grpo", **{**settings, **kw})


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return [(m["step"], m["loss"], m["reward"]) for m in metrics(out) if "loss" in m]


def weights(out):
    return load_file(str(out / "model.safetensors"))


def assert_same_run(out, ref):
    """Every step's loss and reward, and the final weights bit for bit, as the reference run's."""
    assert losses(out) == losses(ref)
    expected = weights(ref)
    assert all(torch.equal(v, expected[k]) for k, v in weights(out).items())


# ----------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("loss", ["grpo", "dr_grpo", "cispo"])
def test_policy_losses_equal_a_per_token_reference(loss):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g) * 3
    old = logp + (torch.rand(3, 5, generator=g) - 0.5)  # ratios around 1, some clipped
    adv = torch.tensor([1.5, -0.7, 0.0])
    eps, eps_high = 0.2, 1.3
    got, _ = policy_loss(logp, old, adv, loss, eps, eps_high)
    for i in range(3):
        for t in range(5):
            r = math.exp(logp[i, t] - old[i, t])
            a = float(adv[i])
            if loss == "cispo":
                want = -min(r, eps_high) * a * float(logp[i, t])
            else:
                want = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            assert float(got[i, t]) == pytest.approx(want, rel=1e-5, abs=1e-6)
    d = float(old[0, 0] - logp[0, 0])  # k3 with old as the "reference"
    assert float(kl_k3(logp, old)[0, 0]) == pytest.approx(math.exp(d) - d - 1, abs=1e-6)  # float32 cancels


def test_cispo_gradient_flows_through_log_pi_only():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0]])
    loss, _ = policy_loss(logp, old, torch.tensor([2.0]), "cispo", 0.2, 5.0)
    loss.sum().backward()
    ratio = torch.exp(logp.detach() - old).clamp(max=5.0)
    assert torch.allclose(logp.grad, -ratio * 2.0)  # the weight is a constant: stopgrad


# ----------------------------------------------------------------------------- training


def test_grpo_trains_and_the_ratio_moves_on_the_second_update(setup_dir, tmp_path):
    out = tmp_path / "run"
    train(config(setup_dir, out, max_steps=1, iterations=2, save_every=2, kl_beta=0.1))
    lines = losses(out)
    assert len(lines) == 1 and lines[0][1] != 0.0 and 0.0 < lines[0][2] < 1.0
    # The rollouts of the first batch, and the model after its first update: the second update
    # sees pi / pi_old != 1.
    saved = torch.load(out / "rollouts-rank0.pt", weights_only=True)
    from minimind.checkpoint import load_model

    model = load_model(out)
    batch = saved["batches"][0]
    with torch.no_grad():
        logp = token_logprobs(model, batch)
    mask = batch["reply_mask"][:, 1:]
    ratio = torch.exp(logp - batch["old_logp"])[mask]
    assert (ratio - 1).abs().max() > 1e-4
    # before any update the old log-probs are the policy's own (ratio 1 on the first update)
    with torch.no_grad():
        start = token_logprobs(load_model(setup_dir / "base"), batch)
    torch.testing.assert_close(start[mask], batch["old_logp"][mask], atol=1e-5, rtol=1e-5)


def test_the_init_model_is_never_modified(setup_dir, tmp_path):
    before = weights(setup_dir / "base")
    train(config(setup_dir, tmp_path / "run", max_steps=2, kl_beta=0.0))
    after = weights(setup_dir / "base")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not all(torch.equal(before[k], v) for k, v in weights(tmp_path / "run").items())
    # without a reference (--kl-beta 0) there is no KL to log
    assert not any("kl" in m for m in metrics(tmp_path / "run"))


def test_resume_after_a_crash_between_rollouts_is_exact(setup_dir, tmp_path, monkeypatch):
    """A crash while the second batch of rollouts is scored (after the checkpoint at step 2):
    --resume samples those rollouts again from the restored weights and seeds, exactly."""
    train(config(setup_dir, tmp_path / "ref"))
    out = tmp_path / "crashed"
    # the reward's 9th call scores the first reply of the second batch (2 prompts x 4 replies each)
    monkeypatch.setenv("GRPO_TEST_CRASH_AT", "9")
    with pytest.raises(Exception, match="crash for the test"):
        train(config(setup_dir, out))
    monkeypatch.delenv("GRPO_TEST_CRASH_AT")
    assert [c.name for c in list_checkpoints(out)] == ["step-00000002"]  # it crashed after step 2
    train(config(setup_dir, out, resume=True))
    assert_same_run(out, tmp_path / "ref")


def test_resume_after_ctrl_c_inside_a_batch_of_rollouts_is_exact(setup_dir, tmp_path, monkeypatch):
    """Ctrl-C during the second batch's rollouts: the run finishes step 3 (the first update on
    them), checkpoints inside the batch, and --resume reads the kept rollouts back."""
    train(config(setup_dir, tmp_path / "ref"))
    out = tmp_path / "stopped"
    monkeypatch.setenv("GRPO_TEST_STOP_AT", "9")
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingStopped) as stopped:
        train(config(setup_dir, out))
    assert stopped.value.step == 3 and signal.getsignal(signal.SIGINT) is before
    monkeypatch.delenv("GRPO_TEST_STOP_AT")
    train(config(setup_dir, out, resume=True))
    assert_same_run(out, tmp_path / "ref")


def test_bad_settings_fail_before_training(setup_dir, tmp_path):
    from minimind.errors import MiniMindError

    with pytest.raises(MiniMindError, match="multiple of --iterations"):
        config(setup_dir, tmp_path / "x", save_every=3, iterations=2)
    with pytest.raises(MiniMindError, match="--loss"):
        config(setup_dir, tmp_path / "x", loss="ppo")
    with pytest.raises(MiniMindError, match="num-generations"):
        config(setup_dir, tmp_path / "x", num_generations=1)
    with pytest.raises(MiniMindError, match="needs a reward"):
        train(config(setup_dir, tmp_path / "x", reward_fn=[]))
    with pytest.raises(MiniMindError, match="no_such_reward"):
        train(config(setup_dir, tmp_path / "x", reward="no_such_reward=1", reward_fn=[]))


def test_the_command_line(setup_dir, tmp_path, capsys):
    from minimind.cli import main

    out = tmp_path / "cli"
    args = [
        "grpo",
        "--init",
        str(setup_dir / "base"),
        "--data",
        str(setup_dir / "rl.jsonl"),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--save-every",
        "2",
        "--max-gen-len",
        "8",
        "--batch-size",
        "2",
        "--num-generations",
        "2",
        "--reward",
        "exact_answer=1,repetition=0.5",
        "--loss",
        "grpo",
        "--dtype",
        "fp32",
        "--no-progress",
    ]
    main(args)
    assert f"done: {out}" in capsys.readouterr().out
    logged = [m for m in metrics(out) if "loss" in m]
    assert {"reward", "reward_exact_answer", "reward_repetition", "kl", "clipped", "reply_len"} <= set(logged[-1])
    assert os.path.isfile(out / "model.safetensors")


def test_two_gloo_processes_give_the_update_of_one(setup_dir, tmp_path):
    """torchrun with 2 CPU processes and 2 prompts each = 1 process with 4 prompts: every reply
    is seeded by its place in the epoch, not by its process, and the loss is divided by the
    count over the whole global batch."""
    import subprocess
    import sys

    def cmd(out, batch):
        return [
            "grpo",
            "--init",
            str(setup_dir / "base"),
            "--data",
            str(setup_dir / "rl.jsonl"),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--save-every",
            "2",
            "--max-gen-len",
            "8",
            "--batch-size",
            str(batch),
            "--num-generations",
            "4",
            "--reward-fn",
            f"{setup_dir / 'reward_a.py'}:share_of_a",
            "--reward",
            "",
            "--lr",
            "3e-3",
            "--dtype",
            "fp32",
            "--no-progress",
            "--log-every",
            "1",
        ]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "minimind.cli", *cmd(tmp_path / "one", 4)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "minimind.cli",
            *cmd(tmp_path / "two", 2),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    a, b = [m for m in a if "loss" in m], [m for m in b if "loss" in m]
    assert [m["reward"] for m in a] == pytest.approx([m["reward"] for m in b], abs=1e-6)  # the same replies
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], abs=1e-5)
    for k, v in weights(tmp_path / "two").items():
        torch.testing.assert_close(v, weights(tmp_path / "one")[k], atol=1e-5, rtol=1e-4)
