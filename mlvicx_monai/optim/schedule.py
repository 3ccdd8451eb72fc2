"""Learning-rate schedule of the authors' code / official VICReg: linear warm-up, then cosine to a floor."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "scaled_lr", "warmup_cosine"]


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """Linear scaling rule: ``base_lr * batch_size / 256`` (base lr 0.2 in the authors' code)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return base_lr * batch_size / 256


class WarmupCosine:
    """Multiplier of the base lr at optimiser step ``step`` (a picklable callable, so that
    ``LambdaLR.state_dict()`` saves it and a resumed run restores it)::

        step < warmup:  step / warmup
        otherwise:      q + final_lr_ratio * (1 - q),  q = (1 + cos(pi * (step - warmup) / (total - warmup))) / 2
        (clamped to final_lr_ratio after ``total_steps``)
    """

    def __init__(self, warmup_steps: int, total_steps: int, final_lr_ratio: float = 0.001) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")
        if not 0 <= final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {final_lr_ratio}.")
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.final_lr_ratio = float(final_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        q = 0.5 * (1.0 + math.cos(math.pi * progress))
        return q + self.final_lr_ratio * (1.0 - q)


def warmup_cosine(
    optimizer: Optimizer,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    final_lr_ratio: float = 0.001,
) -> LambdaLR:
    """Per-step scheduler: linear warm-up from 0 to ``base_lr`` over ``warmup_steps`` optimiser steps, then cosine
    to ``final_lr_ratio * base_lr`` at ``total_steps`` (call ``scheduler.step()`` after every ``optimizer.step()``).

    ``base_lr`` is the peak lr (already batch-scaled, see :func:`scaled_lr`); it is written into every param
    group (``lr`` and ``initial_lr``), so the optimiser's own ``lr`` is irrelevant. The schedule round-trips through
    ``state_dict()`` / ``load_state_dict()``.
    """
    if base_lr < 0:
        raise ValueError(f"base_lr must be >= 0, got {base_lr}.")
    for group in optimizer.param_groups:
        group["lr"] = base_lr
        group["initial_lr"] = base_lr
    return LambdaLR(optimizer, lr_lambda=WarmupCosine(warmup_steps, total_steps, final_lr_ratio))
