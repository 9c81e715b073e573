"""The web chat page of `minimind serve`, driven in a real headless Chromium.

A user's session against the real server (a random-weight nano model, so the text is
gibberish, but it streams like any other): the page asks for the API key, streams a reply,
keeps the conversation, thinks when asked, stops a long generation, shows tool calls as
cards and says so clearly when the server is gone. Screenshots land in the test's tmp dir.
"""

import json
import shutil
import time

import httpx
import pytest

from helpers import start_server
from minimind.cli import main

PEERS = "scripts/install-test-peers.sh"
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason=f"playwright is not installed ({PEERS})"
).sync_playwright

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason=f"no chromium binary on PATH (Debian: apt-get install chromium, or {PEERS})"
)

API_KEY = "sk-web-test"


@pytest.fixture
def server(tmp_path, tok_dir):
    """`minimind serve` on a free port with a fresh nano model and an API key; yields (url, process)."""
    model = tmp_path / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(model)]) == 0
    proc, url = start_server(model, tmp_path / "server.log", "--api-key", API_KEY)
    yield url, proc
    proc.kill()
    proc.wait()


@pytest.fixture
def page(tmp_path):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(20_000)
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def _send(page, text: str):
    page.get_by_label("Message").fill(text)
    page.get_by_label("Message").press("Enter")


def _reply(page, n: int):
    """The n-th assistant message (0-based)."""
    return page.locator(".msg.assistant").nth(n)


def _finished(page, n: int):
    """Wait until the n-th reply has ended (its status line appears) and return that line's text."""
    return _reply(page, n).locator(".meta").inner_text()


# Characters shown so far in the n-th reply: its thinking plus its answer.
TEXT_LENGTH = """n => [...document.querySelectorAll('.msg.assistant')[n].querySelectorAll('.think-body, .body')]
    .reduce((total, el) => total + el.textContent.length, 0)"""


def _text_length(page, n: int) -> int:
    return page.evaluate(TEXT_LENGTH, n)


def _wait_longer(page, n: int, than: int):
    page.wait_for_function(f"([n, than]) => ({TEXT_LENGTH})(n) > than", arg=[n, than])


def _streamed(sse: str, field: str) -> list[str]:
    """The pieces of `field` (content, reasoning_content) in a server-sent event stream."""
    events = [line[len("data: ") :] for line in sse.splitlines() if line.startswith("data: ")]
    return [
        choice["delta"].get(field) or ""
        for event in events
        if event != "[DONE]"
        for choice in json.loads(event)["choices"]
    ]


def _tool_call_sse() -> str:
    """A streamed reply that calls a tool, in the server's chunk format, arguments in pieces."""

    def chunk(delta, finish=None):
        return (
            "data: "
            + json.dumps(
                {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )
            + "\n\n"
        )

    call = {"index": 0, "id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
    return (
        chunk({"role": "assistant"})
        + chunk({"content": "Let me check."})
        + chunk({"tool_calls": [call]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Bei'}}]})
        + chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'jing"}'}}]})
        + chunk({}, "tool_calls")
        + "data: [DONE]\n\n"
    )


def test_chat_page_streams_thinks_stops_and_reports_errors(server, page, tmp_path):
    url, proc = server
    page.goto(url)

    # The server wants a key: the page says so (the server's own 401 message), then works with it.
    banner = page.get_by_role("alert")
    assert "401" in banner.inner_text() and "API key" in banner.inner_text()
    page.screenshot(path=tmp_path / "01-api-key-needed.png")
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("API key").press("Tab")  # "change" re-asks /v1/models
    served = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"][0]["id"]
    page.get_by_label("Model").filter(has_text=served).wait_for()
    assert banner.is_hidden()

    # Shift+Enter is a new line, Enter sends; model and user text are shown as text, never as HTML.
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message").fill("Hello <b>world</b>")
    page.get_by_label("Message").press("Shift+Enter")
    page.get_by_label("Message").press_sequentially("second line")
    with page.expect_response("**/v1/chat/completions") as response:
        page.get_by_label("Message").press("Enter")
    assert page.locator(".msg.user .body").inner_text() == "Hello <b>world</b>\nsecond line"
    assert page.locator(".msg b").count() == 0
    _finished(page, 0)
    first_reply = "".join(_streamed(response.value.text(), "content"))

    # Thinking on and a long budget: the request carries it and the history, the text grows.
    page.get_by_label("Thinking").check()
    page.get_by_label("Max tokens").fill("20000")
    with page.expect_request("**/v1/chat/completions") as request:
        _send(page, "Tell me more")
    body = request.value.post_data_json
    assert body["chat_template_kwargs"] == {"open_thinking": True} and body["stream"] is True
    assert body["max_tokens"] == 20000
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1] == {"role": "assistant", "content": first_reply}
    assert request.value.headers["authorization"] == f"Bearer {API_KEY}"
    _wait_longer(page, 1, 0)
    grown = _text_length(page, 1)
    _wait_longer(page, 1, grown + 20)  # still streaming: more text arrived
    # A random model rarely writes </think>, so its text is the (open) thinking section.
    assert page.locator(".msg.assistant details.thinking").count() == 1
    page.screenshot(path=tmp_path / "02-streaming-with-thinking.png")

    # Stop: the button turns back into Send, the reply says it was stopped and stays as it is.
    page.get_by_role("button", name="Stop").click()
    assert "stopped" in _finished(page, 1)
    page.get_by_role("button", name="Send").wait_for()
    stopped_at = _text_length(page, 1)
    page.get_by_label("Max tokens").fill("4")
    _send(page, "And now?")  # the server is free again and answers the next turn
    _finished(page, 2)
    assert _text_length(page, 1) == stopped_at
    # ... and the server dropped the stopped reply (20,000 tokens would keep it busy for a minute).
    deadline = time.monotonic() + 30
    while httpx.get(f"{url}/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{url}/health").json()["running"] == 0, "the server still generates the stopped reply"
    page.screenshot(path=tmp_path / "03-stopped-then-next-turn.png")

    # Tool calls become cards with the name and pretty-printed arguments (a canned reply:
    # a random model does not call tools).
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_tool_call_sse()),
    )
    _send(page, "Weather in Beijing?")
    card = page.get_by_label("Tool call get_weather")
    assert json.loads(card.locator("pre").inner_text()) == {"city": "Beijing"}
    assert "\n" in card.locator("pre").inner_text()  # indented, not one line
    assert "tool call" in _finished(page, 3)
    page.screenshot(path=tmp_path / "04-tool-call.png")
    page.unroute("**/v1/chat/completions")

    # The server goes away: a clear message, and the unsent text is given back for a retry.
    proc.kill()
    proc.wait()
    _send(page, "Still there?")
    banner.wait_for()
    assert f"Cannot reach the server at {url}" in banner.inner_text()
    assert page.get_by_label("Message").input_value() == "Still there?"
    assert page.locator(".msg.user").count() == 4
    page.screenshot(path=tmp_path / "05-server-unreachable.png")

    # New chat forgets the conversation.
    page.get_by_role("button", name="New chat").click()
    assert page.locator(".msg").count() == 0
