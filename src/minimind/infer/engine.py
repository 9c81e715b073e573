"""The generation engine: every caller that turns prompts into tokens goes through it.

generate() and stream() (the REPL, eval, generate-data, the trainer's samples) and the
server's continuous batching all drive one Engine, a batch of sequences that lives across
steps:

    engine = Engine(model)
    engine.add([Sequence(model, tokenizer, ids, params), ...])   # prefill, join the batch
    while engine.sequences:
        for seq in engine.step():         # one token for every row; finished rows leave
            print(seq.new_text(), end="")
        engine.add(newcomers)             # any time, between steps

How rows of different lengths and ages share one KV cache: every row's newest token sits in
the cache's last live column, shorter rows are left-padded, the padding is masked, and each row
carries its own position ids, so a row computes exactly what it would alone. Newcomers are
prefilled together and merged in (the narrower side is padded on the left); a row that
finishes leaves the batch at once, so the rest run faster (MiniMind keeps computing finished
rows until the last one ends), and columns that only held its padding are dropped.

A conversation that goes on after a reply (agentic rollouts: the reply, a tool's answer, the
next reply) need not read its whole history again: a Sequence made with keep_kv leaves its
keys and values in `seq.kv` when it finishes, and the next turn's Sequence, given them as
`past`, is prefilled from where they end. Many prompts that begin alike (one system prompt,
G samples of one question) can share one `past` made by `read`; `shared_prefixes` finds such
groups among many prompts and reads each group's prefix once.
"""

from __future__ import annotations

from os.path import commonprefix  # works on any sequences, token lists too

import torch

from ..model.cache import RowKV
from .compiled import compile_decode, compiled_decoder
from .sampling import BatchSampling
from .sequence import Sequence, TokenLogprob

# Prompts share a past (shared_prefixes) only when they begin with at least this many equal
# tokens: below it, the extra forward pass would cost more than it saves.
MIN_SHARED_PREFIX = 32

# Cache columns reserved past the prompts when a caller does not say how long it will run:
# enough for most replies, and the cache grows on demand past it (a copy every 64+ steps).
DEFAULT_ROOM = 256


class Engine:
    """The sequences currently generating, their shared KV cache and next-token logits, and
    the penalty state of each row (prompt + generated tokens; generated-token counts)."""

    def __init__(self, model, compile: bool = False):
        """compile: run one-row decode steps through torch.compile (infer/compiled.py): faster
        after a first step that compiles; the model's weights must not change afterwards. Also
        on for every model given to compile_decode."""
        self.model = model
        self.decoder = compile_decode(model) if compile else compiled_decoder(model)
        self.device = next(model.parameters()).device
        self.vocab = model.config.vocab_size
        self.sequences: list[Sequence] = []
        self.cache = None
        self.logits: torch.Tensor | None = None  # [B, vocab]: what the next step samples from
        self.positions: torch.Tensor | None = None  # [B, 1]: position id of each row's next token
        self.seen: torch.Tensor | None = None  # [B, vocab] bool: prompt + generated tokens
        self.counts: torch.Tensor | None = None  # [B, vocab]: generated tokens (OpenAI penalties)
        self._sampling: BatchSampling | None = None  # rebuilt when rows join or leave

    @torch.inference_mode()
    def add(self, sequences: list[Sequence], room: int | None = None) -> None:
        """Prefill the new sequences together (left-padded) and merge them into the batch.

        room: cache columns to allocate past the prompts (default: the longest one's limit, at
        most DEFAULT_ROOM); the cache grows when rows need more.
        """
        if not sequences:
            return
        # A newcomer with a past (a KV prefix kept from its previous turn) reads only the rest
        # of its prompt. Layout of the new rows: pasts right-aligned in the first `width_past`
        # columns, the tokens to read right-aligned after them, padding masked in between.
        lengths = [len(s.prompt) for s in sequences]
        pasts = [s.past.length if s.past is not None else 0 for s in sequences]
        width_past = max(pasts)
        width = max(n - p for n, p in zip(lengths, pasts))  # tokens read by this prefill
        if room is None:
            room = min(max(s.limit for s in sequences), DEFAULT_ROOM)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        mask = torch.zeros(len(sequences), width_past + width, dtype=torch.long)
        for i, (s, past) in enumerate(zip(sequences, pasts)):
            new = len(s.prompt) - past
            ids[i, width - new :] = torch.as_tensor(s.prompt[past:])
            mask[i, width_past - past : width_past] = 1
            mask[i, width_past + width - new :] = 1
        ids = ids.to(self.device)
        cache = self.model.new_cache(len(sequences), width_past + width + room)
        cache.set_padding(mask.to(self.device))
        if width_past:
            cache.load_past([s.past for s in sequences], width_past)
            for s in sequences:
                s.past = None  # read: let its memory go
        # A vision-language model's images enter at prefill, all newcomers' in row order; a text
        # model never sees the argument.
        images = [s.images for s in sequences if s.images is not None]
        extra = {"pixel_values": torch.cat(images).to(self.device)} if images else {}
        # Position ids follow from the mask: each row counts its own real tokens, past included.
        out = self.model(ids, attention_mask=cache.attention_mask(width), cache=cache, logits_to_keep=1, **extra)
        positions = torch.tensor(lengths, device=self.device)[:, None]
        seen, counts = self._penalty_state(sequences)
        if self.cache is None:
            self.cache, self.logits, self.positions = cache, out.logits[:, -1], positions
            self.seen, self.counts = seen, counts
        else:
            self.cache.extend(cache)
            self.logits = torch.cat([self.logits, out.logits[:, -1]])
            self.positions = torch.cat([self.positions, positions])
            self.seen = self._stack(self.seen, seen, torch.bool, len(sequences))
            self.counts = self._stack(self.counts, counts, torch.float32, len(sequences))
        self.sequences += sequences
        self._sampling = None

    @torch.inference_mode()
    def read(self, tokens: list[int]) -> RowKV:
        """The keys and values of `tokens`, read in one forward pass (nothing is generated and
        the batch is untouched): a `past` that every sequence beginning with these tokens can
        share, so a prefix common to many prompts is read once."""
        cache = self.model.new_cache(1, len(tokens))
        self.model(torch.tensor([tokens], device=self.device), cache=cache, logits_to_keep=1)
        return cache.row(0)

    def shared_prefixes(self, prompts: list[list[int]]) -> list[RowKV | None]:
        """A past for each prompt: the KV of the longest prefix it shares with its group, read
        once per group (G samples of one question, one system prompt and tool list). Groups:
        runs of the sorted prompts whose common prefix is at least MIN_SHARED_PREFIX tokens (it
        always leaves each prompt at least one token to read)."""
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        groups: list[tuple[list[int], int]] = []  # (members, common prefix length)
        for i in order:
            if groups:
                members, common = groups[-1]
                n = min(len(commonprefix([prompts[members[0]][:common], prompts[i]])), len(prompts[i]) - 1)
                if n >= MIN_SHARED_PREFIX:
                    groups[-1] = (members + [i], n)
                    continue
            groups.append(([i], len(prompts[i]) - 1))
        pasts: list[RowKV | None] = [None] * len(prompts)
        for members, common in groups:
            if len(members) > 1:
                past = self.read(prompts[members[0]][:common])
                for i in members:
                    pasts[i] = past
        return pasts

    def _penalty_state(self, sequences):
        """The newcomers' `seen` (their prompts) and `counts` (zeros), when any row needs them."""
        seen = counts = None
        if any(s.params.repetition_penalty != 1.0 for s in sequences):
            seen = torch.zeros(len(sequences), self.vocab, dtype=torch.bool, device=self.device)
            for i, s in enumerate(sequences):
                seen[i, torch.as_tensor(s.prompt, device=self.device)] = True
        if any(s.params.frequency_penalty or s.params.presence_penalty for s in sequences):
            counts = torch.zeros(len(sequences), self.vocab, device=self.device)
        return seen, counts

    def _stack(self, ours, theirs, dtype, n_new):
        """Rows of penalty state for the merged batch: zeros for the side that had none."""
        if ours is None and theirs is None:
            return None
        if ours is None:
            ours = torch.zeros(len(self.sequences), self.vocab, dtype=dtype, device=self.device)
        if theirs is None:
            theirs = torch.zeros(n_new, self.vocab, dtype=dtype, device=self.device)
        return torch.cat([ours, theirs])

    def _keep(self, keep: list[int]) -> None:
        """Let every row not in `keep` leave the batch and the cache."""
        if len(keep) == len(self.sequences):
            return
        self.sequences = [self.sequences[i] for i in keep]
        self._sampling = None
        if not keep:
            self.cache = self.logits = self.positions = self.seen = self.counts = None
            return
        idx = torch.tensor(keep, device=self.device)
        self.cache.keep_rows(idx)
        self.logits, self.positions = self.logits[idx], self.positions[idx]
        self.seen = self.seen[idx] if self.seen is not None else None
        self.counts = self.counts[idx] if self.counts is not None else None

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
        if self._sampling is None:
            self._sampling = BatchSampling(
                [s.params for s in self.sequences], [s.generator for s in self.sequences], self.device
            )
        tokens = self._sampling.choose(self.logits, self.seen, self.counts)
        chosen = tokens.tolist()
        if self._sampling.any_logprobs:
            self._record_logprobs(tokens, chosen)
        if self.seen is not None or self.counts is not None:
            real = tokens.clamp(min=0)[:, None]  # a failed row (-1) leaves the batch anyway
            if self.seen is not None:
                self.seen.scatter_(1, real, True)
            if self.counts is not None:
                self.counts.scatter_add_(1, real, torch.ones_like(real, dtype=self.counts.dtype))
        stepped = list(self.sequences)
        keep = []
        for i, (s, token) in enumerate(zip(stepped, chosen)):
            if token < 0:
                p = s.params
                s.fail(
                    f"sampling failed: the probabilities are not finite (temperature {p.temperature}, "
                    f"repetition_penalty {p.repetition_penalty})"
                )
            elif not s.push(token):
                keep.append(i)
            elif s.keep_kv:
                s.kv = self.cache.row(i)
        self._keep(keep)
        if keep:
            next_ids = tokens if len(keep) == len(stepped) else tokens[torch.tensor(keep, device=self.device)]
            self.cache.reserve(1)
            if self.decoder is not None and len(keep) == 1:
                self.logits = self.decoder.step(next_ids[:, None], self.positions, self.cache)
            else:
                out = self.model(
                    next_ids[:, None],
                    attention_mask=self.cache.attention_mask(1),
                    position_ids=self.positions,
                    cache=self.cache,
                    logits_to_keep=1,
                )
                self.logits = out.logits[:, -1]
            self.positions = self.positions + 1
        return stepped

    def _record_logprobs(self, tokens: torch.Tensor, chosen: list[int]) -> None:
        """Append each sampled token's log-probability (and the best alternatives) to the rows
        that asked for them: the model's own distribution, before penalties and temperature."""
        rows = [i for i, s in enumerate(self.sequences) if s.logprobs is not None and chosen[i] >= 0]
        if not rows:
            return
        idx = torch.tensor(rows, device=self.device)
        logprobs = self.logits[idx].float().log_softmax(dim=-1)
        picked = logprobs.gather(1, tokens[idx][:, None]).squeeze(1).tolist()
        n_top = max(self.sequences[i].params.top_logprobs for i in rows)
        if n_top:
            top_values, top_ids = logprobs.topk(min(n_top, self.vocab), dim=-1)
            top_values, top_ids = top_values.tolist(), top_ids.tolist()
        for j, i in enumerate(rows):
            s = self.sequences[i]
            n = s.params.top_logprobs
            top = list(zip(top_ids[j][:n], top_values[j][:n])) if n else []
            s.logprobs.append(TokenLogprob(chosen[i], picked[j], top))
