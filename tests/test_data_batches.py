"""iterate_batches: seeded order, exact resume, and disjoint DDP shares of each global batch."""

import numpy as np
import pytest
import torch

from minimind.data import batches_per_epoch, iterate_batches
from minimind.data.cache import TokenizedFile
from minimind.data.packing import pack
from minimind.errors import MiniMindError


@pytest.fixture(scope="module")
def ds():
    """23 rows of 8 tokens; each row's first token is its row number + 1000 (easy to identify)."""
    ids = np.array([[1000 + i] + [i % 7 + 1] * 7 for i in range(23)], dtype=np.uint16).ravel()
    tf = TokenizedFile("mem", "pretrain", ids, None, np.arange(0, 24 * 8, 8), np.arange(23), None, {}, None, False)
    packed = pack([tf], [np.arange(23)], 8, "pretrain", 0, 0, {})
    assert len(packed) == 23
    return packed


def rows_of(batch):
    return batch["input_ids"][:, 0].tolist()


def epoch_rows(ds, **kw):
    return [rows_of(b) for b in iterate_batches(ds, **kw)]


def test_order_depends_on_seed_and_epoch_only(ds):
    a = epoch_rows(ds, batch_size=4, seed=1, epoch=0)
    assert a == epoch_rows(ds, batch_size=4, seed=1, epoch=0)
    assert a != epoch_rows(ds, batch_size=4, seed=1, epoch=1) and a != epoch_rows(ds, batch_size=4, seed=2, epoch=0)
    assert len(a) == 5 == batches_per_epoch(23, 4) and all(len(b) == 4 for b in a)  # 3 rows dropped
    assert len({r for b in a for r in b}) == 20
    b = next(iter(iterate_batches(ds, 4, 1, 0)))
    assert set(b) == {"input_ids", "labels", "position_ids", "segment_ids"}
    assert all(v.dtype == torch.long and v.shape == (4, 8) for v in b.values())


@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_resume_gives_the_tail_of_the_epoch(ds, start):
    full = list(iterate_batches(ds, 4, 7, 2))
    tail = list(iterate_batches(ds, 4, 7, 2, start=start))
    assert len(tail) == len(full) - start
    for a, b in zip(full[start:], tail):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_take_disjoint_shares_of_each_global_batch(ds, world_size):
    per_rank = [epoch_rows(ds, batch_size=2, seed=3, epoch=0, rank=r, world_size=world_size) for r in range(world_size)]
    single = epoch_rows(ds, batch_size=2 * world_size, seed=3, epoch=0)  # one process, the same global batch
    assert all(len(p) == len(single) == batches_per_epoch(23, 2, world_size) for p in per_rank)
    for step, global_rows in enumerate(single):
        shares = [per_rank[r][step] for r in range(world_size)]
        assert sum(shares, []) == global_rows  # disjoint, and together exactly the global batch
    # and resuming under DDP resumes each rank's own share
    assert epoch_rows(ds, batch_size=2, seed=3, epoch=0, start=2, rank=1, world_size=world_size) == per_rank[1][2:]


def test_keeping_the_last_partial_batch(ds):
    kept = epoch_rows(ds, batch_size=4, seed=0, epoch=0, drop_last=False)
    assert [len(b) for b in kept] == [4, 4, 4, 4, 4, 3] and sorted(sum(kept, [])) == list(range(1000, 1023))
    ddp = [epoch_rows(ds, batch_size=4, seed=0, epoch=0, rank=r, world_size=2, drop_last=False) for r in range(2)]
    assert [len(b) for b in ddp[0]] == [4, 4, 4] == [len(b) for b in ddp[1]]  # completed by wrapping around
    assert set(sum(ddp[0] + ddp[1], [])) == set(range(1000, 1023))


def test_clear_errors(ds):
    with pytest.raises(MiniMindError, match="fewer than one global batch"):
        list(iterate_batches(ds, 16, 0, 0, world_size=2))
    with pytest.raises(MiniMindError, match="cannot resume at batch 9"):
        list(iterate_batches(ds, 4, 0, 0, start=9))
    with pytest.raises(MiniMindError, match="bad batch layout"):
        list(iterate_batches(ds, 4, 0, 0, rank=2, world_size=2))
