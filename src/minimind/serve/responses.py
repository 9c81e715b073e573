"""Turning the engine's output into OpenAI's objects: whole replies, server-sent event
streams (chat and text), log-probabilities, finish reasons and usage."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging

from fastapi import Request
from fastapi.responses import StreamingResponse

from ..infer.sequence import Completion
from .guard import ClientGone
from .protocol import APIError, error_body
from .scheduler import Job
from .tools import OutputParser

log = logging.getLogger("minimind.serve")


async def collect(job: Job) -> list[Completion]:
    done: list[Completion | None] = [None] * len(job.sequences)
    async for i, _, completion, _ in job:
        if completion is not None:
            if completion.finish_reason == "error":  # this request's settings broke its sampling
                raise APIError(400, completion.error)
            done[i] = completion
    return done


def shown(c: Completion) -> list | None:
    """The completion's log-probabilities without the stop token's (it is not in the text)."""
    return None if c.logprobs is None else c.logprobs[: len(c.token_ids)]


def chat_logprobs(tokenizer, entries: list | None) -> dict | None:
    """OpenAI's chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if entries is None:
        return None

    def one(token_id: int, logprob: float) -> dict:
        raw = tokenizer.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]
    }


def text_logprobs(tokenizer, entries: list | None, offset: int = 0) -> dict | None:
    """The legacy /v1/completions `logprobs` object: parallel lists per token."""
    if entries is None:
        return None
    text = lambda t: tokenizer.token_bytes(t).decode("utf-8", errors="replace")  # noqa: E731
    tokens = [text(e.token_id) for e in entries]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else []
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


async def until_disconnect(request: Request, job: Job, work):
    """Await `work`, but cancel the job if the client hangs up first (non-streaming requests
    get no other signal: the handler would wait for a reply nobody reads)."""

    async def hung_up():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watcher = asyncio.ensure_future(work), asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            job.cancel()
    if not task.done() or task.cancelled():  # the client hung up: let the work end, answer nobody
        await asyncio.wait({task})
        raise ClientGone()
    return task.result()


def finish_reason(c: Completion, called: bool) -> str:
    if c.finish_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def usage(prompt_lengths: list[int], done: list[Completion]) -> dict:
    prompt, completion = sum(prompt_lengths), sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(events) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def data(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def chat_stream(
    job: Job,
    meta: dict,
    prompt_len: int,
    thinking: bool,
    tools: bool,
    include_usage: bool,
    forced: str = "",
    tokenizer=None,
):
    """Server-sent events: a role delta per choice, then reasoning / content / tool_calls
    deltas as text arrives, a final chunk with finish_reason per choice, usage, [DONE].
    `forced`: the start of a tool call the prompt ended with, parsed as if generated.
    With logprobs, each chunk carries those of the tokens behind its text."""
    base = {**meta, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, delta: dict, reason: str | None = None, logprobs: dict | None = None) -> str:
        return data(
            {**base, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}], **extra}
        )

    n = len(job.sequences)
    parsers = [OutputParser(thinking, tools, forced) for _ in range(n)]
    calls = [0] * n  # tool calls sent per choice (their index in the delta)
    pending: list[list] = [[] for _ in range(n)]  # log-probabilities not yet sent, per choice
    done: list[Completion] = []
    try:
        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for i, piece, completion, logprobs in job:
            if completion is not None and completion.finish_reason == "error":
                raise APIError(400, completion.error)
            pending[i] += logprobs
            events = parsers[i].feed(piece) + (parsers[i].finish() if completion is not None else [])
            for kind, value in events:
                lp, pending[i] = chat_logprobs(tokenizer, pending[i]) if pending[i] else None, []
                if kind == "tool_call":
                    yield chunk(i, {"tool_calls": [{"index": calls[i], **value}]}, logprobs=lp)
                    calls[i] += 1
                else:
                    yield chunk(i, {"reasoning_content" if kind == "reasoning" else "content": value}, logprobs=lp)
            if completion is not None:
                done.append(completion)
                lp = chat_logprobs(tokenizer, pending[i]) if pending[i] else None
                yield chunk(i, {}, finish_reason(completion, calls[i] > 0), lp)
        if include_usage:
            yield data({**base, "choices": [], "usage": usage([prompt_len], done)})
    except APIError as e:  # the status is already sent: say it in-band
        yield data(e.body())
    except Exception:  # the engine failed mid-stream: the status is already sent, say so in-band
        log.exception("generation failed")
        yield data(error_body("generation failed", "server_error"))
    finally:
        job.cancel()  # the client went away (or we are done): stop generating
    yield "data: [DONE]\n\n"


async def text_stream(
    job: Job, meta: dict, echo: list[str], prompt_lengths: list[int], include_usage: bool, tokenizer=None
):
    """/v1/completions streamed: text chunks per choice, a finish chunk each, usage, [DONE]."""
    base = meta
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, text: str, reason: str | None = None, logprobs: dict | None = None) -> str:
        return data(
            {**base, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}], **extra}
        )

    done: list[Completion] = []
    offsets = [len(text) for text in echo]  # where each choice's next token starts in its text
    try:
        for i, text in enumerate(echo):
            if text:
                yield chunk(i, text)
        async for i, piece, completion, logprobs in job:
            if completion is not None and completion.finish_reason == "error":
                raise APIError(400, completion.error)
            if piece or logprobs:
                lp = text_logprobs(tokenizer, logprobs, offsets[i]) if logprobs else None
                offsets[i] += len(piece)
                yield chunk(i, piece, logprobs=lp)
            if completion is not None:
                done.append(completion)
                yield chunk(i, "", finish_reason(completion, False))
        if include_usage:
            yield data({**base, "choices": [], "usage": usage(prompt_lengths, done)})
    except APIError as e:
        yield data(e.body())
    except Exception:
        log.exception("generation failed")
        yield data(error_body("generation failed", "server_error"))
    finally:
        job.cancel()
    yield "data: [DONE]\n\n"
