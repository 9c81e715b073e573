"""`minimind ppo`: GAE against a plain loop, the objective's loss against a per-token reference,
the ratio moving on the second update with the critic trained and checkpointed, the
approximate-KL early stop (alone, and keeping two Gloo processes in step with one), exact
resume after SIGKILL and after Ctrl-C, the --init model untouched, and the command line."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers import rl_records, scrambled_model, write_jsonl
from minimind.checkpoint import load_model, save_model_dir
from minimind.errors import MiniMindError
from minimind.rl.grpo import token_logprobs
from minimind.rl.ppo import PPOObjective, gae, token_rewards, value_loss
from minimind.tokenizer import Tokenizer
from minimind.train.config import TrainConfig
from minimind.train.distributed import DistInfo
from minimind.train.objectives import SetupContext
from minimind.train.state import list_checkpoints
from minimind.train.trainer import TrainingStopped, train

pytestmark = pytest.mark.usefixtures("one_thread")

# A reward that differs between the replies of an untrained model: the share of the letter "a".
# It can kill its own process (SIGKILL: no handler, no checkpoint) or press Ctrl-C on demand.
REWARD = """
import os, signal
calls = 0

def share_of_a(text, record):
    global calls
    calls += 1
    if os.environ.get("PPO_TEST_KILL_AT") == str(calls):
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("PPO_TEST_STOP_AT") == str(calls):
        os.kill(os.getpid(), signal.SIGINT)
    return text.count("a") / max(len(text), 1)
"""

SETTINGS = dict(
    max_gen_len=12,
    batch_size=4,
    max_steps=4,
    save_every=2,
    iterations=2,
    log_every=1,
    dtype="fp32",
    progress=False,
    lr=1e-3,
    critic_lr=1e-3,
    seq_len=128,
    kl_beta=0.1,
    target_kl=0.0,
    reward="",
)


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("ppo")
    save_model_dir(scrambled_model(), root / "base", Tokenizer.from_dir(tok_dir))
    write_jsonl(root / "rl.jsonl", rl_records(16))
    (root / "reward_a.py").write_text(REWARD)
    return root


def config(root, out, **kw):
    settings = dict(
        data=[str(root / "rl.jsonl")],
        init=str(root / "base"),
        out=str(out),
        reward_fn=[f"{root / 'reward_a.py'}:share_of_a"],
        **SETTINGS,
    )
    return TrainConfig.for_stage("ppo", **{**settings, **kw})


def argv(root, out, **kw):
    """The same run as config(root, out, **kw), as `minimind ppo` flags."""
    flags = {
        "init": root / "base",
        "data": root / "rl.jsonl",
        "out": out,
        "reward-fn": f"{root / 'reward_a.py'}:share_of_a",
        **{k.replace("_", "-"): v for k, v in {**SETTINGS, **kw}.items() if k != "progress"},
    }
    return ["ppo", *[a for k, v in flags.items() for a in (f"--{k}", str(v))], "--no-progress"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return [(m["step"], m["loss"], m.get("reward")) for m in metrics(out) if "loss" in m]


def weights(out):
    return load_file(str(out / "model.safetensors"))


def critic(out):
    """The critic's weights in the run's newest checkpoint."""
    state = torch.load(list_checkpoints(out)[-1] / "train_state" / "objective.pt", weights_only=True)
    return state["critic"]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.fixture(scope="module")
def reference_run(setup_dir, tmp_path_factory):
    """An uninterrupted run: 2 batches of rollouts x 2 updates, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ppo-ref") / "run"
    train(config(setup_dir, out))
    return out


# ----------------------------------------------------------------------------- the pieces


def test_gae_equals_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    B, T, gamma, lam = 4, 9, 0.9, 0.8
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, (start, length) in enumerate([(2, 5), (0, 9), (4, 1), (3, 6)]):  # replies: contiguous, any length
        mask[i, start : start + length] = True
    got_adv, got_ret = gae(rewards * mask, values * mask, mask, gamma, lam)
    for i in range(B):
        steps = [t for t in range(T) if mask[i, t]]
        adv = 0.0
        for j in reversed(range(len(steps))):
            t = steps[j]
            next_value = float(values[i, steps[j + 1]]) if j + 1 < len(steps) else 0.0  # the end: 0
            adv = float(rewards[i, t]) + gamma * next_value - float(values[i, t]) + gamma * lam * adv
            assert float(got_adv[i, t]) == pytest.approx(adv, abs=1e-5)
            assert float(got_ret[i, t]) == pytest.approx(adv + float(values[i, t]), abs=1e-5)
    assert not got_adv[~mask].any() and not got_ret[~mask].any()
    # gamma = lam = 1: the advantage is the sum of the rewards to come minus the value (row 1
    # is all reply)
    adv, _ = gae(rewards * mask, values * mask, mask, 1.0, 1.0)
    torch.testing.assert_close(adv[1], rewards[1].flip(0).cumsum(0).flip(0) - values[1], atol=1e-5, rtol=0)


def test_token_rewards_pay_the_reply_on_its_last_token_and_the_kl_on_every_one():
    mask = torch.tensor([[False, True, True, True, False], [True, True, False, False, False]])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0], [-0.2, -0.4, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.0, -1.0, -1.0, -1.0, -1.0], [-0.1, -0.1, -1.0, -1.0, -1.0]])
    r = token_rewards(torch.tensor([2.0, -1.0]), old, ref, mask, beta=0.5)
    want = torch.tensor([[0.0, 0.5, -0.25, 0.25 + 2.0, 0.0], [0.05, 0.15 - 1.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(r, want)


def ready_objective(root, out):
    """A PPO objective set up as the trainer sets it up, on the nano base model."""
    cfg = config(root, out)
    out.mkdir(parents=True)
    model = load_model(root / "base").train()
    tok = Tokenizer.from_dir(root / "base")
    objective = PPOObjective()
    ds, _ = objective.build_data(cfg, tok)
    ctx = SetupContext(cfg, model, tok, torch.device("cpu"), torch.float32, DistInfo(), ds, None, out)
    objective.setup(ctx)
    return objective, model, ds, cfg


def test_the_loss_equals_a_per_token_reference(setup_dir, tmp_path):
    """loss_sum on a real batch of rollouts, after the policy and the critic have moved (so the
    ratio is clipped on some tokens and the values on others), against the PPO loss written
    token by token: -min(r A, clip(r) A) + vf_coef * 0.5 * max((V - R)^2, (V_clip - R)^2)."""
    objective, model, ds, cfg = ready_objective(setup_dir, tmp_path / "run")
    batch = next(objective.iterate_batches(ds, cfg.batch_size, cfg.seed, epoch=0))
    mask = batch["reply_mask"][:, 1:]
    a = batch["advantages"][mask]  # whitened over the batch of rollouts
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-5) and float(a.std(unbiased=False)) == pytest.approx(1.0, 1e-4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(model.parameters()) + list(objective.critic.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    loss, _, logged = objective.loss_sum(model, batch)
    with torch.no_grad():
        logp = token_logprobs(model, batch)
        values = objective.critic(batch["input_ids"], batch["attention_mask"])[:, :-1]
    want, clipped_ratio, clipped_value = 0.0, 0, 0
    eps, c = cfg.epsilon, cfg.value_clip
    for i, t in mask.nonzero().tolist():
        r = math.exp(float(logp[i, t] - batch["old_logp"][i, t]))
        adv = float(batch["advantages"][i, t])
        v, v_old, ret = float(values[i, t]), float(batch["values"][i, t]), float(batch["returns"][i, t])
        v_clip = v_old + min(max(v - v_old, -c), c)
        want += -min(r * adv, min(max(r, 1 - eps), 1 + eps) * adv)
        want += cfg.vf_coef * 0.5 * max((v - ret) ** 2, (v_clip - ret) ** 2)
        clipped_ratio += not 1 - eps <= r <= 1 + eps
        clipped_value += abs(v - v_old) > c
    assert clipped_ratio > 0 and clipped_value > 0  # both clips were exercised
    assert float(loss.detach()) == pytest.approx(want, rel=1e-4)
    assert objective.count(batch) == float(mask.sum())
    assert {"approx_kl", "clipped", "value_loss", "explained_var", "kl", "reward", "reply_len"} <= set(logged)
    torch.testing.assert_close(value_loss(values, values, values, 0.2), torch.zeros_like(values))


# ----------------------------------------------------------------------------- training


def test_the_ratio_moves_on_the_second_update_and_the_critic_learns(setup_dir, tmp_path):
    out = tmp_path / "run"
    train(config(setup_dir, out, max_steps=1))
    saved = torch.load(out / "rollouts-rank0.pt", weights_only=True)
    batch = saved["batches"][0]
    with torch.no_grad():
        after = token_logprobs(load_model(out), batch)
        before = token_logprobs(load_model(setup_dir / "base"), batch)
    mask = batch["reply_mask"][:, 1:]
    assert (torch.exp(after - batch["old_logp"])[mask] - 1).abs().max() > 1e-4  # the second update's ratio
    torch.testing.assert_close(before[mask], batch["old_logp"][mask], atol=1e-5, rtol=1e-5)  # the first's: 1
    head = critic(out)["value_head.weight"]
    assert head.abs().sum() > 0  # the head starts at zero: one step trained it
    logged = [m for m in metrics(out) if "loss" in m][0]
    assert logged["value"] == 0.0 and logged["approx_kl"] == 0.0  # the first values and KL


def test_the_kl_early_stop_skips_the_rest_of_the_batch(setup_dir, tmp_path, capsys):
    """With a tiny --target-kl, the second update's KL (measured after the first update) stops
    the batch: the policy and the critic end as after one step."""
    train(config(setup_dir, tmp_path / "one", max_steps=1, target_kl=1e-6))
    train(config(setup_dir, tmp_path / "stopped", max_steps=2, target_kl=1e-6))
    assert "> --target-kl 1e-06: the rest of this batch" in capsys.readouterr().out
    assert same_tensors(weights(tmp_path / "stopped"), weights(tmp_path / "one"))
    assert same_tensors(critic(tmp_path / "stopped"), critic(tmp_path / "one"))
    step2 = [m for m in metrics(tmp_path / "stopped") if m.get("step") == 2][0]
    assert step2["approx_kl"] > 1e-6 and step2["grad_norm"] == 0.0


def test_the_init_model_is_never_modified(setup_dir, reference_run):
    base = weights(setup_dir / "base")
    assert same_tensors(base, {k: v.contiguous() for k, v in scrambled_model().state_dict().items() if k in base})
    assert not same_tensors(base, weights(reference_run))


def test_resume_after_sigkill_is_exact(setup_dir, tmp_path, reference_run):
    """A process killed (SIGKILL: nothing runs after it) while the second batch is rolled out,
    after the checkpoint at step 2: --resume restores the policy, the critic and both
    optimizers, samples the batch again, and ends where the uninterrupted run ends."""
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PPO_TEST_KILL_AT": "6"}  # 4 replies a batch: the 2nd batch
    killed = subprocess.run(
        [sys.executable, "-m", "minimind.cli", *argv(setup_dir, out)], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [c.name for c in list_checkpoints(out)] == ["step-00000002"]
    train(config(setup_dir, out, resume=True))
    assert losses(out) == losses(reference_run)
    assert same_tensors(weights(out), weights(reference_run))
    assert same_tensors(critic(out), critic(reference_run))


def test_resume_after_ctrl_c_inside_a_batch_is_exact(setup_dir, tmp_path, reference_run, monkeypatch):
    """Ctrl-C while the second batch is rolled out: step 3 is made and checkpointed inside the
    batch (its rollouts, with the critic's values, kept); --resume continues it exactly."""
    out = tmp_path / "stopped"
    monkeypatch.setenv("PPO_TEST_STOP_AT", "5")
    with pytest.raises(TrainingStopped) as stopped:
        train(config(setup_dir, out))
    assert stopped.value.step == 3
    monkeypatch.delenv("PPO_TEST_STOP_AT")
    train(config(setup_dir, out, resume=True))
    assert losses(out) == losses(reference_run)
    assert same_tensors(weights(out), weights(reference_run))
    assert same_tensors(critic(out), critic(reference_run))


def test_two_gloo_processes_with_the_kl_stop_give_the_run_of_one(setup_dir, tmp_path, capsys):
    """torchrun with 2 CPU processes of 2 prompts = 1 process of 4, with the early stop in play:
    each batch's second update is measured and held back, its third skipped without a forward,
    on both processes alike (else DDP's all-reduce would wait forever: the timeout catches it)."""
    settings = dict(max_steps=6, iterations=3, save_every=3, target_kl=1e-6)
    train(config(setup_dir, tmp_path / "one", **settings))
    assert capsys.readouterr().out.count("the rest of this batch") == 2
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "minimind.cli", *argv(setup_dir, tmp_path / "two", batch_size=2, **settings)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("the rest of this batch") == 2  # (rank 0 says it)
    a, b = [m for m in metrics(tmp_path / "one") if "loss" in m], [m for m in metrics(tmp_path / "two") if "loss" in m]
    assert [m["grad_norm"] == 0.0 for m in a] == [False, True, True, False, True, True]
    assert [m["loss"] for m in a] == pytest.approx([m["loss"] for m in b], abs=1e-5)
    for key in ("reward", "value_loss", "approx_kl"):  # (logged by the steps that ran a forward)
        assert [key in m for m in a] == [key in m for m in b] == [True, True, False] * 2
        assert [m[key] for m in a if key in m] == pytest.approx([m[key] for m in b if key in m], abs=1e-5)
    for k, v in weights(tmp_path / "two").items():
        torch.testing.assert_close(v, weights(tmp_path / "one")[k], atol=1e-5, rtol=1e-4)
    for k, v in critic(tmp_path / "two").items():
        torch.testing.assert_close(v, critic(tmp_path / "one")[k], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the command


def test_the_command_line(setup_dir, tmp_path, capsys):
    from minimind.cli import main

    out = tmp_path / "cli"
    args = argv(setup_dir, out, max_steps=2, max_gen_len=8, gamma=0.99, lam=0.9, value_clip=0.1, vf_coef=0.2)
    args[args.index("--reward") + 1] = "exact_answer=1,repetition=0.5"
    main(args)
    assert f"done: {out}" in capsys.readouterr().out
    logged = [m for m in metrics(out) if "loss" in m][-1]
    assert {"reward_exact_answer", "reward_repetition", "value_loss", "approx_kl", "explained_var"} <= set(logged)
    assert (out / "model.safetensors").is_file() and not (out / "objective.pt").exists()  # OUT: the policy


def test_bad_settings_fail_before_training(setup_dir, tmp_path):
    with pytest.raises(MiniMindError, match="--loss is a setting of minimind grpo/agent, not of minimind ppo"):
        config(setup_dir, tmp_path / "x", loss="grpo")
    with pytest.raises(MiniMindError, match="drop --fsdp"):
        config(setup_dir, tmp_path / "x", fsdp=True)
    with pytest.raises(MiniMindError, match="--gamma must be between 0 and 1"):
        config(setup_dir, tmp_path / "x", gamma=1.5)
    with pytest.raises(MiniMindError, match="minimind ppo needs a reward"):
        train(config(setup_dir, tmp_path / "x", reward_fn=[]))
    assert TrainConfig.for_stage("ppo", data=["d"], init="m").num_generations == 1
    with pytest.raises(MiniMindError, match="--num-generations must be at least 2 for minimind grpo"):
        TrainConfig.for_stage("grpo", data=["d"], init="m", num_generations=1)
