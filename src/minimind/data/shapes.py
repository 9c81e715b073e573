"""A synthetic image set for the vision quickstart: coloured shapes drawn with Pillow.

Every picture holds 1 to 3 shapes of one colour and one kind on a white square; a lone shape
sits in one quadrant. Four kinds of question, in English and Chinese, each with one short right
answer, so a model's reply can be scored by exact match:

  colour     What colour are the shapes?     red / 红色        (4 colours: chance 25%)
  shape      What shape are they?            circle / 圆形      (3 shapes: 33%)
  count      How many shapes are there?      2 / 2个            (1-3: 33%)
  position   Where is the shape? (1 shape)   top left / 左上    (4 quadrants: 25%)

Training records are multi-turn chats about one image (a caption request and questions), in
the JSONL format of data/vision.py; held-out records ask one question each and carry its
`type` and `answer`. Nothing is downloaded; the same seed draws the same set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": ((215, 40, 40), "红色"), "green": ((30, 160, 60), "绿色"), "blue": ((40, 80, 225), "蓝色"),
           "yellow": ((235, 190, 20), "黄色")}  # fmt: skip
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}
QUADRANTS = {"top left": "左上", "top right": "右上", "bottom left": "左下", "bottom right": "右下"}
COUNT_WORDS = {1: ("One", "一个"), 2: ("Two", "两个"), 3: ("Three", "三个")}
QUESTIONS = {  # type -> (English, Chinese)
    "colour": ("What colour are the shapes?", "图中图形是什么颜色？"),
    "shape": ("What shape are they?", "图中是什么形状？"),
    "count": ("How many shapes are there?", "图中有几个图形？"),
    "position": ("Where is the shape?", "图形在哪里？"),
}
CAPTION = ("Describe the image.", "描述这张图片。")
TYPES = tuple(QUESTIONS)
CHANCE = {"colour": 1 / 4, "shape": 1 / 3, "count": 1 / 3, "position": 1 / 4}


def answer(scene: dict, kind: str, zh: bool) -> str:
    """The one right answer to a question of `kind` about `scene`."""
    if kind == "colour":
        return COLOURS[scene["colour"]][1] if zh else scene["colour"]
    if kind == "shape":
        return SHAPES[scene["shape"]] if zh else scene["shape"]
    if kind == "count":
        return f"{scene['count']}个" if zh else str(scene["count"])
    return QUADRANTS[scene["position"]] if zh else scene["position"]


def caption(scene: dict, zh: bool) -> str:
    n, colour, shape = scene["count"], scene["colour"], scene["shape"]
    if zh:
        where = f"，在{QUADRANTS[scene['position']]}" if n == 1 else ""
        return f"{COUNT_WORDS[n][1]}{COLOURS[colour][1]}的{SHAPES[shape]}{where}。"
    where = f" in the {scene['position']}" if n == 1 else ""
    return f"{COUNT_WORDS[n][0]} {colour} {shape}{'s' if n > 1 else ''}{where}."


def random_scene(rng: random.Random, size: int) -> dict:
    """Colour, kind, count and where each shape sits (boxes that do not overlap)."""
    n = rng.randint(1, 3)
    r = size // 6  # shape radius: a shape covers a few patches (at size // 9 the patch encoder learnt nothing)
    scene = {"colour": rng.choice(list(COLOURS)), "shape": rng.choice(list(SHAPES)), "count": n, "boxes": []}
    if n == 1:
        scene["position"] = rng.choice(list(QUADRANTS))
        top, left = scene["position"].split()
        half = size // 2
        x0 = rng.randint(r + 1, half - r - 2) + (half if left == "right" else 0)
        y0 = rng.randint(r + 1, half - r - 2) + (half if top == "bottom" else 0)
        scene["boxes"].append((x0, y0, r))
        return scene
    while len(scene["boxes"]) < n:
        x, y = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
        if all((x - a) ** 2 + (y - b) ** 2 > (2 * r + 3) ** 2 for a, b, _ in scene["boxes"]):
            scene["boxes"].append((x, y, r))
    return scene


def draw(scene: dict | None, size: int):
    """The scene as a PIL image (None: a blank white picture)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    if scene is None:
        return image
    pen = ImageDraw.Draw(image)
    fill = COLOURS[scene["colour"]][0]
    for x, y, r in scene["boxes"]:
        if scene["shape"] == "circle":
            pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif scene["shape"] == "square":
            pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        else:
            pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return image


def _kinds(scene: dict) -> list[str]:
    return [k for k in TYPES if k != "position" or scene["count"] == 1]


def build_shape_set(out_dir, train: int = 3000, test: int = 200, size: int = 64, seed: int = 0) -> dict:
    """Draw the set into out_dir (images/*.png, train.jsonl, test.jsonl, blank.png); returns their paths."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train_lines, test_lines = [], []
    for i in range(train + test):
        scene = random_scene(rng, size)
        name = f"images/{i:05d}.png"
        draw(scene, size).save(out / name)
        if i < train:
            turns = []
            for j, kind in enumerate(["caption"] + rng.sample(_kinds(scene), k=2)):
                zh = rng.random() < 0.5
                question = CAPTION[zh] if kind == "caption" else QUESTIONS[kind][zh]
                reply = caption(scene, zh) if kind == "caption" else answer(scene, kind, zh)
                turns += [{"role": "user", "content": ("<image>\n" if j == 0 else "") + question},
                          {"role": "assistant", "content": reply}]  # fmt: skip
            if rng.random() < 0.5:  # the caption is not always asked first
                turns = turns[2:4] + turns[:2] + turns[4:]
                turns[0]["content"], turns[2]["content"] = "<image>\n" + turns[0]["content"], turns[2]["content"][8:]
            train_lines.append({"conversations": turns, "images": [name]})
        else:
            for kind in _kinds(scene):
                zh = rng.random() < 0.5
                test_lines.append(
                    {
                        "conversations": [{"role": "user", "content": "<image>\n" + QUESTIONS[kind][zh]}],
                        "images": [name],
                        "type": kind,
                        "answer": answer(scene, kind, zh),
                        "lang": "zh" if zh else "en",
                    }
                )
    draw(None, size).save(out / "blank.png")
    for name, lines in (("train.jsonl", train_lines), ("test.jsonl", test_lines)):
        (out / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    return {"train": out / "train.jsonl", "test": out / "test.jsonl", "blank": out / "blank.png"}
