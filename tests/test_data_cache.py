"""The token cache: built once, reused, rebuilt when the data or the tokenizer changes, never corrupt."""

import json
import os

import numpy as np
import pytest

from helpers import chat_records, write_jsonl
from minimind.data import cache as cache_mod
from minimind.data import default_cache_dir, tokenize_file
from minimind.errors import MiniMindError
from minimind.tokenizer import Tokenizer, train_tokenizer


class CountingTokenizer:
    """Wraps a tokenizer and counts encode_batch calls (a re-tokenization would show up)."""

    def __init__(self, tok):
        self._tok, self.calls = tok, 0

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def encode_batch(self, texts, **options):
        self.calls += 1
        return self._tok.encode_batch(texts, **options)


def write(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return path


def test_pretrain_documents_are_bos_text_eos(tmp_path, tok):
    data = write(tmp_path / "p.jsonl", ["hello world", "你好"])
    tf = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "cache")
    assert len(tf) == 2 and tf.mask is None and tf.ids.dtype == np.uint16
    assert tf.doc(0)[0].tolist() == [1, *tok.encode("hello world"), 2]
    assert tf.doc(1)[0].tolist() == [1, *tok.encode("你好"), 2]
    assert tf.lines.tolist() == [1, 2]
    assert tf.meta["loss_tokens"] == tf.meta["tokens"] - 2  # the bos of each document is never a target
    assert isinstance(tf.ids, np.memmap)


def test_second_build_reuses_the_cache(tmp_path, tok):
    data = write_jsonl(tmp_path / "chats.jsonl", chat_records(120))
    counting = CountingTokenizer(tok)
    first = tokenize_file(data, counting, "sft", cache_dir=tmp_path)
    calls = counting.calls
    assert calls > 0 and not first.from_cache
    built = first.cache_path / "ids.bin"
    mtime = built.stat().st_mtime_ns
    second = tokenize_file(data, counting, "sft", cache_dir=tmp_path)
    assert counting.calls == calls and second.from_cache and built.stat().st_mtime_ns == mtime
    assert np.array_equal(first.ids, second.ids) and np.array_equal(first.mask, second.mask)
    assert second.meta["docs"] == 120 and second.doc_loss.sum() == second.mask.sum() == second.meta["loss_tokens"]
    # chat options that change tokens get a cache of their own
    third = tokenize_file(data, counting, "sft", cache_dir=tmp_path, strip_empty_think=True)
    assert counting.calls > calls and third.cache_path != first.cache_path


def test_rebuilt_when_the_data_changes(tmp_path, tok):
    data = write(tmp_path / "p.jsonl", ["one", "two"])
    first = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")
    write(data, ["one", "two", "three"])
    os.utime(data, ns=(first.meta["source"]["mtime_ns"] + 10**9,) * 2)
    second = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")
    assert not second.from_cache and len(second) == 3 and second.cache_path != first.cache_path
    assert not first.cache_path.exists()  # the stale cache of the old file content was removed


def test_rebuilt_when_the_tokenizer_changes(tmp_path, tok):
    data = write(tmp_path / "p.jsonl", ["some text"])
    first = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")
    train_tokenizer([str(data)], vocab_size=300, out_dir=str(tmp_path / "other"))
    other = Tokenizer.from_dir(tmp_path / "other")
    second = tokenize_file(data, other, "pretrain", cache_dir=tmp_path / "c")
    assert not second.from_cache and second.cache_path != first.cache_path and first.cache_path.exists()
    edited = Tokenizer(tok._tk, {**tok.config, "chat_template": "{{ messages }}"}, "edited")  # config only
    assert not tokenize_file(data, edited, "pretrain", cache_dir=tmp_path / "c").from_cache
    assert tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c").from_cache  # the first is still there


def test_a_killed_build_leaves_no_cache(tmp_path, tok, monkeypatch):
    data = write(tmp_path / "p.jsonl", [f"text number {i}" for i in range(50)])
    monkeypatch.setattr(cache_mod, "CHUNK_RECORDS", 10)
    real = cache_mod._add_bos_eos
    calls = []

    def dies_on_third_chunk(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the process were killed mid-build
        return real(*args)

    monkeypatch.setattr(cache_mod, "_add_bos_eos", dies_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")
    left = [p.name for p in (tmp_path / "c").iterdir() if not p.name.startswith(".lock-")]
    assert left == []  # neither a cache nor a temporary directory (only the empty lock file)
    monkeypatch.setattr(cache_mod, "_add_bos_eos", real)
    tf = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")
    assert len(tf) == 50 and not tf.from_cache


def test_truncated_cache_files_are_detected(tmp_path, tok):
    data = write(tmp_path / "p.jsonl", ["alpha beta", "gamma"])
    tf = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path)
    ids = tf.cache_path / "ids.bin"
    ids.write_bytes(ids.read_bytes()[:-2])
    again = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path)
    assert not again.from_cache and again.meta["tokens"] == tf.meta["tokens"]


def test_skip_mode_cache_still_refuses_in_error_mode(tmp_path, tok):
    data = tmp_path / "p.jsonl"
    data.write_text('{"text": "good"}\n{"text": 1}\n{"text": "also good"}\n')
    tf = tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c", on_bad_record="skip")
    assert len(tf) == 2 and tf.meta["skipped"] == 1 and tf.lines.tolist() == [1, 3]
    with pytest.raises(MiniMindError, match=r"p\.jsonl:2: 'text' must be a string"):
        tokenize_file(data, tok, "pretrain", cache_dir=tmp_path / "c")


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("MINIMIND_CACHE")
    assert str(default_cache_dir()).endswith(os.path.join(".cache", "minimind", "tokenized"))


def test_leftovers_of_a_killed_build_are_cleaned_up(tmp_path, tok):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = tmp_path / "c"
    leftover = root / ".tmp-0123456789ab-p-pretrain-x"
    leftover.mkdir(parents=True)
    (leftover / "ids.bin").write_bytes(b"\0" * 10)
    (leftover / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    live = root / ".tmp-ba9876543210-p-pretrain-y"  # another build still running: left alone
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    tokenize_file(write(tmp_path / "p.jsonl", ["x"]), tok, "pretrain", cache_dir=root)
    assert not leftover.exists() and live.exists()


def test_concurrent_builders_tokenize_once(tmp_path, tok):
    """All DDP ranks call build_datasets at once: one tokenizes, the others wait and reuse."""
    import threading

    data = write_jsonl(tmp_path / "chats.jsonl", chat_records(600))
    counting = [CountingTokenizer(tok) for _ in range(3)]
    results = [None] * 3

    def rank(i):
        results[i] = tokenize_file(data, counting[i], "sft", cache_dir=tmp_path)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(r.from_cache for r in results) == [False, True, True]
    assert sum(c.calls > 0 for c in counting) == 1
    assert all(np.array_equal(r.ids, results[0].ids) for r in results)
