"""RL prompt records: the rules beyond a valid conversation (formats.check_rl applies them).

MiniMind has two RL formats, both read as kind "rl":

  RLAIF (PPO, GRPO)  {"conversations": [{"role": "user", ...}, {"role": "assistant", "content": "空"}],
                      "gt": ["72"]}
      The last assistant message is a placeholder that the trainer drops; what remains is the
      prompt. `gt` (optional) lists the accepted answers, for verifiable rewards.
  agent RL           {"conversations": [{"role": "system", "content": ..., "tools": "[...]"},
                                         {"role": "user", ...}, {"role": "assistant", ...}],
                      "gt": ["28", "7.21"]}
      The system message offers the tools (a JSON string or a list of OpenAI tool schemas);
      `gt` lists the values the final answer should state (MiniMind also reads its length as
      the number of tool calls expected).

This module only needs the record, so formats.py can import it without a circle; it returns
what is wrong as text and formats.py raises it as `FILE:LINE: ...` like every other problem.
"""

from __future__ import annotations

import json
import math


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The prompt of an RL record: the conversation without its trailing assistant placeholder
    (a conversation that already ends with the user's turn is the prompt as it is)."""
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages


def offered_tools(messages: list[dict]) -> list[dict]:
    """The tool schemas a record offers (parsed from the system message's `tools`), or []."""
    for m in messages:
        tools = m.get("tools")
        if tools not in (None, "", []):
            return json.loads(tools) if isinstance(tools, str) else tools
    return []


def _spec(tool) -> dict:
    spec = tool.get("function", tool) if isinstance(tool, dict) else {}
    return spec if isinstance(spec, dict) else {}


def _tools_problem(messages: list[dict]) -> str | None:
    where = [i for i, m in enumerate(messages) if m.get("tools") not in (None, "", [])]
    if not where:
        return None
    if where[0] != 0:  # the chat template writes the tools into the header, before any turn
        return f"'tools' must be on the first message (the system prompt), found on conversations[{where[0]}]"
    if len(where) > 1:
        return f"tools are offered twice (conversations[0] and conversations[{where[1]}]); offer them once"
    seen = set()
    for i, tool in enumerate(offered_tools(messages)):  # formats.check_messages already parsed them
        spec = _spec(tool)
        name = spec.get("name")
        if name in seen:
            return f"tools[{i}] repeats the name {name!r}"
        seen.add(name)
        params = spec.get("parameters", {})
        if not isinstance(params, dict):
            return f"tools[{i}] ({name}): 'parameters' must be a JSON schema object"
        properties = params.get("properties", {})
        if not isinstance(properties, dict):
            return f"tools[{i}] ({name}): 'parameters.properties' must be an object"
        required = params.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            return f"tools[{i}] ({name}): 'parameters.required' must be a list of argument names"
        undeclared = [r for r in required if r not in properties]
        if undeclared:
            return f"tools[{i}] ({name}): required argument {undeclared[0]!r} is not in 'properties'"
    return None


def _gt_problem(gt) -> str | None:
    # formats.check_rl has checked that gt is a list of strings and numbers.
    for i, value in enumerate(gt or []):
        if isinstance(value, str) and not value.strip():
            return f"gt[{i}] is empty (an empty answer would be found in every reply)"
        if isinstance(value, float) and not math.isfinite(value):
            return f"gt[{i}] is {value}, not a finite number"
    return None


def rl_problem(messages: list[dict], gt=None) -> str | None:
    """What is wrong with an RL record whose messages are each valid, or None."""
    prompt = prompt_messages(messages)
    if prompt and prompt[-1].get("role") not in ("user", "tool"):
        role, i = prompt[-1].get("role"), len(prompt) - 1
        return (
            f"the prompt ends with conversations[{i}] ({role}); it must end with a user message or a tool "
            "result, for the model to answer next (only one trailing assistant placeholder is dropped)"
        )
    return _tools_problem(messages) or _gt_problem(gt)


def rl_counts(record: dict) -> dict:
    """For `data check`: does the record carry answers (gt), does it offer tools (agent RL)."""
    return {"with_gt": int(bool(record.get("gt"))), "agent": int(bool(offered_tools(record["conversations"])))}
