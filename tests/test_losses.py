"""The language-model loss with a hand-written backward (train/losses.py) against
F.cross_entropy on the shifted logits, the form it replaces."""

import pytest
import torch
import torch.nn.functional as F

from minimind.train.losses import next_token_loss_sum


def _reference(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_next_token_loss_sum_equals_cross_entropy_and_its_gradient(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 40, 50, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 50, (3, 40), generator=gen)
    labels[0, :7] = -100  # a prompt
    labels[2, 30:] = -100  # padding
    results = []
    for loss_sum in (next_token_loss_sum, _reference):
        leaf = logits.clone().requires_grad_()
        loss = loss_sum(leaf, labels)
        (loss * 0.37).backward()  # an upstream factor (the trainer divides by the token count)
        results.append((loss.detach(), leaf.grad))
    (loss, grad), (want_loss, want_grad) = results
    assert grad.dtype == dtype
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(grad, want_grad, rtol=0, atol=1e-6 if dtype == torch.float32 else 0)
    assert not grad[:, -1].any() and not grad[2, 29:].any()  # positions without a target get nothing


def test_a_batch_without_targets_gives_zero_loss_and_gradient():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = next_token_loss_sum(logits, torch.full((2, 5), -100))
    loss.backward()
    assert loss.item() == 0 and not logits.grad.any()


def test_a_second_backward_is_an_error_not_a_wrong_gradient():
    """The backward writes over the saved log-probabilities: walking the graph again must fail
    loudly (autograd's in-place check) rather than use them."""
    logits = torch.randn(2, 6, 11, requires_grad=True)
    loss = next_token_loss_sum(logits, torch.randint(0, 11, (2, 6)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
