"""`minimind serve` against careless and hostile clients (issue 17, the server's part).

A real server process on loopback, as in test_serve.py, but without an API key (the default
a user starts with), so the browser-facing guard (Host, Origin, JSON only) is on. Its log is
kept: no request may leave a traceback in it.

- One request never hurts another: a poisoned request (settings that would make sampling
  NaN) is refused with a 400 while a stream runs on, unchanged; /health answers within a
  second while a multi-megabyte request is processed.
- The battery: malformed and hostile requests, each answered with a clean 4xx and OpenAI's
  error body (or a correct 2xx for the valid edge cases); its counts are printed and must be
  0 tracebacks, 0 5xx, 0 garbage accepted.
"""

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from helpers import scrambled_model, start_server
from minimind.checkpoint import save_model_dir

MESSAGES = [{"role": "user", "content": "hi"}]
LIMIT = 4096  # --max-tokens-limit of the test server
MAX_MESSAGES = 64
MAX_BODY_MB = 8
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("hardening") / "nano"
    save_model_dir(scrambled_model(), out, tok)
    return out


class Server:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log
        self.port = int(url.rsplit(":", 1)[1])

    def post(self, path="/v1/chat/completions", body=None, headers=None, **kw) -> httpx.Response:
        content = json.dumps(body) if isinstance(body, (dict, list)) else body() if callable(body) else body
        return httpx.post(
            self.url + path, content=content, headers={**JSON, **(headers or {})}, timeout=kw.pop("timeout", 60), **kw
        )

    def idle(self, seconds: float = 30) -> dict:
        """Wait until no row is running or waiting; return /health."""
        deadline = time.monotonic() + seconds
        while True:
            load = httpx.get(self.url + "/health").json()
            if load["running"] + load["waiting"] == 0 or time.monotonic() > deadline:
                return load
            time.sleep(0.05)

    def tracebacks(self) -> list[str]:
        text = self.log.read_text(errors="replace")
        return [chunk[:400] for chunk in text.split("Traceback (most recent call last)")[1:]]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """No API key (the guard is on), small limits so that the battery can reach each."""
    log = tmp_path_factory.mktemp("hardening-log") / "server.log"
    proc, url = start_server(
        model_dir,
        log,
        "--max-tokens-default",
        "8",
        "--max-tokens-limit",
        str(LIMIT),
        "--max-messages",
        str(MAX_MESSAGES),
        "--max-body-mb",
        str(MAX_BODY_MB),
    )
    yield Server(url, log)
    proc.terminate()
    proc.wait(timeout=30)


def assert_error(r: httpx.Response, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], r.text
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param, r.text
    if code is not None:
        assert err["code"] == code, r.text


def stream_text(server: Server, body: dict, started: threading.Event | None = None) -> str:
    """A streamed chat answer's text; `started` is set once the first content arrived."""
    text = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
            if started is not None and "".join(text):
                started.set()
    return "".join(text)


# --------------------------------------------------------------------------- item 1: poison


POISONS = [
    ({"temperature": 1e-40}, "temperature"),
    ({"temperature": 1e-5}, "temperature"),
    ({"repetition_penalty": 1e-300, "temperature": 1.0}, "repetition_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 2**64}, "seed"),
    ({"top_k": 2**40, "temperature": 1.0}, "top_k"),
]


def test_a_poisoned_request_leaves_a_running_stream_unchanged(server):
    """Settings that would turn a row's probabilities into NaN (or overflow its generator)
    are refused with a 400 naming the parameter, streamed or not, while a normal stream
    runs on and ends exactly as it does alone."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story"}],
        "max_tokens": 300,
        "temperature": 0.9,
        "seed": 7,
        "ignore_eos": True,
    }
    alone = stream_text(server, body)
    assert len(alone) > 20
    started, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.setdefault("text", stream_text(server, body, started)))
    runner.start()
    assert started.wait(60)
    assert httpx.get(server.url + "/health").json()["running"] >= 1  # the poison arrives mid-stream
    for poison, param in POISONS:
        for stream in (False, True):
            assert_error(server.post(body={"messages": MESSAGES, **poison, "stream": stream}), 400, param)
    runner.join(120)
    assert result["text"] == alone
    assert server.idle()["running"] == 0


def test_a_row_whose_sampling_breaks_fails_alone_in_the_scheduler(tok):
    """The engine's second line of defence, seen from the server's scheduler: settings that
    slip past validation (set after it) end that job with an error completion, and a job
    decoded beside it gets exactly the tokens it gets alone."""
    import asyncio

    from minimind.infer import SamplingParams
    from minimind.serve.scheduler import Scheduler

    model = scrambled_model()
    prompt = tok.encode("Once upon a time")
    healthy = SamplingParams(max_new_tokens=12, temperature=0.8, seed=3, stop_token_ids=())

    async def run(with_poison: bool):
        scheduler = Scheduler(model, tok, max_batch=4)
        scheduler.start()
        try:
            loop = asyncio.get_running_loop()
            jobs = [scheduler.submit([(prompt, healthy)], loop)]
            if with_poison:
                poisoned = SamplingParams(max_new_tokens=12, stop_token_ids=(), seed=1)
                poisoned.temperature = 1e-40
                jobs.append(scheduler.submit([(tok.encode("你好"), poisoned)], loop))
            done = []
            for job in jobs:
                async for _, _, completion, _ in job:
                    if completion is not None:
                        done.append(completion)
            return done
        finally:
            scheduler.stop()

    [alone] = asyncio.run(run(False))
    good, bad = asyncio.run(run(True))
    assert good == alone
    assert bad.finish_reason == "error" and "not finite" in bad.error


# --------------------------------------------------------------------------- item 2: big requests


def test_health_answers_within_a_second_while_a_big_request_is_processed(server):
    """A 6 MB message (under the 8 MiB cap) takes seconds to tokenize; that happens off the
    event loop, so /health keeps answering, and the request ends in a clean 400."""
    big = json.dumps({"messages": [{"role": "user", "content": "word, " * 1_000_000}]}).encode()
    assert len(big) > 5 * 2**20
    result = {}

    def send():
        start = time.monotonic()
        result["response"] = server.post(body=big, timeout=120)
        result["seconds"] = time.monotonic() - start

    sender = threading.Thread(target=send)
    sender.start()
    latencies = []
    while sender.is_alive():
        start = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        latencies.append(time.monotonic() - start)
        time.sleep(0.05)
    sender.join()
    assert_error(result["response"], 400, "messages", "context_length_exceeded")
    assert len(latencies) >= 3, f"the big request took only {result['seconds']:.2f} s: nothing was measured"
    assert max(latencies) < 1.0, latencies


def test_body_size_and_message_count_are_capped(server):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (MAX_BODY_MB * 2**20) + b'"}]}'
    assert_error(server.post(body=big), 413, code="request_too_large")

    def chunks():  # no Content-Length: the cap is enforced while reading
        for i in range(0, len(big), 2**16):
            yield big[i : i + 2**16]

    assert_error(server.post(body=chunks()), 413, code="request_too_large")
    many = {"messages": MESSAGES * 100_000}  # 100k messages, ~3 MB: refused before any rendering
    start = time.monotonic()
    assert_error(server.post(body=many), 400, "messages")
    assert time.monotonic() - start < 5
    assert_error(server.post(body={"messages": MESSAGES * (MAX_MESSAGES + 1)}), 400, "messages")
    assert server.post(body={"messages": MESSAGES * MAX_MESSAGES, "max_tokens": 1}).status_code == 200


# --------------------------------------------------------------------------- item 3: 500s and resets


@pytest.mark.parametrize(
    "body, param",
    [
        ('{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
        (
            '{"messages": [{"role": "system", "content": "\\udfff x"}, {"role": "user", "content": "hi"}]}',
            "messages.0.content",
        ),
        ('{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop.0"),
        ('{"messages": [{"role": "user", "content": "hi"}], "seed": 18446744073709551616}', "seed"),
        ('{"messages": [{"role": "user", "content": "hi"}], "seed": -9223372036854775809}', "seed"),
        ('{"messages": [{"role": "user", "content": "hi"}], "x": ' + "[" * 100_000 + "]" * 100_000 + "}", None),
        (
            '{"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": '
            + '{"a": ' * 200
            + "1"
            + "}" * 200
            + "}",
            None,
        ),
    ],
)
def test_what_gave_500s_and_resets_is_a_400(server, body, param):
    assert_error(server.post(body=body), 400, param)
    assert server.tracebacks() == []


# --------------------------------------------------------------------------- item 4: disconnects


def test_a_non_streaming_client_that_hangs_up_leaves_no_traceback(server):
    before = server.log.read_text(errors="replace")
    body = {"messages": [{"role": "user", "content": "Go on"}], "max_tokens": LIMIT, "ignore_eos": True}
    for _ in range(2):
        with pytest.raises(httpx.TimeoutException):
            server.post(body=body, timeout=0.5)
        assert server.idle()["running"] == 0
    time.sleep(0.5)  # let the server log whatever it would
    new = server.log.read_text(errors="replace")[len(before) :]
    assert not any(s in new for s in ("Traceback", "InvalidStateError", "Exception in ASGI")), new


# --------------------------------------------------------------------------- item 5: max_tokens


def test_max_tokens_has_a_server_default_and_limit(server):
    r = server.post(body={"messages": MESSAGES, "ignore_eos": True})  # no max_tokens: --max-tokens-default 8
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8
    r = server.post("/v1/completions", {"prompt": "Once", "ignore_eos": True})  # OpenAI's 16 here
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    assert_error(server.post(body={"messages": MESSAGES, "max_tokens": LIMIT + 1}), 400, "max_tokens")
    huge = server.post(body={"messages": MESSAGES, "max_tokens": 10**30})
    assert "--max-tokens-limit" in huge.json()["error"]["message"]
    assert_error(
        server.post(body={"messages": MESSAGES, "max_completion_tokens": LIMIT + 1}), 400, "max_completion_tokens"
    )
    assert_error(server.post("/v1/completions", {"prompt": "Once", "max_tokens": LIMIT + 1}), 400, "max_tokens")


def test_serve_refuses_bad_limit_flags(tmp_path, capsys):
    from minimind.cli import main

    for flags in (
        ["--max-tokens-default", "0"],
        ["--max-tokens-default", "100", "--max-tokens-limit", "50"],
        ["--max-body-mb", "0"],
        ["--max-body-mb", "inf"],
        ["--max-messages", "0"],
        ["--allow-origin", "ftp://x"],
        ["--allow-origin", "http://a/path"],
        ["--allow-origin", "evil"],
    ):
        assert main(["serve", "--model", str(tmp_path / "none"), *flags]) != 0
        err = capsys.readouterr().err
        assert "Traceback" not in err and flags[0] in err, (flags, err)


# --------------------------------------------------------------------------- item 6: Host, Origin, JSON


def test_without_a_key_only_json_from_the_servers_own_address_and_page(server):
    own = f"127.0.0.1:{server.port}"
    ok = {"messages": MESSAGES, "max_tokens": 1}
    for headers in (
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Content-Type": ""},
    ):
        assert_error(server.post(body=ok, headers=headers), 415, code="unsupported_media_type")
    for host in (
        f"evil.example:{server.port}",
        f"127.0.0.1.nip.io:{server.port}",
        "localhost.evil.example",
        f"localhost:{server.port}@evil",
        "[::1",
    ):
        assert_error(server.post(body=ok, headers={"Host": host}), 403, code="forbidden_host")
        assert_error(httpx.get(server.url + "/", headers={"Host": host}), 403, code="forbidden_host")
    for origin in (
        "http://evil.example",
        "null",
        f"http://127.0.0.1:{server.port + 1}",
        f"http://localhost:{server.port}",
    ):
        assert_error(server.post(body=ok, headers={"Origin": origin}), 403, code="forbidden_origin")
    # what the chat page (and any local client) sends is fine, under any loopback name
    for host in (own, f"localhost:{server.port}", f"[::1]:{server.port}", f"LOCALHOST:{server.port}"):
        r = server.post(
            body=ok,
            headers={"Host": host, "Origin": f"http://{host}", "Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 200, (host, r.text)
    assert httpx.get(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 200


def test_the_chat_page_works_without_a_key(server, tmp_path):
    """The page is served from the server's own origin, so the guard lets it through: in a
    real Chromium, under a loopback name, it lists the model and streams a reply."""
    sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    if chromium is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda error: errors.append(error))
            page.goto(f"http://localhost:{server.port}/")
            page.get_by_label("Model").filter(has_text="nano").wait_for()
            page.get_by_label("Max tokens").fill("4")
            page.get_by_label("Message").fill("Hello")
            with page.expect_response("**/v1/chat/completions") as response:
                page.get_by_label("Message").press("Enter")
            assert response.value.status == 200
            page.locator(".msg.assistant").nth(0).locator(".meta").inner_text()  # waits for the end
            assert page.get_by_role("alert").is_hidden()
            page.screenshot(path=tmp_path / "page-without-a-key.png")
        finally:
            browser.close()
    assert not errors, errors


@pytest.mark.parametrize(
    "bound, host, allowed",
    [
        ("127.0.0.1", "127.0.0.1:8998", True),
        ("127.0.0.1", "localhost:8998", True),
        ("127.0.0.1", "[::1]:8998", True),
        ("127.0.0.1", "127.0.0.2", True),
        ("127.0.0.1", "evil.example:8998", False),
        ("127.0.0.1", "192.168.1.5:8998", False),
        ("localhost", "localhost", True),
        ("::1", "[::1]:80", True),
        ("::1", "example.com", False),
        ("0.0.0.0", "192.168.1.5:8998", True),
        ("0.0.0.0", "[fe80::1]:8998", True),
        ("0.0.0.0", "localhost:8998", True),
        ("0.0.0.0", "rebind.evil.example:8998", False),
        ("::", "10.0.0.1", True),
        ("", "10.0.0.1", True),
        ("192.168.1.5", "192.168.1.5:8998", True),
        ("192.168.1.5", "10.0.0.1:8998", False),
        ("192.168.1.5", "evil.example", False),
        ("myhost.lan", "myhost.lan:8998", True),
        ("myhost.lan", "other.lan", False),
        ("127.0.0.1", "localhost:abc", False),
        ("127.0.0.1", "", False),
    ],
)
def test_host_policy(bound, host, allowed):
    from minimind.serve.guard import host_allowed, host_name

    assert host_allowed(host_name(host), host_name(bound) or bound) is allowed


@pytest.fixture(scope="module")
def keyed_server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hardening-keyed") / "server.log"
    proc, url = start_server(
        model_dir, log, "--allow-origin", "http://app.example:3000/", env={"MINIMIND_API_KEY": "k"}
    )
    yield Server(url, log)
    proc.terminate()
    proc.wait(timeout=30)


def test_allow_origin_opens_the_api_to_a_named_page(keyed_server):
    """--allow-origin: CORS for that origin (preflight and response headers); the key is still required."""
    url, origin = keyed_server.url, "http://app.example:3000"
    pre = httpx.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
    r = keyed_server.post(
        body={"messages": MESSAGES, "max_tokens": 1}, headers={"Origin": origin, "Authorization": "Bearer k"}
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    assert_error(keyed_server.post(body={"messages": MESSAGES}, headers={"Origin": origin}), 401)
    other = httpx.options(
        url + "/v1/chat/completions", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers
    assert keyed_server.tracebacks() == []


def test_allow_origin_without_a_key(model_dir, tmp_path):
    """Without a key, --allow-origin lifts the Host/Origin check for that origin only; '*' for all."""
    log = tmp_path / "server.log"
    proc, url = start_server(model_dir, log, "--allow-origin", "http://app.example:3000", "--allow-origin", "*")
    try:
        server = Server(url, log)
        ok = {"messages": MESSAGES, "max_tokens": 1}
        foreign = {"Origin": "http://evil.example", "Host": "evil.example"}
        assert server.post(body=ok, headers=foreign).status_code == 200
        assert_error(server.post(body=ok, headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}), 415)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------- the battery


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _tools(n=1, name="get_weather", parameters=None):
    return [
        {
            "type": "function",
            "function": {
                "name": name if n == 1 else f"f{i}",
                "parameters": parameters or {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
        for i in range(n)
    ]


def _nested(depth: int) -> dict:
    d: dict = {"type": "string"}
    for _ in range(depth):
        d = {"type": "object", "properties": {"x": d}}
    return d


def _chat(**kw) -> dict:
    return {"messages": MESSAGES, "max_tokens": 2, **kw}


def _battery(port: int) -> list[tuple[str, dict, int]]:
    """(what, request, expected status): the request is keyword arguments of Server.post,
    plus "method" for other methods; 200 marks a valid edge case that must be served."""
    C = "/v1/completions"
    own = f"127.0.0.1:{port}"
    cases = [
        # --- not JSON, or JSON that is not a request
        ("empty body", {"body": b""}, 400),
        ("not JSON", {"body": "{not json"}, 400),
        ("a JSON list", {"body": '["a list"]'}, 400),
        ("JSON null", {"body": "null"}, 400),
        ("a JSON string", {"body": '"hello"'}, 400),
        ("a JSON number", {"body": "42"}, 400),
        ("invalid UTF-8", {"body": b'{"messages": "\xff\xfe"}'}, 400),
        ("trailing garbage", {"body": '{"messages": []} x'}, 400),
        ("NaN", {"body": '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'}, 400),
        ("Infinity", {"body": '{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}'}, 400),
        ("-Infinity", {"body": '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -Infinity}'}, 400),
        ("a 5000-digit number", {"body": '{"messages": [], "seed": 1' + "0" * 5000 + "}"}, 400),
        ("100k nested lists", {"body": '{"x": ' + _deep(100_000) + "}"}, 400),
        (
            "nesting of 100 in chat_template_kwargs",
            {"body": json.dumps(_chat(chat_template_kwargs=json.loads('{"a": ' * 100 + "1" + "}" * 100)))},
            400,
        ),
        ("a tool schema nested 70 deep", {"body": _chat(tools=_tools(parameters=_nested(35)))}, 400),
        # --- text that is not Unicode
        ("lone surrogate in user content", {"body": '{"messages": [{"role": "user", "content": "a\\ud800b"}]}'}, 400),
        (
            "lone surrogate in system content",
            {"body": '{"messages": [{"role": "system", "content": "\\udc00"}, {"role": "user", "content": "hi"}]}'},
            400,
        ),
        ("lone surrogate in a key", {"body": '{"messages": [{"role": "user", "content": "hi"}], "\\ud800": 1}'}, 400),
        (
            "lone surrogate in a stop string",
            {"body": '{"messages": [{"role": "user", "content": "hi"}], "stop": "\\ud800"}'},
            400,
        ),
        (
            "lone surrogate in a content part",
            {"body": '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}'},
            400,
        ),
        (
            "lone surrogate in a tool description",
            {
                "body": json.dumps(_chat(tools=_tools())).replace(
                    '"get_weather"', '"get_weather", "description": "\\ud800"'
                )
            },
            400,
        ),
        ("lone surrogate in a completions prompt", {"path": C, "body": '{"prompt": "\\udbff"}'}, 400),
        ("reversed surrogate pair", {"body": '{"messages": [{"role": "user", "content": "\\ude00\\ud83d"}]}'}, 400),
        # --- wrong types (OpenAI's types are strict)
        ("temperature as a string", {"body": _chat(temperature="0.5")}, 400),
        ("temperature true", {"body": _chat(temperature=True)}, 400),
        ("max_tokens 2.0", {"body": _chat(max_tokens=2.0)}, 400),
        ("max_tokens as a string", {"body": _chat(max_tokens="2")}, 400),
        ("stream as a string", {"body": _chat(stream="yes")}, 400),
        ("stream 1", {"body": _chat(stream=1)}, 400),
        ("n as a string", {"body": _chat(n="2")}, 400),
        ("messages an object", {"body": {"messages": {"role": "user", "content": "hi"}}}, 400),
        ("messages a string", {"body": {"messages": "hello"}}, 400),
        ("content a number", {"body": {"messages": [{"role": "user", "content": 5}]}}, 400),
        (
            "an image part",
            {
                "body": {
                    "messages": [
                        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
                    ]
                }
            },
            400,
        ),
        ("no role", {"body": {"messages": [{"content": "hi"}]}}, 400),
        ("an unknown role", {"body": {"messages": [{"role": "robot", "content": "hi"}]}}, 400),
        ("no content", {"body": {"messages": [{"role": "user"}]}}, 400),
        ("model a number", {"body": _chat(model=123)}, 400),
        ("chat logprobs 3", {"body": _chat(logprobs=3)}, 400),
        ("stop a number", {"body": _chat(stop=5)}, 400),
        ("stream_options a string", {"body": _chat(stream=True, stream_options="usage")}, 400),
        (
            "tool_calls a string",
            {"body": {"messages": [{"role": "assistant", "content": None, "tool_calls": "x"}]}},
            400,
        ),
        # --- out of range
        ("temperature 1e-40", {"body": _chat(temperature=1e-40)}, 400),
        ("temperature 5e-5", {"body": _chat(temperature=5e-5)}, 400),
        ("temperature -0.1", {"body": _chat(temperature=-0.1)}, 400),
        ("temperature 2.5", {"body": _chat(temperature=2.5)}, 400),
        ("temperature 1e308", {"body": _chat(temperature=1e308)}, 400),
        ("repetition_penalty 1e-300", {"body": _chat(repetition_penalty=1e-300, temperature=1.0)}, 400),
        ("repetition_penalty 0", {"body": _chat(repetition_penalty=0)}, 400),
        ("repetition_penalty -1", {"body": _chat(repetition_penalty=-1)}, 400),
        ("repetition_penalty 11", {"body": _chat(repetition_penalty=11)}, 400),
        ("top_p 0", {"body": _chat(top_p=0)}, 400),
        ("top_p 1.5", {"body": _chat(top_p=1.5)}, 400),
        ("top_k -2", {"body": _chat(top_k=-2)}, 400),
        ("top_k 2**40", {"body": _chat(top_k=2**40, temperature=1.0)}, 400),
        ("seed 2**64", {"body": _chat(seed=2**64)}, 400),
        ("seed -2**63-1", {"body": _chat(seed=-(2**63) - 1)}, 400),
        ("seed 10**30", {"body": _chat(seed=10**30)}, 400),
        ("n 0", {"body": _chat(n=0)}, 400),
        ("n 9", {"body": _chat(n=9)}, 400),
        ("n 100000", {"body": _chat(n=100_000)}, 400),
        ("max_tokens 0", {"body": _chat(max_tokens=0)}, 400),
        ("max_tokens -1", {"body": _chat(max_tokens=-1)}, 400),
        ("max_tokens 10**30", {"body": _chat(max_tokens=10**30)}, 400),
        ("max_tokens over the limit", {"body": _chat(max_tokens=LIMIT + 1)}, 400),
        ("max_completion_tokens 10**9", {"body": _chat(max_completion_tokens=10**9)}, 400),
        ("frequency_penalty 2.5", {"body": _chat(frequency_penalty=2.5)}, 400),
        ("presence_penalty -3", {"body": _chat(presence_penalty=-3)}, 400),
        ("top_logprobs without logprobs", {"body": _chat(top_logprobs=2)}, 400),
        ("top_logprobs 21", {"body": _chat(logprobs=True, top_logprobs=21)}, 400),
        ("5 stop strings", {"body": _chat(stop=["a", "b", "c", "d", "e"])}, 400),
        ("an empty stop string", {"body": _chat(stop="")}, 400),
        ("a 257-character stop string", {"body": _chat(stop="x" * 257)}, 400),
        ("129 tools", {"body": _chat(tools=_tools(129))}, 400),
        ("a tool name with spaces", {"body": _chat(tools=_tools(name="get weather!"))}, 400),
        ("an empty tool name", {"body": _chat(tools=_tools(name=""))}, 400),
        ("tool_choice required without tools", {"body": _chat(tool_choice="required")}, 400),
        (
            "tool_choice naming a missing tool",
            {"body": _chat(tools=_tools(), tool_choice={"type": "function", "function": {"name": "nope"}})},
            400,
        ),
        (
            "tool_choice without a name",
            {"body": _chat(tools=_tools(), tool_choice={"type": "function", "function": {}})},
            400,
        ),
        ("tool_choice an unknown word", {"body": _chat(tool_choice="sometimes")}, 400),
        ("no messages", {"body": {"messages": []}}, 400),
        ("no messages field", {"body": {"max_tokens": 2}}, 400),
        ("one message over the cap", {"body": {"messages": MESSAGES * (MAX_MESSAGES + 1)}}, 400),
        ("100k messages", {"body": {"messages": MESSAGES * 100_000}}, 400),
        (
            "a prompt longer than the context",
            {"body": {"messages": [{"role": "user", "content": "word " * 40_000}]}},
            400,
        ),
        ("a body over the cap", {"body": b'{"messages": "' + b"x" * (MAX_BODY_MB * 2**20) + b'"}'}, 413),
        ("a chunked body over the cap", {"body": lambda: (b"x" * 2**20 for _ in range(MAX_BODY_MB + 1))}, 413),
        # --- model and route
        ("an unknown model", {"body": _chat(model="gpt-4")}, 404),
        ("an unknown route", {"path": "/v1/nothing", "body": _chat()}, 404),
        ("GET on a POST route", {"method": "GET"}, 405),
        ("PUT on a POST route", {"method": "PUT", "body": _chat()}, 405),
        ("DELETE a model", {"method": "DELETE", "path": "/v1/models/nano"}, 405),
        ("an unknown model's card", {"method": "GET", "path": "/v1/models/gpt-4"}, 404),
        ("a path outside static", {"method": "GET", "path": "/static/../../etc/passwd"}, 404),
        # --- /v1/completions
        ("prompt []", {"path": C, "body": {"prompt": []}}, 400),
        ("prompt [[]]", {"path": C, "body": {"prompt": [[]]}}, 400),
        ("prompt ''", {"path": C, "body": {"prompt": ""}}, 400),
        ("a negative token id", {"path": C, "body": {"prompt": [-1]}}, 400),
        ("a token id past the vocabulary", {"path": C, "body": {"prompt": [10**9]}}, 400),
        ("a token id 2**70", {"path": C, "body": {"prompt": [2**70]}}, 400),
        ("a fractional token id", {"path": C, "body": {"prompt": [1.5]}}, 400),
        ("a boolean token id", {"path": C, "body": {"prompt": [True]}}, 400),
        ("text and ids mixed", {"path": C, "body": {"prompt": ["a", 1]}}, 400),
        ("no prompt", {"path": C, "body": {"max_tokens": 2}}, 400),
        ("completions logprobs 6", {"path": C, "body": {"prompt": "a", "logprobs": 6}}, 400),
        ("completions logprobs -1", {"path": C, "body": {"prompt": "a", "logprobs": -1}}, 400),
        ("more choices than the queue holds", {"path": C, "body": {"prompt": ["a"] * 9, "n": 8}}, 400),
        ("echo as a string", {"path": C, "body": {"prompt": "a", "echo": "yes"}}, 400),
        # --- what a web page could send through the browser (no API key)
        ("text/plain", {"body": _chat(), "headers": {"Content-Type": "text/plain"}}, 415),
        ("a form", {"body": _chat(), "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415),
        ("multipart", {"body": _chat(), "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 415),
        ("no Content-Type", {"body": _chat(), "headers": {"Content-Type": ""}}, 415),
        ("a foreign Host", {"body": _chat(), "headers": {"Host": f"evil.example:{port}"}}, 403),
        ("a rebinding Host", {"body": _chat(), "headers": {"Host": f"127.0.0.1.evil.example:{port}"}}, 403),
        ("a Host with a bad port", {"body": _chat(), "headers": {"Host": "localhost:abc"}}, 403),
        ("a foreign Origin", {"body": _chat(), "headers": {"Origin": "https://evil.example"}}, 403),
        ("Origin null", {"body": _chat(), "headers": {"Origin": "null"}}, 403),
        ("another local port's Origin", {"body": _chat(), "headers": {"Origin": f"http://127.0.0.1:{port + 1}"}}, 403),
        ("the page from a foreign Host", {"method": "GET", "path": "/", "headers": {"Host": "evil.example"}}, 403),
        (
            "models from a foreign Origin",
            {"method": "GET", "path": "/v1/models", "headers": {"Origin": "http://evil.example"}},
            403,
        ),
        # --- valid edge cases: served
        ("temperature 0", {"body": _chat(temperature=0)}, 200),
        ("temperature 1e-4", {"body": _chat(temperature=1e-4)}, 200),
        ("temperature 2", {"body": _chat(temperature=2)}, 200),
        ("an integer temperature", {"body": _chat(temperature=1)}, 200),
        ("seed -2**63", {"body": _chat(seed=-(2**63))}, 200),
        ("seed 2**63-1 with n 3", {"body": _chat(seed=2**63 - 1, n=3)}, 200),
        ("top_k -1 (vLLM's off)", {"body": _chat(top_k=-1)}, 200),
        ("repetition_penalty 0.01", {"body": _chat(repetition_penalty=0.01, temperature=1.0)}, 200),
        (
            "an escaped emoji (a valid surrogate pair)",
            {"body": '{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'},
            200,
        ),
        ("JSON with a charset", {"body": _chat(), "headers": {"Content-Type": "application/json; charset=utf-8"}}, 200),
        ("a +json media type", {"body": _chat(), "headers": {"Content-Type": "application/vnd.minimind+json"}}, 200),
        ("the page's own Origin", {"body": _chat(), "headers": {"Origin": f"http://{own}"}}, 200),
        ("Host localhost", {"body": _chat(), "headers": {"Host": f"localhost:{port}"}}, 200),
        ("Host [::1]", {"body": _chat(), "headers": {"Host": f"[::1]:{port}"}}, 200),
        ("unknown extra fields", {"body": _chat(user="u1", metadata={"a": "b"}, logit_bias=None)}, 200),
        ("exactly the message cap", {"body": {"messages": MESSAGES * MAX_MESSAGES, "max_tokens": 1}}, 200),
        ("a 256-character stop string", {"body": _chat(stop="x" * 256)}, 200),
        ("a tool schema nested 10 deep", {"body": _chat(tools=_tools(parameters=_nested(5)))}, 200),
        ("token ids", {"path": C, "body": {"prompt": [1, 2, 3], "max_tokens": 2}}, 200),
        ("several text prompts", {"path": C, "body": {"prompt": ["a", "b"], "max_tokens": 2, "n": 2}}, 200),
        ("a streamed request", {"body": _chat(stream=True)}, 200),
    ]
    return cases


def test_battery_of_malformed_and_hostile_requests(server, capsys):
    """Every case gets its expected status and, for errors, OpenAI's error body; the counts
    (clear errors, tracebacks, 5xx, garbage accepted) are printed. Target: 0, 0, 0 bad."""
    cases = _battery(server.port)
    assert len(cases) >= 60
    counts = {
        "clear error": 0,
        "correct 2xx": 0,
        "wrong 4xx": 0,
        "5xx": 0,
        "garbage accepted": 0,
        "valid refused": 0,
        "reset": 0,
    }
    problems = []
    for what, request, expected in cases:
        request = dict(request)
        method, path = request.pop("method", "POST"), request.pop("path", "/v1/chat/completions")
        try:
            if method == "POST":
                r = server.post(path, **request)
            else:
                r = httpx.request(
                    method,
                    server.url + path,
                    content=json.dumps(request.get("body", "")),
                    headers={**JSON, **request.get("headers", {})},
                    timeout=60,
                )
        except httpx.TransportError as e:
            counts["reset"] += 1
            problems.append(f"{what}: {e!r}")
            continue
        if r.status_code >= 500:
            outcome = "5xx"
        elif expected == 200:
            outcome = "correct 2xx" if r.status_code == 200 else "valid refused"
        elif r.status_code < 400:
            outcome = "garbage accepted"
        else:
            try:
                err = r.json()["error"]
                clear = set(err) == {"message", "type", "param", "code"} and bool(err["message"])
            except (ValueError, KeyError, TypeError):
                clear = False
            outcome = "clear error" if clear and r.status_code == expected else "wrong 4xx"
        counts[outcome] += 1
        if outcome not in ("clear error", "correct 2xx"):
            problems.append(f"{what}: expected {expected}, got {r.status_code}: {r.text[:200]}")
    assert server.idle()["running"] == 0
    tracebacks = server.tracebacks()
    counts["tracebacks"] = len(tracebacks)
    with capsys.disabled():
        print(f"\nbattery of {len(cases)} requests: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert not problems and not tracebacks, (counts, problems, tracebacks)
