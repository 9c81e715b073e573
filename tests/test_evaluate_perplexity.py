"""Perplexity / bits per byte: the sliding window against direct computations, and bad input."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import pretrain_records, scrambled_model, write_jsonl
from minimind import MiniMindError
from minimind.cli import main
from minimind.evaluate.perplexity import evaluate_perplexity, read_documents, windows

TEXT = "The quick brown fox jumps over the lazy dog. 敏捷的棕色狐狸跳过了懒狗。" * 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return scrambled_model(seed=1)


def nats_of(model, context: list[int], target: int) -> float:
    with torch.no_grad():
        return -float(torch.log_softmax(model(torch.tensor([context])).logits[0, -1], -1)[target])


@pytest.mark.parametrize("n, window, stride", [(2, 8, 4), (20, 8, 3), (20, 8, 7), (21, 5, 1), (9, 16, 8)])
def test_windows_score_every_token_once_with_at_least_window_minus_stride_context(n, window, stride):
    scored = []
    for begin, end, first in windows(n, window, stride):
        assert end - begin <= window and begin < first < end
        assert first == 1 or first - begin >= window - stride
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_one_window_equals_one_full_forward(model, tok):
    ids = [tok.bos_token_id] + tok.encode(TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    nats = float(F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum"))
    m = evaluate_perplexity(model, tok, [TEXT], window=len(ids), stride=len(ids) - 1)["metrics"]
    assert m["tokens"] == len(ids) - 1 and m["bytes"] == len(TEXT.encode("utf-8"))
    assert m["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(TEXT.encode("utf-8")), rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(nats / (len(ids) - 1)), rel=1e-5)


def test_short_window_equals_a_per_token_loop(model, tok):
    window, stride = 8, 3
    ids = [tok.bos_token_id] + tok.encode(TEXT[:60])
    total = 0.0
    for t in range(
        1, len(ids)
    ):  # the window that scores t starts at the first multiple of stride with t < begin + window
        begin = max(0, math.ceil((t - window + 1) / stride)) * stride
        total += nats_of(model, ids[begin:t], ids[t])
    r = evaluate_perplexity(model, tok, [TEXT[:60]], window=window, stride=stride, batch_size=5)
    assert r["details"]["nats"] == pytest.approx(total, rel=1e-5)


def test_documents_batched_with_padding_add_up(model, tok):
    docs = ["短的。", TEXT, "A medium sized English document."]
    together = evaluate_perplexity(model, tok, docs, window=16, stride=8, batch_size=3)
    alone = [evaluate_perplexity(model, tok, [d], window=16, stride=8, batch_size=1) for d in docs]
    assert together["details"]["nats"] == pytest.approx(sum(a["details"]["nats"] for a in alone), rel=1e-5)
    assert together["metrics"]["tokens"] == sum(a["metrics"]["tokens"] for a in alone)


def test_reading_documents_and_bad_input(tmp_path):
    docs = read_documents(write_jsonl(tmp_path / "docs.jsonl", pretrain_records(5)), limit=3)
    assert docs == [r["text"] for r in pretrain_records(3)]
    text = tmp_path / "a.txt"
    text.write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_documents(text) == ["one\n\ntwo\n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "oops"}\n', encoding="utf-8")
    with pytest.raises(MiniMindError, match=r"bad.jsonl:2: missing 'text'"):
        read_documents(bad)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(MiniMindError, match="empty.txt: empty file"):
        read_documents(tmp_path / "empty.txt")


def test_window_options_are_checked(model, tok):
    with pytest.raises(MiniMindError, match=r"--stride 8: must be between 1 and the window minus one \(7\)"):
        evaluate_perplexity(model, tok, [TEXT], window=8, stride=8)
    with pytest.raises(MiniMindError, match="--window 99999: must be between 2 and the model's context"):
        evaluate_perplexity(model, tok, [TEXT], window=99999)


def test_ppl_cli(tmp_path, tok_dir, capsys):
    model_dir = tmp_path / "nano"
    assert main(["init", "--preset", "nano", "--tokenizer", str(tok_dir), "--out", str(model_dir)]) == 0
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "--task",
                "ppl",
                "--data",
                str(tmp_path / "t.txt"),
                "--window",
                "16",
                "--json",
            ]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert r["kind"] == "perplexity" and r["primary"] == "bits_per_byte" and r["details"]["stride"] == 8
    assert set(r["metrics"]) == {"perplexity", "bits_per_byte", "tokens", "bytes"}
    assert (
        main(["eval", "--model", str(model_dir), "--task", "ppl", "--data", str(tmp_path / "t.txt"), "--shots", "2"])
        == 2
    )
    assert "--shots applies to multiple-choice tasks" in capsys.readouterr().err
