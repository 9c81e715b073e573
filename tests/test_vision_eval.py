"""`minimind eval --task vqa`: image questions read from JSONL or Parquet (every mistake a
FILE:LINE error before the model loads), answers scored by normalised exact match and by the
answer being in the reply, per question type; end to end on a tiny random vision model."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import minimind
from helpers import VISION_TOKENS as TOKENS
from helpers import shape_image, tiny_vlm_dir, write_jsonl
from minimind.cli import main
from minimind.errors import MiniMindError
from minimind.evaluate.vqa import normalise, read_vqa, score, summarise
from minimind.infer import SamplingParams, chat_prompt, generate

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- scoring


def test_normalise():
    assert normalise("  The RED circle.  ") == "red circle"
    assert normalise("Ｔｗｏ！") == "2"  # full width, a number word
    assert normalise("an apple, a pear") == "apple pear"
    assert normalise("红色。") == "红色"


@pytest.mark.parametrize(
    "reply, answers, exact, contained",
    [
        ("Red.", ["red"], True, True),
        ("The circle is red.", ["red"], False, True),
        ("It is reddish.", ["red"], False, False),  # whole words only
        ("There are 13 dots.", ["3"], False, False),
        ("There are three dots.", ["3"], False, True),  # number words count as digits
        ("I see two.", ["2", "two"], False, True),
        ("这是红色的圆。", ["红色"], False, True),  # Chinese: a substring
        ("左边", ["left", "左"], False, True),
        ("", ["red"], False, False),
        ("blue", ["red"], False, False),
    ],
)
def test_score(reply, answers, exact, contained):
    assert score(reply, answers) == (exact, contained)


def test_summary_per_type_and_commonest_answer():
    qs = read_questions_for_summary()
    replies = ["red", "it is blue", "green", "3", "4"]
    r = summarise(qs, replies)
    types = r["details"]["types"]
    assert types["colour"] == {"accuracy": 2 / 3, "exact": 1 / 3, "chance": 2 / 3, "n": 3}
    assert types["count"] == {"accuracy": 0.5, "exact": 0.5, "chance": 0.5, "n": 2}
    assert r["metrics"] == {"accuracy": 3 / 5, "exact": 2 / 5, "chance": 3 / 5, "n": 5}


def read_questions_for_summary():
    from minimind.evaluate.vqa import Question

    rows = [("colour", "red"), ("colour", "blue"), ("colour", "red"), ("count", "3"), ("count", "5")]
    return [Question("<image>\nq", [a], [], kind, f"f:{i + 1}") for i, (kind, a) in enumerate(rows)]


# ---------------------------------------------------------------------------- reading


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqa-images")
    (root / "img").mkdir()
    return {
        "root": root,
        "red": shape_image(root / "img" / "red.png", (220, 30, 30)),
        "blue": shape_image(root / "img" / "blue.png", (30, 30, 220), shape="rectangle"),
    }


def test_jsonl_reader_places_images(images):
    path = write_jsonl(
        images["root"] / "q.jsonl",
        [
            {"image": "img/red.png", "question": "What colour?", "answer": "red", "type": "colour"},
            {"images": ["img/red.png", "img/blue.png"], "question": "<image> or <image>?", "answers": ["left", 1]},
        ],
    )
    first, second = read_vqa(path)
    assert first.question == "<image>\nWhat colour?" and first.answers == ["red"] and first.type == "colour"
    assert first.images == [images["red"]] and first.where == f"{path}:1"
    assert second.question == "<image> or <image>?" and second.answers == ["left", "1"] and second.type is None
    assert len(read_vqa(path, limit=1)) == 1


def test_jsonl_reader_takes_conversations(images):
    # the held-out file of `minimind quickstart --vision`, and an SFT-style record
    path = write_jsonl(
        images["root"] / "conv.jsonl",
        [
            {
                "conversations": [{"role": "user", "content": "<image>\n这是什么颜色？"}],
                "images": ["img/red.png"],
                "type": "colour",
                "answer": "红色",
                "lang": "zh",
            },
            {
                "conversations": [
                    {"role": "user", "content": "Shape?"},
                    {"role": "assistant", "content": "a square"},
                ],
                "image": "img/blue.png",
            },
        ],
    )
    first, second = read_vqa(path)
    assert (first.question, first.answers, first.type) == ("<image>\n这是什么颜色？", ["红色"], "colour")
    assert (second.question, second.answers) == ("<image>\nShape?", ["a square"])


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image": "img/none.png", "question": "q", "answer": "a"}, "image 1: "),
        ({"image": "img/notes.png", "question": "q", "answer": "a"}, "not a readable image"),
        ({"image": "img/red.png", "question": "<image> <image>", "answer": "a"}, "has 2 <image> but the record has 1"),
        ({"image": "img/red.png", "question": "q"}, "expected 'answer' or 'answers'"),
        ({"image": "img/red.png", "question": "", "answer": "a"}, "'question' must be a non-empty string"),
        ({"image": "img/red.png", "answer": "a"}, "expected 'question' (or 'conversations')"),
        ({"image": "img/red.png", "conversations": [{"role": "user", "content": "q"}]}, "expected 'answer'"),
        ({"image": "img/red.png", "conversations": "[", "answer": "a"}, "conversations is not valid JSON"),
        ({"question": "q", "answer": "a"}, "expected 'image' or 'images'"),
        ({"images": [], "question": "q", "answer": "a"}, "'images' must be a non-empty list"),
        ({"image": "img/red.png", "question": "q", "answer": "a", "type": 3}, "'type' must be a string"),
        ({"image": "img/red.png", "question": "q", "answer": ""}, "answers must be non-empty"),
    ],
)
def test_jsonl_reader_errors_name_file_and_line(images, record, message):
    (images["root"] / "img" / "notes.png").write_text("not an image")
    good = {"image": "img/red.png", "question": "q", "answer": "a"}
    path = write_jsonl(images["root"] / "bad.jsonl", [good, record])
    with pytest.raises(MiniMindError) as e:
        read_vqa(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value), str(e.value)


def test_jsonl_reader_bad_json_and_empty_file(images):
    path = images["root"] / "broken.jsonl"
    path.write_text('{"image": "img/red.png", "question": "q", "answer": "a"}\n{"image": \n')
    with pytest.raises(MiniMindError, match=rf"^{path}:2: invalid JSON"):
        read_vqa(path)
    path.write_text("\n")
    with pytest.raises(MiniMindError, match="no questions"):
        read_vqa(path)
    with pytest.raises(MiniMindError, match="file not found"):
        read_vqa(images["root"] / "absent.jsonl")


def test_parquet_reader_minimind_v_layout(images):
    red, blue = images["red"].read_bytes(), images["blue"].read_bytes()
    conversations = [
        json.dumps([{"role": "user", "content": "<image>\n什么颜色？"}, {"role": "assistant", "content": "红色"}]),
        json.dumps([{"role": "user", "content": "What shape?"}, {"role": "assistant", "content": "square"}]),
    ]
    path = images["root"] / "q.parquet"
    pq.write_table(pa.table({"conversations": conversations, "image_bytes": [red, blue]}), path)
    first, second = read_vqa(path)
    assert (first.question, first.answers, first.images) == ("<image>\n什么颜色？", ["红色"], [red])
    assert (second.question, second.answers) == ("<image>\nWhat shape?", ["square"])

    path2 = images["root"] / "qa.parquet"
    table = {"question": ["Colour?", "Colour?"], "answer": ["red", "blue"], "type": ["colour", "colour"]}
    pq.write_table(pa.table({**table, "image_bytes": [[red], [blue]]}), path2)
    assert [q.answers for q in read_vqa(path2)] == [["red"], ["blue"]]

    bad = images["root"] / "bad.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": ["x", "y"], "image_bytes": [red, b"junk"]}), bad)
    with pytest.raises(MiniMindError, match=rf"^{bad}:row 2: image 1: image_bytes: not a readable image"):
        read_vqa(bad)
    pq.write_table(pa.table({"question": ["a"], "image_bytes": [red]}), bad)
    with pytest.raises(MiniMindError, match="expected the columns image_bytes and question"):
        read_vqa(bad)
    bad.write_text("not parquet")
    with pytest.raises(MiniMindError, match="not a readable Parquet file"):
        read_vqa(bad)


# ---------------------------------------------------------------------------- with a model


def test_eval_vqa_end_to_end(images, tok, capsys):
    model_dir = tiny_vlm_dir(images["root"] / "vlm", tok)
    model, tokenizer = minimind.load(model_dir)
    # The reference answers are the model's own greedy replies to each image, generated here:
    # the eval scores them 100% exactly when the images reach the model as they should.
    replies = {}
    for name in ("red", "blue"):
        ids = chat_prompt(tokenizer, [{"role": "user", "content": "<image>\nWhat is it?"}], image_tokens=TOKENS)
        pixels = model.preprocess([Image.open(images[name])])
        [done] = generate(model, tokenizer, [ids], SamplingParams(max_new_tokens=6, temperature=0), images=[pixels])
        replies[name] = done.text
    assert normalise(replies["red"]) != normalise(replies["blue"])
    data = write_jsonl(
        images["root"] / "eval.jsonl",
        [
            {"image": "img/red.png", "question": "What is it?", "answer": replies["red"], "type": "a"},
            {"image": "img/blue.png", "question": "What is it?", "answer": replies["blue"], "type": "b"},
            {"image": "img/blue.png", "question": "What is it?", "answer": replies["red"], "type": "b"},
        ],
    )
    flags = ["eval", "--model", str(model_dir), "--task", "vqa", "--data", str(data), "--max-new-tokens", "6"]
    assert main([*flags, "--batch-size", "2"]) == 0
    table = capsys.readouterr().out
    assert "vqa: accuracy 66.67%" in table and "exact match 66.67%" in table
    result = json.loads((model_dir / "eval" / "vqa.json").read_text())
    assert result["kind"] == "vqa" and result["primary"] == "accuracy"
    assert result["details"]["types"]["a"]["exact"] == 1.0 and result["details"]["types"]["b"]["exact"] == 0.5

    # The blank-image control: grey images give other answers; saved beside, not over, the score.
    assert main([*flags, "--blank-images"]) == 0
    blank = json.loads((model_dir / "eval" / "vqa_blank.json").read_text())
    assert blank["details"]["blank_images"] is True and blank["metrics"]["exact"] < 2 / 3
    assert json.loads((model_dir / "eval" / "vqa.json").read_text())["metrics"]["exact"] == 2 / 3


def test_eval_vqa_needs_a_vision_model(images, tmp_path, tok, capsys):
    text_model = tmp_path / "text"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok.source), "--out", str(text_model)]) == 0
    data = write_jsonl(images["root"] / "one.jsonl", [{"image": "img/red.png", "question": "q", "answer": "a"}])
    capsys.readouterr()
    assert main(["eval", "--model", str(text_model), "--task", "vqa", "--data", str(data)]) == 2
    assert "needs a vision-language model" in capsys.readouterr().err
    assert main(["eval", "--model", str(text_model), "--task", "gsm8k", "--data", str(data), "--blank-images"]) == 2
    assert "--blank-images applies to --task vqa" in capsys.readouterr().err
