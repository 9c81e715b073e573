"""`minimind data check`: validate a data file and measure it, without training.

For each file: how many records are valid, what they contain (messages, tool calls, reasoning,
...), and with a tokenizer, how many tokens they make, how many carry loss, and the
distribution of tokens per record (min/p50/p90/p99/max), so --seq-len can be chosen knowingly.
Every problem is listed as FILE:LINE: what is wrong. Nothing is written to disk.
"""

from __future__ import annotations

from array import array

import numpy as np

from .formats import BadRecord, BadRecords, check_kind, check_record, iter_lines
from .sft import AssistantMasker, ChatRenderer

CHUNK = 2048


def _prompt_messages(messages: list[dict]) -> list[dict]:
    """An RL prompt: the conversation without its trailing placeholder assistant reply."""
    return messages[:-1] if messages and messages[-1].get("role") == "assistant" else messages


def guess_kind(record) -> str | None:
    """Which kind a record looks like, from its keys (for a hint when --kind seems wrong)."""
    if not isinstance(record, dict):
        return None
    if "chosen" in record or "rejected" in record:
        return "dpo"
    if "conversations" in record:
        return "rl" if "gt" in record else "sft"
    return "pretrain" if "text" in record else None


def _token_counts(kind: str, records: list[dict], tokenizer, renderer, masker):
    """Per record: (tokens, length that must fit a row, loss tokens or None, problem or None)."""
    if kind == "pretrain":
        extra = (tokenizer.bos_token_id is not None) + (tokenizer.eos_token_id is not None)
        n = [len(x) + extra for x in tokenizer.encode_batch([r["text"] for r in records], plain_text=True)]
        return n, n, None, [None] * len(records)
    if kind == "rl":
        texts = [
            tokenizer.apply_chat_template(_prompt_messages(r["conversations"]), add_generation_prompt=True)
            for r in records
        ]
        n = [len(x) for x in tokenizer.encode_batch(texts)]
        return n, n, None, [None] * len(records)
    if kind == "dpo":  # both sides; the longer one is what has to fit in a row
        sides = [r[s] for r in records for s in ("chosen", "rejected")]
    else:
        sides = [r["conversations"] for r in records]
    problems = []
    encoded = tokenizer.encode_batch([renderer(m) for m in sides])
    lengths = np.array([len(x) for x in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((t for x in encoded for t in x), dtype=np.int64, count=int(offsets[-1]))
    mask, per_doc, unclosed = masker.mask(flat, offsets)
    loss = np.add.reduceat(mask.astype(np.int64), offsets[:-1]) if len(mask) else np.zeros(len(sides), np.int64)
    for d, messages in enumerate(sides):
        expected = sum(m.get("role") == "assistant" for m in messages)
        problems.append(
            None
            if per_doc[d] == expected and not unclosed[d]
            else f"found {per_doc[d] - unclosed[d]} of {expected} assistant turns after applying the chat template"
        )
    if kind == "dpo":
        lengths, loss = lengths.reshape(-1, 2), loss.reshape(-1, 2)
        return (
            lengths.sum(1).tolist(),
            lengths.max(1).tolist(),
            loss.sum(1).tolist(),
            [a or b for a, b in zip(problems[::2], problems[1::2])],
        )
    return lengths.tolist(), lengths.tolist(), loss.tolist(), problems


def check_file(
    path,
    kind: str,
    tokenizer=None,
    stop_at_first: bool = False,
    limit: int | None = None,
    seq_len: int | None = None,
    keep_problems: int = 20,
) -> dict:
    """Validate (and, with a tokenizer, measure) one file. Returns a report dict for format_report."""
    check_kind(kind)
    report = {"path": str(path), "kind": kind, "records": 0, "valid": 0, "counts": {}, "tokenizer": None}
    bad = BadRecords(keep=keep_problems)
    renderer = masker = None
    if tokenizer is not None:
        report["tokenizer"] = tokenizer.source
        if kind in ("sft", "dpo"):
            renderer, masker = ChatRenderer(tokenizer), AssistantMasker(tokenizer)
    lengths, losses = array("q"), array("q")
    report["tokens"] = 0
    pending: list[tuple[int, dict]] = []

    def flush():
        if tokenizer is None or not pending:
            pending.clear()
            return
        tokens, fit, loss, problems = _token_counts(kind, [r for _, r in pending], tokenizer, renderer, masker)
        for i, (line, _) in enumerate(pending):
            if problems[i]:
                bad.add(f"{path}:{line}: {problems[i]}")
                report["valid"] -= 1
                continue
            report["tokens"] += tokens[i]
            lengths.append(fit[i])
            if loss is not None:
                losses.append(loss[i])
        pending.clear()

    for line, value in iter_lines(path):
        if limit is not None and report["records"] >= limit:
            break
        report["records"] += 1
        try:
            if isinstance(value, BadRecord):
                raise value
            info = check_record(value, kind)
        except BadRecord as e:
            bad.add(f"{path}:{line}: {e}")
            guess = guess_kind(value)
            if guess and guess != kind and "hint" not in report:
                report["hint"] = f"line {line} looks like {guess} data: did you mean --kind {guess}?"
            if stop_at_first:
                break
            continue
        report["valid"] += 1
        for k, v in info.items():
            report["counts"][k] = report["counts"].get(k, 0) + v
        pending.append((line, value))
        if len(pending) >= CHUNK:
            flush()
    flush()
    if report["records"] == 0 and limit != 0:  # training on it would fail later, less clearly
        bad.add(f"{path}: no records (the file is empty or has only blank lines)")
    report["problems"], report["problem_examples"] = bad.count, bad.examples
    if tokenizer is None or not len(lengths):
        report["tokens"] = None
    else:
        a = np.frombuffer(lengths, dtype=np.int64)
        report["loss_tokens"] = int(np.frombuffer(losses, dtype=np.int64).sum()) if len(losses) else None
        report["distribution"] = {
            "min": int(a.min()),
            "p50": int(np.percentile(a, 50)),
            "p90": int(np.percentile(a, 90)),
            "p99": int(np.percentile(a, 99)),
            "max": int(a.max()),
            "mean": float(a.mean()),
        }
        if seq_len:
            report["seq_len"] = seq_len
            report["longer_than_seq_len"] = int((a > seq_len).sum())
    return report


def _n(x) -> str:
    return f"{x:,}"


def format_report(r: dict) -> str:
    """The human-readable report of one file."""
    c = r["counts"]
    lines = [
        f"{r['path']}  ({r['kind']})",
        f"  records    {_n(r['records'])} read, {_n(r['valid'])} valid, {_n(r['problems'])} with problems",
    ]
    if r["kind"] == "pretrain" and c:
        lines.append(f"  text       {_n(c['chars'])} characters")
        if c.get("control_tokens"):
            lines.append(
                f"  note       {_n(c['control_tokens'])} records contain special tokens written as text "
                "(<|im_start|>, <|im_end|>, ...): they are trained as plain text, never as the special ids"
            )
    elif c:
        lines.append(
            f"  messages   {_n(c['messages'])} ({_n(c['assistant'])} assistant turns, "
            f"{_n(c['tool_calls'])} tool calls, {_n(c['reasoning'])} with reasoning)"
        )
        if r["kind"] == "rl":
            lines.append(
                f"  rl         {_n(c.get('with_gt', 0))} prompts with gt answers, "
                f"{_n(c.get('agent', 0))} offering tools (agent RL)"
            )
    if r.get("tokens") is not None:
        tok = f"  tokens     {_n(r['tokens'])}"
        if r.get("loss_tokens") is not None:
            share = r["loss_tokens"] / max(r["tokens"], 1)
            tok += f", of which {_n(r['loss_tokens'])} trained (assistant turns, {share:.0%})"
        lines.append(tok)
        d = r["distribution"]
        unit = {"dpo": "pair (longer side)", "rl": "prompt"}.get(r["kind"], "record")
        lines.append(
            f"  length     tokens per {unit}: min {_n(d['min'])}, p50 {_n(d['p50'])}, p90 {_n(d['p90'])}, "
            f"p99 {_n(d['p99'])}, max {_n(d['max'])} (mean {d['mean']:,.0f})"
        )
        if "seq_len" in r:
            action = "split into pieces" if r["kind"] == "pretrain" else "truncated"
            share = r["longer_than_seq_len"] / max(r["valid"], 1)
            lines.append(
                f"  seq-len    {_n(r['longer_than_seq_len'])} records ({share:.1%}) are longer than "
                f"{r['seq_len']} tokens and would be {action}"
            )
    elif r["tokenizer"] is None:
        lines.append("  tokens     (pass --tokenizer DIR to count tokens)")
    if r["problems"]:
        lines.append(f"  problems   {_n(r['problems'])}:")
        lines += [f"    {p}" for p in r["problem_examples"]]
        if r["problems"] > len(r["problem_examples"]):
            lines.append(f"    ... and {_n(r['problems'] - len(r['problem_examples']))} more")
        if r.get("hint"):
            lines.append(f"  hint       {r['hint']}")
    else:
        lines.append("  problems   none")
    return "\n".join(lines)
