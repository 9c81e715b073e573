"""The agent-RL tools: a calculator that refuses everything but arithmetic (with an error
observation, never a crash), MiniMind's deterministic tools, user tools, and calls parsed from
model output."""

import json
import threading
import time

import pytest

from minimind.errors import MiniMindError
from minimind.rl.calculator import CalcError, calculate
from minimind.rl.tools import BUILTIN_SCHEMAS, ToolBox, ToolError, parse_tool_calls


@pytest.fixture(scope="module")
def box():
    return ToolBox()


def observe(result) -> dict:
    """The observation is always a JSON string."""
    return json.loads(result.observation)


@pytest.mark.parametrize(
    "expression,want",
    [
        ("256*37", "9472"),
        ("2^10", "1024"),  # ^ and ×, ÷ as models write them
        ("12×3÷4", "9"),
        ("math.sqrt(144)", "12"),  # MiniMind's tool had `math` in scope ...
        ("sqrt(144) + pi - pi", "12"),  # ... and its eval script plain names
        ("0.1 + 0.2", "0.3"),  # 12 significant digits, not 0.30000000000000004
        ("-7 // 2", "-4"),
        ("10 / 4", "2.5"),
        ("(3 + 4) * 2 % 5", "4"),
        ("factorial(20)", "2432902008176640000"),
        ("round(2.345, 2)", "2.35"),
        ("max(3, 9, 4) - min(1, 2)", "8"),
        ("2**-2", "0.25"),
        ("（1+2）**2", "9"),
        ("+".join(map(str, range(1, 51))), "1275"),  # a long sum is deep but fine
    ],
)
def test_calculator_computes_arithmetic(box, expression, want):
    result = box.call("calculate_math", {"expression": expression})
    assert result.ok and observe(result) == {"result": want}


@pytest.mark.parametrize(
    "expression,why",
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('echo hacked')", "only named functions can be called"),
        ("(1).__class__", "attribute access is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "only named functions can be called"),
        ("math.__dict__", "unknown name '__dict__'"),
        ("os", "unknown name 'os'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("9**9**9", "power refused: the result would have about 370 million digits"),
        ("10**10**10", "power refused"),
        ("2**100000", "power refused"),
        ("factorial(10**6)", "factorial(1000000) refused"),
        ("factorial(5000)", "factorial(5000) refused"),
        ("comb(10**5, 5*10**4)", "comb(100000, 50000) refused"),
        ("10**1000 * 10**1000", "product refused"),
        ("sum(range(10**9))", "unknown function 'sum'"),  # no loops can be written at all
        ("[i for i in range(10**9)]", "a comprehension is not allowed"),
        ("lambda: 1", "lambda is not allowed"),
        ("'a' * 10**9", "only numbers are allowed"),
        ("-" * 150 + "1", "nested too deeply"),
        ("(1+1)*" * 70 + "1", "too long (more than 256 parts)"),
        ("1+" * 400 + "1", "too long (801 characters, limit 512)"),
        ("(" * 300 + "1" + ")" * 300, "too long"),
        ("abs(" * 101 + "1" + ")" * 101, "nested too deeply (more than 100 levels)"),
        ("1/0", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("(-8)**(1/3)", "not a real number"),
        ("1e999", "not finite"),
        ("exp(1000)", "cannot compute"),
        ("round(5, -10**9)", "at most 100 digits"),
        ("1 << 10**9", "operator LShift is not allowed"),
        ("1,234", "a tuple"),
        ("", "empty"),
        ("2 +", "not a valid expression"),
        ("sqrt(x=4)", "keyword arguments are not allowed"),
    ],
)
def test_calculator_refuses_with_an_error_observation(box, expression, why):
    start = time.perf_counter()
    result = box.call("calculate_math", {"expression": expression})
    assert time.perf_counter() - start < 0.5  # refused before any large work, not timed out
    assert not result.ok and why in observe(result)["error"], observe(result)
    with pytest.raises(CalcError):
        calculate(expression)


def test_calculator_limits_need_no_signal_and_work_in_any_thread():
    # SIGALRM only works in the main thread of a POSIX process; these limits work anywhere.
    out = {}
    worker = threading.Thread(target=lambda: out.update(r=ToolBox().call("calculate_math", {"expression": "9**9**9"})))
    worker.start()
    worker.join(5)
    assert not out["r"].ok and "power refused" in out["r"].error


def test_deterministic_tools_answer_from_their_tables(box):
    weather = observe(box.call("get_current_weather", {"location": "北京"}))
    assert weather == {"city": "北京", "temperature": "28°C", "humidity": "65%", "condition": "晴"}
    assert observe(box.call("get_current_weather", {"location": "beijing"}))["temperature"] == "28°C"
    assert observe(box.call("get_current_time", {})) == {
        "datetime": "2025-03-07 14:30:00",
        "timezone": "Asia/Shanghai",
    }  # the default
    assert observe(box.call("get_current_time", {"timezone": "Asia/Tokyo"}))["datetime"] == "2025-03-07 15:30:00"
    assert observe(box.call("get_exchange_rate", {"from_currency": "USD", "to_currency": "CNY"}))["rate"] == 7.21
    assert observe(box.call("get_exchange_rate", {"from_currency": "cny", "to_currency": "usd"}))["rate"] == 0.1387
    assert observe(box.call("translate_text", {"text": "你好世界", "target_language": "english"})) == {
        "translated_text": "Hello World"
    }

    def convert(value, from_unit, to_unit):
        return observe(box.call("unit_converter", {"value": value, "from_unit": from_unit, "to_unit": to_unit}))

    assert convert(100, "km", "miles")["result"] == 62.1371
    assert convert("100", "摄氏度", "F")["result"] == 212.0  # a quoted number, a Chinese unit name
    assert convert(1, "miles", "feet")["result"] == 5280.0
    # the same call gives the same observation every time
    tokyo = {"location": "Tokyo"}
    assert box.call("get_current_weather", tokyo) == box.call("get_current_weather", tokyo)


@pytest.mark.parametrize(
    "name,arguments,why",
    [
        ("get_current_weather", {"location": "Atlantis"}, "no weather for 'Atlantis'"),
        ("get_current_weather", {}, "missing required argument: location"),
        ("get_current_weather", {"location": ""}, "argument 'location' is empty"),
        ("get_current_weather", {"location": 5}, "argument 'location' must be a string"),
        ("get_current_time", {"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ("get_exchange_rate", {"from_currency": "USD", "to_currency": "XYZ"}, "no rate for USD to XYZ"),
        ("translate_text", {"text": "a new phrase", "target_language": "english"}, "no translation of 'a new phrase'"),
        ("unit_converter", {"value": "ten", "from_unit": "km", "to_unit": "miles"}, "'value' must be a number"),
        ("unit_converter", {"value": True, "from_unit": "km", "to_unit": "miles"}, "'value' must be a finite number"),
        ("unit_converter", {"value": 1, "from_unit": "km", "to_unit": "kg"}, "cannot convert length (km) to mass"),
        ("unit_converter", {"value": 1, "from_unit": "parsec", "to_unit": "km"}, "unknown unit 'parsec'"),
        ("calculate_math", {"expr": "1+1"}, "missing required argument: expression"),
        ("calculate_math", {"expression": "1", "precision": 3}, "unknown argument: precision"),
        ("calculate_math", "{not json", "arguments are not valid JSON"),
        ("calculate_math", ["1+1"], "arguments must be a JSON object"),
        ("no_such_tool", {}, "unknown tool 'no_such_tool'"),
    ],
)
def test_bad_calls_get_error_observations(box, name, arguments, why):
    result = box.call(name, arguments)
    assert not result.ok and why in observe(result)["error"] and result.error == observe(result)["error"]


def test_arguments_may_come_as_a_json_string_and_calls_are_limited_to_the_offered_tools(box):
    assert observe(box.call("calculate_math", '{"expression": "6*7"}')) == {"result": "42"}
    refused = box.call("calculate_math", {"expression": "6*7"}, offered=["get_current_time"])
    assert not refused.ok and "unknown tool 'calculate_math'; available: get_current_time" in refused.error


def test_builtin_schemas_have_upstreams_names_and_arguments():
    got = {
        s["function"]["name"]: (
            sorted(s["function"]["parameters"]["properties"]),
            sorted(s["function"]["parameters"]["required"]),
        )
        for s in BUILTIN_SCHEMAS
    }
    assert got == {
        "calculate_math": (["expression"], ["expression"]),
        "unit_converter": (["from_unit", "to_unit", "value"], ["from_unit", "to_unit", "value"]),
        "get_current_weather": (["location"], ["location"]),
        "get_current_time": (["timezone"], []),
        "get_exchange_rate": (["from_currency", "to_currency"], ["from_currency", "to_currency"]),
        "translate_text": (["target_language", "text"], ["target_language", "text"]),
    }
    assert ToolBox(["calculate_math"]).schemas() == [BUILTIN_SCHEMAS[0]]
    with pytest.raises(MiniMindError, match="no built-in tool 'search'"):
        ToolBox(["search"])


def test_a_users_tool_is_checked_against_its_schema_and_run_with_a_time_limit():
    box = ToolBox([], time_limit=0.2)
    prices = {"apple": 3}

    def lookup_price(item: str) -> dict:
        if item not in prices:
            raise ToolError(f"no price for {item}")
        return {"item": item, "price": prices[item]}

    def sleepy(seconds: float):
        time.sleep(seconds)
        return "done"

    box.register(
        lookup_price,
        {
            "description": "price of an item",
            "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
        },
    )
    box.register(
        sleepy,
        {
            "type": "function",
            "function": {
                "name": "nap",
                "parameters": {"type": "object", "properties": {"seconds": {"type": "number"}}},
            },
        },
    )
    box.register(lambda: {1, 2}, {"name": "a_set"})
    box.register(lambda: "x" * 5000, {"name": "chatty"})
    box.register(lambda: 1 / 0, {"name": "broken"})
    assert box.names == ["lookup_price", "nap", "a_set", "chatty", "broken"]
    assert observe(box.call("lookup_price", {"item": "apple"})) == {"item": "apple", "price": 3}
    assert box.call("lookup_price", {"item": "pear"}).error == "no price for pear"
    assert box.call("lookup_price", {"item": 3}).error == "argument 'item' must be a string, got int"
    assert observe(box.call("nap", {"seconds": 0})) == {"result": "done"}  # a string result is wrapped
    start = time.perf_counter()
    late = box.call("nap", {"seconds": 2})
    assert time.perf_counter() - start < 1.5 and late.error == "timed out after 0.2 s"
    assert "not JSON" in box.call("a_set", {}).error
    assert "too long (5014 characters, limit 2048)" in box.call("chatty", {}).error
    assert box.call("broken", {}).error == "the tool failed: ZeroDivisionError: division by zero"
    with pytest.raises(MiniMindError, match="needs a name"):
        box.register(lambda: 1, {"name": ""})


TEXT = (
    '<think>\nI could <tool_call>{"name": "get_current_time"}</tool_call> but no.\n</think>\n\n'
    "Let me compute.\n"
    '<tool_call>\n{"name": "calculate_math", "arguments": {"expression": "256*37"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_current_weather", "arguments": "{\\"location\\": \\"Paris\\"}"}\n</tool_call>\n'
    "<tool_call>\nnot json at all\n</tool_call>"
)


def test_tool_calls_are_parsed_from_the_template_format():
    calls, malformed = parse_tool_calls(TEXT)
    assert [(c.name, c.arguments) for c in calls] == [
        ("calculate_math", {"expression": "256*37"}),
        ("get_current_weather", {"location": "Paris"}),
    ]
    assert malformed == 1  # the block that is not JSON; the call inside <think> is only a thought
    assert parse_tool_calls("no calls here") == ([], 0)


def test_run_executes_every_call_of_a_reply(box):
    results = box.run(TEXT)
    assert [json.loads(r.observation) for r in results] == [
        {"result": "9472"},
        {"city": "Paris", "temperature": "10°C", "humidity": "65%", "condition": "阴"},
    ]
    assert [r.ok for r in box.run(TEXT, offered=["calculate_math"])] == [True, False]
