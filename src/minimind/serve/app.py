"""The FastAPI app: OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus
/health and the web chat page at /.

    app = create_app(model, tokenizer, name="minimind")
    uvicorn.run(app, host="127.0.0.1", port=8998)

Handlers only validate, render the prompt and turn the engine's output into OpenAI's
objects; generation happens in the scheduler thread (scheduler.py). The CPU work before it
(JSON, validation, the chat template, tokenizing) runs in a worker thread, so a big request
never stalls the event loop: other clients' streams and /health go on. Every error is
OpenAI's {"error": {...}} body with a 4xx status; an unexpected failure is a plain 500 with
no trace.

Limits, each configurable (`minimind serve --help`): the body size (413), the number of
messages, and max_tokens (a default when the request has none, and a cap).

Without an API key, any web page the user visits could drive the server through the
browser. So, unless --allow-origin says otherwise, a server without a key answers only
requests whose Host is the address it is bound to (loopback names when bound to loopback:
no DNS rebinding), whose Origin, if any, is the page's own (the chat page at /), and whose
body is JSON (a cross-site form or text/plain post is refused). See `RequestGuard`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import logging
import secrets
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from ..errors import MiniMindError
from ..infer.sequence import Completion, SamplingParams
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _Sampling,
    decode_json,
    error_body,
    validation_error,
)
from .scheduler import Job, QueueFull, Scheduler
from .tools import OutputParser, parse_output

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/health", "/", "/favicon.ico")  # with --api-key, these (and /static/) need no key
log = logging.getLogger("minimind.serve")

# Server-side limits (the serve verb's flags). max_tokens: a chat request without one gets the
# default (/v1/completions keeps OpenAI's 16); none may ask for more than the limit (0 = the
# model's context). 4 MiB of JSON is several times the text a 32k-token context holds.
MAX_TOKENS_DEFAULT, MAX_TOKENS_LIMIT = 2048, 0
MAX_BODY_BYTES = 4 * 2**20
MAX_MESSAGES = 1024
PREPARING_AT_ONCE = 4  # requests rendered and tokenized at the same time (the rest wait their turn)


def create_app(model, tokenizer, name: str = "minimind", api_key: str | None = None,
               max_batch: int = 32, max_queue: int = 64, max_tokens_default: int = MAX_TOKENS_DEFAULT,
               max_tokens_limit: int = MAX_TOKENS_LIMIT, max_body: int = MAX_BODY_BYTES,
               max_messages: int = MAX_MESSAGES, host: str = "127.0.0.1",
               allow_origins: tuple[str, ...] = ()) -> FastAPI:
    """host: the address the server is bound to (for the Host check when there is no key).
    allow_origins: web origins ("http://host:port", or "*" for any) allowed to call the API
    from a browser (CORS); without a key they also lift the Host/Origin check for themselves."""
    scheduler = Scheduler(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    created = int(time.time())
    context = model.config.max_position_embeddings
    template = tokenizer.chat_template or ""
    max_tokens_limit = min(max_tokens_limit or context, context)  # 0: the context
    if max_tokens_default < 1:
        raise MiniMindError(f"the default max_tokens must be at least 1, got {max_tokens_default}")
    if max_body < 1 or max_messages < 1:
        raise MiniMindError("the body size and message count limits must be at least 1")
    allow_origins = tuple(check_origin(o) for o in allow_origins)
    preparing: list[anyio.CapacityLimiter] = []

    @asynccontextmanager
    async def lifespan(app):
        preparing.append(anyio.CapacityLimiter(PREPARING_AT_ONCE))
        scheduler.start()
        yield
        scheduler.stop()

    async def off_loop(work, *args):
        """Run CPU work (JSON, validation, template, tokenizer) in a worker thread."""
        return await anyio.to_thread.run_sync(work, *args, limiter=preparing[0] if preparing else None)

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    # ------------------------------------------------------------------ errors and auth
    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        kind = "not_found" if e.status_code == 404 else None
        return JSONResponse(error_body(str(e.detail), code=kind), status_code=e.status_code, headers=e.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request, e: ClientGone):  # nobody reads it; 499 is nginx's "client closed request"
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):  # uvicorn logs the traceback; the client gets none
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    # the last added is the outermost: CORS answers preflights before the key or guard is asked
    if api_key is not None:
        app.add_middleware(RequireKey, key=api_key)
    else:
        app.add_middleware(RequestGuard, host=host, allow_origins=allow_origins)
    if allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

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
    def token_budget(requested: int | None, default: int, param: str) -> int:
        """max_tokens for a request: the server's default when it asks for none, at most the limit."""
        if requested is None:
            return min(default, max_tokens_limit)
        if requested > max_tokens_limit:
            raise APIError(400, f"{param} is {requested}; this server allows at most {max_tokens_limit} "
                                f"(minimind serve --max-tokens-limit)", param)
        return requested

    def submit(body: _Sampling, prompts: list[list[int]], limit: int, param: str) -> Job:
        """Check the prompts against the context, build each choice's sampling, queue the job."""
        requests = []
        logprobs, top_logprobs = body.logprob_settings()
        if len(prompts) * body.n > max_queue:  # it could never be queued: not a "try again" (429)
            raise APIError(400, f"the request asks for {len(prompts) * body.n} completions (prompts x n); this "
                                f"server takes at most {max_queue} at once", param)
        for ids in prompts:
            if len(ids) >= context:
                raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is {context} "
                                    f"tokens, leaving no room for an answer", param, "context_length_exceeded")
            if not ids:
                raise APIError(400, "the prompt is empty", param)
            for i in range(body.n):
                seed = None if body.seed is None else body.seed + i  # n choices must differ
                requests.append((ids, SamplingParams(
                    max_new_tokens=min(limit, context - len(ids)), temperature=body.temperature,
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
        return encode([text + forced])[0], text.endswith("<think>\n"), bool(tools), forced

    def encode(texts: list[str]) -> list[list[int]]:
        # encode_batch, not encode: the tokenizer library holds the GIL through a whole encode()
        # (seconds for megabytes, and the event loop with it), but lets go of it in encode_batch
        return tokenizer.encode_batch(texts)

    def prepare_chat(raw: bytes):
        """The body, checked and rendered (in a worker thread)."""
        data = decode_json(raw)
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > max_messages:
            raise APIError(400, f"the request has {len(messages)} messages; this server takes at most "
                                f"{max_messages} (minimind serve --max-messages)", "messages")
        body = validated(data, ChatRequest)
        check_model(body.model)
        limit = token_budget(body.limit, max_tokens_default,
                             "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens")
        return body, limit, *render_chat(body)

    def prepare_completion(raw: bytes):
        body = validated(decode_json(raw), CompletionRequest)
        check_model(body.model)
        limit = token_budget(body.max_tokens, 16, "max_tokens")  # OpenAI's default for this endpoint
        prompts = body.prompts(encode)
        bad = [t for p in prompts for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {model.config.vocab_size})", "prompt")
        echo = [tokenizer.decode(p, skip_special_tokens=True) if body.echo else ""
                for p in prompts for _ in range(body.n)]
        return body, limit, prompts, echo

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body, limit, ids, thinking, tools, forced = await off_loop(prepare_chat, await read_body(request, max_body))
        job = submit(body, [ids], limit, "messages")
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
        body, limit, prompts, echo = await off_loop(prepare_completion, await read_body(request, max_body))
        job = submit(body, prompts, limit, "prompt")
        meta = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
                "model": name}
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


class RequestGuard:
    """ASGI middleware for a server without an API key: refuse what a web page could send
    through the user's browser (403 or 415, OpenAI's error body).

    - Host must name the address the server is bound to: loopback names (localhost,
      127.0.0.1, [::1]) when bound to loopback, an IP address or this machine's name when
      bound to all addresses (0.0.0.0, ::). A DNS-rebinding page reaches the server under its
      own domain name, which is refused.
    - Origin, when a browser sends one, must be the server's own (the chat page at /) or one
      of `allow_origins` ("*" lifts both checks).
    - A request with a body must say it is JSON (application/json or application/*+json): a
      cross-site <form> or a fetch with text/plain needs no CORS preflight, JSON does.
    A plain ASGI class for the reason given at RequireKey."""

    def __init__(self, app, host: str, allow_origins: tuple[str, ...] = ()):
        self.app = app
        self.any_origin = "*" in allow_origins
        self.origins = set(allow_origins)
        self.hosts = {host_name(o.split("://", 1)[1]) for o in allow_origins if "://" in o}
        self.bound = host_name(host) or host

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            problem = self.problem(scope["method"], headers)
            if problem is not None:
                status, message, code = problem
                return await JSONResponse(error_body(message, code=code), status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    def problem(self, method: str, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin", b"").decode("latin-1").lower().rstrip("/")
        if not self.any_origin:
            name = host_name(host)
            if host and not (name in self.hosts or host_allowed(name, self.bound)):
                return (403, f"Host {host!r} is not this server's address: without --api-key the server answers "
                             "only requests addressed to it (see minimind serve --allow-origin)", "forbidden_host")
            own = (f"http://{host}".lower(), f"https://{host}".lower())  # the page at / sends its own
            if origin and origin not in self.origins and origin not in own:
                return (403, f"requests from the web page at {origin!r} are not allowed: without --api-key only "
                             "the server's own page may call it (see minimind serve --allow-origin)",
                        "forbidden_origin")
        if method in ("POST", "PUT", "PATCH"):
            media = headers.get(b"content-type", b"").decode("latin-1").split(";", 1)[0].strip().lower()
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                return (415, f"the body must be sent as JSON (Content-Type: application/json), not "
                             f"{media or 'untyped'}; with curl, add -H 'Content-Type: application/json'",
                        "unsupported_media_type")
        return None


def host_name(host: str | None) -> str | None:
    """The name in a Host header or URL authority, lowercased, without port or brackets:
    'LocalHost:8998' -> 'localhost', '[::1]:8998' -> '::1'; None when malformed."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or host[end + 1:] and not (host[end + 1] == ":" and host[end + 2:].isdigit()):
            return None
        return host[1:end]
    if host.count(":") > 1:  # an IPv6 address without brackets (a --host value)
        return host
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(name: str | None, bound: str) -> bool:
    """Whether a Host naming `name` addresses a server bound to `bound` (see RequestGuard)."""
    if name is None:
        return False
    ip, bound_ip = _ip(name), _ip(bound)
    if bound == "localhost" or bound_ip is not None and bound_ip.is_loopback:
        return name == "localhost" or ip is not None and ip.is_loopback
    if not bound or bound_ip is not None and bound_ip.is_unspecified:  # 0.0.0.0, :: or "": every address
        return ip is not None or name == "localhost" or name in _machine_names()
    return name == bound or ip is not None and ip == bound_ip


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names


def check_origin(origin: str) -> str:
    """A --allow-origin value, normalised ("*" or scheme://host[:port], no path); MiniMindError if not one."""
    if origin == "*":
        return origin
    o = origin.strip().lower().rstrip("/")
    scheme, sep, authority = o.partition("://")
    if not sep or scheme not in ("http", "https") or not authority or "/" in authority or host_name(authority) is None:
        raise MiniMindError(f"--allow-origin {origin!r}: expected an origin such as http://localhost:3000, or *")
    return o


class ClientGone(Exception):
    """The client hung up before its answer was ready: nothing to answer, nothing to log."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it is over `limit` bytes (checked on the declared length
    before reading, so a client that waits for `100 Continue` sends nothing)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large(limit)
    except ClientDisconnect:
        raise ClientGone() from None
    return bytes(body)


def too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than this server's limit of {limit / 2**20:g} MiB "
                         "(minimind serve --max-body-mb)", None, "request_too_large")


def validated(data: dict, model: type[_Sampling]) -> _Sampling:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    except RecursionError:  # decode_json limits the depth; this is a second line
        raise APIError(400, "the request body is nested too deeply", None, "invalid_json") from None


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
