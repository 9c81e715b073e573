"""Tools for agent RL: MiniMind's six built-in tools, your own, and calls parsed from model output.

    box = ToolBox()                                   # the six built-ins
    box.register(lookup_price, {"name": "lookup_price", "parameters": {...}})
    for result in box.run(model_text):                # every <tool_call> in the text, executed
        messages.append({"role": "tool", "content": result.observation})

The built-ins have MiniMind's names and argument schemas (trainer/train_agent.py), so its
agent-RL data, whose system messages offer these tools, runs unchanged:

    calculate_math(expression)                     the sandboxed calculator of calculator.py
    unit_converter(value, from_unit, to_unit)      km, miles, m, feet, kg, pounds, celsius, fahrenheit
    get_current_weather(location)                  a fixed table of 15 cities
    get_current_time(timezone="Asia/Shanghai")     a fixed instant, 2025-03-07 06:30 UTC, in 7 zones
    get_exchange_rate(from_currency, to_currency)  a fixed table of 8 rates (and their inverses)
    translate_text(text, target_language)          a fixed dictionary of 6 phrases

All but the calculator are deterministic mock tables with MiniMind's values (a reward that checks
`gt` must not depend on today's weather). Two differences: a city, zone, pair or phrase that is
not in a table is an error, where MiniMind answered with a made-up default; and celsius to
fahrenheit adds 32 (MiniMind only multiplied by 1.8).

A call never raises. Its observation is always a JSON string: the tool's result, or
{"error": "..."} for an unknown tool, arguments that do not match the schema, a refused
expression, a result over `max_chars`, or a user tool that raised or ran past `time_limit`.

Time limits: the built-ins are bounded by construction (calculator.py explains how), so they run
inline and give the same answer on every machine. A user's tool is arbitrary Python, so it runs
in a worker thread and the caller waits at most `time_limit` seconds. Without SIGALRM (POSIX
only, main thread only) nothing can stop a Python thread: a tool that overruns gets an error
observation and is left to finish in the background, so keep your tools quick.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import MiniMindError
from ..infer.toolcalls import CALL_OPEN, parse_output
from .calculator import CalcError, calculate, format_number

log = logging.getLogger(__name__)


class ToolError(Exception):
    """Raise it from a tool to answer with {"error": message} (any exception does; this one
    says the message is meant for the model, not a bug)."""


# ------------------------------------------------------------------ the built-in tools ---


def _schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


STRING, NUMBER = {"type": "string"}, {"type": "number"}
BUILTIN_SCHEMAS = [
    _schema("calculate_math", "计算数学表达式 (evaluate a math expression)", {"expression": STRING}, ["expression"]),
    _schema(
        "unit_converter",
        "单位换算 (convert a value between units)",
        {"value": NUMBER, "from_unit": STRING, "to_unit": STRING},
        ["value", "from_unit", "to_unit"],
    ),
    _schema("get_current_weather", "获取天气 (current weather of a city)", {"location": STRING}, ["location"]),
    _schema(
        "get_current_time",
        "获取时间 (current time in a time zone)",
        {"timezone": {"type": "string", "default": "Asia/Shanghai"}},
        [],
    ),
    _schema(
        "get_exchange_rate",
        "查询汇率 (exchange rate between two currencies)",
        {"from_currency": STRING, "to_currency": STRING},
        ["from_currency", "to_currency"],
    ),
    _schema(
        "translate_text",
        "翻译文本 (translate a text)",
        {"text": STRING, "target_language": STRING},
        ["text", "target_language"],
    ),
]

WEATHER = {
    "北京": ("28°C", "晴"),
    "上海": ("15°C", "多云"),
    "广州": ("32°C", "闷热"),
    "深圳": ("30°C", "晴"),
    "杭州": ("22°C", "阴"),
    "成都": ("18°C", "小雨"),
    "武汉": ("25°C", "多云"),
    "南京": ("20°C", "晴"),
    "西安": ("16°C", "大风"),
    "重庆": ("26°C", "阴"),
    "Tokyo": ("12°C", "晴"),
    "New York": ("8°C", "多云"),
    "London": ("5°C", "小雨"),
    "Paris": ("10°C", "阴"),
    "Sydney": ("25°C", "晴朗"),
}
CITY_ALIASES = {
    "beijing": "北京",
    "shanghai": "上海",
    "guangzhou": "广州",
    "shenzhen": "深圳",
    "hangzhou": "杭州",
    "chengdu": "成都",
    "wuhan": "武汉",
    "nanjing": "南京",
    "xi'an": "西安",
    "xian": "西安",
    "chongqing": "重庆",
    "东京": "Tokyo",
    "纽约": "New York",
    "伦敦": "London",
    "巴黎": "Paris",
    "悉尼": "Sydney",
} | {city.casefold(): city for city in WEATHER}
# One fixed instant, 2025-03-07 06:30 UTC, as MiniMind's table shows it in each zone.
TIMES = {
    "Asia/Shanghai": "2025-03-07 14:30:00",
    "America/New_York": "2025-03-07 01:30:00",
    "Europe/London": "2025-03-07 06:30:00",
    "Asia/Tokyo": "2025-03-07 15:30:00",
    "Europe/Paris": "2025-03-07 07:30:00",
    "Australia/Sydney": "2025-03-07 17:30:00",
    "UTC": "2025-03-07 06:30:00",
}
RATES = {
    ("USD", "CNY"): 7.21,
    ("EUR", "CNY"): 7.85,
    ("GBP", "CNY"): 9.12,
    ("JPY", "CNY"): 0.048,
    ("USD", "EUR"): 0.92,
    ("USD", "GBP"): 0.79,
    ("CNY", "JPY"): 20.83,
    ("AUD", "CNY"): 4.72,
}
TRANSLATIONS = {
    ("你好世界", "english"): "Hello World",
    ("Good morning", "chinese"): "早上好",
    ("今天天气真好", "english"): "The weather is nice today",
    ("I love programming", "chinese"): "我喜欢编程",
    ("机器学习很有趣", "english"): "Machine learning is interesting",
    ("Happy birthday", "chinese"): "生日快乐",
}
LANGUAGES = {
    "english": "english",
    "en": "english",
    "英语": "english",
    "英文": "english",
    "chinese": "chinese",
    "zh": "chinese",
    "中文": "chinese",
    "汉语": "chinese",
}
# unit: (quantity, size in the quantity's base unit); temperature is converted by formula.
UNITS = {
    "km": ("length", 1000.0),
    "miles": ("length", 1609.344),
    "meters": ("length", 1.0),
    "feet": ("length", 0.3048),
    "kg": ("mass", 1.0),
    "pounds": ("mass", 0.45359237),
    "celsius": ("temperature", None),
    "fahrenheit": ("temperature", None),
}
UNIT_ALIASES = {
    "kilometer": "km",
    "kilometers": "km",
    "mile": "miles",
    "mi": "miles",
    "m": "meters",
    "meter": "meters",
    "metre": "meters",
    "metres": "meters",
    "foot": "feet",
    "ft": "feet",
    "kilogram": "kg",
    "kilograms": "kg",
    "pound": "pounds",
    "lb": "pounds",
    "lbs": "pounds",
    "c": "celsius",
    "°c": "celsius",
    "f": "fahrenheit",
    "°f": "fahrenheit",
    "公里": "km",
    "千米": "km",
    "英里": "miles",
    "米": "meters",
    "英尺": "feet",
    "千克": "kg",
    "公斤": "kg",
    "磅": "pounds",
    "摄氏度": "celsius",
    "摄氏": "celsius",
    "华氏度": "fahrenheit",
    "华氏": "fahrenheit",
}


def _known(table: Iterable[str]) -> str:
    return ", ".join(sorted(table))


def calculate_math(expression: str) -> dict:
    try:
        return {"result": format_number(calculate(expression))}
    except CalcError as e:
        raise ToolError(str(e)) from None


def unit_converter(value: float, from_unit: str, to_unit: str) -> dict:
    units = [UNIT_ALIASES.get(u.strip().casefold(), u.strip().casefold()) for u in (from_unit, to_unit)]
    for unit, given in zip(units, (from_unit, to_unit)):
        if unit not in UNITS:
            raise ToolError(f"unknown unit {given!r}; known: {_known(UNITS)}")
    (kind_a, size_a), (kind_b, size_b) = UNITS[units[0]], UNITS[units[1]]
    if kind_a != kind_b:
        raise ToolError(f"cannot convert {kind_a} ({from_unit}) to {kind_b} ({to_unit})")
    if kind_a == "temperature":
        celsius = value if units[0] == "celsius" else (value - 32) / 1.8
        result = celsius if units[1] == "celsius" else celsius * 1.8 + 32
    else:
        result = value * size_a / size_b
    return {"value": value, "from_unit": from_unit, "to_unit": to_unit, "result": round(result, 4)}


def get_current_weather(location: str) -> dict:
    city = CITY_ALIASES.get(location.strip().casefold())
    if city is None:
        raise ToolError(f"no weather for {location!r} in the built-in table; known: {_known(WEATHER)}")
    temperature, condition = WEATHER[city]
    return {"city": location, "temperature": temperature, "humidity": "65%", "condition": condition}


def get_current_time(timezone: str = "Asia/Shanghai") -> dict:
    zone = {z.casefold(): z for z in TIMES}.get(timezone.strip().casefold())
    if zone is None:
        raise ToolError(f"unknown timezone {timezone!r}; known: {_known(TIMES)}")
    return {"datetime": TIMES[zone], "timezone": zone}


def get_exchange_rate(from_currency: str, to_currency: str) -> dict:
    a, b = from_currency.strip().upper(), to_currency.strip().upper()
    if a == b and any(a in pair for pair in RATES):
        rate = 1.0
    elif (a, b) in RATES:
        rate = RATES[(a, b)]
    elif (b, a) in RATES:
        rate = round(1 / RATES[(b, a)], 4)
    else:
        raise ToolError(
            f"no rate for {a} to {b} in the built-in table; known pairs: " + ", ".join(f"{x}/{y}" for x, y in RATES)
        )
    return {"from": a, "to": b, "rate": rate}


def translate_text(text: str, target_language: str) -> dict:
    language = LANGUAGES.get(target_language.strip().casefold())
    translated = TRANSLATIONS.get((text.strip(), language))
    if translated is None:
        raise ToolError(
            f"no translation of {text!r} into {target_language!r} in the built-in dictionary "
            f"of {len(TRANSLATIONS)} phrases"
        )
    return {"translated_text": translated}


BUILTINS: dict[str, Callable] = {
    f.__name__: f
    for f in (calculate_math, unit_converter, get_current_weather, get_current_time, get_exchange_rate, translate_text)
}


# ---------------------------------------------------------------- checking arguments ---

_TYPES = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _coerce(value, kind: str, name: str):
    """A value of the schema type; numbers written as strings ("12.5") are accepted, as
    MiniMind's tools accept them, since small models often quote them."""
    if kind in ("number", "integer") and isinstance(value, str):
        try:
            value = float(value.strip().replace(",", ""))
        except ValueError:
            raise ToolError(f"argument {name!r} must be a {kind}, got {value!r}") from None
    if kind in ("number", "integer") and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        raise ToolError(f"argument {name!r} must be a finite {kind}, got {value!r}")
    if kind == "integer":
        if not float(value).is_integer():
            raise ToolError(f"argument {name!r} must be a whole number, got {value!r}")
        return int(value)
    if kind in _TYPES and not isinstance(value, _TYPES[kind]):
        raise ToolError(f"argument {name!r} must be a {kind}, got {type(value).__name__}")
    if kind == "string" and not value.strip():
        raise ToolError(f"argument {name!r} is empty")
    return value


def check_arguments(arguments, parameters: dict) -> dict:
    """The arguments of a call, checked against the tool's JSON-schema `parameters`: an object,
    every required argument present, each of its declared type (and in its enum), nothing
    undeclared; schema defaults filled in. Raises ToolError saying what is wrong."""
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ToolError("arguments are not valid JSON") from None
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    properties = parameters.get("properties") or {}
    missing = [name for name in parameters.get("required", []) if arguments.get(name) is None]
    if missing:
        raise ToolError(f"missing required argument{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    unknown = [name for name in arguments if name not in properties]
    if unknown:
        raise ToolError(
            f"unknown argument{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
            f"expected: {', '.join(properties) or 'none'}"
        )
    checked = {}
    for name, spec in properties.items():
        if arguments.get(name) is None:
            if "default" in spec:
                checked[name] = spec["default"]
            continue
        value = _coerce(arguments[name], spec.get("type", ""), name)
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(f"argument {name!r} must be one of {spec['enum']}, got {value!r}")
        checked[name] = value
    return checked


# ------------------------------------------------------------------- calls and results ---


@dataclass
class ToolCall:
    """A call as the model wrote it: name and arguments (a dict, or the raw value if it was not one)."""

    name: str
    arguments: object


@dataclass
class ToolResult:
    """One executed call: `observation` (a JSON string) is what the model reads back; `ok`
    says whether the tool ran and answered (False for every error observation)."""

    name: str
    arguments: object
    observation: str
    ok: bool
    error: str = ""


def parse_tool_calls(text: str) -> tuple[list[ToolCall], int]:
    """The <tool_call> blocks of a model's reply, in the minimind-3 template's format

        <tool_call>
        {"name": "calculate_math", "arguments": {"expression": "2+2"}}
        </tool_call>

    as (calls, number of malformed blocks: not JSON, or without a name). The server's parser
    reads them (infer/toolcalls.py): calls inside a <think> block are thoughts, not calls."""
    content, _, calls = parse_output(text, thinking=False, tools=True)
    parsed = []
    for call in calls:
        raw = call["function"]["arguments"]
        try:
            arguments = json.loads(raw)
        except json.JSONDecodeError:
            arguments = raw
        parsed.append(ToolCall(call["function"]["name"], arguments))
    return parsed, (content or "").count(CALL_OPEN)  # a malformed block stays in the text as written


@dataclass
class Tool:
    name: str
    fn: Callable
    schema: dict  # {"type": "function", "function": {"name", "description", "parameters"}}
    builtin: bool  # bounded by construction: runs inline, without a worker thread


class ToolBox:
    """The tools a rollout may call, each checked against its schema and run with limits.

    tools       names of the built-ins to include (default: all six; [] for none)
    time_limit  seconds a user's tool may take before its call is answered with an error
    max_chars   longest observation; a longer result is answered with an error
    """

    def __init__(self, tools: Iterable[str] | None = None, *, time_limit: float = 1.0, max_chars: int = 2048):
        if not time_limit > 0 or max_chars < 64:
            raise MiniMindError(
                f"ToolBox: time_limit must be > 0 and max_chars >= 64, got {time_limit} and {max_chars}"
            )
        self.time_limit, self.max_chars = time_limit, max_chars
        self.tools: dict[str, Tool] = {}
        schemas = {s["function"]["name"]: s for s in BUILTIN_SCHEMAS}
        for name in BUILTINS if tools is None else tools:
            if name not in BUILTINS:
                raise MiniMindError(f"ToolBox: no built-in tool {name!r}; built in: {', '.join(BUILTINS)}")
            self.tools[name] = Tool(name, BUILTINS[name], schemas[name], builtin=True)

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def register(self, fn: Callable, schema: dict) -> Callable:
        """Add your own tool: `fn(**arguments)` returns a JSON-able result (a dict, usually) or
        raises (ToolError for a message to the model). `schema` is an OpenAI function schema,
        whole ({"type": "function", "function": {...}}) or just its "function" part; its name
        defaults to fn.__name__. Registering a built-in's name replaces the built-in."""
        if not callable(fn):
            raise MiniMindError(f"ToolBox.register: {fn!r} is not a function")
        if not isinstance(schema, dict):
            raise MiniMindError(f"ToolBox.register: the schema of {getattr(fn, '__name__', fn)} must be a dict")
        spec = dict(schema.get("function", schema))
        spec.setdefault("name", getattr(fn, "__name__", ""))
        spec.setdefault("parameters", {"type": "object", "properties": {}})
        if not isinstance(spec["name"], str) or not spec["name"].strip():
            raise MiniMindError("ToolBox.register: the tool needs a name (in the schema or as fn.__name__)")
        params = spec["parameters"]
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict):
            raise MiniMindError(
                f"ToolBox.register: {spec['name']}: 'parameters' must be a JSON schema object "
                "with a 'properties' object"
            )
        self.tools[spec["name"]] = Tool(spec["name"], fn, {"type": "function", "function": spec}, builtin=False)
        return fn

    def schemas(self, names: Iterable[str] | None = None) -> list[dict]:
        """The tool list to offer in a prompt (the system message's `tools`), all or the named ones."""
        return [self.tools[n].schema for n in (self.tools if names is None else names)]

    def call(self, name: str, arguments, offered: Iterable[str] | None = None) -> ToolResult:
        """Run one call; never raises. `offered`: the tools this prompt offered (a call to any
        other is an error, as MiniMind's reward counts it invalid)."""
        try:
            available = [n for n in (self.tools if offered is None else offered) if n in self.tools]
            if name not in available:
                raise ToolError(f"unknown tool {name!r}; available: {', '.join(available) or 'none'}")
            tool = self.tools[name]
            checked = check_arguments(arguments, tool.schema["function"]["parameters"])
            result = tool.fn(**checked) if tool.builtin else self._run_limited(tool, checked)
        except ToolError as e:
            return self._error(name, arguments, str(e))
        except Exception as e:  # a user's tool failed: tell the model, keep the rollout going
            return self._error(name, arguments, f"the tool failed: {type(e).__name__}: {e}")
        try:  # allow_nan=False: NaN is not JSON, and the observation must be JSON
            observation = json.dumps(
                result if not isinstance(result, str) else {"result": result}, ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as e:
            return self._error(name, arguments, f"the tool's result is not JSON: {e}")
        if len(observation) > self.max_chars:
            return self._error(
                name, arguments, f"the result is too long ({len(observation)} characters, limit {self.max_chars})"
            )
        return ToolResult(name, arguments, observation, ok=True)

    def run(self, text: str, offered: Iterable[str] | None = None) -> list[ToolResult]:
        """Parse every tool call in a model's reply and run each, in order (malformed blocks,
        which parse_tool_calls counts, are not calls and get no result)."""
        calls, _ = parse_tool_calls(text)
        return [self.call(c.name, c.arguments, offered) for c in calls]

    def _run_limited(self, tool: Tool, arguments: dict):
        """Run a user's tool in a daemon thread; wait at most time_limit seconds (see the top)."""
        outcome: dict = {}

        def target():
            try:
                outcome["result"] = tool.fn(**arguments)
            except BaseException as e:  # handed to the caller's thread, reported there
                outcome["error"] = e if isinstance(e, Exception) else ToolError(f"the tool raised {type(e).__name__}")

        worker = threading.Thread(target=target, name=f"minimind-tool-{tool.name}", daemon=True)
        worker.start()
        worker.join(self.time_limit)
        if worker.is_alive():
            log.warning(
                "tool %s ran past %.3g s; its call was answered with an error and the call is left "
                "running in the background",
                tool.name,
                self.time_limit,
            )
            raise ToolError(f"timed out after {self.time_limit:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _error(self, name: str, arguments, message: str) -> ToolResult:
        return ToolResult(name, arguments, json.dumps({"error": message}, ensure_ascii=False), ok=False, error=message)
