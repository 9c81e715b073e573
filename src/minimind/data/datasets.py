"""build_datasets: data files in, packed train/validation datasets out (what the trainer calls)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import MiniMindError
from ..tokenizer import Tokenizer
from .cache import tokenize_file
from .formats import check_on_bad_record
from .packing import PackedDataset, pack

log = logging.getLogger(__name__)


def split_documents(counts: list[int], val_fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Choose validation documents: a seeded random round(val_fraction * total) of them.

    `counts[f]` is the number of documents in file f. Returns (train, val): per file, the
    sorted document indices. The split is by whole documents (a conversation or a text is
    never in both) and deterministic given the files and the seed.
    """
    total = sum(counts)
    n_val = 0
    if val_fraction > 0:
        if total < 2:
            raise MiniMindError(f"cannot hold out a validation split from {total} document(s)")
        n_val = min(max(1, round(val_fraction * total)), total - 1)
    is_val = np.zeros(total, dtype=bool)
    is_val[np.random.default_rng([seed, 1]).permutation(total)[:n_val]] = True
    train, val, at = [], [], 0
    for n in counts:
        part = is_val[at : at + n]
        train.append(np.flatnonzero(~part))
        val.append(np.flatnonzero(part))
        at += n
    return train, val


def build_datasets(
    files,
    tokenizer,
    kind: str,
    seq_len: int,
    val_fraction: float = 0.0,
    seed: int = 42,
    cache_dir=None,
    on_bad_record: str = "error",
    random_system_prompt: bool = False,
    strip_empty_think: bool = False,
) -> tuple[PackedDataset, PackedDataset | None]:
    """Tokenize (or reuse the cache of) each file, split off validation documents, pack both.

    files        one path or a list of JSONL files (all of the same kind)
    tokenizer    a minimind Tokenizer, or a tokenizer / model directory
    kind         "pretrain" ({"text"}) or "sft" ({"conversations"}: SFT, LoRA, distillation)
    seq_len      tokens per packed row
    val_fraction share of documents held out for validation (0 = no validation: val is None)
    seed         drives the split, the packing tie-breaks and (if on) the chat augmentations
    Returns (train, val); each has .stats (see PackedDataset and docs/data.md).
    """
    if kind not in ("pretrain", "sft"):
        raise MiniMindError(f"build_datasets takes kind 'pretrain' or 'sft', not {kind!r}")
    if not isinstance(seq_len, int) or seq_len < 2:
        raise MiniMindError(f"seq_len must be an integer of at least 2, got {seq_len!r}")
    if not 0 <= val_fraction < 1:
        raise MiniMindError(f"val_fraction must be in [0, 1), got {val_fraction}")
    check_on_bad_record(on_bad_record)
    files = [files] if isinstance(files, (str, Path)) else list(files)
    if not files:
        raise MiniMindError("no data files given")
    if isinstance(tokenizer, (str, Path)):
        tokenizer = Tokenizer.from_dir(tokenizer)
    tokenized = [
        tokenize_file(
            f,
            tokenizer,
            kind,
            cache_dir=cache_dir,
            on_bad_record=on_bad_record,
            random_system_prompt=random_system_prompt,
            strip_empty_think=strip_empty_think,
            seed=seed,
        )
        for f in files
    ]
    for f, tf in zip(files, tokenized):  # a file that holds nothing is a mistake (a wrong path, a failed export)
        if tf.meta["records"] == 0 and tf.meta["skipped"] == 0:
            raise MiniMindError(f"{f}: no records (the file is empty or has only blank lines)")
    if not any(len(tf) for tf in tokenized):
        raise MiniMindError(f"no valid records in {', '.join(map(str, files))}")
    file_stats = {
        "files": len(files),
        "records": sum(tf.meta["records"] for tf in tokenized),
        "skipped": sum(tf.meta["skipped"] for tf in tokenized),
        "bad_examples": [e for tf in tokenized for e in tf.meta["bad_examples"]][:5],
        "from_cache": all(tf.from_cache for tf in tokenized),
    }
    train_docs, val_docs = split_documents([len(tf) for tf in tokenized], val_fraction, seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train = pack(tokenized, train_docs, seq_len, kind, pad, seed, file_stats)
    val = pack(tokenized, val_docs, seq_len, kind, pad, seed, file_stats) if val_fraction > 0 else None
    s = train.stats
    log.info(
        "%s data: %d documents -> %d rows of %d tokens (%.2f%% padding), %d tokens with loss",
        kind,
        s["docs"],
        s["rows"],
        seq_len,
        100 * s["padding_fraction"],
        s["loss_tokens"],
    )
    if s["truncated"]:
        log.warning(
            "%d conversations are longer than %d tokens and were truncated (%d tokens cut, %d dropped)",
            s["truncated"],
            seq_len,
            s["truncated_tokens"],
            s["dropped"],
        )
    return train, val
