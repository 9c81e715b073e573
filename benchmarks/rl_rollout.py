"""Agentic rollout throughput: our batched rollouts (minimind.rl.rollout, one Engine for every
trajectory, each turn starting from the previous turn's KV) against a MiniMind-style rollout
(one trajectory at a time, each reply through a plain greedy generate loop whose KV cache grows
by torch.cat every token, as MiniMind's rollout_engine.py / train_agent.py do), on the same
model and the same conversations.

    python benchmarks/rl_rollout.py                        # nano, 16 conversations, 3 turns
    python benchmarks/rl_rollout.py --preset tiny --conversations 64 --answer-words 60

The model has random weights, so it would never call a tool by itself: a thin wrapper forces
its greedy choice to follow a script (tool calls for turns 1..N-1, then an answer), the same on
both sides, so both run exactly the same forward passes' worth of work on the same tokens and
their trajectories are checked to agree. All conversations have the same prompt length, so one
script, indexed by position, fits them all. Reported: generated tokens per second and the ratio,
and ours with reuse_kv=False (every turn reads the whole trajectory again, as MiniMind's does)
to show what each part gives.

The baseline below (`minimind_style_rollouts`) is our own reference implementation of that
pattern, written for this benchmark; it is not MiniMind's code and not part of the package.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from machine import machine_line

from minimind import MiniMindForCausalLM, preset
from minimind.infer import SamplingParams
from minimind.rl.rollout import agent_rollouts
from minimind.rl.tools import BUILTIN_SCHEMAS, ToolBox, parse_tool_calls
from minimind.tokenizer import Tokenizer

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tokenizer" / "minimind3"
CALC = [s for s in BUILTIN_SCHEMAS if s["function"]["name"] == "calculate_math"]


class Scripted(torch.nn.Module):
    """The model, with its greedy choice at position p forced to token p + 1 of `script`."""

    def __init__(self, inner, script: list[int], eos: int):
        super().__init__()
        self.inner, self.script, self.eos, self.config = inner, script, eos, inner.config

    def new_cache(self, batch_size, capacity):
        return self.inner.new_cache(batch_size, capacity)

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep=0):
        past = cache.length if cache is not None else 0
        out = self.inner(ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache, logits_to_keep=1)
        if position_ids is not None:
            pos = position_ids[:, -1].tolist()
        elif attention_mask is not None:
            pos = (attention_mask.sum(-1) - 1).tolist()
        else:
            pos = [past + ids.shape[1] - 1] * ids.shape[0]
        logits = out.logits.clone()
        for row, p in enumerate(pos):
            logits[row, -1, self.script[p + 1] if p + 1 < len(self.script) else self.eos] = 1e4
        return SimpleNamespace(logits=logits)


# ----------------------------------------------------- the MiniMind-style reference rollout ---


class CatCache:
    """A KV cache that grows by torch.cat: every new token copies every layer's whole cache."""

    def __init__(self):
        self.k, self.v, self.length = {}, {}, 0

    def update(self, layer, k, v):
        if layer in self.k:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


@torch.inference_mode()
def plain_generate(model, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
    """Greedy decoding of one sequence: prefill, then one token at a time on a CatCache."""
    cache, out = CatCache(), []
    logits = model(torch.tensor([ids]), cache=cache).logits[0, -1]
    for _ in range(max_new_tokens):
        token = int(logits.argmax())
        if token == eos:
            break
        out.append(token)
        logits = model(torch.tensor([[token]]), cache=cache).logits[0, -1]
    return out


def minimind_style_rollouts(model, tok, conversations, box, max_new_tokens, max_turns):
    """One trajectory after another; each turn re-renders the conversation as text and
    generates with plain_generate. Returns the final messages of each."""
    results = []
    for conversation in conversations:
        messages = [dict(m) for m in conversation]
        for _ in range(max_turns):
            ids = tok.encode_chat(messages, tools=CALC, add_generation_prompt=True)
            text = tok.decode(plain_generate(model, ids, max_new_tokens, tok.eos_token_id), skip_special_tokens=True)
            calls, _ = parse_tool_calls(text)
            if not calls:
                messages.append({"role": "assistant", "content": text.strip()})
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"name": c.name, "arguments": json.dumps(c.arguments)} for c in calls],
                }
            )
            messages += [{"role": "tool", "content": box.call(c.name, c.arguments).observation} for c in calls]
        results.append(messages)
    return results


# ------------------------------------------------------------------------------- the run ---


def same_length_conversations(tok, n: int) -> list[list[dict]]:
    """n arithmetic questions whose rendered prompts all have the same number of tokens."""
    system = {"role": "system", "content": "You are a helpful assistant."}
    groups: dict[int, list] = {}
    for a in range(11, 2_000):
        conv = [system, {"role": "user", "content": f"What is {a} times {a + 7}?"}]
        group = groups.setdefault(len(tok.encode_chat(conv, tools=CALC, add_generation_prompt=True)), [])
        group.append(conv)
        if len(group) == n:
            return group
    raise SystemExit(f"could not find {n} same-length prompts")


def script_for(tok, conversation, box, turns: int, answer_words: int) -> list[int]:
    """The whole conversation the model is forced to write: turns - 1 calls, then an answer."""
    messages = list(conversation)
    for i in range(turns - 1):
        expression = f"{i + 12} * {i + 34}"
        messages.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"name": "calculate_math", "arguments": json.dumps({"expression": expression})}],
            }
        )
        messages.append({"role": "tool", "content": box.call("calculate_math", {"expression": expression}).observation})
    messages.append({"role": "assistant", "content": " ".join(["The answer is 408."] * max(1, answer_words // 4))})
    return tok.encode_chat(messages, tools=CALC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--tokenizer", default=str(SHARED_TOKENIZER))
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=3, help="replies per trajectory (the last one answers)")
    ap.add_argument("--answer-words", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = Tokenizer.from_dir(args.tokenizer)
    inner = MiniMindForCausalLM(preset(args.preset)).init_weights(0).eval()
    box = ToolBox(["calculate_math"])
    convs = same_length_conversations(tok, args.conversations)
    model = Scripted(inner, script_for(tok, convs[0], box, args.turns, args.answer_words), tok.eos_token_id)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    agent_rollouts(model, tok, convs[:2], box, params, max_turns=args.turns)  # warm-up
    minimind_style_rollouts(model, tok, convs[:1], box, args.max_new_tokens, args.turns)

    start = time.perf_counter()
    ours = agent_rollouts(model, tok, convs, box, params, max_turns=args.turns)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reread = agent_rollouts(model, tok, convs, box, params, max_turns=args.turns, reuse_kv=False)
    reread_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = minimind_style_rollouts(model, tok, convs, box, args.max_new_tokens, args.turns)
    theirs_s = time.perf_counter() - start

    for t, r, messages in zip(ours, reread, theirs):
        assert t.token_ids == r.token_ids
        assert t.turns == args.turns and t.finish_reason == "stop", (t.turns, t.finish_reason)
        assert t.answer == messages[-1]["content"], (t.answer, messages[-1]["content"])
    generated = sum(sum(t.mask) for t in ours)
    print(machine_line())
    print(
        f"{args.preset}, {args.conversations} trajectories x {args.turns} turns, {generated} generated tokens, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"  ours (batched, one Engine):          {ours_s:7.2f} s  {generated / ours_s:8.1f} tok/s")
    print(f"  ours, each turn reads it all again:  {reread_s:7.2f} s  {generated / reread_s:8.1f} tok/s")
    print(f"  MiniMind-style (one at a time, cat): {theirs_s:7.2f} s  {generated / theirs_s:8.1f} tok/s")
    print(f"  ratio: {theirs_s / ours_s:.1f}x (without the KV kept between turns {theirs_s / reread_s:.1f}x)")


if __name__ == "__main__":
    main()
