"""A plain-Python rendering of the minimind-3 chat template, for bulk tokenization.

Rendering the Jinja template in its sandbox costs about 0.2 ms per conversation, three times
the cost of tokenizing it: for a million SFT conversations that is minutes spent in Jinja's
attribute checks. When a tokenizer's template is exactly MiniMind-3's, render_minimind3 below
produces the same string directly (tests/test_data_sft.py checks byte equality against the
Jinja template on every shared conversation and on hand-made edge cases). Any message with a
shape the fast path was not written for goes through Jinja instead, so it is never wrong, only
sometimes slower.
"""

from __future__ import annotations

import json

from ..tokenizer import MINIMIND3_CHAT_TEMPLATE

_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
_ROLES = ("system", "user", "assistant", "tool")
_PLAIN_KEYS = {"role", "content", "reasoning_content", "tools", "tool_calls"}


def _tojson(x) -> str:
    return json.dumps(x, ensure_ascii=False)  # the template's tojson: plain json.dumps


def _loads(value):
    return json.loads(value) if isinstance(value, str) else value


def fast_renderer_for(tokenizer):
    """render_minimind3 if the tokenizer's template is MiniMind-3's, else None."""
    return render_minimind3 if tokenizer.chat_template == MINIMIND3_CHAT_TEMPLATE else None


def render_minimind3(messages: list[dict]) -> str | None:
    """The minimind-3 template's output (no generation prompt), or None if the messages have
    a shape this fast path does not handle (the caller then renders with Jinja)."""
    tools = None
    for m in messages:
        if not isinstance(m, dict) or not m.keys() <= _PLAIN_KEYS or m.get("role") not in _ROLES:
            return None
        if not all(isinstance(m.get(k), (str, type(None))) for k in ("content", "reasoning_content")):
            return None
        if m.get("role") == "system" and m.get("tools") and tools is None:
            tools = _loads(m["tools"])
            if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
                return None
    out = []
    first_system = messages[0]["role"] == "system"
    if tools:
        out.append("<|im_start|>system\n")
        if first_system:
            if messages[0].get("content") is None:
                return None
            out.append(messages[0]["content"] + "\n\n")
        out.append(_TOOLS_HEAD)
        for tool in tools:
            out.append("\n" + _tojson(tool))
        out.append(_TOOLS_TAIL)
    elif first_system:
        if messages[0].get("content") is None:
            return None
        out.append("<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n")
    last = len(messages) - 1
    for i, m in enumerate(messages):
        role = m["role"]
        content = m.get("content") if isinstance(m.get("content"), str) else ""
        if role == "user" or (role == "system" and i > 0):
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        elif role == "assistant":
            reasoning = ""
            if isinstance(m.get("reasoning_content"), str):
                reasoning = m["reasoning_content"]
            elif "</think>" in content:
                reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = content.split("</think>")[-1].lstrip("\n")
            out.append(
                "<|im_start|>assistant\n<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            )
            calls = _loads(m["tool_calls"]) if m.get("tool_calls") else None
            if calls:
                if not isinstance(calls, list):
                    return None
                for j, call in enumerate(calls):
                    if not isinstance(call, dict):
                        return None
                    if call.get("function"):
                        call = call["function"]
                        if not isinstance(call, dict):
                            return None
                    if (j == 0 and content) or j > 0:
                        out.append("\n")
                    name, args = call.get("name"), call.get("arguments")
                    if not isinstance(name, str) or "arguments" not in call:
                        return None
                    args = args if isinstance(args, str) else _tojson(args)
                    out.append('<tool_call>\n{"name": "' + name + '", "arguments": ' + args + "}\n</tool_call>")
            out.append("<|im_end|>\n")
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                out.append("<|im_start|>user")
            out.append("\n<tool_response>\n" + content + "\n</tool_response>")
            if i == last or messages[i + 1]["role"] != "tool":
                out.append("<|im_end|>\n")
    return "".join(out)
