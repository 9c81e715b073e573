"""Black-box distillation data: `minimind generate-data` has a teacher answer prompts and writes
the conversations as SFT data, which `minimind sft` then trains a student on.

    minimind generate-data --model out/teacher --prompts prompts.txt --out teacher_sft.jsonl
    minimind sft --init out/student --data teacher_sft.jsonl --out out/student_bb

Prompts are a plain-text file (one user message per line) or a JSONL file of conversations
(SFT or RL format): each prompt is its conversation up to the last user message, so an
existing answer is replaced by the teacher's. Only the teacher's text is needed, never its
logits, so the teacher may be any model `minimind chat` can load (MiniMind's "black-box
distillation" is this: SFT on a stronger model's answers).

Safe to stop at any time: answers are appended to OUT.partial (fsynced per batch) and OUT.progress.json
records how far it got; running the same command again continues there, and OUT appears, by a
rename, only when every prompt is done. Each batch samples with seed + batch number, so a
resumed run writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

from ..checkpoint import load
from ..data.formats import BadRecord, check_messages, read_records
from ..device import resolve_device, resolve_inference_dtype
from ..errors import MiniMindError
from ..files import atomic_write_text, read_json
from . import SamplingParams, chat_prompt, generate


def read_prompts(path) -> list[tuple[str, list[dict]]]:
    """(FILE:LINE, messages ending with a user message) for every prompt in the file."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"--prompts {path}: file not found")
    prompts = []
    if path.suffix == ".jsonl":
        # RL format rules: a user message is required, a trailing assistant reply is optional.
        for r in read_records(path, "rl"):
            messages = r.data["conversations"]
            last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
            prompts.append((f"{path}:{r.line}", messages[: last_user + 1]))
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise MiniMindError(f"--prompts {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        for number, line in enumerate(lines, start=1):
            if line.strip():
                messages = [{"role": "user", "content": line.strip()}]
                try:
                    check_messages(messages, need_assistant=False)
                except BadRecord as e:
                    raise MiniMindError(f"{path}:{number}: {e}") from None
                prompts.append((f"{path}:{number}", messages))
    if not prompts:
        raise MiniMindError(f"--prompts {path}: no prompts in the file")
    return prompts


def encode_prompts(prompts, tokenizer, max_positions: int, think: bool) -> list[list[int]]:
    """Token ids of each prompt through the chat template; a prompt that leaves the model no
    room to answer is an error naming its line, before anything is generated."""
    encoded = []
    for where, messages in prompts:
        try:
            ids = chat_prompt(tokenizer, messages, open_thinking=think)
        except MiniMindError as e:
            raise MiniMindError(f"{where}: {e}") from None
        if len(ids) >= max_positions:
            raise MiniMindError(f"{where}: the prompt has {len(ids)} tokens, the teacher's context is {max_positions}")
        encoded.append(ids)
    return encoded


def answer_message(text: str, think: bool) -> dict:
    """The assistant message for a generated text. With --think the prompt opened a <think>
    block, so the text is `reasoning </think> answer`; the reasoning goes to reasoning_content
    (the field the chat template and MiniMind's data use)."""
    if not think:
        return {"role": "assistant", "content": text.strip()}
    if "</think>" not in text:  # never closed its reasoning: no answer
        return {"role": "assistant", "content": ""}
    reasoning, answer = text.split("</think>", 1)
    return {"role": "assistant", "content": answer.strip(), "reasoning_content": reasoning.strip()}


def _drop_reason(message: dict, finish_reason: str, keep_truncated: bool) -> str | None:
    """Why a generated answer is not written (None: it is)."""
    if finish_reason == "length" and not keep_truncated:
        return "truncated"
    if not message["content"]:
        return "no answer"
    try:
        check_messages([{"role": "user", "content": "x"}, message])
    except BadRecord:
        return "invalid"
    return None


def generate_data(
    model_dir,
    prompts_path,
    out,
    *,
    params,
    batch_size: int = 16,
    think: bool = False,
    keep_truncated: bool = False,
    limit: int | None = None,
    force: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    say=print,
) -> dict:
    """Answer every prompt with the teacher and write SFT JSONL to `out` (resumable, see the
    module docstring). `params` is the SamplingParams; its seed is the base seed. Returns the
    summary (also printed through `say`)."""
    out = Path(out)
    if batch_size < 1:
        raise MiniMindError(f"--batch-size must be at least 1, got {batch_size}")
    if out.exists() and not force:
        raise MiniMindError(f"{out}: already exists (use --force to write it again)")
    partial, progress_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress.json")
    prompts = read_prompts(prompts_path)[:limit]
    dev = resolve_device(device)
    model, tokenizer = load(model_dir, device=dev, dtype=resolve_inference_dtype(dtype, dev))
    ids = encode_prompts(prompts, tokenizer, model.config.max_position_embeddings, think)

    settings = {
        "model": str(Path(model_dir).resolve()),
        "prompts": str(Path(prompts_path).resolve()),
        "n_prompts": len(prompts),
        "batch_size": batch_size,
        "think": think,
        "keep_truncated": keep_truncated,
        "sampling": asdict(params),
    }
    state = {"done": 0, "bytes": 0, "written": 0, "tokens": 0, "finish": {}, "dropped": {}}
    if partial.exists() and progress_file.exists() and not force:
        saved = read_json(progress_file)
        if saved.get("settings") != json.loads(json.dumps(settings)):
            raise MiniMindError(
                f"{partial}: left by a run with other settings; run it with the same ones to "
                "continue, or pass --force to start again"
            )
        state = saved["state"]
        say(f"resuming: {state['done']}/{len(prompts)} prompts already answered")
    with open(partial, "r+b" if state["done"] else "wb") as f:
        f.truncate(state["bytes"])  # drop lines a killed run wrote after its last progress record
    finish, dropped = Counter(state["finish"]), Counter(state["dropped"])
    started = time.perf_counter()
    for first in range(state["done"], len(prompts), batch_size):
        batch_params = replace(params, seed=None if params.seed is None else params.seed + first // batch_size)
        done = generate(model, tokenizer, ids[first : first + batch_size], batch_params)
        lines = []
        for (_, messages), c in zip(prompts[first : first + batch_size], done):
            finish[c.finish_reason] += 1
            state["tokens"] += c.completion_tokens
            message = answer_message(c.text, think)
            reason = _drop_reason(message, c.finish_reason, keep_truncated)
            if reason:
                dropped[reason] += 1
                continue
            lines.append(json.dumps({"conversations": [*messages, message]}, ensure_ascii=False) + "\n")
        with open(partial, "ab") as f:
            f.write("".join(lines).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
            state["bytes"] = f.tell()
        state.update(
            done=min(first + batch_size, len(prompts)),
            written=state["written"] + len(lines),
            finish=dict(finish),
            dropped=dict(dropped),
        )
        atomic_write_text(progress_file, json.dumps({"settings": settings, "state": state}, indent=1))
        rate = state["tokens"] / max(time.perf_counter() - started, 1e-9)
        say(
            f"{state['done']}/{len(prompts)} prompts, {state['written']} written, {state['tokens']:,} tokens "
            f"({rate:,.0f} tokens/s this run)"
        )
    os.replace(partial, out)
    progress_file.unlink(missing_ok=True)
    summary = {
        "out": str(out),
        "prompts": len(prompts),
        "written": state["written"],
        "tokens": state["tokens"],
        "finish_reasons": dict(finish),
        "dropped": dict(dropped),
    }
    drops = ", ".join(f"{n} {why}" for why, n in sorted(dropped.items())) or "none"
    say(
        f"wrote {out}: {state['written']} conversations from {len(prompts)} prompts, {state['tokens']:,} tokens "
        f"generated; finish reasons {dict(finish)}; dropped: {drops}"
    )
    return summary


def generate_data_main(args) -> None:
    """`minimind generate-data` (its flags are defined in cli.py)."""
    params = SamplingParams.from_flags(args)
    generate_data(
        args.model,
        args.prompts,
        args.out,
        params=params,
        batch_size=args.batch_size,
        think=args.think,
        keep_truncated=args.keep_truncated,
        limit=args.limit,
        force=args.force,
        device=args.device,
        dtype=args.dtype,
    )
