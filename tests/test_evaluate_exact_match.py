"""Exact match (GSM8K): the final-number extractor on tricky replies, the three data formats, errors,
and a generation run end to end."""

import json
import re

import pytest

from helpers import rl_records, write_jsonl
from minimind import MiniMindError
from minimind.cli import main
from minimind.evaluate.exact_match import is_correct, read_problems
from minimind.evaluate.numbers import extract_answer, same_number

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "reply, number, explicit",
    [
        ("She earned $1,234.50 in total.\n#### 1234.5", "1234.5", True),
        ("Natalia sold 48 + 24 = 72 clips. The answer is 72.", "72", True),
        ("So the result is \\boxed{\\frac{3}{4}}.", "3/4", True),
        ("\\boxed{72} dollars, that is 5 more than before", "72", True),
        ("<think>2 + 2 = 4, then 17 apples</think>\nThe answer is 5.", "5", True),
        ("<think>17 and 4 and 9</think>\nSo she has 9 left", "9", False),
        ("<think>the count is 17", "17", False),  # unfinished thinking: its numbers are all there is
        ("Answer: -7 apples", "-7", True),
        ("The temperature fell to −12 degrees.", "-12", False),
        ("答案/Answer: 72", "72", True),
        ("所以答案是 1,000 元。", "1000", True),
        ("It costs $5.00. Each of the 3 friends pays it.", "3", False),  # last number of the reply
        ("First 3, then 8.", "8", False),
        ("The share is 50%.", "50", False),
        ("I do not know.", None, False),
    ],
)
def test_extract_answer(reply, number, explicit):
    assert extract_answer(reply) == (number, explicit)


@pytest.mark.parametrize(
    "a, b, equal",
    [
        ("5.00", "5", True),
        ("3/4", "0.75", True),
        ("1,234", "1234", True),
        ("$5", "5", True),
        ("-3", "3", False),
        ("−3", "-3", True),
        ("0.1", "1/10", True),
        ("72", "72.5", False),
        ("abc", "abc", True),
    ],
)
def test_same_number(a, b, equal):
    assert same_number(a, b) is equal


def test_is_correct_uses_any_expected_answer():
    assert is_correct("The answer is 10.", ["12", "10"]) == (True, "10", True)
    assert is_correct("no idea", ["10"]) == (False, None, False)


@pytest.mark.parametrize("source", ["generated", "shared"])
def test_reads_the_three_formats(tmp_path, source, request):
    if source == "shared":  # MiniMind's GSM8K files
        d = request.getfixturevalue("shared_data") / "minimind_format"
        rl_file, sft_file, answers = d / "rl_gsm8k_train_gt.jsonl", d / "sft_gsm8k_train.jsonl", ["72", "10"]
    else:  # the same two formats: RL prompts with "gt", SFT conversations ending in the answer
        records = rl_records(2)
        answers = [r["gt"][0] for r in records]
        rl_file = write_jsonl(tmp_path / "rl.jsonl", records)
        sft_file = write_jsonl(
            tmp_path / "sft.jsonl",
            [
                {
                    "conversations": [
                        r["conversations"][0],
                        {"role": "assistant", "content": f"That makes {a}.\nAnswer: {a}"},
                    ]
                }
                for r, a in zip(records, answers)
            ],
        )
    rl = read_problems(rl_file, limit=2)
    assert rl[0].answers == answers[:1] and [m["role"] for m in rl[0].messages] == ["user"]  # placeholder reply dropped
    sft = read_problems(sft_file, limit=2)
    assert [p.answers for p in sft] == [[a] for a in answers] and sft[0].messages == rl[0].messages
    openai = tmp_path / "test.jsonl"
    openai.write_text(json.dumps({"question": "How many?", "answer": "2 + 2 = <<2+2=4>>4\n#### 1,004"}) + "\n")
    [p] = read_problems(openai)
    assert (
        p.answers == ["1004"]
        and p.messages == [{"role": "user", "content": "How many?"}]
        and p.where.endswith("test.jsonl:1")
    )


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"question": "q", "answer": "4"}', "'answer' must be a string ending in '#### N'"),
        ('{"prompt": "q"}', "expected {question, answer}"),
        (
            '{"conversations": [{"role": "user", "content": "q"}]}',
            "no 'gt' and the conversation does not end with an assistant reply",
        ),
        (
            '{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "gt": []}',
            "'gt' is empty",
        ),
        (
            '{"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "none"}]}',
            "holds no number",
        ),
        ('{"question": ', "invalid JSON"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "math.jsonl"
    path.write_text('{"question": "ok", "answer": "#### 1"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(MiniMindError, match=r"math.jsonl:2: .*" + re.escape(message)):
        read_problems(path)


def test_gsm8k_cli_generates_and_scores(tmp_path, tok_dir, capsys):
    model_dir = tmp_path / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(model_dir)]) == 0
    capsys.readouterr()
    data = write_jsonl(tmp_path / "rl.jsonl", rl_records(5))
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                "gsm8k",
                "--data",
                str(data),
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--think",
                "--batch-size",
                "2",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "exact_match" and r["thinking"] is True and r["metrics"]["n"] == 3
    assert set(r["metrics"]) >= {"accuracy", "n", "format_ok"} and r["metrics"]["truncated"] == 1.0
    assert r["details"]["examples"][0]["expected"] == rl_records(1)[0]["gt"]
    assert (model_dir / "eval" / "gsm8k.json").is_file()
