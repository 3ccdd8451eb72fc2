"""The resampling of every bootstrap confidence interval: images, or patients (cluster bootstrap).

Images of one patient are correlated (same anatomy, follow-up studies), so resampling images treats a test set
of ``N`` images from ``K < N`` patients as ``N`` independent draws and makes the interval too narrow. The
cluster bootstrap (Field & Welsh, 2007) resamples the ``K`` patients with replacement and keeps all images of
each drawn patient.

A resample is represented by its draw counts: ``counts[i, b]`` = how often image ``i`` occurs in resample ``b``
(for the cluster bootstrap: how often its patient was drawn). Statistics that are weighted sums over images
(Mann-Whitney AUC, mean Dice, pooled Dice) are then computed for a whole chunk of resamples with matrix
products, without materialising the resampled rows.

Draws: ``numpy.random.default_rng(seed)``; a chunk of ``b`` resamples draws a ``[b, K]`` integer array
(``K = N`` for images). Patients are numbered in order of first appearance, so with one distinct patient id
per image the cluster bootstrap draws exactly the image bootstrap's resamples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = ["BOOT_CHUNK", "Clusters", "bootstrap_counts", "clusters_of", "percentile_interval"]

#: resamples processed together (memory ~ a few ``chunk * N * 8`` bytes).
BOOT_CHUNK = 32


class Clusters(NamedTuple):
    """The resampling unit of a bootstrap over ``N`` images.

    ``index`` is ``None`` for the image bootstrap, else ``[N]`` int64: the cluster (patient) of every image,
    numbered ``0..n_clusters-1`` in order of first appearance.
    """

    index: np.ndarray | None
    n_clusters: int

    @property
    def unit(self) -> str:
        """``"patient"`` (cluster bootstrap) or ``"image"``."""
        return "image" if self.index is None else "patient"

    def record(self) -> dict[str, Any]:
        """``{"ci_unit": "patient" | "image", "n_clusters": int}`` for results.json."""
        return {"ci_unit": self.unit, "n_clusters": int(self.n_clusters)}


def clusters_of(patient_ids: Sequence[Any] | np.ndarray | None, n_images: int) -> Clusters:
    """The resampling unit: patients when ``patient_ids`` is given, else images.

    Args:
        patient_ids: ``[N]`` one id per image (any hashable values, compared as strings), or ``None``.
        n_images: ``N``, the number of images of the statistic.

    Raises:
        ValueError: ``patient_ids`` does not have one entry per image, or contains a missing (``None``/empty) id.
    """
    if patient_ids is None:
        return Clusters(None, int(n_images))
    if isinstance(patient_ids, str):
        raise TypeError("patient_ids must be a sequence with one id per image, not a single string.")
    if hasattr(patient_ids, "detach") and hasattr(patient_ids, "cpu"):
        patient_ids = patient_ids.detach().cpu().numpy()
    ids = list(np.asarray(patient_ids, dtype=object).ravel()) if not isinstance(patient_ids, list) else patient_ids
    if len(ids) != n_images:
        raise ValueError(
            f"patient_ids has {len(ids)} entries for {n_images} images: pass one patient id per image, in the order "
            "of the labels and scores (or None for an image-level bootstrap)."
        )
    missing = [i for i, p in enumerate(ids) if p is None or (isinstance(p, float) and math.isnan(p)) or str(p) == ""]
    if missing:
        raise ValueError(
            f"patient_ids has {len(missing)} missing ids (first at image {missing[0]}); every image needs its patient "
            "(or pass patient_ids=None for an image-level bootstrap)."
        )
    keys = np.asarray([str(p) for p in ids], dtype=object)
    _, first, inverse = np.unique(keys.astype(str), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)  # number clusters by first appearance
    return Clusters(rank[inverse.ravel()].astype(np.int64), int(first.size))


def bootstrap_counts(clusters: Clusters, n_boot: int, seed: int = 0, chunk: int = BOOT_CHUNK) -> Iterator[np.ndarray]:
    """Draw counts of ``n_boot`` bootstrap resamples, ``chunk`` resamples at a time.

    Every resample draws ``K`` units (images or patients) with replacement; an image's count is its unit's.

    Yields:
        ``[N, b]`` float64 arrays (``b <= chunk``, ``sum(b) == n_boot``), resamples in draw order.

    Raises:
        ValueError: ``n_boot`` or ``chunk`` is not a positive integer.
    """
    for name, value in (("n_boot", n_boot), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    k = clusters.n_clusters
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        b = min(int(chunk), n_boot - done)
        draws = rng.integers(0, k, size=(b, k))  # row r: the K units drawn by resample done + r
        flat = (draws * b + np.arange(b)[:, None]).ravel()
        counts = np.bincount(flat, minlength=k * b).reshape(k, b).astype(np.float64)
        yield counts if clusters.index is None else counts[clusters.index]
        done += b


def percentile_interval(samples: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile ``(low, high)`` interval at level ``1 - alpha`` of ``[B]`` bootstrap values; ``(nan, nan)`` if
    ``B == 0``.

    Raises:
        ValueError: ``alpha`` not in (0, 1).
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
