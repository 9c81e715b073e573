"""Batches for the trainer: a shuffled, resumable, DDP-shardable walk over packed rows.

The order of rows in an epoch is a permutation drawn from (seed, epoch) alone, so any process
can recompute it: resuming is skipping `start` batches, and under DDP every rank computes the
same order and takes its own share of each global batch. Nothing about the walk is stored.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import MiniMindError


def epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of rows in an epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n_rows)


def batches_per_epoch(n_rows: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """How many batches iterate_batches yields per epoch (the same on every rank)."""
    global_batch = batch_size * world_size
    return n_rows // global_batch if drop_last else math.ceil(n_rows / global_batch)


def iterate_batches(
    ds,
    batch_size: int,
    seed: int,
    epoch: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
):
    """Yield the batches of one epoch as dicts of [B, L] LongTensors, from batch `start` on.

    Global batch g is the rows order[g * B * W:(g + 1) * B * W] (B = batch_size, W = world_size);
    rank r takes the r-th slice of B rows. So W ranks with batch B see, step by step, exactly
    the rows one process would see with batch B * W (or with batch B and W accumulation steps).
    `start` is how many batches of this epoch were already consumed: the batches from start=k
    are exactly the tail of the full epoch, which makes resuming exact.

    The last partial global batch: dropped when drop_last (the default, for training: the
    order changes every epoch, so different rows miss out each time). With drop_last=False
    (e.g. validation) a single process gets a smaller last batch; under DDP the last global
    batch is completed with rows from the start of the epoch's order, as torch's
    DistributedSampler does, so every rank gets a full batch.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise MiniMindError(f"bad batch layout: batch_size {batch_size}, rank {rank}, world_size {world_size}")
    n = len(ds)
    total = batches_per_epoch(n, batch_size, world_size, drop_last)
    if total == 0:
        raise MiniMindError(
            f"the data has {n} packed rows, fewer than one global batch of {batch_size * world_size} "
            f"(batch size {batch_size} x {world_size} processes); use a smaller batch or more data"
        )
    if not 0 <= start <= total:
        raise MiniMindError(f"cannot resume at batch {start}: the epoch has {total} batches")
    order = epoch_order(n, seed, epoch)
    global_batch = batch_size * world_size
    if world_size > 1 and not drop_last:
        order = np.resize(order, total * global_batch)  # wrap around to fill the last batch
    for g in range(start, total):
        first = g * global_batch + rank * batch_size
        rows = order[first : first + batch_size]
        yield ds.get_batch(rows)


def attention_mask_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] segment ids -> [B, 1, L, L] boolean mask (True = may attend).

    A token attends to earlier-or-same positions of its own segment (causal within a document,
    never across documents). Padding (segment -1) attends to itself only, which keeps softmax
    finite; its outputs are never used (its labels are -100).
    """
    L = segment_ids.shape[1]
    idx = torch.arange(L, device=segment_ids.device)
    causal = idx[None, :] <= idx[:, None]  # [L(query), L(key)]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, Lq, Lk]
    real = (segment_ids >= 0)[:, :, None]
    mask = (same & causal & real) | torch.eye(L, dtype=torch.bool, device=segment_ids.device)
    return mask[:, None]
