"""`minimind quickstart --vision` end to end at a tiny size: it draws the shapes, trains, and
writes the model directory and the report (accuracy is not asserted: a few steps learn nothing)."""

import json

import pytest

from minimind.checkpoint import load_model
from minimind.cli import main
from minimind.data.shapes import TYPES, answer, caption, draw, random_scene
from minimind.model.vlm import MiniMindVLM

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_answers_and_captions():
    import random

    rng = random.Random(0)
    scenes = [random_scene(rng, 64) for _ in range(50)]
    assert {s["count"] for s in scenes} == {1, 2, 3}
    lone = next(s for s in scenes if s["count"] == 1)
    top, side = lone["position"].split()
    x, y, _ = lone["boxes"][0]
    assert (y < 32) == (top == "top") and (x < 32) == (side == "left")
    image = draw(lone, 64)
    assert image.getpixel((x, y)) != (255, 255, 255) and draw(None, 64).getpixel((x, y)) == (255, 255, 255)
    assert answer(lone, "count", zh=True) == "1个" and caption(lone, zh=False).startswith("One ")


def test_vision_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qv"
    argv = ["quickstart", "--vision", "--out", str(out), "--vision-steps", "2", "--vision-images", "40"]
    assert main(argv + ["--no-progress"]) == 0
    assert isinstance(load_model(out / "vlm"), MiniMindVLM)
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 2 and set(report["seen"]["accuracy"]) == {*TYPES, "all"}
    assert set(report["blank"]["accuracy"]) == {*TYPES, "all"}
    printed = capsys.readouterr().out
    assert "| question" in printed and "blank picture" in printed and (out / "report.md").is_file()
