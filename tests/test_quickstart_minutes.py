"""`minimind quickstart --minutes N`: a few probe steps measure this machine, then both training
stages are sized to the budget (the arithmetic is checked here, not the wall time)."""

import json
import re

import pytest

from minimind.cli import main
from minimind.errors import MiniMindError
from minimind.quickstart import MIN_PRETRAIN_STEPS, MIN_SFT_STEPS, plan_pretrain, plan_sft, quickstart

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_plan_fills_the_budget_left_after_the_results():
    plan = plan_pretrain(minutes=2, elapsed_s=10, step_s=0.5)
    # 120 s: 10 s kept for the results (5% is 6 s, below the 10 s floor), 10 s already spent
    assert plan["results_s"] == 10 and plan["train_s"] == 100
    assert plan["pretrain_steps"] == 125  # 5/8 of 100 s at 0.5 s a step
    faster = plan_pretrain(minutes=2, elapsed_s=10, step_s=0.25)
    assert faster["pretrain_steps"] == 250  # twice as fast: twice the training
    longer = plan_pretrain(minutes=10, elapsed_s=10, step_s=0.5)
    assert longer["results_s"] == 30 and longer["pretrain_steps"] == 700
    # SFT takes what pretraining left: pretraining ran faster than planned (60 s instead of
    # 62.5), so 50 s are left at 0.25 s an SFT step
    assert plan_sft(minutes=2, elapsed_s=60, step_s=0.25, results_s=10) == 200


def test_a_budget_too_small_still_trains_the_minimum():
    plan = plan_pretrain(minutes=0.1, elapsed_s=30, step_s=1.0)
    assert plan["train_s"] == 0 and plan["pretrain_steps"] == MIN_PRETRAIN_STEPS
    assert plan_sft(minutes=0.1, elapsed_s=60, step_s=1.0, results_s=10) == MIN_SFT_STEPS


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
    m = re.search(r"plan for 0.3 minutes: [\d.]+ s a pretraining step here, so (\d+) pretraining steps", printed)
    n = re.search(r"plan: [\d.]+ s an SFT step here, so (\d+) SFT steps", printed)
    assert m and n and (int(m[1]), int(n[1])) == (plan["pretrain_steps"], plan["sft_steps"])
    assert plan["step_s"] > 0 and plan["sft_step_s"] > 0
    for stage in ("pretrain", "sft"):  # each stage ran exactly its planned steps
        rows = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert max(r["step"] for r in rows) == plan[f"{stage}_steps"]
    assert not (out / "speed-probe").exists() and "done in" in printed
