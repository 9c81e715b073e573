"""RL data: MiniMind's RLAIF and agent-RL formats, read as prompts, every problem as FILE:LINE."""

import json

import pytest

from helpers import rl_records, write_jsonl
from minimind.data import BadRecords
from minimind.data.check import check_file, format_report
from minimind.errors import MiniMindError
from minimind.rl import ToolBox, read_rl_prompts

USER = {"role": "user", "content": "What is the weather in Beijing, and 100 USD in CNY?"}
PLACEHOLDER = {"role": "assistant", "content": "空"}


def agent_record(tools=None, gt=("28", "721")) -> dict:
    """MiniMind's agent-RL row: the system message offers tools as a JSON string."""
    tools = ToolBox().schemas(["get_current_weather", "get_exchange_rate"]) if tools is None else tools
    system = {"role": "system", "content": "You can call tools.", "tools": json.dumps(tools, ensure_ascii=False)}
    return {"conversations": [system, USER, PLACEHOLDER], "gt": list(gt)}


def test_rlaif_and_agent_records_are_read_as_prompts(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", rl_records(3) + [agent_record()])
    prompts = list(read_rl_prompts(path))
    assert len(prompts) == 4 and prompts[0].where == f"{path}:1"
    first = prompts[0]
    assert [m["role"] for m in first.messages] == ["user"]  # the placeholder is dropped
    assert first.gt == rl_records(3)[0]["gt"] and first.tools == [] and not first.is_agent
    agent = prompts[3]
    assert agent.is_agent and [t["function"]["name"] for t in agent.tools] == [
        "get_current_weather",
        "get_exchange_rate",
    ]
    assert [m["role"] for m in agent.messages] == ["system", "user"] and agent.gt == ["28", "721"]
    assert agent.record["gt"] == ["28", "721"]  # what rewards receive


def test_a_prompt_without_placeholder_or_gt_is_fine(tmp_path):
    path = write_jsonl(
        tmp_path / "rl.jsonl", [{"conversations": [USER]}, {"conversations": [USER, PLACEHOLDER], "gt": [72, 3.5]}]
    )
    prompts = list(read_rl_prompts(path))
    assert prompts[0].messages == [USER] and prompts[0].gt == [] and prompts[1].gt == ["72", "3.5"]


def _tools(*specs):
    return [{"type": "function", "function": spec} for spec in specs]


WEATHER = {"name": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
SYSTEM_TOOLS = {"role": "system", "content": "s", "tools": json.dumps(_tools(WEATHER))}

# (the bad record, a fragment of the expected message)
BAD = [
    (
        {"conversations": [USER, {"role": "assistant", "content": "a real answer"}, PLACEHOLDER]},
        "the prompt ends with conversations[1] (assistant)",
    ),
    (
        {"conversations": [USER, {"role": "system", "content": "be brief"}]},
        "the prompt ends with conversations[1] (system)",
    ),
    (
        {"conversations": [USER, SYSTEM_TOOLS, {"role": "user", "content": "hi"}, PLACEHOLDER]},
        "'tools' must be on the first message (the system prompt), found on conversations[1]",
    ),
    ({"conversations": [SYSTEM_TOOLS, USER, SYSTEM_TOOLS, USER, PLACEHOLDER]}, "tools are offered twice"),
    (agent_record(_tools(WEATHER, WEATHER)), "tools[1] repeats the name 'w'"),
    (agent_record(_tools({"name": "w", "parameters": "city"})), "tools[0] (w): 'parameters' must be a JSON schema"),
    (
        agent_record(_tools({"name": "w", "parameters": {"properties": []}})),
        "'parameters.properties' must be an object",
    ),
    (
        agent_record(_tools({"name": "w", "parameters": {"properties": {}, "required": "city"}})),
        "'parameters.required' must be a list of argument names",
    ),
    (
        agent_record(_tools({"name": "w", "parameters": {"properties": {}, "required": ["city"]}})),
        "required argument 'city' is not in 'properties'",
    ),
    (agent_record(_tools({"description": "no name"})), "tools[0] has no function name"),
    (agent_record(gt=["28", " "]), "gt[1] is empty (an empty answer would be found in every reply)"),
    ({"conversations": [USER, PLACEHOLDER], "gt": "72"}, "'gt' must be a list of expected answers"),
    ({"conversations": [USER, PLACEHOLDER], "gt": [None]}, "gt[0] must be a string or a number, got null"),
    ({"conversations": [{"role": "system", "content": "s"}, PLACEHOLDER]}, "has no user message"),
    ({"conversations": [USER, {"role": "assistant", "content": ""}, PLACEHOLDER]}, "empty reply"),
]


@pytest.mark.parametrize("record,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_rl_records_are_reported_with_file_and_line(tmp_path, record, message):
    path = write_jsonl(tmp_path / "rl.jsonl", rl_records(2) + [record])
    with pytest.raises(MiniMindError) as e:
        list(read_rl_prompts(path))
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value), str(e.value)


def test_a_non_finite_gt_is_refused(tmp_path):
    path = tmp_path / "rl.jsonl"
    path.write_text('{"conversations": [{"role": "user", "content": "x"}], "gt": [NaN]}\n')
    with pytest.raises(MiniMindError, match=r"rl.jsonl:1: gt\[0\] is nan, not a finite number"):
        list(read_rl_prompts(path))


def test_skip_mode_counts_bad_rows_and_data_check_reports_rl_counts(tmp_path):
    path = write_jsonl(tmp_path / "rl.jsonl", rl_records(3) + [BAD[0][0], agent_record()])
    bad = BadRecords()
    assert len(list(read_rl_prompts(path, on_bad_record="skip", bad=bad))) == 4
    assert bad.count == 1 and bad.examples[0].startswith(f"{path}:4: the prompt ends with")
    report = check_file(path, "rl")
    assert report["valid"] == 4 and report["counts"]["with_gt"] == 4 and report["counts"]["agent"] == 1
    assert "rl         4 prompts with gt answers, 1 offering tools (agent RL)" in format_report(report)


@pytest.mark.parametrize(
    "name,rows,with_gt", [("rlaif-mini.jsonl", 10_000, 0), ("rl_gsm8k_train_gt.jsonl", 7_473, 7_473)]
)
def test_minimind_rl_files_validate(shared_data, name, rows, with_gt):
    report = check_file(shared_data / "minimind_format" / name, "rl")
    assert report["problems"] == 0, report["problem_examples"]
    assert report["valid"] == rows and report["counts"]["with_gt"] == with_gt
    first = next(read_rl_prompts(shared_data / "minimind_format" / name))
    assert first.messages[-1]["role"] == "user" and not first.is_agent
