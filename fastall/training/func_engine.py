"""The training step on the one :class:`~fastall.head.Head`: ``torch.func.functional_call`` +
``torch.func.vmap`` over the module, autograd for the gradients and ``torch.optim.Adam`` (fused where the
device has the kernel) for the update: the field's idiom for many small models at once, as an alternative to
the hand-written step (``stacked.forward_backward`` + ``optim.StackedAdam``).

The stack stores its parameters in ``Head``'s layout (``layout.StackLayout``): each head's tensors are leaf
views of that storage, so validation, early stopping and packaging see the updates unchanged. Each head has
its own Adam (its learning rate and weight decay; a head that does not step is left exactly as it was). The
random streams are the stack's: the dropout multiplier goes into ``Head.forward(keep=...)``, the batches are
the same.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch.func import functional_call, vmap

from fastall.head import Head
from fastall.training.layout import HeadState
from fastall.training.optim import BETAS, EPS, fused_supported


class FuncStep:
    """Heads of a stack trained by ``vmap(functional_call(Head, ...))``, autograd and one Adam per head."""

    def __init__(
        self,
        names: Sequence[str],
        params: Sequence[torch.Tensor],
        heads: Sequence[HeadState],
        dtype: torch.dtype,
    ) -> None:
        self.device = params[0].device
        self.dims = (params[0].shape[2], params[0].shape[1], params[2].shape[1])
        self.autocast = dtype != torch.float32
        self.dtype = dtype
        self.leaves = [
            {name: p[i].detach().requires_grad_() for name, p in zip(names, params, strict=True)}
            for i in range(len(heads))
        ]
        fused = fused_supported(str(self.device))
        self.optims = [
            torch.optim.Adam(
                leaves.values(), lr=hd.lr, betas=BETAS, eps=EPS, weight_decay=hd.cfg.weight_decay, fused=fused
            )
            for leaves, hd in zip(self.leaves, heads, strict=True)
        ]
        self._local = threading.local()

    def _template(self) -> Head:
        """This thread's Head (``functional_call`` swaps a module's tensors in place: one per thread)."""
        head = getattr(self._local, "head", None)
        if head is None:
            d, h, k = self.dims
            head = self._local.head = Head(d, h, 0.0, k).to(self.device)
        return head

    def set_rates(self, heads: Sequence[HeadState], a: int) -> None:
        """Heads a.. take their current learning rate (the plateau schedule changes it between epochs)."""
        for i, hd in enumerate(heads, a):
            self.optims[i].param_groups[0]["lr"] = hd.lr

    def step(
        self,
        a: int,
        b: int,
        x: torch.Tensor,
        keep: torch.Tensor,
        target: torch.Tensor,
        active: Sequence[bool],
    ) -> torch.Tensor:
        """One training step of heads a..b on ``x [M, B, D]`` (standardised) with the dropout multiplier
        ``keep [M, B, H]`` and ``target [M, B, K]`` (one-hot labels times the row weights); Adam steps the
        heads whose ``active`` flag is set. Returns each head's loss ``-sum_b target_b · log p_b`` ``[M]``."""
        head = self._template()

        def logits(p: dict[str, torch.Tensor], xs: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            return functional_call(head, p, (xs,), {"keep": ks})

        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            if b - a == 1:  # vmap over one head is the plain call (and its matmuls need no transposed copies)
                out = logits(self.leaves[a], x[0], keep[0]).unsqueeze(0)
            else:
                names = self.leaves[a].keys()
                stacked = {n: torch.stack([self.leaves[i][n] for i in range(a, b)]) for n in names}
                out = vmap(logits)(stacked, x, keep)
        loss = -(target * torch.log_softmax(out.float(), -1)).sum((1, 2))
        loss.sum().backward()
        for i, on in zip(range(a, b), active, strict=True):
            if on:
                self.optims[i].step()
            self.optims[i].zero_grad(set_to_none=True)
        return loss.detach()
