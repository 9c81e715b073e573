"""The language-model loss with a hand-written backward.

F.cross_entropy over [tokens, vocab] logits keeps the fp32 log-probabilities for backward,
then allocates a zero-filled [tokens, vocab] gradient for the picked entries and a second
[tokens, vocab] tensor for the softmax's backward. At the sizes of CPU pretraining (2,048
tokens x 6,400 entries a step, 52 MB each in fp32) those fresh allocations cost more than the
arithmetic: every page of them is faulted in and zeroed again each step. The gradient of the
summed loss is simply softmax(logits) - onehot(target) on each counted row, so the backward
below writes it over the saved log-probabilities, which nothing needs afterwards.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100  # a target that counts nowhere (prompt tokens, padding, the last position)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross entropy of predicting labels[:, t + 1] from logits[:, t] ([B, L, vocab]
    and [B, L]), computed in fp32; labels of IGNORE_INDEX count nowhere. Equal to
    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
    reduction="sum"), without its copies."""
    # Shifting the labels, not slicing the logits, keeps the logits whole: the last position
    # gets the target IGNORE_INDEX instead of being cut off (which would copy the logits).
    targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return _CrossEntropySum.apply(logits.flatten(0, 1), targets.flatten())


class _CrossEntropySum(torch.autograd.Function):
    """sum over counted rows of -log softmax(logits)[target]; logits [N, vocab], targets [N].

    The backward overwrites the saved log-probabilities, so the graph can be walked back
    once (a second backward raises autograd's "modified by an inplace operation" error)."""

    @staticmethod
    def forward(ctx, logits, targets):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        counted = targets != IGNORE_INDEX
        index = targets.clamp(min=0)[:, None]  # ignored rows pick entry 0, then count 0
        loss = -(log_probs.gather(1, index).squeeze(1) * counted).sum()
        ctx.save_for_backward(log_probs, index, counted)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        log_probs, index, counted = ctx.saved_tensors
        grad = log_probs.exp_()  # softmax(logits), in place of the log-probabilities
        grad.scatter_add_(1, index, -counted[:, None].to(grad.dtype))  # minus one at each counted target
        grad.mul_((counted * grad_loss)[:, None])  # ignored rows get no gradient at all
        return grad.to(ctx.logits_dtype), None
