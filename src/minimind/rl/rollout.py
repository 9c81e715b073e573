"""Batched multi-turn agentic rollouts: many tool-using conversations on one generation engine.

    trajectories = agent_rollouts(model, tokenizer, conversations, ToolBox(), SamplingParams(...))
    t = trajectories[0]
    t.token_ids, t.mask        # the whole trajectory; mask 1 = a token the model generated
    t.messages, t.answer       # the conversation with tool calls and results; the final reply
    t.valid_calls, t.invalid_calls, t.finish_reason

Each trajectory: render the conversation with its tools and a generation prompt, generate; if
the reply holds tool calls (outside <think>), run them with the ToolBox, append the assistant
turn and the `tool` results, and generate the next turn; until a reply without a call,
`max_turns` replies, or a full context. All trajectories share ONE Engine: when a reply ends,
its tools run (instantly) and the next turn joins the running batch as a new Sequence between
two steps, while the other trajectories keep decoding (MiniMind's train_agent.py rolls them out
one at a time).

Tokens, not text, carry the trajectory from turn to turn ("token in, token out"): the next
turn's prompt is the trajectory's own tokens so far (the prompt, the tokens the model sampled,
its stop token) plus the observation tokens. Re-rendering the conversation as text instead
would hand the model a normalised copy of its reply (the template rewrites tool-call JSON and
<think> blocks), so the tokens RL trains on would not be the ones sampled, and their old
log-probs would not match. Nor does a turn read its history again: each reply's Sequence keeps
its keys and values (keep_kv), and the next turn starts from them (`past`), so its prefill
reads only the reply's stop token and the observation (MiniMind re-reads the whole
conversation every turn, usually the larger part of a rollout's work). The first turns' prompts
share their system prompt and tool list (and, in RL, G copies of each question): the longest
prefix common to a group of them is read once (Engine.read) and given to each as its past.

The observation segment of a turn is the tokens encode_chat adds after the assistant turn: the
text after the reply's <|im_end|> ("\n"), the `tool` turn(s) and the next generation prompt.
Because every boundary is a special token, these tokens are exactly those of encode_chat of the
whole conversation. So token_ids == tokenizer.encode_chat(messages, tools=...) whenever the model
wrote its reply the way the template renders it (canonical tokens, tool calls as
`<tool_call>\\n{"name": "N", "arguments": {...}}\\n</tool_call>`); when it did not, token_ids
keep what the model really saw and wrote, and messages hold the parsed, normalised reply. The
minimind-3 template keeps earlier <think> blocks (it strips none), so thinking does not break
this. A reply cut off by max_new_tokens has no <|im_end|>, so it ends its trajectory.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import torch

from ..data.rl import offered_tools
from ..errors import MiniMindError
from ..infer.engine import Engine
from ..infer.sequence import SamplingParams, Sequence
from ..infer.toolcalls import CALL_OPEN, THINK_OPEN, parse_output
from .tools import ToolBox


@dataclass
class Trajectory:
    """One rolled-out conversation.

    token_ids: prompt, replies and observations, as the model saw and wrote them.
    mask: 1 for each token the model generated (its stop token included: RL's completion
        mask runs through EOS), 0 for the prompt and tool observations (no loss on them).
    logprobs: the sampling log-prob of each token (0.0 where mask is 0), with params.logprobs.
    finish_reason: "stop" (a reply without a tool call), "max_turns" (the last allowed reply
        still called tools: they were run and their results added to messages), "length" (a
        reply hit max_new_tokens), "context" (the model's context is full) or "error".
    """

    messages: list[dict]
    token_ids: list[int]
    mask: list[int]
    logprobs: list[float] | None
    prompt_len: int  # tokens of the first prompt
    turns: int = 0  # replies generated
    valid_calls: int = 0  # calls that ran and answered
    invalid_calls: int = 0  # malformed blocks, unknown tools, bad arguments, tool errors
    answer: str = ""  # the content of the last reply (tool-call blocks and thinking removed)
    finish_reason: str = ""
    error: str | None = None

    @property
    def calls(self) -> int:
        return self.valid_calls + self.invalid_calls


class _Rollout:
    """A trajectory in progress: what it needs to build its next turn."""

    def __init__(self, index, messages, schemas, generator):
        self.index, self.messages, self.schemas, self.generator = index, messages, schemas, generator
        self.offered = [s.get("function", s).get("name") for s in schemas]
        self.result: Trajectory | None = None
        self.past = None  # the KV of the trajectory so far (all but its newest tokens)


def agent_rollouts(
    model,
    tokenizer,
    conversations: list[list[dict]],
    tools: ToolBox,
    params: SamplingParams | None = None,
    max_turns: int = 3,
    thinking: bool = False,
    max_batch: int | None = None,
    seeds: list[int] | None = None,
    max_len: int | None = None,
    reuse_kv: bool = True,
) -> list[Trajectory]:
    """Roll out every conversation (a prompt: messages ending with a user turn) as a multi-turn
    tool-using trajectory, all on one Engine; returns one Trajectory per conversation, in order.

    Tools offered: those of the conversation's system message (`tools`, as in MiniMind's agent-RL
    data), else all of `tools`. A call to a tool not offered is invalid.
    params: sampling per reply (max_new_tokens is per reply). Generation stops at the tokenizer's
        eos (<|im_end|>, the end of a turn); stop_token_ids and stop_strings are overridden.
        With a seed, trajectory i samples from seed + i, so results do not depend on batching.
    thinking: open a <think> block in every generation prompt (open_thinking).
    max_batch: most trajectories decoding at once (None = all); the rest wait for a free row.
    seeds: one seed per conversation, instead of params.seed + i (RL seeds a trajectory by its
        place in the epoch, so it is the same on any number of processes).
    max_len: most tokens of a trajectory (default: the model's context); a reply that would pass
        it is cut short ("length"), and the trajectory ends ("context").
    reuse_kv: start each turn from the previous turn's keys and values, and read prefixes common
        to the first prompts once (False: every turn reads its whole trajectory; the same
        tokens, up to float rounding, and slower).
    """
    if max_turns < 1:
        raise MiniMindError(f"max_turns must be at least 1, got {max_turns}")
    if tokenizer.eos_token_id is None:
        raise MiniMindError("agent rollouts need a tokenizer with an eos token (the end of a turn)")
    params = replace(params or SamplingParams(), stop_token_ids=(tokenizer.eos_token_id,), stop_strings=())
    device = next(model.parameters()).device
    max_pos = min(model.config.max_position_embeddings, max_len or model.config.max_position_embeddings)
    if seeds is not None and len(seeds) != len(conversations):
        raise MiniMindError(f"agent rollouts: {len(seeds)} seeds for {len(conversations)} conversations")
    rollouts = []
    for i, conversation in enumerate(conversations):
        schemas = offered_tools(conversation) or tools.schemas()
        generator = None
        seed = seeds[i] if seeds is not None else None if params.seed is None else params.seed + i
        if seed is not None and params.temperature > 0:
            generator = torch.Generator(device=device).manual_seed(seed % 2**63)
        r = _Rollout(i, [dict(m) for m in conversation], schemas, generator)
        ids = tokenizer.encode_chat(r.messages, tools=schemas, add_generation_prompt=True, open_thinking=thinking)
        r.result = Trajectory(
            r.messages, list(ids), [0] * len(ids), [0.0] * len(ids) if params.logprobs else None, len(ids)
        )
        rollouts.append(r)

    def sequence(r: _Rollout) -> Sequence | None:
        """The next turn of r, or None (and r finished) when the context has no room for it."""
        room = max_pos - len(r.result.token_ids)
        if room < 1:
            r.result.finish_reason = "context"
            return None
        turn = params if params.max_new_tokens <= room else replace(params, max_new_tokens=room)
        past, r.past = r.past, None
        return Sequence(
            model,
            tokenizer,
            r.result.token_ids,
            turn,
            generator=r.generator,
            track_text=False,
            past=past,
            keep_kv=reuse_kv,
        )

    engine = Engine(model)
    if reuse_kv:
        for r, past in zip(rollouts, engine.shared_prefixes([r.result.token_ids for r in rollouts])):
            r.past = past
    waiting: deque[Sequence] = deque()
    owner = {}  # id(Sequence) -> its _Rollout
    for r in rollouts:
        if (s := sequence(r)) is not None:
            owner[id(s)] = r
            waiting.append(s)
    while engine.sequences or waiting:
        room = len(waiting) if max_batch is None else max(0, max_batch - len(engine.sequences))
        if room and waiting:
            engine.add([waiting.popleft() for _ in range(min(room, len(waiting)))])
        for seq in engine.step():
            if not seq.finished:
                continue
            r = owner.pop(id(seq))
            if _end_turn(r, seq, tokenizer, tools, max_turns, thinking, max_pos):
                continue
            r.past = seq.kv
            nxt = sequence(r)
            if nxt is not None:
                owner[id(nxt)] = r
                waiting.append(nxt)  # joins the running batch before the next step
    return [r.result for r in rollouts]


def _end_turn(r: _Rollout, seq: Sequence, tokenizer, tools: ToolBox, max_turns, thinking, max_pos) -> bool:
    """Record a finished reply in r's trajectory; run its tool calls. True when r is done."""
    t, c = r.result, seq.completion()
    generated = list(c.token_ids) + ([tokenizer.eos_token_id] if seq.ended_by_token else [])
    t.token_ids += generated
    t.mask += [1] * len(generated)
    if t.logprobs is not None:
        t.logprobs += [lp.logprob for lp in c.logprobs or []]
    t.turns += 1
    # The text as the template wrote it, so the parser sees an opened <think> block.
    text = tokenizer.decode(c.token_ids, skip_special_tokens=True)
    content, reasoning, calls = parse_output((THINK_OPEN + "\n" if thinking else "") + text, False, tools=True)
    content = content or ""
    t.invalid_calls += content.count(CALL_OPEN)  # a malformed block stays in the content as written
    t.answer = content.strip()
    reply = {"role": "assistant", "content": content}
    if reasoning is not None:
        reply["reasoning_content"] = reasoning
    if calls:
        reply["tool_calls"] = [{"type": "function", "function": call["function"]} for call in calls]
    if c.finish_reason != "stop":
        t.messages.append(reply)
        t.finish_reason = "error" if c.finish_reason == "error" else "length"
        t.finish_reason = "context" if len(t.token_ids) >= max_pos else t.finish_reason
        t.error = c.error
        return True
    before = tokenizer.encode_chat(t.messages + [reply], tools=r.schemas)
    t.messages.append(reply)
    last = t.turns >= max_turns
    if calls:
        for call in calls:
            result = tools.call(call["function"]["name"], call["function"]["arguments"], offered=r.offered)
            t.valid_calls += result.ok
            t.invalid_calls += not result.ok
            t.messages.append({"role": "tool", "content": result.observation})
    # The observation: what encode_chat adds after the reply's <|im_end|> (see the top).
    after = tokenizer.encode_chat(
        t.messages, tools=r.schemas, add_generation_prompt=bool(calls) and not last, open_thinking=thinking
    )
    if after[: len(before)] != before or tokenizer.eos_token_id not in before:
        raise MiniMindError(
            "agent rollouts: the chat template does not render a conversation as a prefix of its continuation"
        )
    tail = before[len(before) - before[::-1].index(tokenizer.eos_token_id) :]  # after the reply's <|im_end|>
    observation = tail + after[len(before) :]
    t.token_ids += observation
    t.mask += [0] * len(observation)
    if t.logprobs is not None:
        t.logprobs += [0.0] * len(observation)
    if not calls:
        t.finish_reason = "stop"
        return True
    if last:
        t.finish_reason = "max_turns"
        return True
    return False
