"""Turning the model's last-position logits into the next token, for a whole batch at once.

Every function takes a [B, vocab] tensor and works on all rows together (no Python loop over
rows; MiniMind applies its repetition penalty row by row). The order is the one transformers
uses:

    repetition penalty -> temperature -> top-k -> top-p -> sample (or argmax when greedy)

Penalty and temperature are both positive rescalings, so their order does not matter;
top-k and top-p only ever remove tokens, so the greedy choice is the argmax after the penalty.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens that already occurred less likely (CTRL, as MiniMind and transformers do).

    For every token marked in `seen` [B, vocab] (prompt and generated tokens alike), a positive
    logit is divided by `penalty` and a negative one multiplied by it: both move the logit
    down when penalty > 1 (dividing a negative logit would move it *up*).
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf (k = 0: keep all)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[:, -1:]  # [B, 1], the k-th largest value
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probabilities add up to >= p.

    Sort each row by probability, and drop a token when the tokens ranked above it already
    reach p. The top token is always kept, so even a tiny p leaves one candidate (= greedy).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs  # probability of all better-ranked tokens
    remove_sorted = mass_above >= p
    remove_sorted[:, 0] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, temperature: float,
                   top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Apply penalty, temperature, top-k and top-p; return float32 logits ready for softmax.

    Done in float32 whatever the model's dtype: bf16 has only 8 bits of mantissa, too coarse
    for a cumulative sum over 6400 probabilities.
    """
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature > 0:
        logits = logits / temperature
        logits = apply_top_k(logits, top_k)
        logits = apply_top_p(logits, top_p)
    return logits


def sample_next(logits: torch.Tensor, seen: torch.Tensor | None, params, generator: torch.Generator | None) -> torch.Tensor:
    """Choose one next token per row: [B, vocab] logits -> [B] token ids.

    `params` is a SamplingParams. temperature 0 means greedy (argmax, no randomness used);
    otherwise `torch.multinomial` draws from the filtered distribution with `generator`, so
    the same seed gives the same tokens whatever else touched the global RNG.
    """
    logits = process_logits(logits, seen, params.temperature, params.top_k, params.top_p,
                            params.repetition_penalty)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
