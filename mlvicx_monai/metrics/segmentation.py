"""Dice metrics of the SIIM-ACR pneumothorax protocol (SPEC section 3): per-image mean Dice and global Dice.

Two different numbers, both reported:

- **mean Dice** (:func:`mean_dice`): the Dice of every image, then the mean over images, with the SIIM-ACR
  convention for images without pneumothorax: empty truth and empty prediction = 1, empty truth and a non-empty
  prediction = 0 (so false positives on negative images are penalised image by image). This is the Kaggle
  SIIM-ACR leaderboard metric.
- **global Dice** (:func:`global_dice`): ``2 * sum(P & T) / (sum(P) + sum(T))`` over all pixels of all images
  pooled together (large lesions weigh more; negative images only count through their false-positive pixels).
  Defined as 1 when every truth and every prediction is empty.

Masks are boolean (or 0/1 numeric) arrays ``[N, H, W]``; ``[N, 1, H, W]`` and any other ``[N, ...]`` layout are
accepted (everything after the first axis is one image). Threshold probabilities before calling these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DiceAccumulator", "dice_per_image", "global_dice", "mean_dice"]


def _as_masks(x: Any, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``[N, ...]`` 0/1 mask -> (``[N, P]`` bool, original shape)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be a batch of masks [N, H, W] (or [N, ...]), got shape {tuple(arr.shape)}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}: empty batch, need at least one image.")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} must be a boolean or 0/1 numeric mask, got dtype {arr.dtype}.")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(
                f"{name} must be binary (0/1); threshold probabilities first (e.g. ``probs > 0.5``)."
            )
        arr = arr.astype(bool)
    return arr.reshape(arr.shape[0], -1), tuple(arr.shape)


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, p_shape = _as_masks(pred, "pred")
    t, t_shape = _as_masks(target, "target")
    if p_shape != t_shape:
        raise ValueError(f"pred {p_shape} and target {t_shape} must have the same shape.")
    return p, t


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image ``(|P & T|, |P|, |T|)`` as int64 ``[N]``."""
    inter = np.count_nonzero(p & t, axis=1).astype(np.int64)
    return inter, np.count_nonzero(p, axis=1).astype(np.int64), np.count_nonzero(t, axis=1).astype(np.int64)


def _dice_from_counts(inter: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> np.ndarray:
    denom = n_pred + n_true
    out = np.ones(inter.shape, dtype=np.float64)  # both empty -> 1
    nz = denom > 0  # truth empty & prediction non-empty -> 2*0/|P| = 0
    out[nz] = 2.0 * inter[nz] / denom[nz]
    return out


def dice_per_image(pred: Any, target: Any) -> np.ndarray:
    """Dice of every image with the SIIM-ACR convention.

    Args:
        pred: ``[N, H, W]`` boolean predicted masks (or ``[N, ...]``).
        target: ground-truth masks of the same shape.

    Returns:
        ``[N]`` float64: ``2|P & T| / (|P| + |T|)``; 1 where truth and prediction are both empty, 0 where the
        truth is empty and the prediction is not.
    """
    return _dice_from_counts(*_counts(*_pair(pred, target)))


def mean_dice(pred: Any, target: Any) -> float:
    """Per-image mean Dice: the mean over images of :func:`dice_per_image` (the SIIM-ACR leaderboard metric)."""
    return float(dice_per_image(pred, target).mean())


def global_dice(pred: Any, target: Any) -> float:
    """Global Dice ``2 * sum(P & T) / (sum(P) + sum(T))`` over all pixels of all images pooled.

    Returns 1.0 when every prediction and every truth is empty (nothing to find, nothing predicted).
    """
    inter, n_pred, n_true = _counts(*_pair(pred, target))
    denom = int(n_pred.sum() + n_true.sum())
    return 1.0 if denom == 0 else 2.0 * float(inter.sum()) / denom


class DiceAccumulator:
    """Streaming per-image mean Dice and global Dice (update per batch, compute at the end).

    Exactly equal to :func:`mean_dice` / :func:`global_dice` of the concatenated batches. Suitable for an
    ignite handler (``reset`` on ``EPOCH_STARTED``, ``update`` on ``ITERATION_COMPLETED``, ``compute`` on
    ``EPOCH_COMPLETED``) or a plain evaluation loop; batches may have different image sizes.

    Example::

        acc = DiceAccumulator()
        for images, masks in loader:
            acc.update(model(images).sigmoid() > 0.5, masks > 0)
        acc.compute()  # {"mean_dice": ..., "global_dice": ..., "n_images": ..., "n_empty_truth": ...}
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._dice: list[np.ndarray] = []
        self._inter = 0
        self._denom = 0
        self._n_empty_truth = 0

    def update(self, pred: Any, target: Any) -> np.ndarray:
        """Add a batch of ``[B, H, W]`` (or ``[B, 1, H, W]``) binary masks; returns its per-image Dice ``[B]``."""
        inter, n_pred, n_true = _counts(*_pair(pred, target))
        dice = _dice_from_counts(inter, n_pred, n_true)
        self._dice.append(dice)
        self._inter += int(inter.sum())
        self._denom += int(n_pred.sum() + n_true.sum())
        self._n_empty_truth += int((n_true == 0).sum())
        return dice

    @property
    def n_images(self) -> int:
        """Images accumulated since the last :meth:`reset`."""
        return int(sum(d.size for d in self._dice))

    def per_image(self) -> np.ndarray:
        """``[n_images]`` Dice of every accumulated image, in update order."""
        return np.concatenate(self._dice) if self._dice else np.zeros(0)

    def compute(self) -> dict[str, float | int]:
        """``{"mean_dice", "global_dice", "n_images", "n_empty_truth"}`` (JSON-serialisable).

        Raises:
            RuntimeError: nothing was accumulated.
        """
        if not self._dice:
            raise RuntimeError("DiceAccumulator.compute() called before any update().")
        return {
            "mean_dice": float(self.per_image().mean()),
            "global_dice": 1.0 if self._denom == 0 else 2.0 * self._inter / self._denom,
            "n_images": self.n_images,
            "n_empty_truth": self._n_empty_truth,
        }
