"""`minimind data check`: a readable report, every problem with FILE:LINE, exit status 1 on problems."""

import json

import pytest

from helpers import chat_records, dpo_records, pretrain_records, rl_records, write_jsonl
from minimind.cli import main


def check(capsys, *argv):
    try:
        code = main(["data", "check", *map(str, argv)])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_report_on_shared_tool_call_data(capsys, shared_data):
    path = shared_data / "minimind_format" / "sft_toolcall_glaive_demo_zh_en.jsonl"
    code, out, _ = check(
        capsys, path, "--kind", "sft", "--tokenizer", shared_data / "tokenizer" / "minimind3", "--seq-len", "512"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{path}  (sft)"
    assert "records    600 read, 600 valid, 0 with problems" in out
    assert "messages   4,394 (1,897 assistant turns, 427 tool calls, 0 with reasoning)" in out
    assert "tokens     452,871, of which 231,973 trained (assistant turns, 51%)" in out
    assert "length     tokens per record: min 285, p50 626, p90 1,272, p99 2,027, max 6,169" in out
    assert "longer than 512 tokens and would be truncated" in out and out.rstrip().endswith("problems   none")


def test_report_on_generated_chats(capsys, tmp_path, tok_dir):
    records = chat_records(60)
    path = write_jsonl(tmp_path / "chats.jsonl", records)
    messages = [m for r in records for m in r["conversations"]]
    calls = sum(len(json.loads(c) if isinstance(c, str) else c) for m in messages if (c := m.get("tool_calls")))
    turns = sum(m["role"] == "assistant" for m in messages)
    reasoning = sum(bool(m.get("reasoning_content")) or "<think>" in m["content"] for m in messages)
    code, out, _ = check(capsys, path, "--kind", "sft", "--tokenizer", tok_dir, "--seq-len", "512")
    assert code == 0 and out.splitlines()[0] == f"{path}  (sft)"
    assert "records    60 read, 60 valid, 0 with problems" in out
    assert (
        f"messages   {len(messages)} ({turns} assistant turns, {calls} tool calls, {reasoning} with reasoning)" in out
    )
    assert "tokens per record: min" in out and out.rstrip().endswith("problems   none")


def test_problems_are_listed_and_the_exit_status_is_1(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n{broken\n{"text": "ok"}\n', encoding="utf-8")
    code, out, _ = check(capsys, bad, "--kind", "pretrain")
    assert code == 1
    assert f"{bad}:2: empty 'text'" in out and f"{bad}:3: invalid JSON" in out
    assert "records    4 read, 2 valid, 2 with problems" in out and out.rstrip().endswith("2 problems found")
    assert "pass --tokenizer DIR" in out
    code, out, _ = check(capsys, bad, "--kind", "pretrain", "--on-bad-record", "error")  # stop at the first
    assert code == 1 and "records    2 read, 1 valid, 1 with problems" in out and ":3:" not in out


def test_wrong_kind_gets_a_hint(capsys, tmp_path):
    code, out, _ = check(capsys, write_jsonl(tmp_path / "pairs.jsonl", dpo_records(2)), "--kind", "sft")
    assert code == 1 and "missing 'conversations'" in out and "did you mean --kind dpo?" in out


@pytest.mark.parametrize(
    "kind,make,unit",
    [
        ("dpo", dpo_records, "pair (longer side)"),
        ("rl", rl_records, "prompt"),
        ("pretrain", pretrain_records, "record"),
    ],
)
def test_other_kinds(capsys, tmp_path, tok_dir, kind, make, unit):
    code, out, _ = check(
        capsys,
        write_jsonl(tmp_path / "data.jsonl", make(250)),
        "--kind",
        kind,
        "--tokenizer",
        tok_dir,
        "--limit",
        "200",
    )
    assert code == 0 and "200 read, 200 valid" in out and f"tokens per {unit}: min" in out


def test_json_output_and_missing_file(capsys, tok_dir, tmp_path):
    code, out, _ = check(
        capsys,
        write_jsonl(tmp_path / "chats.jsonl", chat_records(3)),
        "--kind",
        "sft",
        "--tokenizer",
        tok_dir,
        "--json",
    )
    report = json.loads(out)
    assert code == 0 and report["valid"] == 3 and report["problems"] == 0 and report["loss_tokens"] > 0
    code, _, err = check(capsys, tmp_path / "nope.jsonl", "--kind", "sft")
    assert code == 2 and "nope.jsonl: file not found" in err
