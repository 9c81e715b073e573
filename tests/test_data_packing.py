"""Packing documents into rows: hand-computed rows, coverage of every target, and the model
giving the same logits for a document packed with others as for the document alone."""

import numpy as np
import pytest
import torch

from helpers import babble, chat_records, pretrain_records, write_jsonl
from minimind.data import attention_mask_from_segments, best_fit_decreasing, build_datasets, split_documents
from minimind.data.cache import TokenizedFile
from minimind.data.packing import pack
from minimind.errors import MiniMindError


def synthetic(docs, masks=None):
    """A TokenizedFile made of the given id lists (and optional loss masks)."""
    ids = np.concatenate([np.asarray(d, dtype=np.uint16) for d in docs])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    mask = np.concatenate([np.asarray(m, dtype=np.uint8) for m in masks]) if masks else None
    doc_loss = np.array([int(np.sum(m)) for m in masks]) if masks else None
    return TokenizedFile(
        "mem.jsonl",
        "sft" if masks else "pretrain",
        ids,
        mask,
        offsets,
        np.arange(1, len(docs) + 1),
        doc_loss,
        {},
        None,
        False,
    )


def test_hand_computed_pretrain_rows():
    # lengths 10, 6, 5, 3 in rows of 16. Best fit decreasing: 10 opens row 0 (room 6), 6 fills
    # it exactly, 5 opens row 1 (room 11), 3 joins row 1 (room 8 left as padding).
    A, B, C, D = list(range(100, 110)), list(range(200, 206)), list(range(300, 305)), [400, 401, 402]
    tf = synthetic([A, B, C, D])
    ds = pack([tf], [np.arange(4)], 16, "pretrain", pad_token_id=0, seed=0, file_stats={})
    assert len(ds) == 2
    r0, r1 = ds[0], ds[1]
    assert r0["input_ids"].tolist() == A + B
    assert r0["labels"].tolist() == [-100] + A[1:] + [-100] + B[1:]
    assert r0["position_ids"].tolist() == list(range(10)) + list(range(6))
    assert r0["segment_ids"].tolist() == [0] * 10 + [1] * 6
    assert r1["input_ids"].tolist() == C + D + [0] * 8
    assert r1["labels"].tolist() == [-100] + C[1:] + [-100] + D[1:] + [-100] * 8
    assert r1["position_ids"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2] + [0] * 8
    assert r1["segment_ids"].tolist() == [0] * 5 + [1] * 3 + [-1] * 8
    assert ds.stats["rows"] == 2 and ds.stats["tokens"] == 24 and ds.stats["loss_tokens"] == 20
    assert ds.stats["padding_fraction"] == pytest.approx(8 / 32)
    assert ds.row_pieces(1) == [("mem.jsonl", 3, 0, 5), ("mem.jsonl", 4, 0, 3)]


def test_long_pretrain_document_is_split_with_every_token_a_target_once():
    doc = list(range(1000, 1040))  # 40 tokens, rows of 16: pieces start at 0, 15 and 30
    ds = pack([synthetic([doc])], [np.arange(1)], 16, "pretrain", 0, 0, {})
    rows = [ds[i] for i in range(len(ds))]
    pieces = sorted((r["input_ids"][r["segment_ids"] >= 0].tolist() for r in rows), key=lambda p: p[0])
    assert pieces == [doc[0:16], doc[15:31], doc[30:40]]
    targets = sorted(t for r in rows for t in r["labels"].tolist() if t != -100)
    assert targets == doc[1:]  # nothing lost, nothing trained twice
    assert ds.stats["split"] == 1 and ds.stats["loss_tokens"] == 39


def test_long_chat_is_truncated_and_counted():
    chats = [[1, 5, 5, 5, 7, 7, 7, 7, 2, 9], [1, 5, 5, 5, 5, 5, 5, 5, 5, 7, 2], [1, 5, 7, 2]]
    masks = [[0, 0, 0, 0, 1, 1, 1, 1, 1, 0], [0] * 9 + [1, 1], [0, 0, 1, 1]]
    ds = pack([synthetic(chats, masks)], [np.arange(3)], 8, "sft", 0, 0, {})
    s = ds.stats
    assert s["truncated"] == 2 and s["truncated_tokens"] == 2 + 3 and s["dropped"] == 1  # the 2nd kept no reply
    rows = [ds[i] for i in range(len(ds))]
    got = sorted(
        r["labels"][r["segment_ids"] == k].tolist() for r in rows for k in range(2) if (r["segment_ids"] == k).any()
    )
    assert got == [[-100, -100, -100, -100, 7, 7, 7, 7], [-100, -100, 7, 2]]
    assert s["loss_tokens"] == 6


def test_best_fit_decreasing_places_every_item_once_and_is_deterministic():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.integers(1, 300, 5000), 256)
    pieces, ptr = best_fit_decreasing(lengths, 256, seed=1)
    assert sorted(pieces.tolist()) == list(range(5000))
    fill = np.add.reduceat(lengths[pieces], ptr[:-1])
    assert fill.max() <= 256 and (1 - fill.sum() / (256 * len(fill))) < 0.01
    again = best_fit_decreasing(lengths, 256, seed=1)
    assert np.array_equal(again[0], pieces) and np.array_equal(again[1], ptr)
    with pytest.raises(ValueError):
        best_fit_decreasing(np.array([300]), 256)


def test_validation_split_is_by_document_disjoint_and_deterministic():
    train, val = split_documents([30, 70], 0.1, seed=5)
    assert sum(map(len, val)) == 10 and sum(map(len, train)) == 90
    for t, v, n in zip(train, val, [30, 70]):
        assert not set(t) & set(v) and set(t) | set(v) == set(range(n))
    again = split_documents([30, 70], 0.1, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(val, again[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(val, split_documents([30, 70], 0.1, seed=6)[1]))
    with pytest.raises(MiniMindError):
        split_documents([1], 0.5, seed=0)


def test_attention_mask_from_segments():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = attention_mask_from_segments(seg)[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


@pytest.mark.parametrize("kind", ["pretrain", "sft"])
def test_packed_row_gives_each_document_its_own_logits(tmp_path, tok, kind):
    from minimind.config import preset
    from minimind.model import MiniMindForCausalLM

    # a few short documents: 4 texts, or 3 chats (one with a system prompt, one with reasoning)
    records = [{"text": t} for t in babble(0, 4)] if kind == "pretrain" else [chat_records(6)[i] for i in (0, 3, 4)]
    ds, _ = build_datasets([write_jsonl(tmp_path / "tiny.jsonl", records)], tok, kind, seq_len=512, cache_dir=tmp_path)
    assert len(ds) == 1 and ds.stats["docs"] >= 3 and ds.stats["padding_fraction"] > 0  # all docs + padding in one row
    model = MiniMindForCausalLM(preset("nano")).init_weights(0).eval()
    row = ds.get_batch([0])
    mask = attention_mask_from_segments(row["segment_ids"])
    with torch.no_grad():
        out = model(row["input_ids"], attention_mask=mask, position_ids=row["position_ids"], labels=row["labels"])
        total, count = 0.0, 0
        for s in range(int(row["segment_ids"].max()) + 1):
            at = row["segment_ids"][0] == s
            alone = model(row["input_ids"][:, at]).logits[0]
            torch.testing.assert_close(out.logits[0][at], alone, atol=1e-5, rtol=1e-5)
            labels = row["labels"][0, at]
            total += torch.nn.functional.cross_entropy(alone[:-1], labels[1:], ignore_index=-100, reduction="sum")
            count += int((labels[1:] != -100).sum())
    # so the loss on the packed row is exactly the token mean over the documents alone
    torch.testing.assert_close(out.loss, total / count, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kind,names",
    [
        ("pretrain", ["pretrain_en_c4_wiki_demo.jsonl"]),
        ("sft", ["sft_toolcall_glaive_demo_zh_en.jsonl", "lora_identity.jsonl"]),
        ("pretrain", "generated"),
        ("sft", "generated"),
    ],
)
def test_build_datasets_on_real_and_generated_data(tmp_path, tok, request, kind, names):
    if names == "generated":  # 330 texts; 300 chats and 90 short ones
        files = (
            [write_jsonl(tmp_path / "p.jsonl", pretrain_records(330))]
            if kind == "pretrain"
            else [
                write_jsonl(tmp_path / "chats.jsonl", chat_records(300)),
                write_jsonl(tmp_path / "short.jsonl", [chat_records(6)[i % 2 * 3] for i in range(90)]),
            ]
        )
    else:  # MiniMind's own files
        files = [request.getfixturevalue("shared_data") / "minimind_format" / n for n in names]
    train, val = build_datasets(files, tok, kind, seq_len=512, val_fraction=0.05, seed=1, cache_dir=tmp_path)
    for ds in (train, val):
        rows = ds.get_batch(list(range(len(ds))))
        seg, labels = rows["segment_ids"], rows["labels"]
        assert rows["input_ids"].shape == (len(ds), 512)
        assert ds.stats["tokens"] == int((seg >= 0).sum()) and ds.stats["loss_tokens"] == int((labels != -100).sum())
        assert ds.stats["padding_fraction"] == pytest.approx(1 - ds.stats["tokens"] / (512 * len(ds)))
        # Real texts are long (rows fill up), real chats of 300-500 tokens pair badly; generated
        # records are short, of few distinct lengths, and their validation split is a few rows.
        assert ds.stats["padding_fraction"] < ({"pretrain": 0.02, "sft": 0.1}[kind] if names != "generated" else 0.25)
        assert bool((labels[seg < 0] == -100).all())
        if kind == "sft":  # every trained token is part of an assistant turn: never a role header
            assert not bool((labels == tok.token_to_id("<|im_start|>")).any())
    docs = sum(len(n.read_text(encoding="utf-8").splitlines()) for n in files)
    assert train.stats["docs"] + val.stats["docs"] == docs and val.stats["docs"] == round(0.05 * docs)
    where = lambda ds: {(f, line) for r in range(len(ds)) for f, line, _, _ in ds.row_pieces(r)}
    assert not where(train) & where(val)  # no document in both splits
    again, _ = build_datasets(files, tok, kind, seq_len=512, val_fraction=0.05, seed=1, cache_dir=tmp_path)
    assert again.stats["from_cache"] and torch.equal(
        again.get_batch([0, 5])["input_ids"], train.get_batch([0, 5])["input_ids"]
    )


def test_build_datasets_skip_mode_reports(tmp_path, tok):
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"text": "good one"}\n{"text": 7}\nnot json\n{"text": "good two"}\n', encoding="utf-8")
    with pytest.raises(MiniMindError, match=r"mixed\.jsonl:2: 'text' must be a string, got number"):
        build_datasets([data], tok, "pretrain", 64, cache_dir=tmp_path / "c")
    train, val = build_datasets(str(data), tok, "pretrain", 64, cache_dir=tmp_path / "c", on_bad_record="skip")
    assert val is None and train.stats["records"] == 2 and train.stats["skipped"] == 2
    assert train.stats["bad_examples"] == [
        f"{data}:2: 'text' must be a string, got number",
        f"{data}:3: invalid JSON: Expecting value (column 1)",
    ]
    with pytest.raises(MiniMindError, match="build_datasets takes kind 'pretrain' or 'sft'"):
        build_datasets([data], tok, "dpo", 64)
