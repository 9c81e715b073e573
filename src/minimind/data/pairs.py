"""Preference pairs for DPO: `{"chosen": [messages], "rejected": [messages]}` in, batches out.

Both sides go through the same chat-template call with the same options (MiniMind strips the
empty think block on each side independently, so about a third of its pairs differ only in
that formatting). They share every message but the last, so they tokenise to a common prompt and
two replies; the loss is on the final reply only. A side longer than seq_len keeps the replies'
start and the prompt's end, the same prompt tokens on both sides. A pair's two sides share a
micro-batch, right-padded; the order groups pairs of similar length. See docs/data.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import MiniMindError
from .batches import epoch_order
from .datasets import split_documents
from .formats import BadRecords, read_records
from .sft import AssistantMasker, ChatRenderer, encode_chats

ENCODE_CHUNK = 1000  # pairs tokenised per call (the tokenizer batches in Rust)
GROUP_BATCHES = 50  # length grouping: sort within windows of this many global batches


class PairDataset:
    """Tokenised pairs. Pair i: a shared prompt of prompt_len[i] tokens, then each side's reply.

    get_batch(rows) -> dict of [2B, L] LongTensors, rows 0..B-1 the chosen sides and B..2B-1
    the rejected sides of the same pairs:
      input_ids     tokens, pad_token_id after the end of each side
      labels        the reply tokens; -100 on the prompt and on padding
      position_ids  0, 1, 2, ... (0 on padding)
      segment_ids   0 on real tokens, -1 on padding (what the trainer counts as real tokens)
      pair          [B] which pairs these are (the index into this dataset)
    plus ref_logp [B, 2] (the reference's per-side log-probs) once set_reference was called.
    """

    def __init__(
        self,
        chosen: list[np.ndarray],
        rejected: list[np.ndarray],
        prompt_len: np.ndarray,
        where: list[str],
        pad_token_id: int,
        stats: dict,
    ):
        self.chosen, self.rejected, self.prompt_len, self.where = chosen, rejected, prompt_len, where
        self.pad_token_id = pad_token_id
        self.lengths = np.array([max(len(c), len(r)) for c, r in zip(chosen, rejected)], dtype=np.int64)
        self.stats = stats
        self.ref: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.chosen)

    def set_reference(self, ref_logp: torch.Tensor) -> None:
        """[N, 2] float64: the frozen reference's log-prob of (chosen, rejected) for each pair."""
        self.ref = ref_logp

    def get_batch(self, rows) -> dict:
        rows = [int(r) for r in rows]
        sides = [self.chosen[r] for r in rows] + [self.rejected[r] for r in rows]
        L = max(len(s) for s in sides)
        ids = np.full((len(sides), L), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(sides), L), -100, dtype=np.int64)
        seg = np.full((len(sides), L), -1, dtype=np.int64)
        pos = np.zeros((len(sides), L), dtype=np.int64)
        for b, s in enumerate(sides):
            p = self.prompt_len[rows[b % len(rows)]]
            ids[b, : len(s)] = s
            labels[b, p : len(s)] = s[p:]
            seg[b, : len(s)] = 0
            pos[b, : len(s)] = np.arange(len(s))
        batch = {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos),
            "segment_ids": torch.from_numpy(seg),
            "pair": torch.tensor(rows, dtype=torch.long),
        }
        if self.ref is not None:
            batch["ref_logp"] = self.ref[rows].clone()
        return batch

    def content_key(self) -> bytes:
        """The exact token content (ids and prompt lengths): keys a cache of reference log-probs."""
        parts = [self.prompt_len.astype(np.int64).tobytes()]
        for c, r in zip(self.chosen, self.rejected):
            parts += [np.int64(len(c)).tobytes(), c.tobytes(), np.int64(len(r)).tobytes(), r.tobytes()]
        return b"".join(parts)


def reply_start(mask: np.ndarray) -> int:
    """Where the last assistant turn begins: the start of the last run of 1s in the loss mask."""
    ones = np.flatnonzero(mask)
    gaps = np.flatnonzero(np.diff(ones) > 1)
    return int(ones[gaps[-1] + 1] if len(gaps) else ones[0])


def cut_pair(
    chosen: np.ndarray, c_mask: np.ndarray, rejected: np.ndarray, r_mask: np.ndarray, seq_len: int, where: str
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """One pair's (chosen ids, rejected ids, prompt length, truncated?), ready for batches."""
    pc, pr = reply_start(c_mask), reply_start(r_mask)
    if pc != pr or not np.array_equal(chosen[:pc], rejected[:pr]):
        raise MiniMindError(f"{where}: 'chosen' and 'rejected' tokenise to different prompts")
    # Each reply ends at its closing <|im_end|>: the "\n" after it has no loss (as in SFT).
    ends = [int(np.flatnonzero(m)[-1]) + 1 for m in (c_mask, r_mask)]
    prompt, replies = chosen[:pc], [chosen[pc : ends[0]], rejected[pc : ends[1]]]
    longest = max(len(r) for r in replies)
    truncated = len(prompt) + longest > seq_len
    if truncated:
        keep = min(len(prompt), max(seq_len // 2, seq_len - longest))
        prompt = prompt[len(prompt) - keep :]
        replies = [r[: seq_len - keep] for r in replies]
    return np.concatenate([prompt, replies[0]]), np.concatenate([prompt, replies[1]]), len(prompt), truncated


def build_pair_datasets(
    files, tokenizer, seq_len: int, val_fraction: float = 0.0, seed: int = 42, on_bad_record: str = "error"
) -> tuple[PairDataset, PairDataset | None]:
    """Read, validate, tokenise and truncate the pairs of `files`; split off validation pairs.

    Every record is checked first (FILE:LINE errors: a missing side, different prompts, ...),
    then tokenised. The split is by pair, seeded, the same way as build_datasets splits.
    """
    if not isinstance(seq_len, int) or seq_len < 8:
        raise MiniMindError(f"seq_len must be an integer of at least 8, got {seq_len!r}")
    if not 0 <= val_fraction < 1:
        raise MiniMindError(f"val_fraction must be in [0, 1), got {val_fraction}")
    files = [str(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not files:
        raise MiniMindError("no data files given")
    bad = BadRecords()
    per_file = []
    for f in files:
        skipped = bad.count
        per_file.append(list(read_records(f, "dpo", on_bad_record=on_bad_record, bad=bad)))
        if not per_file[-1] and bad.count == skipped:  # nothing in it, not even a bad record
            raise MiniMindError(f"{f}: no records (the file is empty or has only blank lines)")
    records = [r for recs in per_file for r in recs]
    if not records:
        raise MiniMindError(f"no valid preference pairs in {', '.join(files)}")
    renderer, masker = ChatRenderer(tokenizer), AssistantMasker(tokenizer)  # no augmentations: both sides alike
    chosen, rejected, prompt_len, where, cut_flags = [], [], [], [], []
    for i in range(0, len(records), ENCODE_CHUNK):
        chunk = records[i : i + ENCODE_CHUNK]
        c_enc = encode_chats(tokenizer, [r.data["chosen"] for r in chunk], renderer, masker)
        r_enc = encode_chats(tokenizer, [r.data["rejected"] for r in chunk], renderer, masker)
        for rec, (c, cm), (r, rm) in zip(chunk, c_enc, r_enc):
            place = f"{rec.path}:{rec.line}"
            c_ids, r_ids, p, cut = cut_pair(c, cm, r, rm, seq_len, place)
            chosen.append(c_ids.astype(np.int64))
            rejected.append(r_ids.astype(np.int64))
            prompt_len.append(p)
            where.append(place)
            cut_flags.append(cut)
    train_idx, val_idx = split_documents([len(recs) for recs in per_file], val_fraction, seed)
    offsets = np.cumsum([0] + [len(recs) for recs in per_file])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def subset(parts: list[np.ndarray]) -> PairDataset:
        idx = np.concatenate([offsets[f] + p for f, p in enumerate(parts)]).astype(np.int64)
        stats = {
            "unit": "pairs",
            "docs": len(idx),
            "records": len(records),
            "skipped": bad.count,
            "bad_examples": bad.examples,
            "truncated": int(sum(cut_flags[j] for j in idx)),
            "seq_len": seq_len,
        }
        return PairDataset(
            [chosen[j] for j in idx],
            [rejected[j] for j in idx],
            np.array([prompt_len[j] for j in idx]),
            [where[j] for j in idx],
            pad,
            stats,
        )

    return subset(train_idx), subset(val_idx) if val_fraction > 0 else None


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int, world_size: int = 1):
    """The epoch's global batches as lists of rows: shuffled, but pairs of similar length together.

    The seeded epoch order is cut into windows of GROUP_BATCHES global batches; each window is
    sorted by length, cut into global batches, and those batches are shuffled again. Each
    batch is still a random draw from its window, while its rows pad to similar lengths.
    Depends only on (lengths, seed, epoch), so resuming and DDP ranks recompute the same.
    """
    global_batch = batch_size * world_size
    order = epoch_order(len(lengths), seed, epoch)
    rng = np.random.default_rng([seed, epoch, 2])
    batches = []
    window = global_batch * GROUP_BATCHES
    for w in range(0, len(order) - global_batch + 1, window):
        part = order[w : w + window]
        part = part[: len(part) // global_batch * global_batch]  # drop the last partial batch
        part = part[np.argsort(-lengths[part], kind="stable")]
        chunk = part.reshape(-1, global_batch)
        batches.extend(chunk[rng.permutation(len(chunk))])
    return batches


def padding_fraction(ds: PairDataset, batches) -> float:
    """Share of the tokens of these batches that are padding (both sides of each pair)."""
    real = padded = 0
    for rows in batches:
        sides = [len(ds.chosen[r]) for r in rows] + [len(ds.rejected[r]) for r in rows]
        real += sum(sides)
        padded += max(sides) * len(sides)
    return 1 - real / padded if padded else 0.0
