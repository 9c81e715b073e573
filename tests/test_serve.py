"""`minimind serve` as a user meets it: a real server process on loopback, driven by the
official `openai` client (and httpx for what a client library would never send).

The model is a `nano` one with scrambled random weights (varied output), then taught in a
few seconds to answer one weather question with a tool call, so tool-call parsing is tested
on text the model really generated.
"""

import json
import threading
import time

import httpx
import pytest
import torch
import torch.nn.functional as F

from helpers import scrambled_model, start_server
from minimind.checkpoint import save_model_dir

openai = pytest.importorskip("openai")

KEY = "test-key"
GREEDY = {"temperature": 0, "max_tokens": 16}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def teach_tool_call(model, tokenizer) -> None:
    """Overfit the model on one conversation, WEATHER + TOOLS -> CALL (20 steps suffice;
    the loss is taken on the answer's positions only, so the vocabulary projection is cheap).

    A model this small barely looks past the generation prompt, which every chat ends with, so
    it would answer *every* prompt with (a piece of) the call and <|im_end|>. Four of its own
    sampled replies to a prompt without tools, learned alongside, keep its answers elsewhere
    varied and free of an early end, whatever the tokenizer."""
    from minimind.infer import SamplingParams, generate

    prompt = tokenizer.encode_chat(WEATHER, tools=TOOLS, add_generation_prompt=True)
    rows = [(torch.tensor([prompt + tokenizer.encode(CALL) + [tokenizer.eos_token_id]]), len(prompt))]
    plain = tokenizer.encode_chat([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    for seed in range(4):
        params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed, stop_token_ids=())
        rows.append((torch.tensor([plain + generate(model, tokenizer, [plain], params)[0].token_ids]), len(plain)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        loss = 0
        for ids, start in rows:
            h, _ = model.model(ids[:, :-1])
            loss = loss + F.cross_entropy(model.lm_head(h[0, start - 1 :]), ids[0, start:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tok):
    """Start `minimind serve` on a free port with an API key; yield its base URL."""
    tokenizer = tok  # conftest's project-made tokenizer
    torch.manual_seed(0)
    model = scrambled_model()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from threads
    teach_tool_call(model, tokenizer)
    torch.set_num_threads(threads)
    model_dir = tmp_path_factory.mktemp("serve") / "nano"
    save_model_dir(model, model_dir, tokenizer)
    proc, url = start_server(model_dir, model_dir.parent / "server.log", env={"MINIMIND_API_KEY": KEY})
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def chat(client, messages, **kw):
    return client.chat.completions.create(model="nano", messages=messages, **{**GREEDY, **kw})


def say(text):
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- the basics


def test_models_list(client):
    assert [m.id for m in client.models.list().data] == ["nano"]


def test_chat_answer_and_usage(client):
    r = chat(client, say("Hello"))
    assert r.object == "chat.completion" and r.model == "nano" and r.id.startswith("chatcmpl-")
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
    assert r.usage.completion_tokens == 16 and r.usage.total_tokens == r.usage.prompt_tokens + 16


def test_streaming_equals_non_streaming(client):
    whole = chat(client, say("Tell me a story")).choices[0].message.content
    chunks = list(chat(client, say("Tell me a story"), stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_stream_ends_with_done(server):
    body = {"messages": say("Hi"), "max_tokens": 3, "stream": True}
    with httpx.stream(
        "POST", server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_stop_strings(client):
    full = chat(client, say("Count"), max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    r = chat(client, say("Count"), max_tokens=24, stop=[stop, "never-said"])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_seed_n_and_sampling(client):
    a = chat(client, say("Hi"), temperature=1.0, seed=3, n=2)
    b = chat(client, say("Hi"), temperature=1.0, seed=3, n=2)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content  # seed, seed + 1
    assert 2 <= a.usage.completion_tokens <= 32


def test_completions_endpoint(client):
    r = client.completions.create(model="nano", prompt="Once upon a time", max_tokens=8, temperature=0)
    streamed = client.completions.create(
        model="nano", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text
    assert r.object == "text_completion" and r.usage.completion_tokens == 8


def test_logprobs_chat_streamed_and_completions(client):
    """OpenAI's logprobs: per token the model's log-probability, its bytes and the top
    alternatives; the tokens spell the text; streaming sends the same entries in pieces."""
    r = chat(client, say("Tell me a story"), logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content, entries = r.choices[0].message.content, r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 16  # no stop token: max_tokens reached
    # max_tokens may cut a character: the text then ends in U+FFFD, as a lossy decode of the bytes does
    spelled = bytes(b for e in entries for b in e.bytes).decode(errors="replace")
    assert spelled.replace("<|im_end|>", "") == content  # ignore_eos: the skipped end token may recur
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        assert e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-5)  # greedy picks the best
    chunks = list(
        chat(
            client, say("Tell me a story"), logprobs=True, top_logprobs=2, stream=True, extra_body={"ignore_eos": True}
        )
    )
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    assert chat(client, say("Hi")).choices[0].logprobs is None

    text = client.completions.create(
        model="nano",
        prompt="Once upon a time",
        max_tokens=6,
        temperature=0,
        logprobs=3,
        extra_body={"ignore_eos": True},
    )
    lp = text.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == text.choices[0].text and lp.text_offset[0] == 0
    assert all(len(top) <= 3 for top in lp.top_logprobs)


# --------------------------------------------------------------------------- tools


def test_tool_call_round_trip(client):
    r = chat(client, WEATHER, tools=TOOLS, max_tokens=40)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # hand the result back, as an agent loop does
    history = WEATHER + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    again = chat(client, history, tools=TOOLS)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_streamed_tool_call_leaks_no_tags(client):
    chunks = list(chat(client, WEATHER, tools=TOOLS, max_tokens=40, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert "<tool_call>" not in content and "tool_call" not in content
    assert [(t.index, t.function.name, json.loads(t.function.arguments)) for t in calls] == [
        (0, "get_weather", {"city": "Paris"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize(
    "tool_choice, forced",
    [
        ("required", "<tool_call>\n"),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            '<tool_call>\n{"name": "get_weather", "arguments":',
        ),
    ],
)
def test_tool_choice_that_demands_a_call_writes_its_start(client, tok, tool_choice, forced):
    """ "required" and a named function: the server writes the call's opening (and the name)
    into the prompt, which usage counts as prompt tokens, and the model writes the rest.
    With thinking asked for, the call still comes first. Streamed, the same call."""
    auto = chat(client, WEATHER, tools=TOOLS, max_tokens=40)
    n = len(tok.encode(forced))
    for kw in ({}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}}):
        r = chat(client, WEATHER, tools=TOOLS, tool_choice=tool_choice, max_tokens=40, **kw)
        message = r.choices[0].message
        [call] = message.tool_calls
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        assert r.choices[0].finish_reason == "tool_calls" and not message.content
        assert not message.model_extra.get("reasoning_content")
        assert r.usage.prompt_tokens == auto.usage.prompt_tokens + n
        assert r.usage.completion_tokens == auto.usage.completion_tokens - n
    chunks = list(chat(client, WEATHER, tools=TOOLS, tool_choice=tool_choice, max_tokens=40, stream=True))
    calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == [("get_weather", {"city": "Paris"})]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)


def test_thinking_goes_to_reasoning_content(client):
    r = chat(client, say("Why?"), extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    message = r.choices[0].message
    assert message.model_extra.get("reasoning_content")  # the model never closed <think> in 16 tokens


# --------------------------------------------------------------------------- many at once


def test_sixteen_concurrent_streams_equal_one_at_a_time(client):
    prompts = [f"Question number {i}: " + "why " * (i % 5) for i in range(16)]
    alone = [chat(client, say(p)).choices[0].message.content for p in prompts]
    results = [None] * 16

    def run(i):
        stream = chat(client, say(prompts[i]), stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def test_disconnected_client_stops_generation(server):
    body = {"messages": say("Go on forever"), "max_tokens": 4000, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body, headers=headers) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == "" and next(lines).startswith("data: ")
        load = httpx.get(server + "/health").json()
        assert load["running"] + load["waiting"] == 1
    for _ in range(300):  # the engine drops the row at its next step
        if httpx.get(server + "/health").json()["running"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": "nano", "running": 0, "waiting": 0}


def test_non_streaming_client_that_gives_up_stops_generation(server):
    body = {"messages": say("Go on forever"), "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=1)
    for _ in range(300):
        if httpx.get(server + "/health").json()["running"] == 0:
            break
        time.sleep(0.05)
    assert httpx.get(server + "/health").json() == {"status": "ok", "model": "nano", "running": 0, "waiting": 0}


# --------------------------------------------------------------------------- errors


def raw(server, body, key=KEY, path="/v1/chat/completions", **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        server + path,
        content=body if isinstance(body, (str, bytes)) else json.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        **kw,
    )


def assert_error(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text
    if param is not None:
        assert err["param"] == param


def test_api_key(server):
    assert httpx.get(server + "/health").status_code == 200
    assert_error(httpx.get(server + "/v1/models"), 401)
    assert_error(httpx.get(server + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize(
    "body, param",
    [
        ("{not json", None),
        ('["a list"]', None),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, None),
        ({"messages": [{"role": "user"}]}, None),
        ({"messages": say("hi"), "temperature": 5}, "temperature"),
        ({"messages": say("hi"), "temperature": "hot"}, "temperature"),
        ({"messages": say("hi"), "top_p": 0}, "top_p"),
        ({"messages": say("hi"), "n": 0}, "n"),
        ({"messages": say("hi"), "max_tokens": 0}, "max_tokens"),
        ({"messages": say("hi"), "presence_penalty": 3}, "presence_penalty"),
        ({"messages": say("hi"), "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": say("hi"), "top_logprobs": 2}, "top_logprobs"),
        ({"messages": say("hi"), "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (
            {"messages": say("hi"), "tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": TOOLS},
            "tool_choice",
        ),
        ({"messages": say("hi"), "tool_choice": "required"}, "tool_choice"),
        (
            {"messages": say("hi"), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            "tool_choice",
        ),
    ],
)
def test_bad_requests_get_400(server, body, param):
    assert_error(raw(server, body), 400, param)


def test_json_without_a_json_content_type_is_accepted(server):
    r = httpx.post(
        server + "/v1/chat/completions",
        content=json.dumps({"messages": say("hi"), "max_tokens": 2}),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_unknown_model_and_route(server):
    assert_error(raw(server, {"model": "gpt-4", "messages": say("hi")}), 404, "model")
    assert_error(raw(server, {}, path="/v1/nothing"), 404)
    assert_error(httpx.get(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)


def test_prompt_longer_than_the_context(server):
    assert_error(raw(server, {"messages": say("word " * 40000)}), 400, "messages")
    assert raw(server, {"messages": say("word " * 40000)}).json()["error"]["code"] == "context_length_exceeded"


def test_a_full_queue_answers_429(tok):
    """The engine's bound, checked without a server: with no free row and a queue of 2,
    a third request is refused (the app turns QueueFull into 429 rate_limit_exceeded)."""
    import asyncio

    from minimind.infer import SamplingParams
    from minimind.serve.scheduler import QueueFull, Scheduler

    model = scrambled_model()
    tokenizer = tok
    scheduler = Scheduler(model, tokenizer, max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    loop = asyncio.new_event_loop()
    params = SamplingParams(max_new_tokens=4)
    scheduler.submit([([1, 2, 3], params)] * 2, loop)
    with pytest.raises(QueueFull):
        scheduler.submit([([1, 2, 3], params)], loop)
    loop.close()
