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

What a request passes before a handler sees it (the API key; without one, the Host / Origin
/ content-type guard) is in guard.py; turning the engine's output into OpenAI's objects and
event streams is in responses.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware

from ..errors import MiniMindError
from ..infer.sequence import SamplingParams
from .guard import ClientGone, RequestGuard, RequireKey, check_origin, read_body
from .images import ImageLimits, check_image_pads, expand_placeholders, request_images
from .protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    _Sampling,
    decode_json,
    error_body,
    validation_error,
)
from .responses import (
    chat_logprobs,
    chat_stream,
    collect,
    finish_reason,
    shown,
    sse,
    text_logprobs,
    text_stream,
    until_disconnect,
    usage,
)
from .scheduler import Job, QueueFull, Scheduler
from .tools import parse_output

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("minimind.serve")

# Server-side limits (the serve verb's flags). max_tokens: a chat request without one gets the
# default (/v1/completions keeps OpenAI's 16); none may ask for more than the limit (0 = the
# model's context). 4 MiB of JSON is several times the text a 32k-token context holds.
MAX_TOKENS_DEFAULT, MAX_TOKENS_LIMIT = 2048, 0
MAX_BODY_BYTES = 4 * 2**20
MAX_MESSAGES = 1024
PREPARING_AT_ONCE = 4  # requests rendered and tokenized at the same time (the rest wait their turn)


def create_app(
    model,
    tokenizer,
    name: str = "minimind",
    api_key: str | None = None,
    max_batch: int = 32,
    max_queue: int = 64,
    max_tokens_default: int = MAX_TOKENS_DEFAULT,
    max_tokens_limit: int = MAX_TOKENS_LIMIT,
    max_body: int = MAX_BODY_BYTES,
    max_messages: int = MAX_MESSAGES,
    host: str = "127.0.0.1",
    allow_origins: tuple[str, ...] = (),
    image_limits: ImageLimits | None = None,
) -> FastAPI:
    """host: the address the server is bound to (for the Host check when there is no key).
    allow_origins: web origins ("http://host:port", or "*" for any) allowed to call the API
    from a browser (CORS); without a key they also lift the Host/Origin check for themselves.
    image_limits: where images may come from and how big they may be, for a vision-language
    model (images.py; default: data URLs only, the default sizes)."""
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
    image_limits = image_limits or ImageLimits()
    vision = getattr(model, "vision_config", None)  # None: the model reads text only
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
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )

    # ------------------------------------------------------------------ small routes
    model_card = {"id": name, "object": "model", "created": created, "owned_by": "minimind", "max_model_len": context}

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
            raise APIError(
                404, f"model {requested!r} does not exist; this server serves {name!r}", "model", "model_not_found"
            )

    # ------------------------------------------------------------------ generation
    def token_budget(requested: int | None, default: int, param: str) -> int:
        """max_tokens for a request: the server's default when it asks for none, at most the limit."""
        if requested is None:
            return min(default, max_tokens_limit)
        if requested > max_tokens_limit:
            raise APIError(
                400,
                f"{param} is {requested}; this server allows at most {max_tokens_limit} "
                f"(minimind serve --max-tokens-limit)",
                param,
            )
        return requested

    def submit(body: _Sampling, prompts: list[list[int]], limit: int, param: str, images=None) -> Job:
        """Check the prompts against the context, build each choice's sampling, queue the job
        (`images`: the preprocessed images of a chat prompt, shared by its n choices)."""
        requests = []
        logprobs, top_logprobs = body.logprob_settings()
        if len(prompts) * body.n > max_queue:  # it could never be queued: not a "try again" (429)
            raise APIError(
                400,
                f"the request asks for {len(prompts) * body.n} completions (prompts x n); this "
                f"server takes at most {max_queue} at once",
                param,
            )
        for ids in prompts:
            if len(ids) >= context:
                raise APIError(
                    400,
                    f"the prompt is {len(ids)} tokens; this model's context is {context} "
                    f"tokens, leaving no room for an answer",
                    param,
                    "context_length_exceeded",
                )
            if not ids:
                raise APIError(400, "the prompt is empty", param)
            for i in range(body.n):
                seed = None if body.seed is None else body.seed + i  # n choices must differ
                requests.append(
                    (
                        ids,
                        SamplingParams(
                            max_new_tokens=min(limit, context - len(ids)),
                            temperature=body.temperature,
                            top_k=body.top_k,
                            top_p=body.top_p,
                            repetition_penalty=body.repetition_penalty,
                            frequency_penalty=body.frequency_penalty,
                            presence_penalty=body.presence_penalty,
                            stop_strings=tuple(body.stop or ()),
                            seed=seed,
                            stop_token_ids=() if body.ignore_eos else None,
                            logprobs=logprobs,
                            top_logprobs=top_logprobs,
                        ),
                    )
                )
        try:
            return scheduler.submit(requests, asyncio.get_running_loop(), images)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}", code="rate_limit_exceeded", type="rate_limit_error") from None
        except MiniMindError as e:
            raise APIError(400, str(e), param) from None

    def render_chat(body: ChatRequest, images) -> tuple[list[int], bool, bool, str]:
        """The prompt ids, whether the prompt opened a <think> block, whether tools are
        offered, and the start of a forced tool call the prompt ends with ("" if none)."""
        tools = body.offered_tools()
        if tools and "tools" not in template:
            raise APIError(400, "this model's chat template does not support tools", "tools")
        forced = body.forced_call() if tools else ""
        thinking = body.thinking and not forced  # a forced call comes first: no think block
        messages = body.template_messages()
        if vision is not None:  # <image> -> image_tokens x <|image_pad|> (images.py)
            messages = expand_placeholders(messages, images, vision)
        try:
            # both names: minimind-3's template reads open_thinking, MiniMind2's enable_thinking
            text = tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=True,
                open_thinking=thinking,
                enable_thinking=thinking,
            )
        except MiniMindError as e:
            raise APIError(400, str(e), "messages") from None
        ids = encode([text + forced])[0]
        if vision is not None:
            check_image_pads(ids, images, vision)
        return ids, text.endswith("<think>\n"), bool(tools), forced

    def encode(texts: list[str]) -> list[list[int]]:
        # encode_batch, not encode: the tokenizer library holds the GIL through a whole encode()
        # (seconds for megabytes, and the event loop with it), but lets go of it in encode_batch
        return tokenizer.encode_batch(texts)

    def prepare_chat(raw: bytes):
        """The body, checked and rendered (in a worker thread)."""
        data = decode_json(raw)
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > max_messages:
            raise APIError(
                400,
                f"the request has {len(messages)} messages; this server takes at most "
                f"{max_messages} (minimind serve --max-messages)",
                "messages",
            )
        body = validated(data, ChatRequest)
        check_model(body.model)
        limit = token_budget(
            body.limit,
            max_tokens_default,
            "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
        )
        images = request_images(body, model, image_limits, name)  # decoded and preprocessed, or None
        return body, limit, images, *render_chat(body, images)

    def prepare_completion(raw: bytes):
        body = validated(decode_json(raw), CompletionRequest)
        check_model(body.model)
        limit = token_budget(body.max_tokens, 16, "max_tokens")  # OpenAI's default for this endpoint
        prompts = body.prompts(encode)
        bad = [t for p in prompts for t in p if not 0 <= t < model.config.vocab_size]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {model.config.vocab_size})", "prompt")
        echo = [
            tokenizer.decode(p, skip_special_tokens=True) if body.echo else "" for p in prompts for _ in range(body.n)
        ]
        return body, limit, prompts, echo

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await read_body(request, max_body)
        body, limit, images, ids, thinking, tools, forced = await off_loop(prepare_chat, raw)
        job = submit(body, [ids], limit, "messages", images)
        meta = {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
        }
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
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": chat_logprobs(tokenizer, shown(c)),
                    "finish_reason": finish_reason(c, bool(calls)),
                }
            )
        return {**meta, "choices": choices, "usage": usage([len(ids)], done)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, limit, prompts, echo = await off_loop(prepare_completion, await read_body(request, max_body))
        job = submit(body, prompts, limit, "prompt")
        meta = {
            "id": f"cmpl-{secrets.token_hex(12)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": name,
        }
        if body.stream:
            return sse(text_stream(job, meta, echo, [len(p) for p in prompts], body.include_usage, tokenizer))
        done = await until_disconnect(request, job, collect(job))
        choices = [
            {
                "index": i,
                "text": echo[i] + c.text,
                "logprobs": text_logprobs(tokenizer, shown(c)),
                "finish_reason": finish_reason(c, False),
            }
            for i, c in enumerate(done)
        ]
        return {**meta, "choices": choices, "usage": usage([len(p) for p in prompts], done)}

    return app


def validated(data: dict, model: type[_Sampling]) -> _Sampling:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    except RecursionError:  # decode_json limits the depth; this is a second line
        raise APIError(400, "the request body is nested too deeply", None, "invalid_json") from None
