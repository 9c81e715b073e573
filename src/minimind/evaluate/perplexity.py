"""Perplexity and bits per byte of a text, with a sliding window over long documents.

Data: a plain text file (the whole file is one document) or a JSONL file of {"text": ...} records
(one document each; validated like pretraining data, FILE:LINE on a bad record).

Every document is tokenized, its bos token put in front (the context of its first token, as in
pretraining), and every text token is scored exactly once:

  window W, stride S (1 <= S < W): the first window covers tokens [0, W) and scores all of them; each
  next window starts S tokens later, ends S tokens later, and scores only the tokens no earlier
  window scored (its last S). So every token after the first window sees at least W - S tokens of
  context. S = W - 1 gives chunks that overlap by one token, the context of each chunk's first scored
  token (fastest, least context); S = 1 gives every token the full window (one forward per token).
  A document shorter than W is one forward pass.

  perplexity    = exp(total nats / scored tokens)
  bits per byte = total nats / ln 2 / UTF-8 bytes of the scored text

Bits per byte does not depend on the tokenizer, so it compares models with different vocabularies.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.formats import read_records
from ..errors import MiniMindError


def read_documents(path: str | Path, limit: int | None = None) -> list[str]:
    """The documents of a .txt file (one) or a {"text"} JSONL file (one per record)."""
    path = Path(path)
    if not path.is_file():
        raise MiniMindError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        docs = []
        for record in read_records(path, "pretrain"):
            if limit is not None and len(docs) >= limit:
                break
            docs.append(record.data["text"])
    else:
        try:
            docs = [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as e:
            raise MiniMindError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not docs[0].strip():
            raise MiniMindError(f"{path}: empty file (no text to score)")
    if not docs:
        raise MiniMindError(f"{path}: no documents")
    return docs


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a sequence of n ids, where id 0 is the
    bos context and ids 1..n-1 are scored: position t is scored in the window with begin < t < end
    where it is predicted from ids[begin:t], each position exactly once."""
    spans, scored_to, begin = [], 1, 0
    while scored_to < n:
        end = min(begin + window, n)
        spans.append((begin, end, scored_to))
        scored_to = end
        begin += stride
    return spans


@torch.inference_mode()
def _nats(model, batch: list[tuple[list[int], int]], pad_id: int) -> float:
    """Sum of -log p over the scored positions of a batch of (ids, first scored index) rows,
    right-padded (positions 0.. for every row; padding comes after the real tokens, so causal
    attention never sees it and no mask is needed)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in batch)
    x = torch.full((len(batch), width), pad_id, dtype=torch.long)
    target = torch.full((len(batch), width), -100, dtype=torch.long)  # -100 = not scored
    for i, (ids, first) in enumerate(batch):
        x[i, : len(ids)] = torch.as_tensor(ids)
        target[i, first - 1 : len(ids) - 1] = torch.as_tensor(ids[first:])  # logits at t-1 predict t
    logits = model(x.to(device)).logits.float()
    return float(F.cross_entropy(logits.flatten(0, 1), target.to(device).flatten(), ignore_index=-100, reduction="sum"))


def check_window(window: int, stride: int | None, context: int) -> int:
    """Validate --window/--stride against the model's context; returns the stride (default window / 2)."""
    stride = stride or max(1, window // 2)
    if not 2 <= window <= context:
        raise MiniMindError(f"--window {window}: must be between 2 and the model's context ({context} tokens)")
    if not 1 <= stride < window:  # each window's first token is context only, so S = W would skip it
        raise MiniMindError(f"--stride {stride}: must be between 1 and the window minus one ({window - 1})")
    return stride


def evaluate_perplexity(
    model, tokenizer, docs: list[str], window: int = 512, stride: int | None = None, batch_size: int = 8
) -> dict:
    """Perplexity and bits per byte of the documents (see the module docstring); the metrics part of a result."""
    stride = check_window(window, stride, model.config.max_position_embeddings)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise MiniMindError(f"tokenizer {tokenizer.source} has neither a bos nor an eos token to start documents with")
    encoded = tokenizer.encode_batch(docs, plain_text=True)  # as pretraining encodes text
    rows = []  # (ids of one window, first scored index within it)
    for ids in encoded:
        ids = [start] + ids
        rows += [(ids[b:e], first - b) for b, e, first in windows(len(ids), window, stride)]
    rows.sort(key=lambda r: len(r[0]))  # similar lengths: less padding
    nats = sum(
        _nats(model, rows[i : i + batch_size], tokenizer.pad_token_id or 0) for i in range(0, len(rows), batch_size)
    )
    tokens = sum(len(ids) for ids in encoded)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    if tokens == 0:
        raise MiniMindError("the text encodes to no tokens")
    return {
        "metrics": {
            "perplexity": math.exp(nats / tokens),
            "bits_per_byte": nats / math.log(2) / nbytes,
            "tokens": tokens,
            "bytes": nbytes,
        },
        "primary": "bits_per_byte",
        "details": {
            "documents": len(docs),
            "window": window,
            "stride": stride,
            "forward_rows": len(rows),
            "nats": nats,
        },
    }
