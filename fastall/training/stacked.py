"""The head's arithmetic for M heads at once, written by hand: a training step's forward and backward, the
forward alone (probabilities), and the class-weighted cross-entropy.

The head is :class:`~fastall.head.Head`: ``x -> relu(x W1^T + b1) -> dropout -> · W2^T + b2 -> softmax``.
Shapes: M heads, B rows, N rows to predict, D features, H hidden units, K classes; parameters in Head's
layout stacked over the heads (``layout.StackLayout``): ``W1 [M, H, D]``, ``b1 [M, H]``, ``W2 [M, K, H]``,
``b2 [M, K]`` (fp32). Matmuls run in the inputs' dtype (bf16 or fp32) with fp32
parameters, softmax and loss.
These functions read only their arguments and write only the buffers they are given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastall.training.optim import weight_grad


def forward_backward(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    x: torch.Tensor,
    mask: torch.Tensor,
    w: torch.Tensor,
    target: torch.Tensor,
    *,
    w1c: torch.Tensor | None = None,
    g1c: torch.Tensor | None = None,
) -> torch.Tensor:
    """One training step of M heads: writes into ``grads`` (the parameters' shapes, fp32) the gradients of
    each head's loss ``-sum_b target_b · log p_b`` (the class-weighted mean cross-entropy of the batch) and
    returns the step's probabilities ``p [M, B, K]`` (for :func:`train_loss`, at no extra cost).

    - ``x [M, B, D]``: standardised inputs, in the compute dtype;
    - ``mask [M, B, H]`` fp32: the dropout multiplier (0, or ``1 / (1 - p)``);
    - ``w [M, B, 1]``: row weights summing to 1 per head (0 on padding rows); ``target [M, B, K]``: one-hot
      labels times ``w``;
    - ``w1c``, ``g1c [M, H, D]``: scratch in the compute dtype for W1 and its gradient when that is not fp32.
    """
    W1, b1, W2, b2 = params
    gW1, gb1, gW2, gb2 = grads
    cdt = x.dtype
    if w1c is not None:
        W1 = w1c.copy_(W1)
    z = torch.baddbmm(b1.to(cdt).unsqueeze(1), x, W1.transpose(1, 2)).float().relu_()
    act = z * mask
    dmask = mask * torch.sign(z)  # d act / d z: the dropout scale where z > 0
    prob = torch.softmax(torch.baddbmm(b2.unsqueeze(1), act, W2.transpose(1, 2)), -1)
    dl = prob.mul(w).sub_(target)
    torch.bmm(dl.transpose(1, 2), act, out=gW2)
    torch.sum(dl, 1, out=gb2)
    dz = torch.bmm(dl, W2).mul_(dmask)
    torch.sum(dz, 1, out=gb1)
    weight_grad(x, dz, gW1, g1c)
    return prob


def train_loss(probs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Each head's training loss summed over an epoch's steps ``[M]``, from the probabilities
    ``forward_backward`` returned at each step (``S × [M, B, K]``) and the targets ``[S, M, B, K]`` (p clamped
    at 1e-30, as :func:`weighted_nll`)."""
    p = torch.stack(list(probs))
    return -(target[: p.shape[0]] * p.clamp_min(1e-30).log()).sum((0, 2, 3))


@torch.no_grad()
def predict(
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    dtype: torch.dtype,
    standardize: tuple[torch.Tensor, torch.Tensor] | None = None,
    exact: bool = False,
) -> torch.Tensor:
    """Softmax probabilities ``[M, N, K]`` of M heads on shared rows ``x [N, D]``: raw features standardised
    per head with ``standardize = (shift, inv)`` (each ``[M, 1, D]``), or rows already standardised, in
    ``dtype``, when it is None. Rows go in blocks (at most about 32 M elements of hidden activations).
    ``exact``: the softmax in float64 (reported probabilities: no ties where float32 saturates at 1)."""
    W1, b1, W2, b2 = params
    m = W1.shape[0]
    W1c, b1c = W1.to(dtype).transpose(1, 2), b1.to(dtype).unsqueeze(1)
    rows_per_chunk = max(16, min(1024, (1 << 25) // (m * x.shape[1])))
    out = []
    for start in range(0, x.shape[0], rows_per_chunk):
        xs = x[start : start + rows_per_chunk].unsqueeze(0)
        if standardize is not None:
            shift, inv = standardize
            xs = torch.addcmul(shift, xs, inv).to(dtype)
        z = torch.baddbmm(b1c, xs.expand(m, -1, -1), W1c).float().relu_()
        logits = torch.baddbmm(b2.unsqueeze(1), z, W2.transpose(1, 2))
        out.append(torch.softmax(logits.double() if exact else logits, -1))
    return torch.cat(out, 1)


def weighted_nll(prob: torch.Tensor, y: torch.Tensor, class_w: torch.Tensor) -> torch.Tensor:
    """Class-weighted mean cross-entropy ``[M]`` of probabilities ``prob [M, N, K]`` against labels ``y [N]``
    with class weights ``class_w [M, K]`` (torch CrossEntropyLoss semantics; p clamped at 1e-30)."""
    m = prob.shape[0]
    nll = -prob.clamp_min(1e-30).log().gather(2, y.view(1, -1, 1).expand(m, -1, 1)).squeeze(2)
    w = class_w[:, y]
    return (nll * w).sum(1) / w.sum(1).clamp_min(1e-12)
