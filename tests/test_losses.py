"""The language-model loss with a hand-written backward (model/losses.py) against
F.cross_entropy on the shifted logits, the form it replaces."""

import pytest
import torch
import torch.nn.functional as F

from minimind.model.losses import next_token_loss_sum, next_token_nll


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


def test_next_token_nll_per_position_and_its_gradient_under_per_token_weights():
    """The per-token form DPO, reasoning and GRPO use: each position's own upstream gradient
    (a token weight, a per-row sum) reaches its row of the logits."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 9, 13, generator=gen) * 2
    labels = torch.randint(0, 13, (2, 9), generator=gen)
    labels[1, :4] = -100
    weights = torch.rand(2, 9, generator=gen)
    ours_leaf, ref_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    nll = next_token_nll(ours_leaf, labels)
    want = F.cross_entropy(ref_leaf[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none").view(2, 8)
    assert nll.shape == (2, 9) and nll.dtype == torch.float32 and not nll[:, -1].any() and not nll[1, :3].any()
    torch.testing.assert_close(nll[:, :-1], want)
    (nll[:, :-1] * weights[:, :-1]).sum().backward()
    (want * weights[:, :-1]).sum().backward()
    torch.testing.assert_close(ours_leaf.grad, ref_leaf.grad)


def test_model_forward_labels_is_the_mean_cross_entropy():
    from minimind.config import preset
    from minimind.model import MiniMindForCausalLM

    model = MiniMindForCausalLM(preset("nano", vocab_size=40)).init_weights(0)
    torch.manual_seed(0)
    ids = torch.randint(0, 40, (2, 7))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    want = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, want)
    out.loss.backward()
    assert model.lm_head.weight.grad is not None
