"""`minimind agent` (rl/agent.py): GRPO / CISPO over multi-turn tool-using trajectories.

A nano model is taught in a second or two to call a user's tool `ping` (given with --tools) and
answer with what it returned; at temperature 1 it then writes a mix of valid calls, malformed
ones and answers, so the rewards vary inside a group. Checked: tool observations get zero weight
(no gradient reaches the logits that predict them; their old and reference log-probs do not
change the loss), the loss equals a per-token reference, a run end to end with every reward
component logged and the --init model untouched, exact resume after SIGKILL, and two Gloo
processes against one."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from helpers import scrambled_model, write_jsonl
from minimind.errors import MiniMindError

pytestmark = pytest.mark.usefixtures("one_thread")

TOOLS_PY = '''
def ping():
    """Asks the server; it answers pong."""
    return {"result": "pong"}
'''
# A reward that varies with the text, and can kill its process on its Nth call.
REWARD_PY = """
import os, signal
calls = 0

def share_of_p(text, record):
    global calls
    calls += 1
    if os.environ.get("AGENT_TEST_KILL_AT") == str(calls):
        os.kill(os.getpid(), signal.SIGKILL)
    return text.count("p") / max(len(text), 1)
"""
PING = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Asks the server; it answers pong.",
        "parameters": {"type": "object", "properties": {}, "required": []},
    },
}
QUESTIONS = [
    "Ping the server.",
    "Is the server up?",
    "Check the server.",
    "Say what the server says.",
    "Ask the server.",
    "Server status?",
    "Call ping.",
    "What does ping say?",
]


def prompt(question):
    return [{"role": "system", "content": "", "tools": json.dumps([PING])}, {"role": "user", "content": question}]


def teach(tok, steps=15):
    """A scrambled nano model after a few Adam steps on two solved conversations (call ping,
    read pong, answer pong): it has half learnt the format."""
    torch.manual_seed(0)
    model = scrambled_model().train()
    call = {"role": "assistant", "content": "", "tool_calls": json.dumps([{"name": "ping", "arguments": {}}])}
    rows = []
    for q in QUESTIONS[:2]:
        full = prompt(q) + [
            call,
            {"role": "tool", "content": '{"result": "pong"}'},
            {"role": "assistant", "content": "pong"},
        ]
        ids = tok.encode_chat(full, tools=[PING])
        labels = [-100] * len(ids)
        for i, m in enumerate(full):
            if m["role"] == "assistant":
                start = len(tok.encode_chat(full[:i], tools=[PING], add_generation_prompt=True))
                end = len(tok.encode_chat(full[: i + 1], tools=[PING])) - 1
                labels[start:end] = ids[start:end]
        rows.append((torch.tensor([ids]), torch.tensor(labels[1:])))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = sum(F.cross_entropy(model(x).logits[0, :-1], y, ignore_index=-100) for x, y in rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory, tok):
    from minimind.checkpoint import save_model_dir

    root = tmp_path_factory.mktemp("agent")
    save_model_dir(teach(tok), root / "base", tok)
    write_jsonl(
        root / "agent.jsonl",
        [{"conversations": prompt(q) + [{"role": "assistant", "content": ""}], "gt": ["pong"]} for q in QUESTIONS],
    )
    (root / "my_tools.py").write_text(TOOLS_PY)
    (root / "reward_p.py").write_text(REWARD_PY)
    return root


def config(root, out, **kw):
    from minimind.train.config import TrainConfig

    settings = dict(
        data=[str(root / "agent.jsonl")],
        init=str(root / "base"),
        out=str(out),
        tools=[f"{root / 'my_tools.py'}:ping"],
        max_gen_len=24,
        num_generations=2,
        batch_size=4,
        max_steps=2,
        save_every=2,
        log_every=1,
        dtype="fp32",
        progress=False,
        lr=3e-3,
        seq_len=320,
    )
    return TrainConfig.for_stage("agent", **{**settings, **kw})


def weights(out):
    return load_file(str(out / "model.safetensors"))


def logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


# ------------------------------------------------------------------ the loss, on real rollouts


@pytest.fixture(scope="module")
def rollouts(setup_dir, tok, tmp_path_factory):
    """One batch of rollouts made by the objective itself, as the trainer would make it."""
    from minimind.checkpoint import load_model
    from minimind.rl.agent import AgentObjective
    from minimind.train.distributed import DistInfo
    from minimind.train.objectives import SetupContext

    cfg = config(setup_dir, tmp_path_factory.mktemp("unit"), loss="cispo", kl_beta=0.1)
    objective = AgentObjective()
    ds, _ = objective.build_data(cfg, tok)
    model = load_model(setup_dir / "base")
    ctx = SetupContext(cfg, model, tok, torch.device("cpu"), torch.float32, DistInfo(), ds, None, cfg_out(cfg))
    objective.setup(ctx)
    batch = objective._rollout_batch(ds, [0, 1, 2, 3], 0, [0, 1, 2, 3])
    # old and reference log-probs as after some updates: the ratio and the KL are not trivial
    g = torch.Generator().manual_seed(0)
    batch["old_logp"] = batch["old_logp"] + 0.3 * torch.randn(batch["old_logp"].shape, generator=g)
    batch["ref_logp"] = batch["ref_logp"] + 0.3 * torch.randn(batch["ref_logp"].shape, generator=g)
    return objective, model, batch


def cfg_out(cfg):
    from pathlib import Path

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return Path(cfg.out)


def observations(batch):
    """[B, L] True on the tokens of a tool observation: mask 0 between two generated spans."""
    reply = batch["reply_mask"]
    seen = reply.long().cumsum(1) > 0
    after = reply.flip(1).long().cumsum(1).flip(1) > 0
    return seen & after & ~reply


def test_the_rollouts_hold_tool_calls_with_observations(rollouts):
    _, _, batch = rollouts
    obs = observations(batch)
    assert obs.any(dim=1).sum() >= 2  # several trajectories called the tool and read its answer
    calls = batch["calls"]
    assert calls["valid_calls"].sum() >= 2 and calls["invalid_calls"].sum() >= 1
    assert {"answer_in_text", "tool_calls"} <= set(batch["reward_parts"])
    # the rewards saw what happened: a valid call and "pong" after it scores more than a malformed call
    parts = batch["reward_parts"]
    good = (calls["valid_calls"] > 0) & (calls["invalid_calls"] == 0)
    assert (parts["tool_calls"][good] == 1).all() and (parts["tool_calls"][calls["valid_calls"] == 0] <= 0).all()
    assert batch["advantages"].abs().sum() > 0


class FixedLogits(torch.nn.Module):
    """A 'model' whose logits are a leaf tensor: the gradient the loss sends to each position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, ids, attention_mask=None):
        return SimpleNamespace(logits=self.logits)


def test_tool_observations_get_zero_weight(rollouts):
    objective, model, batch = rollouts
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    fixed = FixedLogits(logits)
    loss, _, _ = objective.loss_sum(fixed, batch)
    loss.backward()
    grad = fixed.logits.grad.abs().sum(-1)[:, :-1]  # position t predicts token t + 1
    predicts_obs = observations(batch)[:, 1:]
    predicts_reply = batch["reply_mask"][:, 1:]
    assert predicts_obs.sum() > 20
    assert (grad[predicts_obs] == 0).all() and (grad[~predicts_reply] == 0).all()
    assert (grad[predicts_reply] > 0).float().mean() > 0.5
    # the old and reference log-probs of observation tokens do not enter the loss either
    shaken = dict(batch, old_logp=batch["old_logp"].clone(), ref_logp=batch["ref_logp"].clone())
    shaken["old_logp"][predicts_obs] += 5.0
    shaken["ref_logp"][predicts_obs] -= 5.0
    with torch.no_grad():
        assert objective.loss_sum(model, shaken)[0] == objective.loss_sum(model, batch)[0]


@pytest.mark.parametrize("loss", ["cispo", "grpo", "dr_grpo"])
def test_the_agent_loss_equals_a_per_token_reference(rollouts, loss):
    objective, model, batch = rollouts
    cfg = objective.cfg
    objective.cfg = dataclasses.replace(cfg, loss=loss)
    try:
        with torch.no_grad():
            got = objective.loss_sum(model, batch)[0] / objective.count(batch)
    finally:
        objective.cfg = cfg
    eps, eps_high, beta = cfg.epsilon, cfg.epsilon_high, cfg.kl_beta
    total, tokens = 0.0, 0
    for i in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][i].sum())
        ids = batch["input_ids"][i, :n]
        with torch.no_grad():  # each trajectory alone, unpadded
            logp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)
        a = float(batch["advantages"][i])
        for t in range(1, n):
            if not batch["reply_mask"][i, t]:
                continue  # the prompt and tool observations: no loss
            lp = float(logp[t - 1, ids[t]])
            r = math.exp(lp - float(batch["old_logp"][i, t - 1]))
            if loss == "cispo":
                policy = -min(r, eps_high) * a * lp
            else:
                policy = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            d = float(batch["ref_logp"][i, t - 1]) - lp
            total += policy + beta * (math.exp(d) - d - 1)
            tokens += 1
    if loss == "dr_grpo":  # a constant normaliser: trajectories x turns x reply length
        tokens = batch["input_ids"].shape[0] * cfg.max_turns * cfg.max_gen_len
    assert float(got) == pytest.approx(total / tokens, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------------------ training


def test_agent_trains_end_to_end(setup_dir, tmp_path):
    from minimind.train.trainer import train

    before = weights(setup_dir / "base")
    out = tmp_path / "run"
    train(config(setup_dir, out, reward="answer_in_text=1,tool_calls=0.5,repetition=0.5"))
    lines = logged(out)
    assert len(lines) == 2
    keys = {"reward_answer_in_text", "reward_tool_calls", "reward_repetition", "valid_calls", "invalid_calls", "turns"}
    assert keys <= set(lines[-1])
    assert lines[0]["valid_calls"] > 0 and lines[0]["turns"] > 1 and lines[0]["loss"] != 0.0
    after = weights(setup_dir / "base")
    assert all(torch.equal(before[k], after[k]) for k in before)  # --init is never modified
    assert not all(torch.equal(before[k], v) for k, v in weights(out).items())


def cli(root, out, batch, *extra):
    return [
        "agent",
        "--init",
        str(root / "base"),
        "--data",
        str(root / "agent.jsonl"),
        "--out",
        str(out),
        "--tools",
        f"{root / 'my_tools.py'}:ping",
        "--reward",
        "answer_in_text=1,tool_calls=0.5",
        "--reward-fn",
        f"{root / 'reward_p.py'}:share_of_p",
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--max-gen-len",
        "24",
        "--seq-len",
        "320",
        "--batch-size",
        str(batch),
        "--num-generations",
        "2",
        "--lr",
        "1e-3",
        "--dtype",
        "fp32",
        "--no-progress",
        "--log-every",
        "1",
        *extra,
    ]


def run(args, env=None, launcher=()):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "minimind.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_resume_after_sigkill_is_exact_and_two_processes_equal_one(setup_dir, tmp_path):
    one = run(cli(setup_dir, tmp_path / "one", 2))
    assert one.returncode == 0, one.stderr[-3000:]
    # Killed (SIGKILL, no chance to save anything) while the second batch of rollouts is being
    # scored: its 5th reward call is the first trajectory of that batch (2 prompts x 2).
    killed = run(cli(setup_dir, tmp_path / "killed", 2), env={"AGENT_TEST_KILL_AT": "5"})
    assert killed.returncode == -signal.SIGKILL
    resumed = run(cli(setup_dir, tmp_path / "killed", 2, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = logged(tmp_path / "one"), logged(tmp_path / "killed")
    assert [(m["step"], m["loss"], m["reward"]) for m in b] == [(m["step"], m["loss"], m["reward"]) for m in a]
    expected = weights(tmp_path / "one")
    assert all(torch.equal(v, expected[k]) for k, v in weights(tmp_path / "killed").items())
    # torchrun with 2 CPU processes of 1 prompt each = 1 process of 2
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    two = run(cli(setup_dir, tmp_path / "two", 1), launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    # the same trajectories (the last batch of rollouts: rank 0 holds its first prompt, rank 1 the second)
    kept = [
        torch.load(tmp_path / d / f"rollouts-rank{r}.pt", weights_only=True)["batches"][0]
        for d, r in (("one", 0), ("two", 0), ("two", 1))
    ]
    for key in ("rewards", "advantages"):
        assert torch.equal(kept[0][key], torch.cat([kept[1][key], kept[2][key]]))
    assert torch.equal(kept[0]["calls"]["valid_calls"], torch.cat([k["calls"]["valid_calls"] for k in kept[1:]]))
    # and the same update (the logged reward is a token-weighted mean over micro-batches, so it
    # is not compared: the ranks' micro-batches hold other token counts than the one batch)
    c = logged(tmp_path / "two")
    assert [m["loss"] for m in c] == pytest.approx([m["loss"] for m in a], rel=1e-5, abs=1e-5)
    for k, v in weights(tmp_path / "two").items():
        # (Adam divides by the root of tiny second moments: a rounding difference in the summed
        # gradient of a rarely-seen embedding row moves it by up to ~1e-4)
        torch.testing.assert_close(v, expected[k], atol=2e-4, rtol=1e-3)


# ------------------------------------------------------------------------ tools, data, rewards


def test_users_tools_and_their_schemas(tmp_path):
    from minimind.rl.agent import function_schema, load_tools

    def convert(value: float, unit: str, exact: bool = False):
        """Converts a value.

        More words."""
        return {"value": value}

    schema = function_schema(convert)
    assert schema == {
        "name": "convert",
        "description": "Converts a value.",
        "parameters": {
            "type": "object",
            "properties": {"value": {"type": "number"}, "unit": {"type": "string"}, "exact": {"type": "boolean"}},
            "required": ["value", "unit"],
        },
    }
    (tmp_path / "kit.py").write_text(
        "def echo(text: str):\n    return {'echo': text}\n\n"
        "def shout(text):\n    return text.upper()\n\n"
        "TOOLS = [echo, (shout, {'name': 'shout', 'parameters': {'type': 'object', "
        "'properties': {'text': {'type': 'string'}}, 'required': ['text']}})]\n"
        "def bad(x: set):\n    return 1\n"
    )
    box = load_tools([str(tmp_path / "kit.py")])
    assert {"calculate_math", "echo", "shout"} <= set(box.names)
    assert box.call("echo", {"text": "hi"}).observation == '{"echo": "hi"}'
    assert box.call("shout", {"text": "hi"}).observation == '{"result": "HI"}'
    with pytest.raises(MiniMindError, match="no function 'nope'"):
        load_tools([f"{tmp_path / 'kit.py'}:nope"])
    with pytest.raises(MiniMindError, match="annotated"):
        load_tools([f"{tmp_path / 'kit.py'}:bad"])
    with pytest.raises(MiniMindError, match="--tools no_such_module_here"):
        load_tools(["no_such_module_here"])
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(MiniMindError, match="no TOOLS list"):
        load_tools([str(tmp_path / "empty.py")])


def test_bad_prompts_are_refused_at_their_line(setup_dir, tmp_path, tok):
    from minimind.rl.agent import AgentObjective

    rows = [json.loads(line) for line in (setup_dir / "agent.jsonl").read_text().splitlines()[:2]]
    del rows[0]["conversations"][0]["tools"]  # line 1 offers no tool, line 2 offers ping
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = config(setup_dir, tmp_path / "x", data=[str(tmp_path / "a.jsonl")], tools=[])  # no --tools ping
    with pytest.raises(MiniMindError, match=r"a\.jsonl:2: offers the tool 'ping'.*--tools"):
        AgentObjective().build_data(cfg, tok)
    del rows[1]["gt"]  # answer_in_text (the default reward) needs the answer
    write_jsonl(tmp_path / "a.jsonl", rows)
    cfg = config(setup_dir, tmp_path / "x", data=[str(tmp_path / "a.jsonl")])
    with pytest.raises(MiniMindError, match=r"a\.jsonl:2: no 'gt'.*answer_in_text"):
        AgentObjective().build_data(cfg, tok)


def test_the_tool_calls_reward():
    from minimind.rl.rewards import combine, tool_calls

    def rec(valid, invalid):
        return {"trajectory": {"valid_calls": valid, "invalid_calls": invalid, "turns": 1, "finish_reason": "stop"}}

    assert tool_calls("", rec(0, 0)) == 0.0
    assert tool_calls("", rec(2, 0)) == 1.0
    assert tool_calls("", rec(0, 3)) == -1.0
    assert tool_calls("", rec(3, 1)) == 0.5
    with pytest.raises(MiniMindError, match="minimind agent"):
        tool_calls("text", {"gt": ["1"]})
    total, parts = combine("tool_calls=0.5,answer_in_text=1")("pong", {**rec(1, 0), "gt": ["pong"]})
    assert total == 1.5 and parts == {"tool_calls": 1.0, "answer_in_text": 1.0}
