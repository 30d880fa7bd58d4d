"""The demo training's vectorised RNNT loss equals NeMo's `warprnnt_numba` loss: value and gradient."""

from __future__ import annotations

import pytest
import torch

from demo_models.rnnt_loss import VectorizedRNNTLoss, install


@pytest.mark.parametrize("fastemit", [0.0, 0.005])
@torch.enable_grad()  # other tests in the session may have switched autograd off globally
def test_equals_nemo_numba_loss(fastemit: float) -> None:
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    gen = torch.Generator().manual_seed(0)
    batch, frames, labels_max, vocab = 4, 13, 6, 9
    acts = torch.randn(batch, frames, labels_max + 1, vocab, generator=gen, requires_grad=True)
    labels = torch.randint(0, vocab - 1, (batch, labels_max), generator=gen)
    act_lens = torch.tensor([13, 9, 6, 1])
    label_lens = torch.tensor([6, 3, 0, 1])
    nemo = RNNTLoss(num_classes=vocab - 1, reduction=None, loss_name="warprnnt_numba",
                    loss_kwargs={"fastemit_lambda": fastemit})
    expected = nemo(log_probs=acts, targets=labels, input_lengths=act_lens, target_lengths=label_lens)
    (expected_grad,) = torch.autograd.grad(expected.sum(), acts)
    got = VectorizedRNNTLoss(blank=vocab - 1, fastemit_lambda=fastemit)(acts, labels, act_lens, label_lens)
    (got_grad,) = torch.autograd.grad(got.sum(), acts)
    err, grad_err = (got - expected).abs().max().item(), (got_grad - expected_grad).abs().max().item()
    print(f"rnnt loss vs NeMo numba (fastemit {fastemit}): value {err:.2e}, grad {grad_err:.2e}")
    assert torch.isfinite(got).all() and expected.min() > 1.0
    assert err < 1e-4 and grad_err < 5e-5


def test_install_swaps_the_function_inside_nemo_rnnt_loss() -> None:
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    model = torch.nn.Module()
    model.loss = RNNTLoss(num_classes=4, reduction="mean_batch", loss_kwargs={"fastemit_lambda": 0.01})
    install(model)
    assert isinstance(model.loss._loss, VectorizedRNNTLoss)
    assert model.loss._loss.blank == 4 and model.loss._loss.fastemit_lambda == 0.01
    acts = torch.randn(2, 5, 3, 5)
    loss = model.loss(log_probs=acts, targets=torch.tensor([[0, 1], [2, 0]]), input_lengths=torch.tensor([5, 4]),
                      target_lengths=torch.tensor([2, 1]))
    assert loss.ndim == 0 and loss.item() > 0
