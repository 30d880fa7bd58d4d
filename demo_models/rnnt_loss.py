"""A vectorised RNNT loss for CPU training, a drop-in for the loss function inside NeMo's `RNNTLoss`.

NeMo's CPU path of `warprnnt_numba` walks the T x U lattice cell by cell in Python (about 0.25 ms a cell),
which made the demo ASR's training loss-bound. This module computes the same negative log-likelihood with
one `logcumsumexp` over time per label position (U + 1 tensor ops per batch), and lets autograd take the
gradient. It is checked equal to NeMo's loss, value and gradient, in tests/test_rnnt_loss.py.

Per label position u the forward variable obeys
    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1]),
a first-order recurrence in the log semiring whose closed form is
    alpha[:, u] = A + logcumsumexp(b - A),   A = cumsum of blank[t-1, u] over t,   b = alpha[:, u-1] + emit[:, u-1].
"""

from __future__ import annotations

import torch


class VectorizedRNNTLoss(torch.nn.Module):
    """RNNT negative log-likelihood per utterance; same call signature as NeMo's `RNNTLossNumba`.

    FastEmit (`fastemit_lambda`) is applied as the numba loss applies it: the gradient that flows into label
    emissions is scaled by (1 + lambda) and the reported value is (1 + lambda) times the log-likelihood's negative.
    """

    def __init__(self, blank: int, fastemit_lambda: float = 0.0) -> None:
        super().__init__()
        self.blank = blank
        self.fastemit_lambda = fastemit_lambda
        self.reduction = None  # NeMo's RNNTLoss sets and restores this around each call

    def forward(self, acts: torch.Tensor, labels: torch.Tensor, act_lens: torch.Tensor,
                label_lens: torch.Tensor) -> torch.Tensor:
        """acts: [B, T, U + 1, V] joint logits; labels: [B, U]; returns [B] losses."""
        log_probs = torch.log_softmax(acts.float(), dim=-1).double()
        batch, t_max, u1, _ = log_probs.shape
        blank = log_probs[..., self.blank]  # [B, T, U+1]
        idx = labels.long().clamp(0, log_probs.shape[-1] - 1)[:, None, :, None].expand(batch, t_max, u1 - 1, 1)
        emit = log_probs[:, :, : u1 - 1].gather(-1, idx).squeeze(-1)  # [B, T, U]
        if self.fastemit_lambda:
            emit = emit * (1.0 + self.fastemit_lambda) - emit.detach() * self.fastemit_lambda
        # A[t, u] = sum of blank[k-1, u] for k = 1..t (A[0] = 0): the cost of staying on row u up to frame t.
        stay = torch.cat([blank.new_zeros(batch, 1, u1), blank[:, :-1]], dim=1).cumsum(dim=1)
        column = stay[:, :, 0]
        alphas = [column]
        for u in range(1, u1):
            entry = column + emit[:, :, u - 1]
            column = stay[:, :, u] + torch.logcumsumexp(entry - stay[:, :, u], dim=1)
            alphas.append(column)
        alpha = torch.stack(alphas, dim=2)  # [B, T, U+1]
        rows = torch.arange(batch, device=acts.device)
        t_last = act_lens.long() - 1
        u_last = label_lens.long()
        log_likelihood = alpha[rows, t_last, u_last] + blank[rows, t_last, u_last]
        nll = -log_likelihood
        if self.fastemit_lambda:
            nll = nll + self.fastemit_lambda * nll.detach()
        return nll.to(acts.dtype)


def install(model: torch.nn.Module) -> None:
    """Swap the loss function inside a NeMo RNNT model's `RNNTLoss` for this one (a joint that fuses the loss
    holds the same `RNNTLoss` object, so it sees the swap too)."""
    loss = model.loss
    fastemit = float(getattr(loss._loss, "fastemit_lambda", 0.0) or 0.0)
    loss._loss = VectorizedRNNTLoss(blank=loss._blank, fastemit_lambda=fastemit)
    loss._force_float32 = True
