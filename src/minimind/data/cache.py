"""Tokenize a data file once and keep the result on disk, memory-mapped.

Tokenizing every epoch in Python (as MiniMind does) wastes CPU; tokenizing once in bulk with
the multi-threaded Rust tokenizer and reading the ids back with np.memmap costs almost nothing
later. One directory per (data file, tokenizer, options) holds ids.bin, mask.bin (chat data),
offsets.npy, lines.npy, doc_loss.npy (chat data) and meta.json; the key hashes the file's path,
size and mtime, the tokenizer, the kind, FORMAT_VERSION and the augmentations, not seq_len
(documents are stored whole). A cache is built under a temporary name and renamed into place,
so a killed build never looks valid. Layout, key and location: docs/data.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import time
import uuid
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MiniMindError
from .formats import BadRecords, check_kind, check_on_bad_record, read_records
from .sft import AssistantMasker, ChatRenderer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK_RECORDS = 4096  # records per encode_batch call: big enough to keep every core busy
CHUNK_CHARS = 8_000_000  # ... but bounded in memory for very long documents


def default_cache_dir(cache_dir=None) -> Path:
    """The cache directory: the argument, else $MINIMIND_CACHE, else ~/.cache/minimind/tokenized."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MINIMIND_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minimind" / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's tokenizer.json and tokenizer_config.json content."""
    h = hashlib.sha256()
    h.update(tokenizer._tk.to_str().encode())  # the serialised tokenizer.json, as loaded
    h.update(json.dumps(tokenizer.config, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 65536 else np.uint32


@dataclass
class TokenizedFile:
    """A data file's documents as memory-mapped token ids (and loss mask for chat data)."""

    path: str
    kind: str
    ids: np.ndarray  # all documents end to end
    mask: np.ndarray | None  # uint8, same length as ids; None for pretrain (every token trains)
    offsets: np.ndarray  # int64 [docs + 1]
    lines: np.ndarray  # int64 [docs]
    doc_loss: np.ndarray | None  # int64 [docs]: tokens with loss per document (chat data)
    meta: dict
    cache_path: Path
    from_cache: bool  # False when this call tokenized the file

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, loss mask) of document i; the mask is all ones for pretraining text."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        mask = self.mask[a:b] if self.mask is not None else np.ones(b - a, dtype=np.uint8)
        return np.asarray(self.ids[a:b]), np.asarray(mask)


def source_id(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(path, tokenizer, kind: str, random_system_prompt=False, strip_empty_think=False, seed=42) -> str:
    """The hash that names a file's cache (see the module docstring for what goes in)."""
    options = {"special_tokens": "as_text"} if kind == "pretrain" else {}  # (Tokenizer.encode_batch plain_text)
    if kind != "pretrain":
        options = {"random_system_prompt": bool(random_system_prompt), "strip_empty_think": bool(strip_empty_think)}
        if random_system_prompt or strip_empty_think:
            options["seed"] = seed  # only augmentations draw random numbers
    key = {
        "version": FORMAT_VERSION,
        "kind": kind,
        "source": source_id(Path(path)),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "options": options,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _memmap(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _load(cache_path: Path, path, kind: str) -> TokenizedFile | None:
    """Open a finished cache directory, or None if it is missing or inconsistent."""
    try:
        meta = json.loads((cache_path / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        ids = _memmap(cache_path / "ids.bin", dtype)
        mask = _memmap(cache_path / "mask.bin", np.uint8) if meta["has_mask"] else None
        offsets = np.load(cache_path / "offsets.npy")
        lines = np.load(cache_path / "lines.npy")
        doc_loss = np.load(cache_path / "doc_loss.npy") if meta["has_mask"] else None
    except (OSError, ValueError, KeyError):
        return None
    if len(ids) != meta["tokens"] or offsets[-1] != len(ids) or (mask is not None and len(mask) != len(ids)):
        return None
    return TokenizedFile(str(path), kind, ids, mask, offsets, lines, doc_loss, meta, cache_path, from_cache=True)


def tokenize_file(
    path,
    tokenizer,
    kind: str,
    *,
    cache_dir=None,
    on_bad_record: str = "error",
    random_system_prompt: bool = False,
    strip_empty_think: bool = False,
    seed: int = 42,
) -> TokenizedFile:
    """Return the tokenized documents of a pretrain or sft file, building the cache if needed.

    pretrain: each document is [bos] + text tokens + [eos] (mask None: every token is a target
    except the first of each packed piece, which the packer handles).
    sft: each conversation rendered with the chat template, with the assistant loss mask.
    Bad records raise MiniMindError (on_bad_record="error") or are skipped and counted in
    meta["skipped"] / meta["bad_examples"] ("skip"). A cache built with "skip" that skipped
    records still raises in "error" mode, with the first bad record's FILE:LINE.
    """
    check_kind(kind)
    check_on_bad_record(on_bad_record)
    if kind not in ("pretrain", "sft"):
        raise MiniMindError(f"token caches are built for pretrain and sft data, not {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    root = default_cache_dir(cache_dir)
    key = cache_key(path, tokenizer, kind, random_system_prompt, strip_empty_think, seed)
    cache_path = root / f"{path.stem[:48]}-{kind}-{key}"
    loaded = _load(cache_path, path, kind) if cache_path.is_dir() else None
    if loaded is None:
        root.mkdir(parents=True, exist_ok=True)
        # One builder at a time per cache (e.g. all DDP ranks start together): the others wait
        # here, then find the finished cache instead of tokenizing the same file again.
        with locked(root / f".lock-{cache_path.name}"):
            loaded = _load(cache_path, path, kind) if cache_path.is_dir() else None
            if loaded is None:
                renderer = (
                    ChatRenderer(tokenizer, random_system_prompt, strip_empty_think, seed) if kind == "sft" else None
                )
                _build_atomically(path, tokenizer, kind, root, cache_path, on_bad_record, renderer)
                loaded = _load(cache_path, path, kind)
                if loaded is None:
                    raise MiniMindError(f"{cache_path}: the token cache just built cannot be read back")
                loaded.from_cache = False
    meta = loaded.meta
    if meta["skipped"] and on_bad_record == "error":
        raise MiniMindError(meta["bad_examples"][0])
    if meta["skipped"]:
        log.warning("%s: %s", path, BadRecords(meta["skipped"], list(meta["bad_examples"])).summary())
    return loaded


@contextlib.contextmanager
def locked(lock_path: Path):
    """An exclusive lock on lock_path for the duration (POSIX flock; a no-op where missing).
    The kernel releases it if the process dies, so a killed build never blocks the next one."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds are still safe, only wasteful
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_atomically(
    path: Path, tokenizer, kind: str, root: Path, cache_path: Path, on_bad_record: str, renderer
) -> None:
    """Build into a temporary directory, then rename it to cache_path in one step."""
    remove_stale(root, path, kind)
    tmp = root / f".tmp-{uuid.uuid4().hex[:12]}-{cache_path.name}"
    tmp.mkdir()
    (tmp / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        source = source_id(path)
        _build(path, tokenizer, kind, tmp, on_bad_record, renderer)
        if source_id(path) != source:
            raise MiniMindError(f"{path}: the file changed while it was being tokenized; run again")
        fsync_dir(tmp)
        if cache_path.is_dir():  # a damaged cache (it did not load): set it aside first
            log.warning("%s: damaged token cache, rebuilt", cache_path)
            trash = root / f".tmp-{uuid.uuid4().hex[:12]}-damaged"
            os.rename(cache_path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, cache_path)  # atomic: the cache appears complete or not at all
        except OSError:  # another machine sharing the directory finished first: use theirs
            if not cache_path.is_dir():
                raise
        fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------ build ---


def _chunks(records, max_records: int, max_chars: int, text=len):
    chunk, chars = [], 0
    for r in records:
        chunk.append(r)
        chars += text(r)
        if len(chunk) >= max_records or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _build(path: Path, tokenizer, kind: str, out: Path, on_bad_record: str, renderer) -> None:
    """Stream the file through the tokenizer into out/ (ids.bin, mask.bin, offsets, lines, meta)."""
    t0 = time.time()
    dtype = token_dtype(tokenizer.vocab_size)
    bad, progress = BadRecords(), {"bytes": 0}
    masker = AssistantMasker(tokenizer) if kind == "sft" else None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    offsets, lines, doc_loss = array("q", [0]), array("q"), array("q")
    counts = {"records": 0, "tokens": 0, "loss_tokens": 0}
    total_bytes, last_log = max(path.stat().st_size, 1), time.time()

    def to_text(r):
        return r.data["text"] if kind == "pretrain" else renderer(r.data["conversations"])

    def write(records, encoded, ids_f, mask_f):
        lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
        if kind == "pretrain":
            flat, lengths = _add_bos_eos(flat, lengths, bos, eos)
        doc_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=doc_offsets[1:])
        keep = np.ones(len(records), dtype=bool)
        mask = None
        if kind == "sft":
            mask, per_doc, unclosed = masker.mask(flat, doc_offsets)
            for d, r in enumerate(records):
                if per_doc[d] != r.info["assistant"] or unclosed[d]:
                    keep[d] = False
                    where = (
                        f"{path}:{r.line}: found {per_doc[d] - unclosed[d]} of {r.info['assistant']} "
                        "assistant turns after applying the chat template"
                    )
                    if on_bad_record == "error":
                        raise MiniMindError(where)
                    bad.add(where)
        if not keep.all():  # rare: drop the documents whose turns could not be located
            token_keep = np.repeat(keep, lengths)
            flat, lengths = flat[token_keep], lengths[keep]
            mask = mask[token_keep] if mask is not None else None
            records = [r for r, k in zip(records, keep) if k]
        flat.astype(dtype).tofile(ids_f)
        if mask is not None:
            mask.tofile(mask_f)
            counts["loss_tokens"] += int(mask.sum())
            starts = np.zeros(len(lengths), dtype=np.int64)
            np.cumsum(lengths[:-1], out=starts[1:])
            doc_loss.extend(np.add.reduceat(mask.astype(np.int64), starts).tolist() if len(mask) else [])
        else:
            counts["loss_tokens"] += int(lengths.sum()) - len(lengths)  # all but the bos
        end = offsets[-1]
        offsets.extend((end + np.cumsum(lengths)).tolist())
        lines.extend(r.line for r in records)
        counts["records"] += len(records)
        counts["tokens"] += int(lengths.sum())

    records = read_records(path, kind, on_bad_record, bad, progress)
    if kind == "pretrain":
        size = lambda r: len(r.data["text"])
    else:
        size = lambda r: sum(len(m.get("content") or "") for m in r.data["conversations"])
    chunks = _chunks(records, CHUNK_RECORDS, CHUNK_CHARS, text=size)
    # Two-stage pipeline: while the Rust tokenizer encodes chunk k on its thread pool (it
    # releases the GIL), this thread parses, validates and renders chunk k + 1.
    with (
        open(out / "ids.bin", "wb") as ids_f,
        open(out / "mask.bin", "wb") as mask_f,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        pending = None
        for chunk in chunks:
            # Pretraining text is plain text: a special token written in it never becomes its id.
            plain = {"plain_text": True} if kind == "pretrain" else {}
            job = (chunk, pool.submit(tokenizer.encode_batch, [to_text(r) for r in chunk], **plain))
            if pending is not None:
                write(pending[0], pending[1].result(), ids_f, mask_f)
            pending = job
            if time.time() - last_log > 10:
                last_log = time.time()
                rate = counts["tokens"] / max(last_log - t0, 1e-9)
                log.info(
                    "tokenizing %s: %.0f%%, %d records, %d tokens (%.0f tokens/s)",
                    path,
                    100 * progress["bytes"] / total_bytes,
                    counts["records"],
                    counts["tokens"],
                    rate,
                )
        if pending is not None:
            write(pending[0], pending[1].result(), ids_f, mask_f)
        for f in (ids_f, mask_f):
            f.flush()
            os.fsync(f.fileno())
    np.save(out / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    np.save(out / "lines.npy", np.frombuffer(lines, dtype=np.int64))
    if kind == "sft":
        np.save(out / "doc_loss.npy", np.frombuffer(doc_loss, dtype=np.int64))
    seconds = time.time() - t0
    meta = {
        "version": FORMAT_VERSION,
        "kind": kind,
        "source": source_id(path),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "tokenizer_source": tokenizer.source,
        "dtype": np.dtype(dtype).name,
        "has_mask": kind == "sft",
        "docs": len(lines),
        **counts,
        "skipped": bad.count,
        "bad_examples": bad.examples,
        "options": {
            "random_system_prompt": getattr(renderer, "random_system_prompt", False),
            "strip_empty_think": getattr(renderer, "strip_empty_think", False),
        },
        "seconds": round(seconds, 3),
        "tokens_per_s": round(counts["tokens"] / max(seconds, 1e-9)),
    }
    with open(out / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    log.info(
        "tokenized %s: %d documents, %d tokens in %.1fs (%.0f tokens/s)",
        path,
        meta["docs"],
        meta["tokens"],
        seconds,
        meta["tokens_per_s"],
    )


def _add_bos_eos(flat: np.ndarray, lengths: np.ndarray, bos, eos) -> tuple[np.ndarray, np.ndarray]:
    """Wrap each document as [bos] + ids + [eos] (either may be None), vectorised."""
    extra = (bos is not None) + (eos is not None)
    if not extra:
        return flat, lengths
    new_lengths = lengths + extra
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(new_lengths[:-1], out=starts[1:])
    out = np.empty(int(new_lengths.sum()), dtype=np.int64)
    body = np.ones(len(out), dtype=bool)
    if bos is not None:
        out[starts] = bos
        body[starts] = False
    if eos is not None:
        out[starts + new_lengths - 1] = eos
        body[starts + new_lengths - 1] = False
    out[body] = flat
    return out, new_lengths


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale(root: Path, path: Path, kind: str) -> None:
    """Delete caches of this same file made before it last changed (they can never be used
    again), and temporary directories left by killed builds on this machine."""
    source = source_id(path)
    host = socket.gethostname()
    for d in root.iterdir():
        if d.name.startswith(".tmp-"):
            try:
                owner = json.loads((d / "owner.json").read_text())
            except (OSError, ValueError):
                continue
            if owner.get("host") == host and not _alive(int(owner.get("pid", 0))):
                shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith(f"{path.stem[:48]}-{kind}-"):
            try:
                old = json.loads((d / "meta.json").read_text())["source"]
            except (OSError, ValueError, KeyError):
                continue
            if old["path"] == source["path"] and old != source:
                shutil.rmtree(d, ignore_errors=True)
                (root / f".lock-{d.name}").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
