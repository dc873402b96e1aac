"""The training loss: one log-softmax serves the label-smoothed loss and the token counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossattn.training.losses import _token_counts, _token_losses


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_loss_from_one_log_softmax_is_pytorchs_cross_entropy(eps):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0  # padding
    target[2, 1:] = 0
    nll, uniform, correct, valid = _token_losses(logits.log_softmax(-1), logits, target)
    want = F.cross_entropy(
        logits.transpose(1, 2), target, ignore_index=0, label_smoothing=eps, reduction="sum"
    )
    torch.testing.assert_close((1 - eps) * nll + eps * uniform, want, rtol=1e-12, atol=1e-12)
    assert valid.tolist() == (target != 0).tolist()
    assert int(correct) == int(((logits.argmax(-1) == target) & (target != 0)).sum())
    counted_nll, counted_correct, _ = _token_counts(logits, target)
    torch.testing.assert_close(counted_nll, nll)
    assert int(counted_correct) == int(correct)


def test_padding_poisoned_with_nan_logits_does_not_leak():
    logits = torch.randn(2, 4, 7, dtype=torch.float64)
    target = torch.tensor([[1, 2, 0, 0], [3, 4, 5, 6]])
    logits[0, 2:] = float("nan")  # positions that are padding
    nll, uniform, _, _ = _token_losses(logits.log_softmax(-1), logits, target)
    assert torch.isfinite(nll) and torch.isfinite(uniform)
