"""Reading MiniMind's JSONL formats: every bad record is reported as FILE:LINE: what is wrong."""

import json

import pytest

from minimind.data import BadRecords, read_records
from minimind.errors import MiniMindError

USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}
TOOLS = json.dumps([{"type": "function", "function": {"name": "add", "parameters": {}}}])
CALL = json.dumps([{"name": "add", "arguments": {"a": 1}}])


def write_lines(path, lines):
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


def asst(content="", **extra):
    return {"role": "assistant", "content": content, **extra}


def system(content="", **extra):
    return {"role": "system", "content": content, **extra}


def conv(*messages, **extra):
    return json.dumps({"conversations": list(messages), **extra}, ensure_ascii=False)


# (kind, the bad line, a fragment of the expected message)
BAD = [
    ("pretrain", "{not json", "invalid JSON"),
    ("pretrain", b'{"text": "caf\xe9"}', "invalid UTF-8"),
    ("pretrain", "[1, 2]", "expected a JSON object, got list"),
    ("pretrain", '{"txt": "a"}', "missing 'text'"),
    ("pretrain", '{"text": 5}', "'text' must be a string, got number"),
    ("pretrain", '{"text": "   "}', "empty 'text'"),
    ("sft", '{"text": "a"}', "missing 'conversations'"),
    ("sft", '{"conversations": "hi"}', "'conversations' must be a list of messages, got string"),
    ("sft", '{"conversations": []}', "'conversations' is empty"),
    ("sft", '{"conversations": ["hi"]}', "conversations[0] must be an object"),
    ("sft", conv({"content": "hi"}, ASSISTANT), "conversations[0]: missing 'role'"),
    ("sft", conv({"role": "bot", "content": "x"}), "unknown role 'bot'"),
    ("sft", conv({"role": "user"}, ASSISTANT), "conversations[0] (user): missing 'content'"),
    ("sft", conv({"role": "user", "content": ["a"]}, ASSISTANT), "'content' must be a string, got list"),
    ("sft", conv(USER), "has no assistant message"),
    ("sft", conv(USER, asst(" ")), "conversations[1] (assistant): empty reply"),
    ("sft", conv(USER, asst("a", reasoning_content=3)), "'reasoning_content' must be a string"),
    ("sft", conv({"role": "user", "content": "x<|im_start|>assistant\nboo"}, ASSISTANT), "chat marker <|im_start|>"),
    ("sft", conv(system(tools="[{"), USER, ASSISTANT), "'tools' is not valid JSON"),
    ("sft", conv(system(tools='{"name": "f"}'), USER, ASSISTANT), "'tools' must be a list"),
    ("sft", conv(system(tools='[{"type": "function"}]'), USER, ASSISTANT), "tools[0] has no function name"),
    ("sft", conv({"role": "user", "content": "x", "tools": TOOLS}, ASSISTANT), "'tools' belongs on a system message"),
    ("sft", conv(USER, asst(tool_calls="[{")), "'tool_calls' is not valid JSON"),
    ("sft", conv(USER, asst(tool_calls='{"name": "add"}')), "'tool_calls' must be a list"),
    ("sft", conv(USER, asst(tool_calls='[{"arguments": {}}]')), "tool_calls[0] has no function name"),
    (
        "sft",
        conv(USER, asst(tool_calls='[{"name": "f", "arguments": "{x"}]')),
        "tool_calls[0].arguments is not valid JSON",
    ),
    (
        "sft",
        conv(USER, asst(tool_calls='[{"name": "f", "arguments": 3}]')),
        "tool_calls[0].arguments must be an object",
    ),
    (
        "sft",
        conv({"role": "user", "content": "x", "tool_calls": CALL}, ASSISTANT),
        "'tool_calls' belongs on an assistant message",
    ),
    ("sft", conv(USER, {"role": "tool", "content": "{}"}, ASSISTANT), "a tool result must follow an assistant message"),
    ("dpo", json.dumps({"chosen": [USER, ASSISTANT]}), "missing 'rejected'"),
    ("dpo", json.dumps({"chosen": [USER, ASSISTANT], "rejected": []}), "'rejected' is empty"),
    ("dpo", json.dumps({"chosen": [USER, ASSISTANT], "rejected": [USER]}), "'rejected' has no assistant message"),
    (
        "dpo",
        json.dumps({"chosen": [USER, ASSISTANT], "rejected": [ASSISTANT, USER]}),
        "'rejected' must end with the assistant's reply",
    ),
    (
        "dpo",
        json.dumps({"chosen": [USER, ASSISTANT], "rejected": [{"role": "user", "content": "other"}, ASSISTANT]}),
        "different prompts",
    ),
    ("rl", conv({"role": "system", "content": "s"}, asst()), "has no user message"),
    ("rl", conv(USER, asst(), gt="72"), "'gt' must be a list of expected answers, got string"),
    ("rl", conv(USER, asst(), gt=[{"a": 1}]), "gt[0] must be a string or a number, got object"),
    ("rl", conv(USER, asst(), gt=[True]), "gt[0] must be a string or a number, got boolean"),
]


@pytest.mark.parametrize("kind,line,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_record_is_reported_with_file_and_line(tmp_path, kind, line, message):
    good = {
        "pretrain": '{"text": "fine"}',
        "sft": conv(USER, ASSISTANT),
        "dpo": json.dumps({"chosen": [USER, ASSISTANT], "rejected": [USER, {"role": "assistant", "content": "no"}]}),
        "rl": conv(USER, asst(), gt=["1"]),
    }[kind]
    path = write_lines(tmp_path / "data.jsonl", [good, "", good, line, good])  # the bad record is on line 4
    with pytest.raises(MiniMindError) as e:
        list(read_records(path, kind))
    text = str(e.value)
    assert text.startswith(f"{path}:4: "), text
    assert message in text and "\n" not in text


def test_skip_mode_counts_and_keeps_the_first_reasons(tmp_path):
    lines = ['{"text": "a"}', "{oops", '{"text": ""}', '{"text": "b"}', "3", '{"text": "c"}'] + ['{"x": 1}'] * 10
    path = write_lines(tmp_path / "p.jsonl", lines)
    bad = BadRecords()
    good = list(read_records(path, "pretrain", on_bad_record="skip", bad=bad))
    assert [r.data["text"] for r in good] == ["a", "b", "c"]
    assert [r.line for r in good] == [1, 4, 6]
    assert bad.count == 13 and len(bad.examples) == 5
    assert bad.examples[0] == f"{path}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    assert bad.examples[1] == f"{path}:3: empty 'text'"
    assert bad.summary().startswith("skipped 13 bad records; first:\n  ")


def test_valid_shapes_of_the_minimind_formats(tmp_path):
    tool_chat = conv(
        system(tools=TOOLS),
        USER,
        asst(tool_calls=CALL),
        {"role": "tool", "content": '{"r": 2}'},
        {"role": "tool", "content": '{"r": 3}'},
        asst("2", reasoning_content="r"),
    )
    parsed_lists = json.dumps(
        {"conversations": [system(tools=json.loads(TOOLS)), USER, asst(None, tool_calls=json.loads(CALL))]}
    )
    inline_think = conv(USER, asst("<think>x</think>y"))
    path = write_lines(tmp_path / "s.jsonl", [tool_chat, parsed_lists, inline_think])
    records = list(read_records(path, "sft"))
    assert [r.info["tool_calls"] for r in records] == [1, 1, 0]
    assert [r.info["reasoning"] for r in records] == [1, 0, 1]
    rl = write_lines(tmp_path / "r.jsonl", [conv(USER, asst(), gt=["72", 3.5]), conv(USER)])
    assert len(list(read_records(rl, "rl"))) == 2


def test_bom_blank_lines_and_missing_file(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\n   \n{"text": "b"}')
    assert [(r.line, r.data["text"]) for r in read_records(path, "pretrain")] == [(1, "a"), (4, "b")]
    with pytest.raises(MiniMindError, match="file not found"):
        list(read_records(tmp_path / "none.jsonl", "pretrain"))
    with pytest.raises(MiniMindError, match="unknown data kind"):
        list(read_records(path, "chat"))


def test_shared_files_are_valid(shared_data):
    d = shared_data / "minimind_format"
    files = {
        "pretrain": ["pretrain_en_c4_wiki_demo.jsonl", "tiny/tiny_pretrain.jsonl"],
        "sft": [
            "sft_toolcall_glaive_demo_zh_en.jsonl",
            "sft_sharegpt_zh_1k.jsonl",
            "sft_numina_math_cot_1k.jsonl",
            "lora_identity.jsonl",
            "tiny/tiny_sft.jsonl",
        ],
        "dpo": ["dpo_medicalgpt_zh_500.jsonl", "tiny/tiny_dpo.jsonl"],
        "rl": ["rl_gsm8k_train_gt.jsonl", "rlaif-mini.jsonl"],
    }
    for kind, names in files.items():
        for name in names:
            assert sum(1 for _ in read_records(d / name, kind)) > 0


def test_empty_tool_call_list_is_not_a_reply(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [conv(USER, asst("", tool_calls="[]"))])
    with pytest.raises(MiniMindError, match=r"s\.jsonl:1: conversations\[1\] \(assistant\): empty reply"):
        list(read_records(path, "sft"))
