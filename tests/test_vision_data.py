"""Image chat data: JSONL and MiniMind-V's Parquet, FILE:LINE errors for bad records, truncation
that never cuts an image, loss on assistant turns only, images in row-major order."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from helpers import write_jsonl
from minimind.data.vision import build_vision_datasets, expand_images, read_image_chats
from minimind.errors import MiniMindError
from minimind.model.vision import VisionConfig


@pytest.fixture(scope="module")
def vision(tok):
    return VisionConfig(image_size=32, patch_size=8, hidden_size=32, image_tokens=16, num_heads=2,
                        image_token_id=tok.token_to_id("<|image_pad|>"))  # fmt: skip


def picture(path, colour=(200, 30, 30), size=40):
    Image.new("RGB", (size, size), colour).save(path)
    return path.name


def chat(question="<image>\nWhat is it?", reply="A red square."):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]


def test_expand_images():
    assert expand_images("a<image>b", 3) == "a" + "<|image_pad|>" * 3 + "b"
    msgs = [{"role": "system", "content": "<image>"}, {"role": "user", "content": "<image><image>x"}]
    out = expand_images(msgs, 2)
    assert out[0]["content"] == "<image>" and out[1]["content"] == "<|image_pad|>" * 4 + "x"
    assert msgs[1]["content"] == "<image><image>x"  # not changed in place


def test_jsonl_rows_carry_images_in_order_and_loss_only_on_replies(tmp_path, tok, vision):
    a, b = picture(tmp_path / "a.png"), picture(tmp_path / "b.png", (20, 20, 220))
    records = [
        {"conversations": chat("<image><image>\nSame?", "No."), "images": [a, b]},  # adjacent images
        {"conversations": chat(), "image": b},
        {"conversations": chat("Hello", "Hi!")},  # text only
    ]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    ds, val = build_vision_datasets(data, tok, vision, seq_len=256)
    assert val is None and ds.stats["images"] == 3 and ds.stats["records"] == 3
    batch = ds.get_batch(list(range(len(ds))))
    ids, labels = batch["input_ids"], batch["labels"]
    pad = vision.image_token_id
    assert int((ids == pad).sum()) == 3 * 16 and batch["pixel_values"].shape == (3, 3, 32, 32)
    assert not bool((labels == pad).any())  # images are never targets
    # images in row-major order: the blue picture's tensor follows the runs it belongs to
    order = [int(v) for v in (batch["pixel_values"][:, 2].mean((1, 2)) > 0)]  # blue channel high -> 1
    runs = []
    for row in ids.tolist():
        i = 0
        while i < len(row):
            if row[i] == pad:
                runs.append(i)
                i += 16
            else:
                i += 1
    assert len(runs) == 3 and sorted(order) == [0, 1, 1]
    trained = tok.decode([t for t in labels.flatten().tolist() if t != -100])
    assert "No." in trained and "Hi!" in trained and "Same?" not in trained and "Hello" not in trained


@pytest.mark.parametrize(
    "record, files, reason",
    [
        ({"conversations": chat(), "images": ["gone.png"]}, {}, "image 1 .gone.png.: file not found"),
        (
            {"conversations": chat(), "images": ["bad.png"]},
            {"bad.png": b"not a picture"},
            "image 1 .bad.png.: unreadable",
        ),
        ({"conversations": chat("<image><image> two?"), "images": ["ok.png"]}, {}, "2 <image> placeholder.s. but 1"),
        ({"conversations": chat("no image"), "images": ["ok.png"]}, {}, "0 <image> placeholder.s. but 1"),
        ({"conversations": chat("<|image_pad|> typed"), "images": []}, {}, "1 <.image_pad.> tokens for 0 image"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, tok, vision, record, files, reason):
    picture(tmp_path / "ok.png")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    good = {"conversations": chat(), "images": ["ok.png"]}
    data = write_jsonl(tmp_path / "d.jsonl", [good, good, record])
    with pytest.raises(MiniMindError, match=f"d.jsonl:3: {reason}"):
        build_vision_datasets(data, tok, vision, seq_len=256)
    ds, _ = build_vision_datasets(data, tok, vision, seq_len=256, on_bad_record="skip")
    assert ds.stats["skipped"] == 1 and ds.stats["records"] == 2 and "d.jsonl:3" in ds.stats["bad_examples"][0]


def test_truncation_never_cuts_an_image(tmp_path, tok, vision):
    picture(tmp_path / "ok.png")
    long_text = "word " * 60
    records = [
        {"conversations": chat(long_text + "<image>"), "images": ["ok.png"]},  # the image past the cut
        {"conversations": chat("<image>", "A red square. " + long_text), "images": ["ok.png"]},  # text cut only
        {"conversations": chat(), "images": ["ok.png"]},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    with pytest.raises(MiniMindError, match="d.jsonl:1: .* cutting it would cut an image's tokens"):
        build_vision_datasets(data, tok, vision, seq_len=64)
    ds, _ = build_vision_datasets(data, tok, vision, seq_len=64, on_bad_record="skip")
    assert ds.stats["skipped"] == 1 and ds.stats["truncated"] == 1
    batch = ds.get_batch(list(range(len(ds))))
    assert int((batch["input_ids"] == vision.image_token_id).sum()) == 2 * 16


def test_minimind_v_parquet(tmp_path, tok, vision):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def jpeg(colour):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
        return buf.getvalue()

    table = pa.table(
        {
            "conversations": [json.dumps(chat()), json.dumps(chat("Hi", "Hello!")), json.dumps(chat())],
            # row 2: MiniMind-V's text-only row (a dummy black image, no <image>); row 3: broken bytes
            "image_bytes": [jpeg((255, 0, 0)), jpeg((0, 0, 0)), b"\xff\xd8garbage"],
        }
    )
    pq.write_table(table, tmp_path / "sft.parquet")
    chats = read_image_chats(tmp_path / "sft.parquet", on_bad_record="skip")
    assert [len(c.images) for c in chats] == [1, 0] and [c.line for c in chats] == [1, 2]
    with pytest.raises(MiniMindError, match="sft.parquet:3: image 1: unreadable image"):
        read_image_chats(tmp_path / "sft.parquet")
    ds, _ = build_vision_datasets(tmp_path / "sft.parquet", tok, vision, seq_len=128, on_bad_record="skip")
    px = ds.get_batch(list(range(len(ds))))["pixel_values"]
    assert px.shape == (1, 3, 32, 32) and np.isclose(float(px[0, 0].mean()), 1.0, atol=0.1)  # red, normalised


def test_cached_features_follow_the_pictures_and_a_damaged_cache_is_rebuilt(tmp_path, tok, vision):
    """A stand-in encoder (each picture's first 16 x 32 pixel values): the cached features of a
    batch are those of its pixel_values, in the same order; a second build reuses the cache, a
    damaged one is rebuilt, a changed picture gets a new cache."""
    import torch

    from minimind.data.vision_cache import cache_image_features

    colours = [(200, 30, 30), (20, 20, 220), (30, 160, 60)]
    names = [picture(tmp_path / f"{i}.png", c) for i, c in enumerate(colours)]
    records = [
        {"conversations": chat("<image><image>\nSame?", "No."), "images": names[:2]},
        {"conversations": chat("Hello", "Hi!")},
        {"conversations": chat(), "image": names[2]},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    ds, _ = build_vision_datasets(data, tok, vision, seq_len=256)
    calls = []

    def encode(px):
        calls.append(len(px))
        return px.flatten(1)[:, : 16 * 32].reshape(-1, 16, 32).clone()

    def build():
        return cache_image_features(ds.chats, encode, vision, "stand-in", {"device": "cpu"}, cache_dir=tmp_path / "c")

    rows = list(range(len(ds)))
    pixels = ds.get_batch(rows)["pixel_values"]
    features, report = build()
    assert report["encoded"] == report["images"] == 3 and calls == [3]
    ds.use_features(features)
    batch = ds.get_batch(rows)
    assert "pixel_values" not in batch and torch.equal(batch["image_features"], encode(pixels))
    in_chat_order = features.gather([0, 1, 2])
    calls.clear()
    (cache,) = (tmp_path / "c").glob("d-features-*")
    mtime = (cache / "features.npy").stat().st_mtime_ns
    _, report = build()
    assert report["reused"] == 3 and calls == [] and (cache / "features.npy").stat().st_mtime_ns == mtime
    file = cache / "features.npy"
    for damaged in (file.read_bytes()[:-7], file.read_bytes()[:-4] + b"\1\2\3\4"):  # cut short; other bytes
        file.write_bytes(damaged)
        features, report = build()
        assert report["encoded"] == 3 and torch.equal(features.gather([0, 1, 2]), in_chat_order)
    picture(tmp_path / names[2], (235, 190, 20))  # a picture changes: another key, another cache
    _, report = build()
    assert report["encoded"] == 3 and len(list((tmp_path / "c").glob("d-features-*"))) == 2
    # bf16 features (numpy has no bfloat16: kept as their bits) come back as they were
    cache_image_features(ds.chats, lambda px: encode(px).bfloat16(), vision, "bf16", {}, tmp_path / "c")
    again, report = cache_image_features(ds.chats, None, vision, "bf16", {}, tmp_path / "c")  # (encodes nothing)
    assert report["reused"] == 3 and again.gather([0, 1, 2]).dtype == torch.bfloat16
    assert torch.equal(again.gather([0, 1, 2]), build()[0].gather([0, 1, 2]).bfloat16())
