"""Continuous batching: sequences join a running batch while others are generating.

generate() batches prompts that all start together and runs until the last one ends. A
server gets requests at any time, so here the batch is a living thing:

    batch = RunningBatch(model)
    batch.add([Sequence(model, tokenizer, ids, params), ...])   # prefill, join the batch
    while batch.sequences:
        for seq in batch.step():          # one token for every row; finished rows leave
            print(seq.row.new_text(), end="")
        batch.add(newcomers)              # any time, between steps

How rows of different ages share one KV cache (the same trick generate() uses for prompts of
different lengths): every row's newest token sits in the last column, shorter rows are
left-padded, the padding is masked, and each row carries its own position ids, so a row
computes exactly what it would alone. When new rows join, the narrower side (running batch or
newcomers) is padded on the left; when rows leave, columns that only held padding are dropped.
"""

from __future__ import annotations

import torch

from .generate import SamplingParams, _prepare, _Row
from .sampling import process_logits


class Sequence:
    """One row of a running batch: a prompt, its own sampling settings and random generator,
    and the text bookkeeping of generate() (stop tokens, stop strings, UTF-8-safe streaming).

    frequency_penalty / presence_penalty are OpenAI's: subtract `frequency * count +
    presence * (count > 0)` from the logit of every token generated so far (not the prompt).
    Raises MiniMindError for a prompt the model cannot take (empty, too long, bad ids).
    """

    def __init__(self, model, tokenizer, prompt: list[int], params: SamplingParams,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0):
        self.prompt = [int(t) for t in prompt]
        self.params = params
        self.row: _Row = _prepare(model, tokenizer, [self.prompt], params, track_text=True)[0]
        self.frequency_penalty, self.presence_penalty = frequency_penalty, presence_penalty
        self.cancelled = False  # set from any thread; the batch drops the row before its next step
        device, vocab = model.lm_head.weight.device, model.config.vocab_size
        self.generator = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else int(torch.randint(2**62, ()).item())
            self.generator = torch.Generator(device=device).manual_seed(seed)
        self.counts = None  # generated-token counts, for the OpenAI penalties
        if frequency_penalty or presence_penalty:
            self.counts = torch.zeros(1, vocab, device=device)
        self.seen = None  # prompt + generated tokens, for the CTRL repetition penalty
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, self.prompt] = True

    @property
    def finished(self) -> bool:
        return self.row.finish_reason is not None

    @property
    def plain_greedy(self) -> bool:
        """Greedy with no penalty: its token is the row's argmax, taken for all such rows at once."""
        return self.params.temperature == 0 and self.counts is None and self.seen is None

    def sample(self, logits: torch.Tensor) -> int:
        """Pick this row's next token from its [1, vocab] logits (see sampling.sample_next)."""
        if self.counts is not None:
            logits = logits.float() - self.counts * self.frequency_penalty - (self.counts > 0) * self.presence_penalty
        p = self.params
        logits = process_logits(logits, self.seen, p.temperature, p.top_k, p.top_p, p.repetition_penalty)
        if p.temperature == 0:
            return int(logits.argmax())
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))

    def push(self, token: int) -> bool:
        """Record the sampled token; True when the sequence has finished."""
        if self.counts is not None:
            self.counts[0, token] += 1
        if self.seen is not None:
            self.seen[0, token] = True
        return self.row.push(token)


class GrowingCache:
    """A KV cache whose rows can be appended, dropped and left-trimmed.

    Same interface as model.KVCache (`update`, `length`, `reorder`), so the model uses it as
    is. Each layer's K/V is [B, K, capacity, D]; the live part is columns [start, start +
    length). `mask` [B, capacity] marks real tokens (0 = left padding); columns past the live
    part are pre-set to 1 because the tokens that will fill them are real.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], mask: torch.Tensor, length: int):
        self.k, self.v, self.mask = k, v, mask
        self.start, self.length = 0, length

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write new K/V [B, K, L, D] after the live part; return the live part including them."""
        end = self.start + self.length + k.shape[2]
        self.k[layer][:, :, end - k.shape[2]:end] = k
        self.v[layer][:, :, end - k.shape[2]:end] = v
        return self.k[layer][:, :, self.start:end], self.v[layer][:, :, self.start:end]

    def attention_mask(self, new: int) -> torch.Tensor:
        """The 2D padding mask for a forward pass that adds `new` tokens."""
        return self.mask[:, self.start:self.start + self.length + new]

    def padded(self) -> bool:
        return not bool(self.mask[:, self.start:self.start + self.length].all())

    def reserve(self, new: int) -> None:
        """Make room for `new` more columns, moving the live part to a larger buffer if needed
        (with headroom, so this copy happens once every many steps, not every step)."""
        if self.start + self.length + new <= self.capacity:
            return
        self._rebuild(self.length + new + max(64, self.length // 2))

    def _rebuild(self, capacity: int, width: int | None = None) -> None:
        """Copy the live part, right-aligned in `width` columns (left-padded), into new buffers."""
        width = self.length if width is None else width
        live = slice(self.start, self.start + self.length)
        dest = slice(width - self.length, width)
        B = self.mask.shape[0]

        def moved(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros(t.shape[0], t.shape[1], capacity, t.shape[3])
            out[:, :, dest] = t[:, :, live]
            return out

        self.k, self.v = [moved(t) for t in self.k], [moved(t) for t in self.v]
        mask = self.mask.new_ones(B, capacity)
        mask[:, :width - self.length] = 0
        mask[:, dest] = self.mask[:, live]
        self.mask, self.start, self.length = mask, 0, width

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep only the given rows, then drop leading columns that are padding in every row."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]
        self.mask = self.mask[rows]
        live = self.mask[:, self.start:self.start + self.length]
        first_real = int(live.any(0).int().argmax()) if live.numel() else 0
        self.start, self.length = self.start + first_real, self.length - first_real

    def extend(self, other: GrowingCache) -> None:
        """Append other's rows below ours. Both are first copied into the same layout: the
        live parts right-aligned in the wider one's width, the narrower side left-padded."""
        width = max(self.length, other.length)
        capacity = width + 64
        self._rebuild(capacity, width)
        other._rebuild(capacity, width)
        self.k = [torch.cat(p) for p in zip(self.k, other.k)]
        self.v = [torch.cat(p) for p in zip(self.v, other.v)]
        self.mask = torch.cat([self.mask, other.mask])


class RunningBatch:
    """The sequences currently generating, their shared cache and their next-token logits."""

    def __init__(self, model):
        self.model = model
        self.sequences: list[Sequence] = []
        self.cache: GrowingCache | None = None
        self.logits: torch.Tensor | None = None  # [B, vocab]: what the next step samples from
        self.positions: torch.Tensor | None = None  # [B, 1]: position id of each row's next token
        self.device = model.lm_head.weight.device

    @torch.inference_mode()
    def add(self, sequences: list[Sequence]) -> None:
        """Prefill the new sequences together (left-padded) and merge them into the batch."""
        if not sequences:
            return
        lengths = [len(s.prompt) for s in sequences]
        width = max(lengths)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        mask = torch.ones(len(sequences), width + 1, dtype=torch.long)  # + 1: room for a step
        for i, s in enumerate(sequences):
            ids[i, width - len(s.prompt):] = torch.as_tensor(s.prompt)
            mask[i, :width - len(s.prompt)] = 0
        ids, mask = ids.to(self.device), mask.to(self.device)
        kv = self.model.new_cache(len(sequences), width + 1)
        padded = min(lengths) < width
        out = self.model(ids, attention_mask=mask[:, :width] if padded else None, cache=kv, logits_to_keep=1)
        new = GrowingCache(kv.k, kv.v, mask, width)
        positions = torch.tensor(lengths, device=self.device)[:, None]
        if self.cache is None:
            self.cache, self.logits, self.positions = new, out.logits[:, -1], positions
        else:
            self.cache.extend(new)
            self.logits = torch.cat([self.logits, out.logits[:, -1]])
            self.positions = torch.cat([self.positions, positions])
        self.sequences += sequences

    def _keep(self, keep: list[int]) -> None:
        if len(keep) == len(self.sequences):
            return
        self.sequences = [self.sequences[i] for i in keep]
        if not keep:
            self.cache = self.logits = self.positions = None
            return
        idx = torch.tensor(keep, device=self.device)
        self.cache.reorder(idx)
        self.logits, self.positions = self.logits[idx], self.positions[idx]

    def drop_cancelled(self) -> list[Sequence]:
        """Remove rows whose `cancelled` flag is set (e.g. the client went away); return them."""
        gone = [s for s in self.sequences if s.cancelled]
        if gone:
            self._keep([i for i, s in enumerate(self.sequences) if not s.cancelled])
        return gone

    @torch.inference_mode()
    def step(self) -> list[Sequence]:
        """Sample one token for every row, let finished rows leave, and run the model once for
        the rest. Returns every sequence that got a token (finished ones included)."""
        if not self.sequences:
            return []
        greedy = self.logits.argmax(-1).tolist()  # the answer for plain greedy rows, in one op
        tokens = [greedy[i] if s.plain_greedy else s.sample(self.logits[i:i + 1])
                  for i, s in enumerate(self.sequences)]
        stepped = list(self.sequences)
        keep = [i for i, (s, t) in enumerate(zip(stepped, tokens)) if not s.push(t)]
        self._keep(keep)
        if keep:
            next_ids = torch.tensor([tokens[i] for i in keep], device=self.device)[:, None]
            self.cache.reserve(1)
            mask = self.cache.attention_mask(1) if self.cache.padded() else None
            out = self.model(next_ids, attention_mask=mask, position_ids=self.positions,
                             cache=self.cache, logits_to_keep=1)
            self.logits, self.positions = out.logits[:, -1], self.positions + 1
        return stepped
