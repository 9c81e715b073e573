"""Agentic RL (`minimind agent`): GRPO / CISPO over multi-turn tool-using trajectories.

The same objective as `minimind grpo` (rl/grpo.py: groups of G samples per prompt, group
advantages, old and reference log-probs, --iterations updates per batch of rollouts, the loss,
exact resume, DDP), with a different way to make a batch of rollouts:

  1. trajectories: every prompt of the batch, G times, is rolled out by `agent_rollouts`
     (rl/rollout.py) on ONE engine: each reply may call tools, whose results come back as
     `tool` turns, until a reply without a call or --max-turns replies (MiniMind's
     train_agent.py rolls them out one at a time). A trajectory's seed is its place in the
     epoch, as a GRPO reply's is, so it is the same on any number of processes;
  2. rewards: each trajectory is scored by the --reward components (default answer_in_text=1,
     tool_calls=0.5): the rewards read every reply of the trajectory, one a line, and
     record["trajectory"] (valid_calls, invalid_calls, turns, finish_reason);
  3. rows: the trajectory's tokens as the model saw and wrote them; the loss mask is the
     trajectory's mask, 1 on the tokens the model generated (each reply through its end-of-turn
     token), 0 on the prompt and on every tool observation. Old and reference log-probs are
     computed over the whole row, and the policy loss and the KL count mask-1 tokens only: a tool
     observation is the environment's text, not an action, and gets zero weight.

Tools: the record's system message offers them (MiniMind's agent-RL format, the six built-in
names of rl/tools.py); a prompt without `tools` is offered all of them. Your own tools are Python
functions, given with --tools:

    --tools my_tools.py:lookup_price      (or my_tools:lookup_price, a module on the path)
    --tools my_tools.py                   a module with TOOLS = [lookup_price, (other, schema), ...]

A function's schema is its `schema` attribute (an OpenAI function schema) when it has one, else
it is read from its signature: each parameter is an argument (annotated str, int, float, bool,
list or dict; unannotated means str), required when it has no default, and the docstring's first
line is the description. A prompt that offers a tool nobody provides stops the run at its
FILE:LINE.
"""

from __future__ import annotations

import inspect
import typing

import torch

from ..data.rl import prompt_messages
from ..errors import MiniMindError
from ..infer import SamplingParams
from .grpo import GRPOObjective, reply_seed
from .rewards import _import_file, _import_module, parse_weights
from .rollout import Trajectory, agent_rollouts
from .tools import ToolBox

CALL_STATS = ("turns", "valid_calls", "invalid_calls")


class AgentObjective(GRPOObjective):
    name = "agent"

    # ------------------------------------------------------------------ data
    def build_data(self, cfg, tokenizer):
        self.tools = load_tools(cfg.tools)
        # the rewards that compare with `gt`: a prompt without one is an error found now, not at
        # the first rollout that meets it
        self.wants_gt = [n for n in parse_weights(cfg.reward or "_") if n in ("answer_in_text", "exact_answer")]
        return super().build_data(cfg, tokenizer)

    def prompt_ids(self, p, tokenizer) -> list[int]:
        if self.wants_gt and not p.gt:
            raise MiniMindError(
                f"{p.where}: no 'gt' (the values the answer should state), which {self.wants_gt[0]} needs"
            )
        names = [s.get("function", s).get("name") for s in p.tools]
        missing = [n for n in names if n not in self.tools]
        if missing:
            raise MiniMindError(
                f"{p.where}: offers the tool {missing[0]!r}, which is neither built in nor given with "
                f"--tools (tools here: {', '.join(self.tools.names)})"
            )
        # a prompt that offers no tools is given all of them
        return tokenizer.encode_chat(p.messages, tools=p.tools or self.tools.schemas(), add_generation_prompt=True)

    def describe_data(self, cfg, train_ds, val_ds) -> str:
        skipped = f", {self.too_long} longer than --seq-len - --max-gen-len skipped" if self.too_long else ""
        return (
            f"{len(train_ds.ids)} prompts ({train_ds.usable} in whole batches){skipped}; "
            f"{cfg.num_generations} trajectories each of at most {cfg.max_turns} replies, {cfg.iterations} "
            f"updates per batch of rollouts; tools: {', '.join(self.tools.names)}"
        )

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def _rollout_batch(self, ds, prompt_rows: list[int], epoch: int, positions: list[int]) -> dict:
        """Roll out G trajectories for each prompt, score them, and build the training rows."""
        cfg, ctx, model, tok = self.cfg, self.ctx, self.ctx.model, self.ctx.tokenizer
        G = cfg.num_generations
        conversations = [prompt_messages(ds.records[row]["conversations"]) for row in prompt_rows for _ in range(G)]
        seeds = [reply_seed(cfg.seed, epoch, position, g) for position in positions for g in range(G)]
        params = SamplingParams(max_new_tokens=cfg.max_gen_len, temperature=cfg.temperature, top_p=cfg.top_p)
        was_training = model.training
        model.eval()
        try:
            with ctx.autocast():
                trajectories = agent_rollouts(
                    model,
                    tok,
                    conversations,
                    self.tools,
                    params,
                    max_turns=cfg.max_turns,
                    seeds=seeds,
                    max_len=cfg.seq_len,
                )
        finally:
            model.train(was_training)
        records = [
            {**ds.records[row], "trajectory": trajectory_counts(t)}
            for row, t in zip((r for r in prompt_rows for _ in range(G)), trajectories)
        ]
        rewards, parts = self._score([replies_text(tok, t) for t in trajectories], records)
        batch = self._trajectory_rows(trajectories)
        batch["advantages"] = self._advantages(rewards)
        batch["rewards"] = rewards
        batch["reward_parts"] = parts
        batch["calls"] = {k: torch.tensor([float(getattr(t, k)) for t in trajectories]) for k in CALL_STATS}
        return self._with_old_and_ref(batch)

    def _trajectory_rows(self, trajectories: list[Trajectory]) -> dict:
        """Each trajectory's tokens, right-padded; `reply_mask` is its mask (0 on observations)."""
        limit = self.cfg.seq_len  # only observation tokens (mask 0) can lie past it: cut them
        rows = [(t.token_ids[:limit], t.mask[:limit]) for t in trajectories]
        width = max(len(ids) for ids, _ in rows)
        n = len(rows)
        ids = torch.zeros(n, width, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        reply = torch.zeros(n, width, dtype=torch.bool)
        for i, (tokens, generated) in enumerate(rows):
            ids[i, : len(tokens)] = torch.tensor(tokens)
            mask[i, : len(tokens)] = 1
            reply[i, : len(tokens)] = torch.tensor(generated, dtype=torch.bool)
        device = self.ctx.device
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "reply_mask": reply.to(device),
            "segment_ids": (mask - 1).to(device),
        }

    # ------------------------------------------------------------------ the loss
    def count(self, batch: dict) -> float:
        if self.cfg.loss == "dr_grpo":  # a constant: every reply of every turn at full length
            return float(batch["input_ids"].shape[0] * self.cfg.max_gen_len * self.cfg.max_turns)
        return super().count(batch)

    def loss_sum(self, model, batch: dict):
        loss, aux, metrics = super().loss_sum(model, batch)
        units = self.count(batch)
        for name, values in batch["calls"].items():  # per trajectory, weighted like the rewards
            metrics[name] = values.mean().item() * units
        return loss, aux, metrics


# --------------------------------------------------------------------------- helpers ---


def trajectory_counts(t: Trajectory) -> dict:
    """What rewards read of a trajectory besides its text (record["trajectory"])."""
    return {
        "valid_calls": t.valid_calls,
        "invalid_calls": t.invalid_calls,
        "turns": t.turns,
        "finish_reason": t.finish_reason,
    }


def replies_text(tokenizer, t: Trajectory) -> str:
    """Every reply of the trajectory as the model wrote it, one a line (observations left out)."""
    spans, start = [], None
    for i, m in enumerate(t.mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append(tokenizer.decode(t.token_ids[start:i], skip_special_tokens=True).strip())
            start = None
    return "\n".join(spans)


# ----------------------------------------------------------------------------- tools ---

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def load_tools(specs: list[str], box: ToolBox | None = None) -> ToolBox:
    """The built-in tools plus the users' own (see the module doc), each registered with its schema."""
    box = box if box is not None else ToolBox()
    for spec in specs:
        target, sep, fn_name = spec.rpartition(":")
        if sep and fn_name.isidentifier() and target:
            module = _load_module(target, spec)
            fn = getattr(module, fn_name, None)
            if fn is None:
                raise MiniMindError(f"--tools {spec}: {target} has no function {fn_name!r}")
            items = [fn]
        else:
            module = _load_module(spec, spec)
            items = getattr(module, "TOOLS", None)
            if not isinstance(items, (list, tuple)) or not items:
                raise MiniMindError(
                    f"--tools {spec}: the module has no TOOLS list; give MODULE:FUNCTION, or define "
                    "TOOLS = [function, (function, schema), ...] in it"
                )
        for item in items:
            fn, schema = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
            if not callable(fn):
                raise MiniMindError(f"--tools {spec}: {fn!r} is not a function")
            box.register(fn, schema or getattr(fn, "schema", None) or function_schema(fn, spec))
    return box


def _load_module(name: str, spec: str):
    return _import_file(name, spec, "--tools") if name.endswith(".py") else _import_module(name, spec, "--tools")


def function_schema(fn, spec: str = "") -> dict:
    """An OpenAI function schema read from a Python function's signature and docstring."""
    name = getattr(fn, "__name__", "tool")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: read the raw ones below
        hints = {}
    properties, required = {}, []
    for arg, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise MiniMindError(
                f"--tools {spec}: {name}({arg}) cannot be called by keyword; a tool takes named arguments"
            )
        hint = hints.get(arg, str if p.annotation is p.empty else p.annotation)
        kind = _JSON_TYPES.get(typing.get_origin(hint) or hint)
        if kind is None:
            raise MiniMindError(
                f"--tools {spec}: argument {arg!r} of {name} is annotated {hint!r}; use str, int, float, "
                "bool, list or dict, or give the function a `schema`"
            )
        properties[arg] = {"type": kind}
        if p.default is p.empty:
            required.append(arg)
    doc = inspect.getdoc(fn) or name
    return {
        "name": name,
        "description": doc.strip().split("\n\n")[0].replace("\n", " "),
        "parameters": {"type": "object", "properties": properties, "required": required},
    }
