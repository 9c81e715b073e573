"""Exact-match generation tasks: GSM8K-style math, answered through the chat template and scored by
the final number of the reply (numbers.py).

Data (JSONL; the format is recognised per record):
  {"question": "...", "answer": "... #### 72"}           openai/grade-school-math
  {"conversations": [..., {"role": "assistant", "content": ""}], "gt": ["72"]}   MiniMind's RL format
  {"conversations": [..., {"role": "assistant", "content": "...答案/Answer: 72"}]}  MiniMind's SFT format
    (the last assistant turn is the reference: its final number is the answer, the turns before it
    are the prompt)
Replies are generated greedily (temperature 0 by default) in batches with minimind.infer.generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.formats import BadRecord, check_rl, iter_lines
from ..errors import MiniMindError
from ..infer import SamplingParams, chat_prompt, generate
from .numbers import extract_answer, same_number, to_fraction


@dataclass
class Problem:
    messages: list[dict]  # the prompt: a conversation ending with a user turn
    answers: list[str]  # any of these is correct
    where: str  # FILE:LINE


def parse_problem(record, where: str) -> Problem:
    """One JSONL record as a Problem; BadRecord says what is wrong."""
    if not isinstance(record, dict):
        raise BadRecord("expected a JSON object")
    if "question" in record:
        answer = record.get("answer")
        if not isinstance(answer, str) or "####" not in answer:
            raise BadRecord("'answer' must be a string ending in '#### N' (the GSM8K format)")
        gt = answer.rsplit("####", 1)[1].strip().replace(",", "")
        return Problem([{"role": "user", "content": str(record["question"])}], [gt], where)
    if "conversations" not in record:
        raise BadRecord("expected {question, answer} (GSM8K) or {conversations[, gt]} (MiniMind)")
    messages = record["conversations"]
    check_rl(record)  # conversations well formed, a user turn, gt a list of strings/numbers
    if "gt" in record:
        if not record["gt"]:
            raise BadRecord("'gt' is empty (no expected answer)")
        if messages[-1].get("role") == "assistant":  # the RL format's empty placeholder reply
            messages = messages[:-1]
        return Problem(messages, [str(g) for g in record["gt"]], where)
    if messages[-1].get("role") != "assistant":
        raise BadRecord("no 'gt' and the conversation does not end with an assistant reply to take the answer from")
    answer, _ = extract_answer(messages[-1].get("content") or "")
    if answer is None:
        raise BadRecord("no 'gt' and the last assistant reply holds no number to take as the answer")
    return Problem(messages[:-1], [answer], where)


def read_problems(path: str | Path, limit: int | None = None) -> list[Problem]:
    """Every problem of a JSONL file (the first `limit`); the first bad record raises FILE:LINE: reason."""
    problems = []
    for number, value in iter_lines(path):
        if limit is not None and len(problems) >= limit:
            break
        where = f"{path}:{number}"
        try:
            if isinstance(value, BadRecord):
                raise value
            problem = parse_problem(value, where)
        except BadRecord as e:
            raise MiniMindError(f"{where}: {e}") from None
        if problem.messages[-1].get("role") != "user":
            raise MiniMindError(
                f"{where}: the prompt must end with a user turn, got {problem.messages[-1].get('role')!r}"
            )
        problems.append(problem)
    if not problems:
        raise MiniMindError(f"{path}: no problems")
    return problems


def is_correct(reply: str, answers: list[str]) -> tuple[bool, str | None, bool]:
    """(correct, extracted answer, explicit answer marker found) for one reply."""
    got, explicit = extract_answer(reply)
    return got is not None and any(same_number(got, a) for a in answers), got, explicit


def evaluate_exact_match(
    model,
    tokenizer,
    problems: list[Problem],
    thinking: bool = False,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    batch_size: int = 16,
    examples: int = 3,
    log=print,
    progress=None,
) -> dict:
    """Generate a reply to every problem and score it; the metrics/details part of a result.
    `progress(done, total)` is called after each batch (the CLI shows it on a terminal)."""
    for p in problems:
        if not any(to_fraction(a) is not None for a in p.answers):
            log(f"note: {p.where}: expected answer {p.answers} is not a number; compared as text")
            break
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=0)
    prompts = [chat_prompt(tokenizer, p.messages, open_thinking=thinking) for p in problems]
    context = model.config.max_position_embeddings
    for p, ids in zip(problems, prompts):
        if len(ids) >= context:
            raise MiniMindError(f"{p.where}: the prompt takes {len(ids)} tokens, the model's context is {context}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, c in zip(batch, generate(model, tokenizer, [prompts[i] for i in batch], params)):
            replies[i] = c
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    correct = explicit = truncated = 0
    shown = []
    for p, c in zip(problems, replies):
        ok, got, marked = is_correct(c.text, p.answers)
        correct, explicit, truncated = correct + ok, explicit + marked, truncated + (c.finish_reason == "length")
        if len(shown) < examples:
            shown.append(
                {"where": p.where, "expected": p.answers, "extracted": got, "correct": ok, "reply": c.text[-300:]}
            )
    n = len(problems)
    return {
        "metrics": {"accuracy": correct / n, "n": n, "format_ok": explicit / n, "truncated": truncated / n},
        "primary": "accuracy",
        "details": {"max_new_tokens": max_new_tokens, "temperature": temperature, "examples": shown},
    }
