"""Verifiable rewards: each built-in on edge cases, weighting with every part kept, user rewards."""

import math

import pytest

from minimind.errors import MiniMindError
from minimind.rl.rewards import (
    REWARDS,
    answer_in_text,
    combine,
    exact_answer,
    get_reward,
    load_reward_fn,
    make_length,
    make_repetition,
    parse_weights,
    register_reward,
    think_format,
)

GT72 = {"gt": ["72"]}


@pytest.mark.parametrize(
    "completion,gt",
    [
        ("She sold 48 + 24 = 72 clips.\n#### 72", ["72"]),
        ("#### 1,234", ["1234"]),  # GSM8K's thousands commas
        ("The total is $1,234.00.", "1234"),  # gt as a plain string; dollars and cents
        ("So the answer is 72.0", ["72"]),
        ("It dropped by 5 degrees, so the change is −5.", ["-5"]),  # a Unicode minus
        ("The change is -5", [-5]),  # gt as a number
        ("\\boxed{\\frac{3}{4}}", ["0.75"]),  # nested braces in \boxed
        ("3/4 of the cake", ["0.75"]),
        ("That is 50% of it", ["50"]),
        ("First 10, then 20, finally 30", ["30"]),  # the last number when nothing marks the answer
        ("<think>Try 10, no, 12 and 60: 72.</think>\nThe answer is 72.", ["72"]),
        ("#### 70", ["72", "70"]),  # any of several accepted answers
        ("The capital is \\boxed{Paris}.", ["paris"]),  # not a number: compared as text
        ("#### Paris", ["Paris"]),
    ],
)
def test_exact_answer_accepts_the_ways_answers_are_written(completion, gt):
    assert exact_answer(completion, {"gt": gt}) == 1.0


@pytest.mark.parametrize(
    "completion,gt",
    [
        ("#### 71", ["72"]),
        ("The answer is 720", ["72"]),
        ("\\boxed{72} ... actually \\boxed{73}", ["72"]),  # the last boxed answer counts
        ("<think>It must be 72.</think>\nI give up, 5.", ["72"]),  # numbers in the reasoning do not count
        ("<think>It must be 72.</think>\nI give up.", ["72"]),
        ("<think>It must be 72", ["72"]),  # a reply that never left its think block has no answer
        ("", ["72"]),
        ("no numbers at all", ["72"]),
        ("The capital is Lyon, not Paris.", ["Paris"]),
    ],
)
def test_exact_answer_rejects_wrong_or_missing_answers(completion, gt):
    assert exact_answer(completion, {"gt": gt}) == 0.0


def test_exact_answer_without_gt_is_a_clear_error():
    with pytest.raises(MiniMindError, match="needs the expected answer in the record's 'gt'"):
        exact_answer("#### 72", {"conversations": []})


def test_answer_in_text_counts_the_share_of_gt_found_after_the_last_tool_call():
    record = {"gt": ["28", "7.21", "Sunny"]}
    text = (
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "北京"}}\n</tool_call>\n'
        "Beijing is 28°C and sunny; one dollar buys 7.21 yuan."
    )
    assert answer_in_text(text, record) == 1.0
    assert answer_in_text("It is 28°C.", record) == pytest.approx(1 / 3)
    assert answer_in_text("It is 280°C and 7.210 yuan", {"gt": ["28", "7.21"]}) == 0.5  # 28 is not in 280
    assert answer_in_text("28 <tool_call>{}</tool_call> nothing", {"gt": ["28"]}) == 0.0  # before the call
    assert answer_in_text("anything", {"gt": []}) == 0.0
    assert answer_in_text("<think>It is 28", {"gt": ["28"]}) == 0.0  # still thinking: no answer yet


@pytest.mark.parametrize(
    "completion,want",
    [
        ("<think>\n2 + 2 is 4.\n</think>\n\nThe answer is 4.", 1.0),
        ("The answer is 4.", 0.0),  # no reasoning block
        ("<think>\n2 + 2 is 4.", 0.0),  # never closed
        ("<think>\n\n</think>\n\n4", 0.0),  # empty reasoning
        ("<think>\nhmm\n</think>\n\n", 0.0),  # no answer
        ("<think>a</think><think>b</think>4", 0.0),  # repeated
        ("Sure. <think>a</think>4", 0.0),  # text before the block
    ],
)
def test_think_format(completion, want):
    assert think_format(completion, {}) == want


def test_length_is_zero_inside_the_range_and_falls_linearly_to_minus_one():
    length = make_length(min_chars=10, max_chars=100)
    assert length("x" * 50, {}) == 0.0
    assert length("x" * 100, {}) == 0.0
    assert length("x" * 150, {}) == pytest.approx(-0.5)
    assert length("x" * 10_000, {}) == -1.0  # capped
    assert length("x" * 5, {}) == pytest.approx(-0.5)
    assert REWARDS["length"]("", {}) == -1.0  # the default: an empty reply is the worst
    with pytest.raises(MiniMindError, match="min_chars <= max_chars"):
        make_length(min_chars=10, max_chars=5)


def test_repetition_measures_repeated_trigrams_in_words_and_in_chinese():
    repetition = REWARDS["repetition"]
    assert repetition("The quick brown fox jumps over the lazy dog.", {}) == 0.0
    assert repetition("ok", {}) == 0.0  # shorter than one trigram
    looped = repetition("I am a bot. " * 50, {})
    assert -1.0 <= looped < -0.9
    assert repetition("今天天气很好。" * 10, {}) < -0.8  # no spaces: each character is a token
    assert repetition("今天天气很好，我们去公园散步吧。", {}) == 0.0
    half = make_repetition(n=1)("a b a b", {})
    assert half == -0.5


def test_combine_returns_the_weighted_sum_and_every_part_unweighted():
    score = combine({"exact_answer": 1.0, "think_format": 0.5, "repetition": 2.0})
    total, parts = score("<think>\nHalf of forty-eight is 24, so 48 + 24 = 72.\n</think>\n\n#### 72", GT72)
    assert parts == {"exact_answer": 1.0, "think_format": 1.0, "repetition": 0.0}
    assert total == 1.5
    totals, columns = score.batch(["#### 72", "#### 7"], [GT72, GT72])
    assert totals == [1.0, 0.0] and columns["exact_answer"] == [1.0, 0.0]
    assert combine("exact_answer=2, think_format")("#### 72", GT72) == (2.0, {"exact_answer": 1.0, "think_format": 0.0})


def test_combine_refuses_unknown_rewards_bad_weights_and_bad_values():
    with pytest.raises(MiniMindError, match="unknown reward 'exact'; built in: exact_answer"):
        combine({"exact": 1.0})
    with pytest.raises(MiniMindError, match="must be a finite number"):
        combine({"exact_answer": math.nan})
    with pytest.raises(MiniMindError, match="is not NAME=NUMBER"):
        parse_weights("exact_answer=lots")
    register_reward("test_nan", lambda completion, record: math.nan)
    with pytest.raises(MiniMindError, match="reward test_nan returned nan"):
        combine({"test_nan": 1.0})("x", {})
    del REWARDS["test_nan"]


def test_a_registered_reward_is_found_by_name():
    def brevity(completion, record):
        return 1.0 if len(completion) < 10 else 0.0

    register_reward("test_brevity", brevity)
    try:
        assert get_reward("test_brevity") is brevity
        assert combine({"test_brevity": 3.0})("short", {}) == (3.0, {"test_brevity": 1.0})
    finally:
        del REWARDS["test_brevity"]
    with pytest.raises(MiniMindError, match="must take \\(completion_text, record\\)"):
        register_reward("test_bad", lambda completion: 0.0)


USER_MODULE = '''
def brevity(completion, record):
    """1 for a reply under 20 characters."""
    return float(len(completion) < 20)

def wrong(completion):
    return 0.0

NOT_A_FUNCTION = 3
'''


def test_a_users_reward_loads_from_module_function_or_file(tmp_path, monkeypatch):
    (tmp_path / "rl_user_rewards_a.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)  # "module:function" finds a module in the current directory
    fn = load_reward_fn("rl_user_rewards_a:brevity")
    assert fn("short", {}) == 1.0
    score = combine({"rl_user_rewards_a:brevity": 1.0, "exact_answer": 1.0})
    assert score("#### 72", GT72) == (2.0, {"rl_user_rewards_a:brevity": 1.0, "exact_answer": 1.0})
    by_path = load_reward_fn(f"{tmp_path / 'rl_user_rewards_a.py'}:brevity")
    assert by_path("x" * 30, {}) == 0.0


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_colon_here", "expects MODULE:FUNCTION"),
        ("module:", "expects MODULE:FUNCTION"),
        (":brevity", "expects MODULE:FUNCTION"),
        ("rl_no_such_module_xyz:f", "no module named 'rl_no_such_module_xyz'"),
        ("rl_user_rewards_b:missing", "has no function 'missing'"),
        ("rl_user_rewards_b:NOT_A_FUNCTION", "is a int, not a function"),
        ("rl_user_rewards_b:wrong", "must take (completion_text, record)"),
        ("rl_user_rewards_broken:f", "importing rl_user_rewards_broken failed: ZeroDivisionError"),
        ("missing_file.py:f", "file not found"),
    ],
)
def test_a_bad_reward_spec_is_one_clear_error(tmp_path, monkeypatch, spec, message):
    (tmp_path / "rl_user_rewards_b.py").write_text(USER_MODULE)
    (tmp_path / "rl_user_rewards_broken.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MiniMindError) as e:
        load_reward_fn(spec)
    assert message in str(e.value) and "\n" not in str(e.value)
