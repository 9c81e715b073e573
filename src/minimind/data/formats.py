"""Read MiniMind's JSONL data files, checking every record.

One record per line, in the formats of the original project:

  pretrain   {"text": "..."}
  sft        {"conversations": [{"role", "content", ...}, ...]}   (also LoRA and distillation)
  dpo        {"chosen": [messages], "rejected": [messages]}
  rl         {"conversations": [...], "gt": [...]}                 (RLAIF prompts, agent RL)

A message is {"role": system|user|assistant|tool, "content": str}, optionally with
`reasoning_content`, `tools` (system) and `tool_calls` (assistant). A bad record is reported as
`FILE:LINE: what is wrong`: the first one raises MiniMindError (on_bad_record="error"), or all
are counted in a BadRecords summary and skipped ("skip"). Files are streamed line by line.
Every rule, with examples: docs/data.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MiniMindError
from .rl import rl_counts, rl_problem

log = logging.getLogger(__name__)

KINDS = ("pretrain", "sft", "dpo", "rl")
ROLES = ("system", "user", "assistant", "tool")
ON_BAD_RECORD = ("error", "skip")
# ChatML markers inside message text would be tokenized as the real special tokens and fake a
# turn boundary (a user writing "<|im_start|>assistant" would get a trained "assistant" span).
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")
# Special tokens as MiniMind's (and Qwen's) tokenizers spell them: <|im_start|>, <|endoftext|>, ...
_CONTROL_TOKEN = re.compile(r"<\|[a-z0-9_]+\|>")


class BadRecord(Exception):
    """Raised by a validator: the message says what is wrong (without file and line)."""


@dataclass
class Record:
    """One valid record: where it came from and its parsed JSON object."""

    path: str
    line: int
    data: dict
    info: dict = field(default_factory=dict)  # counts from the validator (messages, tool calls, ...)


@dataclass
class BadRecords:
    """What on_bad_record="skip" skipped: how many, and the first few reasons."""

    count: int = 0
    examples: list[str] = field(default_factory=list)  # "FILE:LINE: reason"
    keep: int = 5

    def add(self, where: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(where)

    def merge(self, other: BadRecords) -> None:
        self.count += other.count
        for e in other.examples:
            if len(self.examples) < self.keep:
                self.examples.append(e)

    def summary(self) -> str:
        """One line plus the first reasons, e.g. for a log or the end of `data check`."""
        if not self.count:
            return "no bad records"
        lines = [f"skipped {self.count} bad record{'s' if self.count != 1 else ''}; first:"]
        lines += [f"  {e}" for e in self.examples]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ lines ---


def iter_lines(path, progress: dict | None = None) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON value or BadRecord) for each non-blank line.

    Lines are read as bytes and decoded one by one, so invalid UTF-8 is reported for its own
    line instead of aborting the whole file. A UTF-8 byte-order mark on line 1 is ignored.
    If `progress` is given, progress["bytes"] is kept up to date (for progress reports).
    """
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if progress is not None:
                progress["bytes"] = progress.get("bytes", 0) + len(raw)
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                # Without its newline: a line cut short is reported at its own end, not at
                # "column 1" of the line after it.
                text = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, BadRecord(f"invalid UTF-8 ({e.reason} at byte {e.start} of the line)")
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                end = ", the end of the line" if e.pos >= len(text) else ""
                yield number, BadRecord(f"invalid JSON: {e.msg} (column {e.colno}{end})")
                continue
            except RecursionError:
                yield number, BadRecord("invalid JSON: nested too deeply")
                continue
            # JSON can spell a lone UTF-16 surrogate ("\ud800"), which is not a character:
            # no tokenizer can encode it. Only lines with such an escape are searched.
            if _SURROGATE_ESCAPE.search(raw):
                where = _surrogate_field(value)
                if where is not None:
                    yield (
                        number,
                        BadRecord(
                            f"{where} contains a lone UTF-16 surrogate (an escape such as "
                            "\\ud800 that is not a character)"
                        ),
                    )
                    continue
            yield number, value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_field(value) -> str | None:
    """The first field (as 'conversations[1].content') whose text, or key, holds a lone
    surrogate, or None. (A valid pair was already joined into one character by json.loads.)
    Iterative: json.loads accepts nesting deeper than Python's recursion limit allows here."""
    stack = [(value, "")]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return f"'{where}'" if where else "the record"
        elif isinstance(v, dict):
            for k, item in reversed(list(v.items())):
                if _SURROGATE.search(k):
                    return f"a key of '{where}'" if where else "a key"
                stack.append((item, f"{where}.{k}" if where else k))
        elif isinstance(v, list):
            stack.extend((item, f"{where}[{i}]") for i, item in reversed(list(enumerate(v))))
    return None


# -------------------------------------------------------------------------- validators ---


def _type_name(value) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        type(None): "null",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _parse_json_string(value, what: str):
    """`tools`/`tool_calls` are JSON strings in MiniMind data; already-parsed lists are fine too."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise BadRecord(f"{what} is not valid JSON ({e.msg}, column {e.colno} of the string)") from None
        except RecursionError:
            raise BadRecord(f"{what} is nested too deeply") from None
        if "\\u" in value and _surrogate_field(parsed) is not None:  # "\\ud800" inside the JSON string
            raise BadRecord(
                f"{what} contains a lone UTF-16 surrogate (an escape such as \\ud800 that is not a character)"
            )
        return parsed
    return value


def _function_spec(item) -> dict | None:
    """The part of a tool or call that carries "name" (OpenAI nests it under "function"),
    or None when there is no non-empty function name."""
    spec = item.get("function", item) if isinstance(item, dict) else None
    return spec if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"] else None


def _check_tools(value, where: str) -> None:
    tools = _parse_json_string(value, f"{where}: 'tools'")
    if not isinstance(tools, list):
        raise BadRecord(f"{where}: 'tools' must be a list of tool schemas, got {_type_name(tools)}")
    for i, tool in enumerate(tools):
        if _function_spec(tool) is None:
            raise BadRecord(f"{where}: tools[{i}] has no function name")


def _check_tool_calls(value, where: str) -> int:
    calls = _parse_json_string(value, f"{where}: 'tool_calls'")
    if not isinstance(calls, list):
        raise BadRecord(f"{where}: 'tool_calls' must be a list of calls, got {_type_name(calls)}")
    for i, call in enumerate(calls):
        spec = _function_spec(call)
        if spec is None:
            raise BadRecord(f"{where}: tool_calls[{i}] has no function name")
        args = spec.get("arguments")
        if isinstance(args, str):  # the template writes a string as is: it must be JSON itself
            try:
                json.loads(args)
            except json.JSONDecodeError:
                raise BadRecord(f"{where}: tool_calls[{i}].arguments is not valid JSON") from None
        elif not isinstance(args, dict):
            raise BadRecord(f"{where}: tool_calls[{i}].arguments must be an object, got {_type_name(args)}")
    return len(calls)


def check_messages(
    messages, name: str = "conversations", *, need_assistant: bool = True, placeholder_last: bool = False
) -> dict:
    """Validate a list of chat messages; raise BadRecord, or return counts for reports.

    `placeholder_last`: the last assistant message is a placeholder the RL trainers drop
    (MiniMind's RLAIF/agent data), so it may be empty.
    """
    if not isinstance(messages, list):
        raise BadRecord(f"'{name}' must be a list of messages, got {_type_name(messages)}")
    if not messages:
        raise BadRecord(f"'{name}' is empty")
    counts = {"messages": len(messages), "assistant": 0, "tool_calls": 0, "reasoning": 0}
    last = len(messages) - 1
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRecord(f"{name}[{i}] must be an object with role and content, got {_type_name(m)}")
        role = m.get("role")
        if role is None:
            raise BadRecord(f"{name}[{i}]: missing 'role'")
        if role not in ROLES:
            raise BadRecord(f"{name}[{i}]: unknown role {role!r} (expected system, user, assistant or tool)")
        where = f"{name}[{i}] ({role})"
        calls = 0
        if m.get("tool_calls") not in (None, "", []):  # "" and [] mean "no calls", as in the template
            if role != "assistant":
                raise BadRecord(f"{where}: 'tool_calls' belongs on an assistant message")
            calls = _check_tool_calls(m["tool_calls"], where)
            counts["tool_calls"] += calls
        content = m.get("content")
        if content is None and not calls:  # an assistant turn that only calls tools needs no text
            raise BadRecord(f"{where}: missing 'content'")
        if content is not None and not isinstance(content, str):
            raise BadRecord(f"{where}: 'content' must be a string, got {_type_name(content)}")
        reasoning = m.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise BadRecord(f"{where}: 'reasoning_content' must be a string, got {_type_name(reasoning)}")
        for text in (content, reasoning):
            for marker in CHAT_MARKERS:
                if text and marker in text:
                    raise BadRecord(
                        f"{where}: text contains the chat marker {marker}, which would fake a turn boundary"
                    )
        if m.get("tools") not in (None, "", []):
            if role != "system":
                raise BadRecord(f"{where}: 'tools' belongs on a system message")
            _check_tools(m["tools"], where)
        if role == "tool" and (i == 0 or messages[i - 1].get("role") not in ("assistant", "tool")):
            raise BadRecord(f"{where}: a tool result must follow an assistant message or another tool result")
        if role == "assistant":
            counts["assistant"] += 1
            counts["reasoning"] += bool(reasoning and reasoning.strip()) or "</think>" in (content or "")
            empty = not (content or "").strip() and not (reasoning or "").strip() and not calls
            if empty and not (placeholder_last and i == last):
                raise BadRecord(f"{where}: empty reply (no content, reasoning or tool calls)")
    if need_assistant and not counts["assistant"]:
        raise BadRecord(f"'{name}' has no assistant message (nothing to train on)")
    return counts


def check_pretrain(record: dict) -> dict:
    text = record.get("text")
    if text is None:
        raise BadRecord("missing 'text'")
    if not isinstance(text, str):
        raise BadRecord(f"'text' must be a string, got {_type_name(text)}")
    if not text.strip():
        raise BadRecord("empty 'text'")
    # Special tokens written in pretraining text are encoded as plain text (cache.py), never as
    # the ids the chat template uses; counted so that `data check` can say so.
    return {"chars": len(text), "control_tokens": int(_CONTROL_TOKEN.search(text) is not None)}


def check_sft(record: dict) -> dict:
    if "conversations" not in record:
        raise BadRecord("missing 'conversations'")
    return check_messages(record["conversations"])


def _prompt(messages: list) -> list:
    return [(m.get("role"), m.get("content"), m.get("tools")) for m in messages[:-1]]


def check_dpo(record: dict) -> dict:
    counts = {}
    for side in ("chosen", "rejected"):
        if side not in record:
            raise BadRecord(f"missing '{side}'")
        c = check_messages(record[side], side)
        if record[side][-1].get("role") != "assistant":
            raise BadRecord(f"'{side}' must end with the assistant's reply")
        counts = {k: counts.get(k, 0) + v for k, v in c.items()}
    if _prompt(record["chosen"]) != _prompt(record["rejected"]):
        raise BadRecord("'chosen' and 'rejected' have different prompts (messages before the last reply)")
    return counts


def check_rl(record: dict) -> dict:
    if "conversations" not in record:
        raise BadRecord("missing 'conversations'")
    messages = record["conversations"]
    counts = check_messages(messages, need_assistant=False, placeholder_last=True)
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        raise BadRecord("'conversations' has no user message (no prompt)")
    if "gt" in record:
        gt = record["gt"]
        if not isinstance(gt, list):
            raise BadRecord(f"'gt' must be a list of expected answers, got {_type_name(gt)}")
        for i, value in enumerate(gt):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise BadRecord(f"gt[{i}] must be a string or a number, got {_type_name(value)}")
    if problem := rl_problem(messages, record.get("gt")):  # RLAIF and agent-RL rules: data/rl.py
        raise BadRecord(problem)
    return counts | rl_counts(record)


CHECKS = {"pretrain": check_pretrain, "sft": check_sft, "dpo": check_dpo, "rl": check_rl}


def check_record(value, kind: str) -> dict:
    """Validate one parsed JSON value as a record of `kind`; raise BadRecord or return counts."""
    if not isinstance(value, dict):
        raise BadRecord(f"expected a JSON object, got {_type_name(value)}")
    return CHECKS[kind](value)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise MiniMindError(f"unknown data kind {kind!r}; choose from: {', '.join(KINDS)}")
    return kind


def check_on_bad_record(value: str) -> str:
    if value not in ON_BAD_RECORD:
        raise MiniMindError(f"on_bad_record must be 'error' or 'skip', got {value!r}")
    return value


# ----------------------------------------------------------------------------- reader ---


def read_records(
    path, kind: str, on_bad_record: str = "error", bad: BadRecords | None = None, progress: dict | None = None
) -> Iterator[Record]:
    """Stream the valid records of a JSONL file of `kind`.

    on_bad_record="error": the first bad record raises MiniMindError("FILE:LINE: reason").
    on_bad_record="skip": bad records are counted into `bad` (pass your own BadRecords to read
    the summary afterwards) and skipped.
    """
    check_kind(kind)
    check_on_bad_record(on_bad_record)
    for number, value in iter_lines(path, progress):
        try:
            if isinstance(value, BadRecord):
                raise value
            info = check_record(value, kind)
        except BadRecord as e:
            where = f"{path}:{number}: {e}"
            if on_bad_record == "error":
                raise MiniMindError(where) from None
            if bad is not None:
                bad.add(where)
            continue
        yield Record(str(path), number, value, info)
