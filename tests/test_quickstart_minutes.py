"""`minimind quickstart --minutes N`: a few probe steps measure this machine, then both training
stages are sized to the budget (the arithmetic is checked here, not the wall time)."""

import json
import re

import pytest

from minimind.cli import main
from minimind.errors import MiniMindError
from minimind.quickstart import MIN_PRETRAIN_STEPS, MIN_SFT_STEPS, plan_steps, quickstart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_plan_fills_the_budget_left_after_the_results():
    plan = plan_steps(minutes=2, elapsed_s=10, step_s=0.5)
    # 120 s: 15 s kept for the results (10% is 12 s, below the 15 s floor), 10 s already spent
    assert plan["results_s"] == 15 and plan["train_s"] == 95
    assert plan["pretrain_steps"] + plan["sft_steps"] == 190  # 95 s / 0.5 s
    assert plan["pretrain_steps"] == 118  # 5/8 of the steps
    faster = plan_steps(minutes=2, elapsed_s=10, step_s=0.25)
    assert faster["pretrain_steps"] + faster["sft_steps"] == 380  # twice as fast: twice the training
    longer = plan_steps(minutes=10, elapsed_s=10, step_s=0.5)
    assert longer["results_s"] == 60 and longer["pretrain_steps"] + longer["sft_steps"] == 1060


def test_a_budget_too_small_still_trains_the_minimum():
    plan = plan_steps(minutes=0.1, elapsed_s=30, step_s=1.0)
    assert plan["train_s"] == 0
    assert (plan["pretrain_steps"], plan["sft_steps"]) == (MIN_PRETRAIN_STEPS, MIN_SFT_STEPS)


def test_minutes_and_fixed_step_counts_exclude_each_other(tmp_path):
    with pytest.raises(MiniMindError, match="--minutes"):
        quickstart(out=str(tmp_path / "q"), minutes=1, pretrain_steps=5)
    with pytest.raises(MiniMindError, match="--minutes"):
        quickstart(out=str(tmp_path / "q"), minutes=0)


def test_a_tiny_budget_runs_the_planned_steps(tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["quickstart", "--out", str(out), "--preset", "nano", "--minutes", "0.3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "quickstart.json").read_text())["done"]["plan"]
    assert plan["step_s"] > 0
    m = re.search(r"plan for 0.3 minutes: [\d.]+ s a step here, so (\d+) pretraining \+ (\d+) SFT steps", printed)
    assert m and (int(m[1]), int(m[2])) == (plan["pretrain_steps"], plan["sft_steps"])
    for stage in ("pretrain", "sft"):  # each stage ran exactly its planned steps
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in rows) == plan[f"{stage}_steps"]
    assert not (out / "speed-probe").exists() and "done in" in printed
