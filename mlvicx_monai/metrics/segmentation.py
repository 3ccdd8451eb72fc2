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

:func:`bootstrap_dice_ci` gives percentile bootstrap intervals of both numbers from the per-image pixel counts,
resampling patients (when their ids are given) or images (:mod:`mlvicx_monai.metrics.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlvicx_monai.metrics.bootstrap import bootstrap_counts, clusters_of, percentile_interval

__all__ = ["DiceAccumulator", "bootstrap_dice_ci", "dice_per_image", "global_dice", "mean_dice"]


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


def _count_vector(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty [N] vector of per-image pixel counts, got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must be numeric pixel counts, got dtype {arr.dtype}.")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise ValueError(f"{name} must hold non-negative integer pixel counts.")
    return arr.astype(np.float64)


def bootstrap_dice_ci(
    inter: Any,
    n_pred: Any,
    n_true: Any,
    patient_ids: Sequence[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the per-image mean Dice and of the global Dice.

    Each resample draws the patients of ``patient_ids`` (all their images), or the images, with replacement
    (:func:`~mlvicx_monai.metrics.bootstrap.bootstrap_counts`); with draw counts ``w`` its mean Dice is
    ``sum(w * dice) / sum(w)`` and its global Dice ``2 * sum(w * inter) / sum(w * (n_pred + n_true))`` (1 if
    nothing is predicted or true), i.e. :func:`mean_dice` / :func:`global_dice` of the resampled images.

    Args:
        inter, n_pred, n_true: ``[N]`` per-image pixel counts ``|P & T|``, ``|P|``, ``|T|``.
        patient_ids: ``[N]`` patient of every image (cluster bootstrap) or ``None`` (image bootstrap).
        n_boot: resamples (``>= 1``); seed: of the draws; alpha: the intervals have level ``1 - alpha``.

    Returns:
        ``{"mean_dice_per_image_ci": [low, high], "global_dice_ci": [low, high], "ci_level", "ci_unit",
        "n_clusters", "n_boot", "seed"}`` (JSON-serialisable).

    Raises:
        ValueError: counts of different lengths or impossible (``inter > min(n_pred, n_true)``), bad
            ``patient_ids`` / ``n_boot`` / ``alpha``.
    """
    i, p, t = (_count_vector(v, k) for v, k in ((inter, "inter"), (n_pred, "n_pred"), (n_true, "n_true")))
    if not i.size == p.size == t.size:
        raise ValueError(f"inter, n_pred and n_true must have the same length, got {i.size}, {p.size}, {t.size}.")
    if (i > np.minimum(p, t)).any():
        raise ValueError("inter exceeds n_pred or n_true for some image: the counts are not |P & T|, |P|, |T|.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    clusters = clusters_of(patient_ids, i.size)
    dice = _dice_from_counts(i, p, t)
    means, pooled = [], []
    for w in bootstrap_counts(clusters, n_boot, seed):
        means.append((dice @ w) / w.sum(axis=0))
        num, den = 2.0 * (i @ w), (p + t) @ w
        with np.errstate(divide="ignore", invalid="ignore"):
            pooled.append(np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0))
    return {
        "mean_dice_per_image_ci": list(percentile_interval(np.concatenate(means), alpha)),
        "global_dice_ci": list(percentile_interval(np.concatenate(pooled), alpha)),
        "ci_level": 1.0 - float(alpha),
        **clusters.record(),
        "n_boot": int(n_boot),
        "seed": int(seed),
    }


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
