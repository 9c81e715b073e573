"""Pack whole documents into fixed-length rows, so no compute is spent on padding.

MiniMind pads every sample to max_seq_len; we fill each row of `seq_len` tokens with several
documents end to end. Long pretraining documents are split into pieces that overlap by one
token (every token is a target once); long chats are truncated. Pieces are placed by best-fit
decreasing bin packing (longest first, into the tightest open row; seeded tie-breaks), which
typically leaves well under 1% padding. Position ids restart and segment ids change at every
piece, so attention never crosses a document boundary (batches.attention_mask_from_segments).
The row fields and the stats: docs/data.md.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import numpy as np
import torch

from .cache import TokenizedFile


def cut_documents(files: list[TokenizedFile], docs: list[np.ndarray], seq_len: int, kind: str):
    """Turn the chosen documents into pieces of at most seq_len tokens.

    `docs[f]` are the document indices taken from files[f]. Returns (src, start, length, loss,
    stats): piece p is files[src[p]].ids[start[p]:start[p] + length[p]], with loss[p] tokens
    that have a target.
    """
    srcs, starts, lengths, losses = [], [], [], []
    stats = {"docs": 0, "split": 0, "truncated": 0, "truncated_tokens": 0, "dropped": 0}
    for f, (tf, chosen) in enumerate(zip(files, docs)):
        chosen = np.asarray(chosen, dtype=np.int64)
        begin, n = tf.offsets[chosen], tf.offsets[chosen + 1] - tf.offsets[chosen]
        stats["docs"] += len(chosen)
        long = n > seq_len
        if kind == "pretrain":
            # ceil((n - 1) / (seq_len - 1)) pieces, starting every seq_len - 1 tokens.
            count = np.where(long, (n - 2) // (seq_len - 1) + 1, 1)
            stats["split"] += int(long.sum())
            first = np.repeat(begin, count)
            k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
            start = first + k * (seq_len - 1)
            length = np.minimum(seq_len, np.repeat(begin + n, count) - start)
            loss = length - 1  # every token but the piece's first
        else:
            start, length = begin, np.minimum(n, seq_len)
            loss = tf.doc_loss[chosen].copy()  # a chat starts with <|im_start|>, never a target
            stats["truncated"] += int(long.sum())
            stats["truncated_tokens"] += int((n - length).sum())
            for i in np.flatnonzero(long):  # few: only the truncated chats need a look
                loss[i] = int(tf.mask[start[i] : start[i] + length[i]].sum())
            stats["dropped"] += int((loss == 0).sum())
        keep = (length >= 2) & (loss > 0)  # a piece with nothing to predict is dropped
        srcs.append(np.full(int(keep.sum()), f, dtype=np.int32))
        starts.append(start[keep])
        lengths.append(length[keep])
        losses.append(loss[keep])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)
    return cat(srcs, np.int32), cat(starts, np.int64), cat(lengths, np.int64), cat(losses, np.int64), stats


def best_fit_decreasing(lengths: np.ndarray, seq_len: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pack items of the given lengths (each <= seq_len) into as few rows as possible.

    Returns (pieces, row_ptr): row r holds items pieces[row_ptr[r]:row_ptr[r + 1]], in the
    order they were placed. Open rows are kept in buckets by remaining room, and the distinct
    room values in a sorted list, so finding the best fit is one bisect: O(n log seq_len).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > seq_len or lengths.min() < 1):
        raise ValueError("every item must have 1..seq_len tokens")
    tiebreak = np.random.default_rng(seed).permutation(len(lengths))
    order = np.lexsort((tiebreak, -lengths))  # longest first; equal lengths in seeded order
    row_of = np.empty(len(lengths), dtype=np.int64)
    rooms: list[int] = []  # sorted distinct room values that some open row has
    rows_with_room: dict[int, list[int]] = {}
    n_rows = 0
    for item, size in zip(order.tolist(), lengths[order].tolist()):
        i = bisect_left(rooms, size)
        if i < len(rooms):  # the tightest open row that fits
            room = rooms[i]
            bucket = rows_with_room[room]
            row = bucket.pop()
            if not bucket:
                del rows_with_room[room]
                rooms.pop(i)
        else:
            room, row = seq_len, n_rows
            n_rows += 1
        row_of[item] = row
        left = room - size
        if left > 0:
            bucket = rows_with_room.get(left)
            if bucket is None:
                rows_with_room[left] = [row]
                insort(rooms, left)
            else:
                bucket.append(row)
    pieces = order[np.argsort(row_of[order], kind="stable")]
    row_ptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, minlength=n_rows), out=row_ptr[1:])
    return pieces, row_ptr


class PackedDataset:
    """Rows of packed documents. ds[i] is a dict of LongTensors of length seq_len:

    input_ids     token ids, pad_token_id after the last piece
    labels        targets for the model's (internally shifted) loss; -100 = no loss
    position_ids  0, 1, 2, ... restarting at every piece; 0 on padding
    segment_ids   0, 1, 2, ... per piece in the row; -1 on padding
    """

    def __init__(
        self,
        files: list[TokenizedFile],
        src,
        start,
        length,
        pieces,
        row_ptr,
        seq_len: int,
        pad_token_id: int,
        kind: str,
        stats: dict,
    ):
        # Pieces stored in row order, so row r is the slice row_ptr[r]:row_ptr[r + 1].
        self.files, self.seq_len, self.pad_token_id, self.kind = files, seq_len, pad_token_id, kind
        self.src, self.start, self.length = src[pieces], start[pieces], length[pieces]
        self.row_ptr = row_ptr
        self.stats = stats

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        return {k: v[0] for k, v in self.get_batch([i % len(self)]).items()}

    def get_batch(self, rows) -> dict:
        """Rows stacked into [B, seq_len] LongTensors (input_ids, labels, position_ids, segment_ids)."""
        B, L = len(rows), self.seq_len
        ids = np.full((B, L), self.pad_token_id, dtype=np.int64)
        labels = np.full((B, L), -100, dtype=np.int64)
        pos = np.zeros((B, L), dtype=np.int64)
        seg = np.full((B, L), -1, dtype=np.int64)
        for b, r in enumerate(rows):
            at = 0
            for s, p in enumerate(range(self.row_ptr[r], self.row_ptr[r + 1])):
                tf, a, n = self.files[self.src[p]], int(self.start[p]), int(self.length[p])
                tokens = tf.ids[a : a + n].astype(np.int64)  # uint16 on disk: widen before using -100
                ids[b, at : at + n] = tokens
                if tf.mask is None:
                    labels[b, at : at + n] = tokens
                else:
                    labels[b, at : at + n] = np.where(tf.mask[a : a + n] > 0, tokens, -100)
                labels[b, at] = -100  # the piece's first token has no context in this row
                pos[b, at : at + n] = np.arange(n)
                seg[b, at : at + n] = s
                at += n
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos),
            "segment_ids": torch.from_numpy(seg),
        }

    def row_pieces(self, r: int) -> list[tuple[str, int, int, int]]:
        """(file, line, first token, tokens) of each piece in row r: where a row came from."""
        out = []
        for p in range(self.row_ptr[r], self.row_ptr[r + 1]):
            tf = self.files[self.src[p]]
            doc = int(np.searchsorted(tf.offsets, self.start[p], side="right") - 1)
            out.append((tf.path, int(tf.lines[doc]), int(self.start[p] - tf.offsets[doc]), int(self.length[p])))
        return out


def pack(
    files: list[TokenizedFile],
    docs: list[np.ndarray],
    seq_len: int,
    kind: str,
    pad_token_id: int,
    seed: int,
    file_stats: dict,
) -> PackedDataset:
    """Cut and pack the chosen documents of `files` into a PackedDataset with its stats."""
    src, start, length, loss, stats = cut_documents(files, docs, seq_len, kind)
    pieces, row_ptr = best_fit_decreasing(length, seq_len, seed)
    rows = len(row_ptr) - 1
    tokens = int(length.sum())
    stats = {
        **file_stats,
        **stats,
        "pieces": len(length),
        "tokens": tokens,
        "loss_tokens": int(loss.sum()),
        "rows": rows,
        "seq_len": seq_len,
        "padding_fraction": 1 - tokens / (rows * seq_len) if rows else 0.0,
    }
    return PackedDataset(files, src, start, length, pieces, row_ptr, seq_len, pad_token_id, kind, stats)
