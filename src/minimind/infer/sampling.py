"""Turning the model's last-position logits into the next token, for a whole batch at once.

Every function takes a [B, vocab] tensor and works on all rows together (no Python loop over
rows; MiniMind applies its repetition penalty row by row). Each setting is one number for the
whole batch or a tensor with one value per row ([B, 1]; top-k: [B]), so rows with different
settings (a server's requests) are processed in one go. The order is the one transformers
uses:

    repetition penalty -> temperature -> top-k -> top-p -> sample (or argmax when greedy)

Penalty and temperature are both positive rescalings, so their order does not matter;
top-k and top-p only ever remove tokens, so the greedy choice is the argmax after the penalty.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """Make tokens that already occurred less likely (CTRL, as MiniMind and transformers do).

    For every token marked in `seen` [B, vocab] (prompt and generated tokens alike), a positive
    logit is divided by `penalty` and a negative one multiplied by it: both move the logit
    down when penalty > 1 (dividing a negative logit would move it *up*).
    """
    if not isinstance(penalty, torch.Tensor) and penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (k = 0: keep all).
    `k` may be a [B] tensor of per-row values."""
    vocab = logits.shape[-1]
    if not isinstance(k, torch.Tensor):
        if k <= 0 or k >= vocab:
            return logits
        kth = logits.topk(k, dim=-1).values[:, -1:]  # [B, 1], the k-th largest value
        return logits.masked_fill(logits < kth, float("-inf"))
    off = (k <= 0) | (k >= vocab)  # rows that keep everything
    k_max = int(k.masked_fill(off, 1).max())
    top = logits.topk(k_max, dim=-1).values  # [B, k_max], best first
    kth = top.gather(1, (k.masked_fill(off, 1) - 1)[:, None])  # each row's own k-th largest
    kth = kth.masked_fill(off[:, None], float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probabilities add up to >= p.

    Sort each row by probability, and drop a token when the tokens ranked above it already
    reach p. The top token is always kept, so even a tiny p leaves one candidate (= greedy).
    `p` may be a [B, 1] tensor; rows with p >= 1 keep everything.
    """
    if isinstance(p, torch.Tensor):
        p = p.masked_fill(p >= 1.0, float("inf"))  # p = 1 must keep all, even past rounding
    elif p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # probability of all better-ranked tokens
    remove_sorted = mass_above >= p
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


class BatchSampling:
    """The sampling settings of every row of a batch, and which rows draw from which random
    generator. Built once per batch composition (rows joining or leaving); `choose` then picks
    all rows' next tokens in a handful of tensor ops.

    `params` are SamplingParams (one per row); `generators` are the rows' torch.Generators
    (None for greedy rows). Rows that share one generator object draw together, in batch
    order (generate() gives one generator to all rows of a call); any other row draws alone.
    When every row has the same settings (one generate() call) each setting stays one number;
    otherwise it becomes a per-row tensor.
    """

    def __init__(self, params: list, generators: list, device: torch.device):
        first = params[0]
        self.uniform = all(p == first for p in params)
        greedy = [p.temperature == 0 for p in params]
        self.all_plain_greedy = all(greedy) and not any(p.penalised for p in params)
        self.any_greedy = any(greedy)
        self.any_top_k = any(p.top_k > 0 and not g for p, g in zip(params, greedy))
        self.any_top_p = any(p.top_p < 1.0 and not g for p, g in zip(params, greedy))
        self.any_repetition = any(p.repetition_penalty != 1.0 for p in params)
        self.any_openai = any(p.frequency_penalty or p.presence_penalty for p in params)
        self.any_logprobs = any(p.logprobs or p.top_logprobs for p in params)

        def setting(values, dtype=torch.float32):
            """One number for a uniform batch, else a [B, 1] tensor."""
            if self.uniform:
                return values[0]
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        self.temperature = setting([p.temperature if p.temperature > 0 else 1.0 for p in params])
        self.top_p = setting([p.top_p for p in params])
        self.repetition = setting([p.repetition_penalty for p in params])
        self.frequency = setting([p.frequency_penalty for p in params])
        self.presence = setting([p.presence_penalty for p in params])
        self.top_k = first.top_k if self.uniform else torch.tensor([p.top_k for p in params], device=device)
        self.sampled = None if self.uniform else torch.tensor([not g for g in greedy], device=device)
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(generators):
            if not greedy[i]:
                groups.setdefault(id(g), []).append(i)
        n = len(params)
        self.groups = [
            (generators[rows[0]], None if len(rows) == n else torch.tensor(rows, device=device))
            for rows in groups.values()
        ]

    def penalise(self, logits: torch.Tensor, seen: torch.Tensor | None, counts: torch.Tensor | None) -> torch.Tensor:
        """The logits after the penalties (float32): OpenAI's frequency/presence penalties on
        generated-token `counts`, then the CTRL repetition penalty on `seen` tokens."""
        logits = logits.float()  # bf16 has 8 bits of mantissa: too coarse for top-p's cumulative sum
        if counts is not None and self.any_openai:
            logits = logits - counts * self.frequency - (counts > 0) * self.presence
        if seen is not None and self.any_repetition:
            logits = apply_repetition_penalty(logits, seen, self.repetition)
        return logits

    def choose(
        self, logits: torch.Tensor, seen: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[B, vocab] logits -> [B] next token ids; -1 for a row whose distribution is broken
        (not finite, e.g. from an extreme temperature), so that row alone can be failed.

        Greedy rows take the argmax after the penalties (top-k and top-p only ever remove
        tokens, and temperature is a positive rescaling, so none of them changes it). Other rows
        go through temperature, top-k, top-p and a draw from their own generator.
        """
        if self.all_plain_greedy:
            return logits.argmax(dim=-1)
        logits = self.penalise(logits, seen, counts)
        tokens = logits.argmax(dim=-1) if self.any_greedy else torch.empty_like(logits[:, 0], dtype=torch.long)
        if not self.groups:
            return tokens
        hot = logits / self.temperature
        if self.any_top_k:
            hot = apply_top_k(hot, self.top_k)
        if self.any_top_p:
            hot = apply_top_p(hot, self.top_p)
        # A row whose best logit is not finite (NaN, +inf, or every token filtered) has no
        # distribution; it draws from a stand-in (uniform) and is marked -1 afterwards. On a GPU
        # multinomial would not raise for it but fail the whole process.
        broken = ~torch.isfinite(hot.amax(dim=-1))
        if self.sampled is not None:  # greedy rows beside sampled ones: only sampled rows can break
            broken &= self.sampled
        probs = hot.masked_fill(broken[:, None], 0.0).softmax(dim=-1)
        for generator, rows in self.groups:
            if rows is None:  # one generator for the whole batch: one draw for all rows
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                tokens[rows] = torch.multinomial(probs[rows], 1, generator=generator).squeeze(1)
        return tokens.masked_fill(broken, -1)
