"""Next-token log-likelihood with a hand-written backward: the one cross entropy of every
stage that trains on the model's own tokens (pretrain, SFT, LoRA, reasoning, DPO, VLM, GRPO,
PPO, and the model's own `forward(labels=...)`).

F.cross_entropy over [tokens, vocab] logits keeps the fp32 log-probabilities for backward,
then allocates a zero-filled [tokens, vocab] gradient for the picked entries and a second
[tokens, vocab] tensor for the softmax's backward. At the sizes of CPU pretraining (2,048
tokens x 6,400 entries a step, 52 MB each in fp32) those fresh allocations cost more than the
arithmetic: every page of them is faulted in and zeroed again each step. The gradient of one
token's loss is simply softmax(logits) - onehot(target), so the backward below writes it over
the saved log-probabilities, which nothing needs afterwards.

The labels are shifted, not the logits: slicing off the last position (`logits[:, :-1]`)
would copy the [B, L, vocab] logits forward and fill a zero gradient of their size backward.
Instead the last position gets the target IGNORE_INDEX.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # a target that counts nowhere (prompt tokens, padding, the last position)


def next_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log p(labels[:, t + 1] | logits[:, t]) at every position t: [B, L] in fp32, from logits
    [B, L, vocab] and labels [B, L]. Zero where the target is IGNORE_INDEX and at the last
    position (it has no next token). Equal to F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
    labels[:, 1:].flatten(), reduction="none") with a zero column appended, without its copies."""
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return _TokenNLL.apply(logits.flatten(0, 1), targets.flatten()).view(labels.shape)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed next-token cross entropy over the counted targets (see next_token_nll)."""
    return next_token_nll(logits, labels).sum()


class _TokenNLL(torch.autograd.Function):
    """-log softmax(logits)[target] of each row (0 on ignored rows); logits [N, vocab],
    targets [N].

    The backward overwrites the saved log-probabilities, so the graph can be walked back
    once (a second backward raises autograd's "modified by an inplace operation" error)."""

    @staticmethod
    def forward(ctx, logits, targets):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        counted = targets != IGNORE_INDEX
        index = targets.clamp(min=0)[:, None]  # ignored rows pick entry 0, then count 0
        nll = log_probs.gather(1, index).squeeze(1).mul_(counted).neg_()
        ctx.save_for_backward(log_probs, index, counted)
        ctx.logits_dtype = logits.dtype
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        log_probs, index, counted = ctx.saved_tensors
        grad = log_probs.exp_()  # softmax(logits), in place of the log-probabilities
        grad.scatter_add_(1, index, -counted[:, None].to(grad.dtype))  # minus one at each counted target
        grad.mul_((counted * grad_nll)[:, None])  # each row scaled by its own upstream gradient; ignored rows get 0
        return grad.to(ctx.logits_dtype), None
