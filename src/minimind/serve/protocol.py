"""The OpenAI request bodies we accept (validated by pydantic) and the errors we answer.

Only what the engine can honour is accepted; anything out of range is a 400 with an
OpenAI-style error body naming the parameter, never a 500. Types are strict, as OpenAI's
are: "0.5" is not a number, 1 is not a boolean, 2.0 is not an integer. Unknown extra fields
are ignored, as OpenAI's API and vLLM do, so clients that send `user` or `metadata` still work.
Extensions beyond OpenAI's schema, named as in vLLM: `top_k`, `repetition_penalty`,
`ignore_eos`, `chat_template_kwargs`.

Ranges (OpenAI's where OpenAI has the parameter):
    temperature          0 (greedy) or 1e-4 .. 2. Below 1e-4 sampling is greedy in all but
                         name, and near 1e-38 the scaled logits overflow float32 into NaN.
    top_p                (0, 1]
    top_k                -1 or 0 (off) .. 2**31 - 1 (vLLM's extension; -1 is vLLM's "off")
    repetition_penalty   0.01 .. 10 (1 = off; a tiny penalty multiplies logits into inf)
    frequency_penalty, presence_penalty   -2 .. 2
    seed                 a signed 64-bit integer
    n                    1 .. 8
    stop                 at most 4 strings of 1 .. 256 characters
    tools                at most 128
    max_tokens           >= 1 (the server also caps it: --max-tokens-limit)
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..data.vision import IMAGE  # what an image part becomes in the text: the vision model's placeholder

# Sampling defaults: MiniMind's (its server and web demo), not OpenAI's temperature 1 /
# top_p 1, which make a model this small ramble.
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.85, 0.95
MIN_TEMPERATURE = 1e-4  # the smallest temperature above 0 (see the module's docstring)
MAX_STOP_CHARS = 256  # a stop string is searched for after every token: keep that cheap
MAX_TOOLS = 128  # OpenAI's limit
INT64 = 2**63


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str  # a data: URL, or a local path / file:// URL when the server allows them (images.py)
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's; one resolution here, so ignored


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Body):
    name: str
    arguments: str | dict = "{}"  # OpenAI sends a JSON string; a dict is accepted too


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: list[Part] | str | None = None  # the list first: its errors are the ones worth naming
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_needed(self):
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role != "user" and self.image_urls():
            raise ValueError("image_url parts are accepted in user messages only")
        return self

    def text(self) -> str:
        """The content as one text; an image part becomes IMAGE, on a line of its own before text
        that follows it (upstream's "<image>\nquestion")."""
        if not isinstance(self.content, list):
            return self.content or ""
        out = []
        for i, part in enumerate(self.content):
            if isinstance(part, TextPart):
                out.append(part.text)
            else:
                follows = i + 1 < len(self.content) and isinstance(self.content[i + 1], TextPart)
                out.append(IMAGE + ("\n" if follows else ""))
        return "".join(out)

    def image_urls(self) -> list[tuple[int, str]]:
        """(part index, url) of each image part, in order."""
        if not isinstance(self.content, list):
            return []
        return [(i, p.image_url.url) for i, p in enumerate(self.content) if isinstance(p, ImagePart)]


class Function(_Body):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Body):
    type: Literal["function"]
    function: Function


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: dict[str, str]


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """Parameters shared by /v1/chat/completions and /v1/completions."""

    model: str | None = None  # None: the one model this server serves
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0, le=2)
    top_p: float = Field(DEFAULT_TOP_P, gt=0, le=1)
    top_k: int = Field(0, ge=-1, le=2**31 - 1)
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64, le=INT64 - 1)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, ge=0.01, le=10)
    ignore_eos: bool = False  # generate max_tokens whatever the model says (benchmarks)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # chat: logprobs true/false and top_logprobs 0-20; completions: logprobs 0-5 (the number of
    # alternatives), as OpenAI's two endpoints define them
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, v):
        if 0 < v < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {v!r}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k_off(cls, v):
        return max(v, 0)  # vLLM's -1 = off is our 0

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if not all(stops):
            raise ValueError("stop sequences must be non-empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        return stops

    def logprob_settings(self) -> tuple[bool, int]:
        """(record log-probabilities, how many alternatives per token) for SamplingParams."""
        if isinstance(self, ChatRequest):
            if self.logprobs is not None and not isinstance(self.logprobs, bool):
                raise APIError(
                    400,
                    "logprobs must be true or false for /v1/chat/completions (top_logprobs says how many alternatives)",
                    "logprobs",
                )
            if self.top_logprobs and not self.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
            return bool(self.logprobs), self.top_logprobs or 0
        if self.logprobs is None or self.logprobs is False:
            return False, 0
        if not 0 <= int(self.logprobs) <= 5:
            raise APIError(400, "logprobs must be between 0 and 5 for /v1/completions", "logprobs")
        return True, int(self.logprobs)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def thinking(self) -> bool:
        kw = self.chat_template_kwargs or {}
        return bool(kw.get("open_thinking") or kw.get("enable_thinking"))

    def offered_tools(self) -> list[dict] | None:
        """The tools to show the model, after tool_choice: none, all, or only the named one."""
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise APIError(400, "tool_choice 'required' or a named function needs tools", "tool_choice")
        if not self.tools or self.tool_choice == "none":
            return None
        tools = [t.model_dump(exclude_none=True) for t in self.tools]
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.get("name")
            tools = [t for t in tools if t["function"]["name"] == name]
            if not tools:
                raise APIError(400, f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        return tools

    def forced_call(self) -> str:
        """The start of the reply when tool_choice demands a call, written into the prompt so
        that the model can only continue a call: `required` opens a <tool_call> block, a
        named function also writes its name, leaving the model the arguments. Both in the
        chat template's own format for calls. "" when the model may choose."""
        if isinstance(self.tool_choice, NamedToolChoice):
            # It stops before the space: the tokenizer joins that space to what follows (' {'),
            # and a prompt ending in a lone ' ' token would be a state the model never saw.
            return '<tool_call>\n{"name": "' + self.tool_choice.function["name"] + '", "arguments":'
        return "<tool_call>\n" if self.tool_choice == "required" else ""

    def image_urls(self) -> list[tuple[str, str]]:
        """(param naming the part, url) of every image part, in the order of the conversation
        (the order of the IMAGE placeholders in the rendered prompt)."""
        return [
            (f"messages.{m}.content.{i}.image_url.url", url)
            for m, message in enumerate(self.messages)
            for i, url in message.image_urls()
        ]

    def template_messages(self) -> list[dict]:
        """The messages as the chat template wants them (OpenAI's developer role is system)."""
        out = []
        for m in self.messages:
            d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                d["tool_calls"] = [{"name": c.function.name, "arguments": c.function.arguments} for c in m.tool_calls]
            if m.reasoning_content is not None:
                d["reasoning_content"] = m.reasoning_content
            out.append(d)
        return out


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)  # None: OpenAI's default for this endpoint, 16
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, v):
        if isinstance(v, list) and (not v or any(isinstance(p, (str, list)) and not p for p in v)):
            raise ValueError("prompt must not be empty")
        return v

    def prompts(self, encode_batch) -> list[list[int]]:
        """One token-id list per prompt (strings are encoded by `encode_batch`, a list of
        texts -> their ids; ids are taken as they are)."""
        p = self.prompt
        if isinstance(p, str):
            return encode_batch([p])
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        if all(isinstance(x, str) for x in p):
            return encode_batch(list(p))
        return [list(x) for x in p]


MAX_JSON_DEPTH = 64  # tool schemas nest a few levels; a body nested deeper is an attack


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def decode_json(raw: bytes) -> dict:
    """The request body as a JSON object, or an APIError (400) saying what is wrong with it.

    Beyond json.loads: NaN and Infinity are refused (they are not JSON), so is nesting deeper
    than MAX_JSON_DEPTH (deeper still would overflow the parser's recursion), and strings
    that are not valid Unicode (lone UTF-16 surrogates such as "\\ud800": they cannot be
    encoded as UTF-8, and every later step would fail on them)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, bad UTF-8, ints of > 4300 digits
        why = (
            "nested too deeply"
            if isinstance(e, RecursionError)
            else "a number has too many digits"
            if "digits" in str(e)
            else str(e)
        )
        raise APIError(400, f"the request body is not valid JSON: {why}", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", None, "invalid_json")
    _check_json(data)
    return data


def _check_json(data) -> None:
    """Walk the decoded body (without recursion): limit its depth, refuse invalid strings."""
    stack = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels", None, "invalid_json")
        if isinstance(value, dict):
            for k, v in value.items():
                _check_string(k, path)
                stack.append((v, depth + 1, path + (k,)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, path + (i,)) for i, v in enumerate(value))
        elif isinstance(value, str):
            _check_string(value, path)


def _check_string(text: str, path: tuple) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        param = ".".join(map(str, path)) or None
        where = f"{param}: " if param else ""
        raise APIError(
            400,
            f"{where}the text holds {text[e.start]!r} (a lone UTF-16 surrogate), which is not valid Unicode",
            param,
            "invalid_unicode",
        ) from None


def validation_error(errors: list[dict]) -> APIError:
    """pydantic's error list -> one 400 naming the first problem and where it is."""
    e = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = []
    for x in map(str, e.get("loc", ())):
        # pydantic names union members in the path (list[tagged-union[...]]) and repeats a part's
        # tag ("image_url") before its field of the same name: neither is where the client looks
        if "[" not in x and not (loc and loc[-1] == x):
            loc.append(x)
    param = ".".join(loc) or None
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"{param}: {msg}" if param else msg, param, e.get("type"))
