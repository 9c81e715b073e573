"""The KV cache: keys and values of every position generated so far, for every layer.

One class serves every caller, from a single `model(ids, cache=...)` call to the generation
engine's running batch, where rows join and leave between steps:

    cache = model.new_cache(batch_size=2, capacity=64)
    model(prompt_ids, attention_mask=padding, cache=cache)     # prefill
    model(next_ids, attention_mask=cache.attention_mask(1), cache=cache)  # one decode step

Layout: each layer's K/V is [B, K, capacity, D]. The live part is the columns
[start, start + length); each step writes its new column in place (MiniMind grows its cache
with torch.cat, copying all of it every token). Rows of different lengths share the buffers by
left padding: every row's newest token sits in the same column, and `mask` [B, capacity]
marks which columns hold real tokens (0 = padding). Columns past the live part are pre-set
to 1, because the tokens that will fill them are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RowKV:
    """One sequence's keys and values, taken out of a batch: per layer [K, length, D], its real
    tokens only (no padding), in order. A sequence that goes on (the next turn of a
    conversation) hands it to the engine as `past`, so only its new tokens are prefilled."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


class KVCache:
    """Preallocated keys and values; rows can be dropped (`keep_rows`) or appended (`extend`),
    and the buffers grow on demand (`reserve`)."""

    def __init__(
        self, num_layers: int, batch_size: int, kv_heads: int, head_dim: int, capacity: int, device=None, dtype=None
    ):
        shape = (batch_size, kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.mask = torch.ones(batch_size, capacity, dtype=torch.long, device=device)
        self.start = 0  # first live column (columns before it only held padding of rows now gone)
        self.length = 0  # live columns: what the model attends to, and its `past` length
        self._padded: bool | None = False  # any padding from `start` on? None = not known yet

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write new K/V [B, K, L, D] after the live part; return the live part including them.

        The model calls this once per layer; it advances `length` itself after the last layer.
        """
        new = k.shape[2]
        end = self.start + self.length + new
        if end > self.capacity:
            raise ValueError(
                f"KV cache is full: {self.length + new} positions needed, "
                f"{self.capacity - self.start} allocated (call reserve first)"
            )
        self.k[layer][:, :, end - new : end] = k
        self.v[layer][:, :, end - new : end] = v
        return self.k[layer][:, :, self.start : end], self.v[layer][:, :, self.start : end]

    def row(self, i: int) -> RowKV:
        """Row i's keys and values (its real columns only), copied out of the batch."""
        live = slice(self.start, self.start + self.length)
        real = self.mask[i, live].bool()
        return RowKV([k[i, :, live][:, real] for k in self.k], [v[i, :, live][:, real] for v in self.v])

    def load_past(self, pasts: list[RowKV | None], width: int) -> None:
        """Before a prefill: put each row's past right-aligned in the first `width` columns (a
        row without one gets none) and make them the live part. The padding mask of these
        columns is the caller's (set_padding)."""
        if self.start or self.length:
            raise ValueError("load_past is for a new, empty cache")
        for i, past in enumerate(pasts):
            if past is not None:
                for layer, (k, v) in enumerate(zip(past.k, past.v)):
                    self.k[layer][i, :, width - past.length : width] = k
                    self.v[layer][i, :, width - past.length : width] = v
        self.length = width

    def set_padding(self, mask: torch.Tensor) -> None:
        """Mark the first mask.shape[1] columns with a prompt's padding mask (1 = real token);
        call before the prefill."""
        self.mask[:, self.start : self.start + mask.shape[1]] = mask
        self._padded = None

    def attention_mask(self, new: int) -> torch.Tensor | None:
        """The [B, length + new] padding mask for a forward pass that adds `new` tokens, or None
        when none of those columns is padding (the model then needs no mask: faster)."""
        if self._padded is None:  # known again after each change of rows: no check (and GPU sync) per step
            self._padded = not bool(self.mask[:, self.start :].all())
        return self.mask[:, self.start : self.start + self.length + new] if self._padded else None

    def reserve(self, new: int, headroom: int = 64) -> None:
        """Make room for `new` more columns. When the buffers are full, the live part moves to
        larger ones, with headroom so that the copy happens once every many steps."""
        if self.start + self.length + new <= self.capacity:
            return
        self._rebuild(self.length + new + max(headroom, self.length // 2))

    def resize(self, capacity: int) -> None:
        """Move the live part into buffers of exactly `capacity` columns (starting at column 0)."""
        if capacity < self.length:
            raise ValueError(f"cannot resize a KV cache holding {self.length} positions to {capacity}")
        self._rebuild(capacity)

    def _rebuild(self, capacity: int, width: int | None = None) -> None:
        """Copy the live part, right-aligned in `width` columns (left-padded), into new buffers."""
        width = self.length if width is None else width
        live = slice(self.start, self.start + self.length)
        dest = slice(width - self.length, width)

        def moved(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(t.shape[0], t.shape[1], capacity, t.shape[3])
            out[:, :, dest] = t[:, :, live]
            return out

        self.k, self.v = [moved(t) for t in self.k], [moved(t) for t in self.v]
        mask = self.mask.new_ones(self.batch_size, capacity)
        mask[:, : width - self.length] = 0
        mask[:, dest] = self.mask[:, live]
        self.mask, self.start, self.length = mask, 0, width
        self._padded = None

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences), then drop leading
        columns that are padding in every remaining row."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.mask = self.mask[rows]
        live = self.mask[:, self.start : self.start + self.length]
        first_real = int(live.any(0).int().argmax()) if live.numel() else 0
        self.start, self.length = self.start + first_real, self.length - first_real
        self._padded = None

    def extend(self, other: KVCache, headroom: int = 64) -> None:
        """Append other's rows below ours. Both are first copied into one layout: the live
        parts right-aligned in the wider one's width, the narrower side left-padded."""
        width = max(self.length, other.length)
        capacity = width + max(headroom, self.capacity - self.start - self.length)
        self._rebuild(capacity, width)
        other._rebuild(capacity, width)
        self.k = [torch.cat(p) for p in zip(self.k, other.k)]
        self.v = [torch.cat(p) for p in zip(self.v, other.v)]
        self.mask = torch.cat([self.mask, other.mask])
        self._padded = None
