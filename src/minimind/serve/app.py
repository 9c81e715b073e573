"""The FastAPI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and the web chat page at /.

    app = create_app(model, tokenizer, name="minimind")
    uvicorn.run(app, host="127.0.0.1", port=8998)

Handlers only validate, render the prompt and turn the engine's output into OpenAI's
objects; generation happens in the scheduler thread (scheduler.py). Every error is OpenAI's
{"error": {...}} body with a 4xx status; an unexpected failure is a plain 500 with no trace.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from ..errors import MiniMindError
from ..infer.sequence import Completion, SamplingParams
from .scheduler import Job, QueueFull, Scheduler
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _Sampling,
    error_body,
    validation_error,
)
from .tools import OutputParser, parse_output

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health", "/", "/favicon.ico")  # with --api-key, these (and /static/) need no key
log = logging.getLogger("minimind.serve")


def create_app(model, tokenizer, name: str = "minimind", api_key: str | None = None,
               max_batch: int = 32, max_queue: int = 64) -> FastAPI:
    scheduler = Scheduler(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    created = int(time.time())
    context = model.config.max_position_embeddings
    template = tokenizer.chat_template or ""

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # ------------------------------------------------------------------ errors and auth
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        kind = "not_found" if e.status_code == 404 else None
        return JSONResponse(error_body(str(e.detail), code=kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):  # uvicorn logs the traceback; the client gets none
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    if api_key is not None:
        app.add_middleware(RequireKey, key=api_key)

    # ------------------------------------------------------------------ small routes
    model_card = {"id": name, "object": "model", "created": created, "owned_by": "minimind",
                  "max_model_len": context}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **scheduler.load}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        check_model(model_id)
        return model_card

    @app.get("/", include_in_schema=False)
    async def page():
        if not (STATIC / "index.html").is_file():
            raise APIError(404, "this installation has no web page", code="not_found")
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != name:
            raise APIError(404, f"model {requested!r} does not exist; this server serves {name!r}",
                           "model", "model_not_found")

    # ------------------------------------------------------------------ generation
    def submit(body: _Sampling, prompts: list[list[int]], limit: int | None, param: str) -> Job:
        """Check the prompts against the context, build each choice's sampling, queue the job."""
        requests = []
        logprobs, top_logprobs = body.logprob_settings()
        for ids in prompts:
            if len(ids) >= context:
                raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {context} "
                                    f"tokens, leaving no room for an answer", param, "context_length_exceeded")
            if not ids:
                raise APIError(400, "the prompt is empty", param)
            for i in range(body.n):
                seed = None if body.seed is None else body.seed + i  # n choices must differ
                requests.append((ids, SamplingParams(
                    max_new_tokens=min(limit or context, context - len(ids)), temperature=body.temperature,
                    top_k=body.top_k, top_p=body.top_p, repetition_penalty=body.repetition_penalty,
                    frequency_penalty=body.frequency_penalty, presence_penalty=body.presence_penalty,
                    stop_strings=tuple(body.stop or ()), seed=seed, stop_token_ids=() if body.ignore_eos else None,
                    logprobs=logprobs, top_logprobs=top_logprobs)))
        try:
            return scheduler.submit(requests, asyncio.get_running_loop())
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", code="rate_limit_exceeded", type="rate_limit_error") from None
        except MiniMindError as e:
            raise APIError(400, str(e), param) from None

    def render_chat(body: ChatRequest) -> tuple[list[int], bool, bool, str]:
        """The prompt ids, whether the prompt opened a <think> block, whether tools are
        offered, and the start of a forced tool call the prompt ends with ("" if none)."""
        tools = body.offered_tools()
        if tools and "tools" not in template:
            raise APIError(400, "this model's chat template does not support tools", "tools")
        forced = body.forced_call() if tools else ""
        thinking = body.thinking and not forced  # a forced call comes first: no think block
        try:
            # both names: minimind-3's template reads open_thinking, MiniMind2's enable_thinking
            text = tokenizer.apply_chat_template(body.template_messages(), tools=tools, add_generation_prompt=True,
                                                 open_thinking=thinking, enable_thinking=thinking)
        except MiniMindError as e:
            raise APIError(400, str(e), "messages") from None
        return tokenizer.encode(text + forced), text.endswith("<think>\n"), bool(tools), forced

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatRequest)
        check_model(body.model)
        ids, thinking, tools, forced = render_chat(body)
        job = submit(body, [ids], body.limit, "messages")
        meta = {"id": f"chatcmpl-{secrets.token_hex(12)}", "object": "chat.completion", "created": int(time.time()),
                "model": name}
        if body.stream:
            return sse(chat_stream(job, meta, len(ids), thinking, tools, body.include_usage, forced, tokenizer))
        done = await until_disconnect(request, job, collect(job))
        choices = []
        for i, c in enumerate(done):
            content, reasoning, calls = parse_output(forced + c.text, thinking, tools)
            message = {"role": "assistant", "content": content if content or calls else ""}
            if reasoning is not None:
                message["reasoning_content"] = reasoning
            if calls:
                message["tool_calls"] = calls
            choices.append({"index": i, "message": message, "logprobs": chat_logprobs(tokenizer, shown(c)),
                            "finish_reason": finish_reason(c, bool(calls))})
        return {**meta, "choices": choices, "usage": usage([len(ids)], done)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest)
        check_model(body.model)
        prompts = body.prompts(tokenizer)
        bad = [t for p in prompts for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {model.config.vocab_size})", "prompt")
        job = submit(body, prompts, body.max_tokens, "prompt")
        meta = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": name}
        echo = [tokenizer.decode(p, skip_special_tokens=True) if body.echo else "" for p in prompts for _ in range(body.n)]
        if body.stream:
            return sse(text_stream(job, meta, echo, [len(p) for p in prompts], body.include_usage, tokenizer))
        done = await until_disconnect(request, job, collect(job))
        choices = [{"index": i, "text": echo[i] + c.text, "logprobs": text_logprobs(tokenizer, shown(c)),
                    "finish_reason": finish_reason(c, False)} for i, c in enumerate(done)]
        return {**meta, "choices": choices,
                "usage": usage([len(p) for p in prompts], done)}

    return app


# ---------------------------------------------------------------------- helpers


class RequireKey:
    """ASGI middleware: every path but /health and the web page needs `Authorization: Bearer KEY`.

    A plain ASGI class, not @app.middleware("http"): that wrapper buffers streamed responses
    through a task and hides the client's disconnect from the stream, so generation for a
    client that went away would run on."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "http" and path not in OPEN_PATHS and not path.startswith("/static/"):
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(given.strip(), self.key):
                response = JSONResponse(error_body("missing or wrong API key (send Authorization: Bearer KEY)",
                                                   code="invalid_api_key"), status_code=401)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def parse(request: Request, model: type[_Sampling]) -> _Sampling:
    """The JSON body as `model`, whatever the Content-Type says (curl -d sends a form type)."""
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", None, "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


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
    return None if c.logprobs is None else c.logprobs[:len(c.token_ids)]


def chat_logprobs(tokenizer, entries: list | None) -> dict | None:
    """OpenAI's chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if entries is None:
        return None

    def one(token_id: int, logprob: float) -> dict:
        raw = tokenizer.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def text_logprobs(tokenizer, entries: list | None, offset: int = 0) -> dict | None:
    """The legacy /v1/completions `logprobs` object: parallel lists per token."""
    if entries is None:
        return None
    text = lambda t: tokenizer.token_bytes(t).decode("utf-8", errors="replace")  # noqa: E731
    tokens = [text(e.token_id) for e in entries]
    offsets = list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=offset)) if tokens else []
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text(t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


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
    return task.result()


def finish_reason(c: Completion, called: bool) -> str:
    if c.finish_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def usage(prompt_lengths: list[int], done: list[Completion]) -> dict:
    prompt, completion = sum(prompt_lengths), sum(c.completion_tokens for c in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(events) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def data(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def chat_stream(job: Job, meta: dict, prompt_len: int, thinking: bool, tools: bool, include_usage: bool,
                      forced: str = "", tokenizer=None):
    """Server-sent events: a role delta per choice, then reasoning / content / tool_calls
    deltas as text arrives, a final chunk with finish_reason per choice, usage, [DONE].
    `forced`: the start of a tool call the prompt ended with, parsed as if generated.
    With logprobs, each chunk carries those of the tokens behind its text."""
    base = {**meta, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, delta: dict, reason: str | None = None, logprobs: dict | None = None) -> str:
        return data({**base, "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
                     **extra})

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


async def text_stream(job: Job, meta: dict, echo: list[str], prompt_lengths: list[int], include_usage: bool,
                      tokenizer=None):
    """/v1/completions streamed: text chunks per choice, a finish chunk each, usage, [DONE]."""
    base = meta
    extra = {"usage": None} if include_usage else {}

    def chunk(i: int, text: str, reason: str | None = None, logprobs: dict | None = None) -> str:
        return data({**base, "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": reason}],
                     **extra})

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
