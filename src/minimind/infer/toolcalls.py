"""Split generated text into reasoning, answer and tool calls, piece by piece as it streams.

MiniMind's chat template (like Qwen3's) has the model write

    <think>
    reasoning
    </think>

    answer text
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Beijing"}}
    </tool_call>

OpenAI clients expect the reasoning in `reasoning_content`, the answer in `content`, and each
call as a structured `tool_calls` entry with its arguments as a JSON *string*. The original
server streamed the raw `<tool_call>` text as content and only parsed it at the end; here a
tag is recognised while streaming: text that could still become a tag ("<tool_c") is held
back until the next piece decides, so no part of a tag ever reaches `content`.

It lives in infer/ (below the server and RL in the layering of tests/test_imports.py) because
both read model output the same way: the server for OpenAI responses, RL for agent rollouts
(minimind.rl.tools). minimind.serve.tools re-exports it.
"""

from __future__ import annotations

import json
import secrets

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


def _held_back(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the beginning of one of `tags`."""
    for n in range(min(len(text), max(map(len, tags)) - 1), 0, -1):
        if any(tag.startswith(text[-n:]) for tag in tags):
            return n
    return 0


def parse_tool_call(body: str) -> dict | None:
    """`{"name": ..., "arguments": {...}}` -> an OpenAI tool call, or None if it is not one."""
    try:
        call = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    args = call.get("arguments", {})
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": call["name"], "arguments": args},
    }


class OutputParser:
    """Feed generated text in pieces; get back (kind, value) events:

        ("reasoning", str)   text of the <think> block
        ("content", str)     the answer
        ("tool_call", dict)  an OpenAI tool call {"id", "type", "function": {name, arguments}}

    thinking=True: the prompt already opened a <think> block (open_thinking), so the text
    starts as reasoning. tools=False: tool-call tags are left in the content as they are
    (no tools were offered, so the text is not a call). A malformed call (not JSON, no name)
    is passed on as content, unchanged: the client sees what the model wrote. prefix: text
    the server wrote at the start of the reply (a forced tool call's opening), read as if the
    model had written it; it completes no event on its own.
    """

    def __init__(self, thinking: bool, tools: bool, prefix: str = ""):
        self.mode = "reasoning" if thinking else "content"
        self.tools = tools
        self.buffer = ""  # text not yet handed out
        self.content_started = False  # answer text has been sent (a <think> can only come first)
        self.strip_lead = True  # drop the blank lines the template puts after </think> and calls
        self.calls = 0
        if prefix:
            events = self.feed(prefix)
            assert not events, "a reply's prefix must not complete an event"

    def feed(self, text: str) -> list[tuple[str, object]]:
        self.buffer += text
        events: list[tuple[str, object]] = []
        while self._advance(events, final=False):
            pass
        return events

    def finish(self) -> list[tuple[str, object]]:
        """Hand out everything held back (the text ended, so no tag can complete now)."""
        events: list[tuple[str, object]] = []
        while self._advance(events, final=True):
            pass
        return events

    def _tags(self) -> tuple[str, ...]:
        if self.mode == "reasoning":
            return (THINK_CLOSE,)
        if self.mode == "tool":
            return (CALL_CLOSE,)
        tags = (CALL_OPEN,) if self.tools else ()
        return tags + (() if self.content_started else (THINK_OPEN,))

    def _advance(self, events: list, final: bool) -> bool:
        """Consume the buffer up to the next tag (or all that is safe); True if a tag was found."""
        if self.strip_lead and self.mode != "tool":
            self.buffer = self.buffer.lstrip() if self.mode == "content" else self.buffer.lstrip("\n")
            if not self.buffer:
                return False
        tags = self._tags()
        found = [(i, tag) for tag in tags if (i := self.buffer.find(tag)) >= 0]
        if found:
            i, tag = min(found)
            before, self.buffer = self.buffer[:i], self.buffer[i + len(tag) :]
            if tag == THINK_OPEN and before.strip():  # "<think>" after answer text is just text
                self._emit(events, before + tag)
                return True
            self._tag(events, before, tag)
            return True
        if self.mode == "tool":
            if final:  # generation ended inside a call: try it anyway, else show the text
                self._end_call(events, self.buffer, closed=False)
                self.buffer = ""
            return False
        keep = 0 if final else _held_back(self.buffer, tags) if tags else 0
        if self.mode == "reasoning" and not final:  # the newline before </think> is not reasoning
            keep = max(keep, len(self.buffer) - len(self.buffer[: len(self.buffer) - keep].rstrip("\n")))
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        if self.mode == "reasoning" and final:
            out = out.rstrip("\n")
        self._emit(events, out)
        return False

    def _tag(self, events: list, before: str, tag: str) -> None:
        if tag == THINK_OPEN:
            self.mode, self.strip_lead = "reasoning", True
        elif tag == THINK_CLOSE:
            self._emit(events, before.rstrip("\n"))
            self.mode, self.strip_lead = "content", True
        elif tag == CALL_OPEN:
            self._emit(events, before)
            self.mode = "tool"
        else:  # CALL_CLOSE
            self._end_call(events, before, closed=True)

    def _end_call(self, events: list, body: str, closed: bool) -> None:
        self.mode, self.strip_lead = "content", True
        call = parse_tool_call(body.strip())
        if call is not None:
            self.calls += 1
            events.append(("tool_call", call))
        else:
            self._emit(events, CALL_OPEN + body + (CALL_CLOSE if closed else ""))

    def _emit(self, events: list, text: str) -> None:
        if not text:
            return
        self.strip_lead = False
        if self.mode == "reasoning":
            events.append(("reasoning", text))
            return
        self.content_started = True
        events.append(("content", text))


def parse_output(text: str, thinking: bool, tools: bool) -> tuple[str | None, str | None, list[dict]]:
    """The whole text at once -> (content, reasoning_content, tool_calls), None when empty."""
    parser = OutputParser(thinking, tools)
    parts: dict[str, list] = {"content": [], "reasoning": [], "tool_call": []}
    for kind, value in parser.feed(text) + parser.finish():
        parts[kind].append(value)
    return "".join(parts["content"]) or None, "".join(parts["reasoning"]) or None, parts["tool_call"]
