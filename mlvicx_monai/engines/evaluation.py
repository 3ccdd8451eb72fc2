"""Evaluation pieces of the downstream bundles: ignite metrics on the project's AUC and Dice definitions,
and the prediction loop of the final test evaluation.

- :class:`MeanAUC`: mean ROC AUC over the classes defined in the epoch (one positive and one negative at
  least), as :func:`mlvicx_monai.metrics.mean_auc`. MONAI's ``ROCAUC`` averages NaN into the mean when a class
  of a small validation split has no positive, so it is not used for early stopping.
- :class:`DiceScore`: per-image mean Dice (SIIM-ACR convention: empty truth and empty prediction = 1) or
  global Dice, via :class:`mlvicx_monai.metrics.DiceAccumulator`.
- :func:`predict`: ``(ids, targets, outputs)`` of a network over a loader, in loader order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.metrics import EpochMetric, Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.utils import convert_to_tensor

from mlvicx_monai.metrics import DiceAccumulator, mean_auc

__all__ = ["DiceScore", "MeanAUC", "batch_output", "predict"]


def batch_output(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred, label)`` of a MONAI engine output with ``decollate=False`` (a dict of batch tensors)."""
    if not isinstance(output, Mapping):
        raise TypeError("expected the engine output of a MONAI engine built with decollate=False (a dict)")
    return output["pred"], output["label"]


def _mean_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    value = mean_auc(targets.detach().cpu().numpy(), scores.detach().float().cpu().numpy())
    return float(value)


class MeanAUC(EpochMetric):
    """Mean ROC AUC of an epoch of ``(scores [B, C], labels [B, C])``; classes without both a positive and a
    negative image are left out of the mean (NaN when none is defined). Scores may be logits."""

    def __init__(self, output_transform: Callable = batch_output, device: str | torch.device = "cpu") -> None:
        super().__init__(_mean_auc, output_transform=output_transform, check_compute_fn=False, device=device)


class DiceScore(Metric):
    """Per-image mean Dice (``kind="mean"``) or global Dice (``kind="global"``) of an epoch.

    Args:
        kind: ``mean`` (SIIM-ACR convention per image, then averaged) or ``global`` (all pixels pooled).
        threshold: probability threshold; predictions are logits, ``sigmoid(pred) > threshold``.
        output_transform: engine output -> ``(logits [B, 1, H, W], mask [B, 1, H, W])``.
    """

    def __init__(
        self,
        kind: str = "mean",
        threshold: float = 0.5,
        output_transform: Callable = batch_output,
        device: str | torch.device = "cpu",
    ) -> None:
        if kind not in ("mean", "global"):
            raise ValueError(f"kind must be 'mean' or 'global', got {kind!r}")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.kind = kind
        self.logit_threshold = math.log(threshold / (1.0 - threshold))
        self._acc = DiceAccumulator()
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._acc = DiceAccumulator()

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        logits, mask = output
        self._acc.update(logits.detach() > self.logit_threshold, mask.detach() > 0.5)

    def compute(self) -> float:
        result = self._acc.compute()
        return float(result["mean_dice" if self.kind == "mean" else "global_dice"])


@torch.no_grad()
def predict(
    network: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device,
    input_key: str = "image",
    target_key: str = "label",
    id_key: str = "id",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Run ``network`` (in eval mode) over ``loader``.

    Returns:
        ``(ids, targets, outputs)``: ``ids`` of the items, ``targets`` ``[N, ...]`` and ``outputs`` ``[N, ...]``
        (``transform(network(x))``, e.g. a sigmoid) as float32 NumPy arrays, in loader order.
    """
    was_training = network.training
    network.eval()
    ids: list[str] = []
    targets, outputs = [], []
    try:
        for batch in loader:
            x = convert_to_tensor(batch[input_key], device=device, track_meta=False)
            y = network(x)
            if transform is not None:
                y = transform(y)
            outputs.append(y.float().cpu().numpy())
            target = batch[target_key]
            targets.append(np.asarray(target.cpu() if torch.is_tensor(target) else target, dtype=np.float32))
            ids.extend(str(i) for i in batch[id_key])
    finally:
        network.train(was_training)
    return ids, np.concatenate(targets), np.concatenate(outputs)
