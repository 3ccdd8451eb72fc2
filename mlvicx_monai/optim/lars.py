"""LARS optimiser as in facebookresearch/vicreg (momentum SGD with layer-wise trust ratio)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn
from torch.optim import Optimizer

__all__ = ["LARS", "exclude_bias_and_norm", "lars_param_groups"]


def exclude_bias_and_norm(p: torch.Tensor) -> bool:
    """True for 1-D parameters (biases, norm affine): excluded from weight decay and from the LARS adaptation."""
    return p.ndim == 1


def lars_param_groups(model: nn.Module, weight_decay: float = 1e-6) -> list[dict[str, Any]]:
    """Two groups for :class:`LARS`: ``ndim > 1`` tensors with weight decay and adaptation; 1-D tensors without.

    Only parameters with ``requires_grad`` are included (frozen ones are skipped). Empty groups are dropped.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if exclude_bias_and_norm(p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_adaptation": True},
        {"params": no_decay, "weight_decay": 0.0, "lars_adaptation": False},
    ]
    return [g for g in groups if g["params"]]


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) in the form of the official VICReg code.

    Per parameter ``p`` with gradient ``g``::

        d  = g + weight_decay * p                                   (unless excluded)
        d  = d * eta * ||p|| / ||d||    if ||p|| > 0 and ||d|| > 0  (unless excluded)
        mu = momentum * mu + d
        p  = p - lr * mu

    Exclusion: a group with ``lars_adaptation=False`` skips the trust ratio; a group with ``weight_decay=0``
    has no decay. With ``exclude_1d=True`` (default, official behaviour) any 1-D parameter (bias, norm affine) is
    also excluded from both, whatever group it is in, so ``LARS(model.parameters(), ...)`` is already correct;
    :func:`lars_param_groups` builds the explicit groups.

    Defaults follow the authors' code: weight decay 1e-6, momentum 0.9, eta 0.001 (paper: lr 3e-5, wd 1e-5).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        eta: float = 0.001,
        exclude_1d: bool = True,
        lars_adaptation: bool = True,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}.")
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            eta=eta,
            exclude_1d=exclude_1d,
            lars_adaptation=lars_adaptation,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                excluded = g["exclude_1d"] and exclude_bias_and_norm(p)
                if g["weight_decay"] != 0 and not excluded:
                    dp = dp.add(p, alpha=g["weight_decay"])
                if g["lars_adaptation"] and not excluded:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(
                        param_norm > 0.0,
                        torch.where(update_norm > 0, g["eta"] * param_norm / update_norm, one),
                        one,
                    )
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss
