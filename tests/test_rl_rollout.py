"""Agentic rollouts (rl/rollout.py) and `minimind eval --task toolcall`: the observation mask,
multi-turn tool use with a scripted model, batched = one at a time, max_turns, and the CLI."""

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import scrambled_model, write_jsonl
from minimind.cli import main
from minimind.infer import Engine, SamplingParams
from minimind.infer.engine import MIN_SHARED_PREFIX
from minimind.rl.rollout import agent_rollouts
from minimind.rl.tools import BUILTIN_SCHEMAS, ToolBox

pytestmark = pytest.mark.usefixtures("one_thread")

CALC = [s for s in BUILTIN_SCHEMAS if s["function"]["name"] == "calculate_math"]
SYSTEM = {"role": "system", "content": "You are a helpful assistant.", "tools": json.dumps(CALC, ensure_ascii=False)}


def call(expression: str) -> dict:
    """An assistant turn that calls the calculator, as the template renders it."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "type": "function",
                "function": {"name": "calculate_math", "arguments": json.dumps({"expression": expression})},
            }
        ],
    }


class Scripted(torch.nn.Module):
    """A model that writes a fixed conversation: at position p it predicts token p + 1 of
    `script` (a whole rendered conversation), past its end the eos. Its replies are then the
    template's own tokens, and the tool observations it is fed are the script's if the tools
    answered as expected. A nano model runs underneath so that the engine's cache works."""

    def __init__(self, script: list[int], eos: int, free_from: int | None = None):
        super().__init__()
        self.inner, self.script, self.eos = scrambled_model(), script, eos
        self.config = self.inner.config
        self.free_from = free_from  # from this position on, the nano model writes freely
        self.read = 0  # tokens read by every forward so far

    def new_cache(self, batch_size, capacity):
        return self.inner.new_cache(batch_size, capacity)

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        past = cache.length if cache is not None else 0
        self.read += ids.numel()
        free = self.inner(
            ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, logits_to_keep=1
        ).logits  # and fills the cache
        if position_ids is not None:
            pos = position_ids[:, -1].tolist()
        elif attention_mask is not None:
            pos = (attention_mask.sum(-1) - 1).tolist()
        else:
            pos = [past + ids.shape[1] - 1] * ids.shape[0]
        logits = torch.zeros(ids.shape[0], 1, self.config.vocab_size)
        for row, p in enumerate(pos):
            if self.free_from is not None and p + 1 >= self.free_from:
                logits[row] = free[row, -1:]
            else:
                logits[row, 0, self.script[p + 1] if p + 1 < len(self.script) else self.eos] = 10.0
        return SimpleNamespace(logits=logits)


def generated_spans(tok, messages, tools):
    """Expected mask from the rendered conversation: 1 from each generation prompt's end to the
    assistant turn's <|im_end|>, included."""
    mask = [0] * len(tok.encode_chat(messages, tools=tools))
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and i > 0:
            start = len(tok.encode_chat(messages[:i], tools=tools, add_generation_prompt=True))
            end = len(tok.encode_chat(messages[: i + 1], tools=tools)) - 1  # the "\n" after <|im_end|>
            mask[start:end] = [1] * (end - start)
    return mask


def test_scripted_tool_call_gets_observation_and_second_turn(tok):
    box = ToolBox(["calculate_math"])
    observation = box.call("calculate_math", {"expression": "17*3"}).observation
    prompt = [SYSTEM, {"role": "user", "content": "What is 17 times 3?"}]
    full = prompt + [
        call("17*3"),
        {"role": "tool", "content": observation},
        {"role": "assistant", "content": "It is 51."},
    ]
    script = tok.encode_chat(full, tools=CALC)
    model = Scripted(script, tok.eos_token_id)
    params = SamplingParams(max_new_tokens=64, temperature=0, logprobs=True)
    (t,) = agent_rollouts(model, tok, [prompt], box, params, max_turns=3)
    assert t.finish_reason == "stop" and t.turns == 2
    assert (t.valid_calls, t.invalid_calls) == (1, 0)
    assert t.answer == "It is 51."
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert json.loads(t.messages[3]["content"]) == json.loads(observation)
    # The segments concatenate to the whole conversation as the template renders it ...
    assert t.token_ids == script == tok.encode_chat(t.messages, tools=CALC)
    # ... and the mask marks exactly the model's tokens (each reply through its <|im_end|>).
    assert t.mask == generated_spans(tok, full, CALC)
    assert len(t.logprobs) == len(t.token_ids)
    assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.mask) if not m)


def test_a_turn_started_from_the_last_turns_kv_equals_reading_it_all_again(tok):
    """The first reply is a scripted tool call; after the observation the nano model writes on
    its own, so the second reply depends on the keys and values of everything before it."""
    box = ToolBox(["calculate_math"])
    prompt = [SYSTEM, {"role": "user", "content": "What is 17 times 3?"}]
    observation = box.call("calculate_math", {"expression": "17*3"}).observation
    before = prompt + [call("17*3"), {"role": "tool", "content": observation}]
    script = tok.encode_chat(before, tools=CALC, add_generation_prompt=True)
    model = Scripted(script, tok.eos_token_id, free_from=len(script))
    params = SamplingParams(max_new_tokens=40, temperature=0, logprobs=True)
    (a,) = agent_rollouts(model, tok, [prompt], box, params, max_turns=2)
    read, model.read = model.read, 0
    (b,) = agent_rollouts(model, tok, [prompt], box, params, max_turns=2, reuse_kv=False)
    # the second turn read only the reply's <|im_end|> and the observation, not the history again
    history = a.prompt_len + sum(a.mask[: len(script)]) - 1  # the prompt and the reply but its <|im_end|>
    assert model.read - read == history
    assert a.turns == 2 and a.valid_calls == 1 and sum(a.mask[len(script) :]) > 0  # a free second reply
    assert (a.token_ids, a.mask, a.messages) == (b.token_ids, b.mask, b.messages)
    assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_prompts_that_begin_alike_share_one_read_of_their_common_prefix(tok):
    model = scrambled_model(2)
    alike = conversations(4)  # one system prompt and tool list, different questions
    other = [{"role": "system", "content": "Answer in one word. " * 10}, {"role": "user", "content": "Why?"}]
    lonely = [{"role": "user", "content": "hi"}]
    convs = alike + [other, lonely, other]
    prompts = [tok.encode_chat(c, tools=CALC, add_generation_prompt=True) for c in alike]
    prompts += [tok.encode_chat(c, add_generation_prompt=True) for c in (other, lonely, other)]
    pasts = Engine(model).shared_prefixes(prompts)
    common = min(next(j for j, (x, y) in enumerate(zip(prompts[0], p)) if x != y) for p in prompts[1:4])
    assert common >= MIN_SHARED_PREFIX and all(p is pasts[0] for p in pasts[1:4]) and pasts[0].length == common
    assert pasts[4] is pasts[6] and pasts[4].length == len(prompts[4]) - 1  # two copies: all but one token
    assert pasts[5] is None  # nothing to share
    # and the rollouts are those of reading every prompt whole
    params = SamplingParams(max_new_tokens=10, temperature=0, logprobs=True)
    shared = agent_rollouts(model, tok, convs, ToolBox(), params, max_turns=2)
    whole = agent_rollouts(model, tok, convs, ToolBox(), params, max_turns=2, reuse_kv=False)
    for a, b in zip(shared, whole):
        assert (a.token_ids, a.mask) == (b.token_ids, b.mask)
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_max_turns_is_honoured(tok):
    box = ToolBox(["calculate_math"])
    prompt = [SYSTEM, {"role": "user", "content": "Keep calculating."}]
    full = list(prompt)
    for expression in ("1+1", "2+2", "3+3"):  # a model that never stops calling
        full += [
            call(expression),
            {"role": "tool", "content": box.call("calculate_math", {"expression": expression}).observation},
        ]
    model = Scripted(tok.encode_chat(full, tools=CALC), tok.eos_token_id)
    (t,) = agent_rollouts(model, tok, [prompt], box, SamplingParams(max_new_tokens=64, temperature=0), max_turns=2)
    assert t.turns == 2 and t.finish_reason == "max_turns" and t.valid_calls == 2
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool", "assistant", "tool"]
    assert t.token_ids == tok.encode_chat(t.messages, tools=CALC)  # no generation prompt after the last turn


def test_invalid_calls_are_counted(tok):
    prompt = [SYSTEM, {"role": "user", "content": "Weather?"}]
    bad = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": "get_current_weather", "arguments": {"location": "北京"}}],
    }
    full = prompt + [bad]
    model = Scripted(tok.encode_chat(full, tools=CALC), tok.eos_token_id)
    (t,) = agent_rollouts(
        model, tok, [prompt], ToolBox(), SamplingParams(max_new_tokens=64, temperature=0), max_turns=1
    )
    assert (t.valid_calls, t.invalid_calls) == (0, 1)  # not offered by this prompt
    assert "error" in json.loads(t.messages[-1]["content"])


def conversations(n):
    return [
        [SYSTEM, {"role": "user", "content": f"Question {i}: what is {i} + {2 * i}?" + " more" * i}] for i in range(n)
    ]


def test_mask_marks_generated_tokens_of_a_random_model(tok):
    model = scrambled_model(3)
    convs = conversations(4)
    params = SamplingParams(max_new_tokens=12, temperature=0, logprobs=True)
    for conv, t in zip(convs, agent_rollouts(model, tok, convs, ToolBox(), params, max_turns=2)):
        first = tok.encode_chat(conv, tools=CALC, add_generation_prompt=True)
        assert t.token_ids[: len(first)] == first and t.prompt_len == len(first)
        assert len(t.mask) == len(t.token_ids) == len(t.logprobs)
        assert sum(t.mask) > 0 and not any(t.mask[: len(first)])
        assert t.finish_reason in ("stop", "length", "max_turns")


def test_batched_equals_one_at_a_time(tok):
    model = scrambled_model(5)
    convs = conversations(5)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    together = agent_rollouts(model, tok, convs, ToolBox(), params, max_turns=2, max_batch=2)  # newcomers join mid-run
    alone = [agent_rollouts(model, tok, [c], ToolBox(), params, max_turns=2)[0] for c in convs]
    for a, b in zip(together, alone):
        assert (a.token_ids, a.mask, a.messages, a.finish_reason) == (b.token_ids, b.mask, b.messages, b.finish_reason)
    # sampled with a seed: trajectory i draws from its own generator, so batching changes nothing
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    together = agent_rollouts(model, tok, convs, ToolBox(), params, max_turns=2)
    alone = [
        agent_rollouts(model, tok, [c], ToolBox(), SamplingParams(max_new_tokens=10, temperature=1.0, seed=7 + i))[0]
        for i, c in enumerate(convs)
    ]
    assert [t.token_ids for t in together] == [t.token_ids for t in alone]


def test_context_full_ends_the_trajectory(tok):
    conv = [SYSTEM, {"role": "user", "content": "hi"}]
    room = len(tok.encode_chat(conv, tools=CALC, add_generation_prompt=True)) + 6
    model = scrambled_model(1, max_position_embeddings=room)
    long_conv = [SYSTEM, {"role": "user", "content": "hi " * 50}]  # its prompt alone fills the context
    short, long = agent_rollouts(
        model, tok, [conv, long_conv], ToolBox(), SamplingParams(max_new_tokens=500, temperature=0)
    )
    assert len(short.token_ids) <= room and short.turns == 1
    assert short.finish_reason in ("context", "stop")
    assert (long.finish_reason, long.turns, sum(long.mask)) == ("context", 0, 0)


def test_eval_toolcall_cli(tmp_path, tok_dir, capsys):
    model_dir = tmp_path / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(model_dir)]) == 0
    tools = json.dumps(BUILTIN_SCHEMAS, ensure_ascii=False)
    records = [
        {
            "conversations": [
                {"role": "system", "content": "", "tools": tools},
                {"role": "user", "content": f"What is {a} * 7?"},
                {"role": "assistant", "content": ""},
            ],
            "gt": [str(a * 7)],
        }
        for a in range(3, 7)
    ]
    data = write_jsonl(tmp_path / "agent_rl.jsonl", records)
    argv = ["eval", "--task", "toolcall", "--model", str(model_dir), "--data", str(data)]
    assert main(argv + ["--max-new-tokens", "8", "--max-turns", "2", "--batch-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "tool-call validity" in out and "answer accuracy" in out
    result = json.loads((model_dir / "eval" / "toolcall.json").read_text())
    assert result["kind"] == "toolcall" and result["metrics"]["n"] == 4
    assert set(result["metrics"]) >= {"accuracy", "validity", "invalid_share"}
