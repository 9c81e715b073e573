"""Parsing <think> and <tool_call> out of generated text, whole or split into any pieces."""

import json
import random

import pytest

from minimind.serve.tools import OutputParser, parse_output

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'


def streamed(text: str, thinking: bool, tools: bool, seed: int):
    """Feed `text` in random pieces; gather what the events add up to."""
    rng, parser, i = random.Random(seed), OutputParser(thinking, tools), 0
    events = []
    while i < len(text):
        j = i + rng.randint(1, 6)
        events += parser.feed(text[i:j])
        i = j
    events += parser.finish()
    content = "".join(v for k, v in events if k == "content")
    reasoning = "".join(v for k, v in events if k == "reasoning")
    calls = [v["function"] for k, v in events if k == "tool_call"]
    return content, reasoning, calls


@pytest.mark.parametrize("seed", range(20))
def test_pieces_split_anywhere_give_the_same_parts(seed):
    text = "I should check.\n</think>\n\nLet me look.\n" + CALL + "\n" + CALL.replace("北京", "Paris")
    content, reasoning, calls = streamed(text, thinking=True, tools=True, seed=seed)
    assert reasoning == "I should check."
    assert content == "Let me look.\n"  # no part of a tag leaks into the answer
    assert calls == [
        {"name": "get_weather", "arguments": json.dumps({"city": c}, ensure_ascii=False)} for c in ("北京", "Paris")
    ]


def test_whole_text_parse():
    content, reasoning, calls = parse_output("\n\n" + CALL, thinking=False, tools=True)
    assert content is None and reasoning is None
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "北京"}


def test_without_tools_the_tags_are_plain_text():
    assert parse_output("a " + CALL, thinking=False, tools=False)[0] == "a " + CALL


def test_a_think_block_the_model_opened_itself():
    assert parse_output("<think>\nhmm\n</think>\n\nHi!", thinking=False, tools=False) == ("Hi!", "hmm", [])


def test_malformed_call_is_shown_as_content():
    bad = "<tool_call>{not json}</tool_call>"
    assert parse_output(bad, thinking=False, tools=True) == (bad, None, [])


def test_text_that_only_looks_like_the_start_of_a_tag_is_released():
    assert streamed("a < b and <tool", thinking=False, tools=True, seed=0)[0] == "a < b and <tool"


def test_unfinished_thinking_is_reasoning():
    assert parse_output("still thinking", thinking=True, tools=False) == (None, "still thinking", [])


def test_a_forced_call_prefix_is_read_as_generated():
    """The server's forced opening (tool_choice) is parsed with what the model writes after
    it; unparsable arguments come back as content that shows the whole call as written."""
    named = '<tool_call>\n{"name": "get_weather", "arguments":'
    parser = OutputParser(thinking=False, tools=True, prefix=named)
    events = parser.feed(' {"city": "Paris"}}\n</tool_call>') + parser.finish()
    assert [(k, v["function"]) for k, v in events] == [
        ("tool_call", {"name": "get_weather", "arguments": '{"city": "Paris"}'})
    ]
    assert parse_output(named + " Paris}\n</tool_call>", False, True)[0] == named + " Paris}\n</tool_call>"
    content, _, calls = parse_output("<tool_call>\n" + '{"name": "f", "arguments": {}}\n</tool_call>', False, True)
    assert content is None and calls[0]["function"] == {"name": "f", "arguments": "{}"}
