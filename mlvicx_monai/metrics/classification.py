"""Classification metrics of the downstream protocols: per-class ROC AUC, mean AUC, bootstrap CI, accuracy.

Conventions (SPEC section 3):

- Labels ``y_true`` are ``[N, C]`` (or ``[N]`` for one class) with values 0/1; scores ``y_score`` have the same
  shape (probabilities or logits: AUC only depends on the ranking).
- A class whose ``y_true`` column holds a single value (no positive or no negative image) has no AUC. It is
  reported as ``None`` and excluded from the mean; :func:`classification_report` lists the excluded classes.
- The mean AUC is the unweighted mean over the defined classes (the "mean AUC" of the paper's tables).
- The bootstrap resamples *patients* (cluster bootstrap: every image of each drawn patient) when ``patient_ids``
  are given, else *images*, with replacement (no stratification; :mod:`mlvicx_monai.metrics.bootstrap`), and
  recomputes the mean AUC over the same class set; a resample in which a class defined on the full data loses
  all its positives or all its negatives is skipped (so every kept resample averages the same classes). The
  interval is the percentile interval of the kept resamples.

Inputs may be NumPy arrays, sequences or torch tensors (moved to CPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from mlvicx_monai.metrics.bootstrap import bootstrap_counts, clusters_of, percentile_interval

__all__ = [
    "accuracy",
    "bootstrap_auc_ci",
    "bootstrap_mean_auc_samples",
    "classification_report",
    "mean_auc",
    "per_class_auc",
]

ClassKey = str | int

def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:  # ragged sequences and the like
        raise TypeError(f"{name} must be array-like, got {type(x).__name__} ({err}).") from None


def _validate(
    y_true: Any, y_score: Any, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[ClassKey]]:
    """Return ``(y_true bool [N, C], y_score float64 [N, C], keys)`` after checking shapes and values."""
    yt = _to_numpy(y_true, "y_true")
    ys = _to_numpy(y_score, "y_score")
    if yt.ndim == 1:
        yt = yt[:, None]
    if ys.ndim == 1:
        ys = ys[:, None]
    if yt.ndim != 2 or ys.ndim != 2:
        raise ValueError(
            f"y_true and y_score must be [N, C] (or [N]); got shapes {tuple(_to_numpy(y_true, 'y_true').shape)} "
            f"and {tuple(_to_numpy(y_score, 'y_score').shape)}."
        )
    if yt.shape != ys.shape:
        raise ValueError(f"y_true {tuple(yt.shape)} and y_score {tuple(ys.shape)} must have the same shape.")
    if yt.shape[0] == 0 or yt.shape[1] == 0:
        raise ValueError(f"need at least one image and one class, got shape {tuple(yt.shape)}.")
    if yt.dtype != np.bool_:
        if not (np.issubdtype(yt.dtype, np.integer) or np.issubdtype(yt.dtype, np.floating)):
            raise TypeError(f"y_true must be boolean or numeric 0/1, got dtype {yt.dtype}.")
        bad = ~np.isin(yt, (0, 1))
        if bad.any():
            values = np.unique(yt[bad])[:5]
            raise ValueError(
                f"y_true must contain only 0/1 (resolve uncertain or missing labels first); found {values.tolist()}."
            )
        yt = yt.astype(bool)
    if not (np.issubdtype(ys.dtype, np.integer) or np.issubdtype(ys.dtype, np.floating) or ys.dtype == np.bool_):
        raise TypeError(f"y_score must be numeric, got dtype {ys.dtype}.")
    ys = ys.astype(np.float64)
    if not np.isfinite(ys).all():
        raise ValueError("y_score contains NaN or infinite values.")
    n_classes = yt.shape[1]
    if class_names is None:
        keys: list[ClassKey] = list(range(n_classes))
    else:
        if isinstance(class_names, str):
            raise TypeError("class_names must be a sequence of names, not a single string.")
        keys = list(class_names)
        if len(keys) != n_classes:
            raise ValueError(f"{len(keys)} class_names for {n_classes} score columns.")
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate class names in {keys}.")
    return yt, ys, keys


def _defined(yt: np.ndarray) -> np.ndarray:
    """``[C]`` bool: the class has at least one positive and one negative image."""
    n_pos = yt.sum(axis=0)
    return (n_pos > 0) & (n_pos < yt.shape[0])


def per_class_auc(
    y_true: Any, y_score: Any, class_names: Sequence[str] | None = None
) -> dict[ClassKey, float | None]:
    """ROC AUC of every class (scikit-learn's ``roc_auc_score``; ties count one half).

    Args:
        y_true: ``[N, C]`` (or ``[N]``) 0/1 labels.
        y_score: ``[N, C]`` (or ``[N]``) scores, higher = more likely positive.
        class_names: ``C`` names used as keys; default the column indices ``0..C-1``.

    Returns:
        ``{class: auc}`` in column order; ``None`` for a class with a single label value in ``y_true``.
    """
    yt, ys, keys = _validate(y_true, y_score, class_names)
    defined = _defined(yt)
    return {
        key: (float(roc_auc_score(yt[:, c], ys[:, c])) if defined[c] else None) for c, key in enumerate(keys)
    }


def mean_auc(y_true: Any, y_score: Any, class_names: Sequence[str] | None = None) -> float:
    """Mean ROC AUC over the classes where it is defined (see :func:`per_class_auc`).

    Returns:
        the mean as a float; ``nan`` when no class has both a positive and a negative image.
    """
    values = [v for v in per_class_auc(y_true, y_score, class_names).values() if v is not None]
    return float(np.mean(values)) if values else math.nan


class _BootstrapPlan(NamedTuple):
    """Per-class index tables that turn a batch of resample draw counts into per-class AUCs.

    For class ``c`` the negatives are sorted by score and cut into segments at every position where a
    positive's score starts or ends a run of equal negative scores. All classes' segments form the rows of
    ``seg_of_image`` (a 0/1 ``[S, N]`` sparse matrix, one empty leading row per class), so the negative
    weight below any positive is a prefix sum over a few segment rows.
    """

    seg_of_image: sp.csr_matrix  # [S, N]: segment row <- image (negatives only)
    class_of_pos: sp.csr_matrix  # [C_def, P]: class <- positive entry
    pos_image: np.ndarray  # [P] image index of every positive entry (all classes, class-major)
    below_row: np.ndarray  # [P] prefix row: negatives with a strictly lower score
    upto_row: np.ndarray  # [P] prefix row: negatives with a lower or equal score
    base_row: np.ndarray  # [P] the empty leading row of the entry's class
    class_first: np.ndarray  # [C_def] the empty leading row of each class
    class_last: np.ndarray  # [C_def] the last segment row of each class


def _bootstrap_plan(yt: np.ndarray, ys: np.ndarray, classes: np.ndarray) -> _BootstrapPlan:
    n = yt.shape[0]
    seg_rows, seg_cols = [], []
    pos_image, below_row, upto_row, base_row, pos_class = [], [], [], [], []
    class_first, class_last = [], []
    offset = 0
    for k, c in enumerate(classes):
        neg = np.flatnonzero(~yt[:, c])
        pos = np.flatnonzero(yt[:, c])
        neg = neg[np.argsort(ys[neg, c], kind="stable")]
        neg_scores = ys[neg, c]
        lo = np.searchsorted(neg_scores, ys[pos, c], side="left")  # negatives strictly below
        hi = np.searchsorted(neg_scores, ys[pos, c], side="right")  # negatives below or tied
        bounds = np.unique(np.concatenate(([0, neg.size], lo, hi)))
        n_seg = bounds.size - 1
        # row ``offset`` stays empty, segment j of this class is row ``offset + 1 + j``
        seg_rows.append(offset + 1 + np.searchsorted(bounds, np.arange(neg.size), side="right") - 1)
        seg_cols.append(neg)
        below_row.append(offset + np.searchsorted(bounds, lo))
        upto_row.append(offset + np.searchsorted(bounds, hi))
        base_row.append(np.full(pos.size, offset))
        pos_image.append(pos)
        pos_class.append(np.full(pos.size, k))
        class_first.append(offset)
        class_last.append(offset + n_seg)
        offset += n_seg + 1
    rows, cols = np.concatenate(seg_rows), np.concatenate(seg_cols)
    seg_of_image = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(offset, n))
    pos_cls = np.concatenate(pos_class)
    class_of_pos = sp.csr_matrix(
        (np.ones(pos_cls.size), (pos_cls, np.arange(pos_cls.size))), shape=(classes.size, pos_cls.size)
    )
    return _BootstrapPlan(
        seg_of_image,
        class_of_pos,
        np.concatenate(pos_image),
        np.concatenate(below_row),
        np.concatenate(upto_row),
        np.concatenate(base_row),
        np.asarray(class_first),
        np.asarray(class_last),
    )


def _plan_aucs(plan: _BootstrapPlan, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``counts`` ``[N, B]`` draws per image and resample -> ``(auc, n_pos, n_neg)``, each ``[C_def, B]``.

    A resample is the data with image ``i`` repeated ``w_i`` times, so its AUC is the weighted Mann-Whitney
    statistic ``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (P * Q)``, exactly what
    ``roc_auc_score`` gives on the resampled rows. All sums are of integers in float64, hence exact.
    """
    prefix = np.cumsum(plan.seg_of_image @ counts, axis=0)  # [S, B] negative weight up to each segment
    w_pos = counts[plan.pos_image]  # [P, B]
    mid = 0.5 * (prefix[plan.below_row] + prefix[plan.upto_row]) - prefix[plan.base_row]
    num = plan.class_of_pos @ (w_pos * mid)
    n_pos = plan.class_of_pos @ w_pos
    n_neg = prefix[plan.class_last] - prefix[plan.class_first]
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = num / (n_pos * n_neg)
    return auc, n_pos, n_neg


def bootstrap_mean_auc_samples(
    y_true: Any, y_score: Any, n_boot: int = 1000, seed: int = 0, patient_ids: Sequence[Any] | None = None
) -> tuple[np.ndarray, int]:
    """Mean AUC of ``n_boot`` bootstrap resamples of the images, or of the patients.

    Every resample draws ``N`` images (``patient_ids=None``) or the ``K`` patients of ``patient_ids`` with all
    their images, with replacement (:func:`~mlvicx_monai.metrics.bootstrap.bootstrap_counts`, seeded). The mean
    is over the classes defined on the full data; a resample in which one of them becomes undefined (no positive
    or no negative drawn) is skipped.

    Vectorised: the resamples are processed in chunks as ``[N, B]`` draw counts; every class is sorted once,
    and the AUCs of a chunk come from one sparse product and one cumulative sum (see :func:`_plan_aucs`);
    they equal ``roc_auc_score`` on the resampled rows.

    Args:
        patient_ids: ``[N]`` patient id of every image (cluster bootstrap), or ``None`` (image bootstrap).

    Returns:
        ``(means, n_skipped)``: ``means`` ``[n_boot - n_skipped]`` float64 in resample order.

    Raises:
        ValueError: ``n_boot < 1``, no class has both a positive and a negative image, or ``patient_ids`` does
            not have one id per image.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}.")
    yt, ys, _ = _validate(y_true, y_score)
    clusters = clusters_of(patient_ids, yt.shape[0])
    classes = np.flatnonzero(_defined(yt))
    if classes.size == 0:
        raise ValueError("no class has both a positive and a negative image: the mean AUC is undefined.")
    plan = _bootstrap_plan(yt, ys, classes)
    means: list[np.ndarray] = []
    skipped = 0
    for counts in bootstrap_counts(clusters, n_boot, seed):
        auc, n_pos, n_neg = _plan_aucs(plan, counts)
        valid = ((n_pos > 0) & (n_neg > 0)).all(axis=0)
        means.append(auc[:, valid].mean(axis=0))
        skipped += int(counts.shape[1] - valid.sum())
    return np.concatenate(means), skipped


def bootstrap_auc_ci(
    y_true: Any,
    y_score: Any,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    patient_ids: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of the MEAN AUC at level ``1 - alpha``.

    See :func:`bootstrap_mean_auc_samples` for the resampling (patients when ``patient_ids`` is given);
    ``(nan, nan)`` if every resample was skipped.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    means, _ = bootstrap_mean_auc_samples(y_true, y_score, n_boot=n_boot, seed=seed, patient_ids=patient_ids)
    return percentile_interval(means, alpha)


def accuracy(y_true: Any, y_score: Any, threshold: float = 0.5) -> float:
    """Binary accuracy: fraction of images with ``(y_score >= threshold) == y_true``.

    Args:
        y_true: ``[N]`` or ``[N, 1]`` 0/1 labels.
        y_score: ``[N]`` or ``[N, 1]`` scores; ``threshold`` 0.5 suits probabilities (use 0.0 for logits).
    """
    yt, ys, _ = _validate(y_true, y_score)
    if yt.shape[1] != 1:
        raise ValueError(f"accuracy is binary: expected [N] or [N, 1], got {yt.shape[1]} columns.")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold!r}.")
    return float(np.mean((ys[:, 0] >= threshold) == yt[:, 0]))


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def classification_report(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    threshold: float = 0.5,
    patient_ids: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """JSON-serialisable summary of a classification evaluation.

    Args:
        y_true, y_score: ``[N, C]`` (or ``[N]``) labels and scores.
        class_names: names of the ``C`` columns (default ``"0".."C-1"``).
        n_boot: bootstrap resamples of the mean-AUC interval (``0`` skips the bootstrap).
        seed: seed of the bootstrap.
        alpha: the interval has level ``1 - alpha``.
        threshold: decision threshold of the binary accuracy (only reported when ``C == 1``).
        patient_ids: ``[N]`` patient of every image: the bootstrap resamples patients (else images).

    Returns:
        ``{"n_images", "classes", "n_positive", "n_negative", "per_class_auc", "mean_auc",
        "excluded_classes", "auc_ci": [low, high] | None, "ci_level", "ci_unit": "patient" | "image",
        "n_clusters" (patients, or images), "n_boot", "n_boot_skipped", "seed"}``
        plus ``"accuracy"`` and ``"threshold"`` for a single (binary) class. Undefined values are ``None``.
    """
    yt, ys, keys = _validate(y_true, y_score, class_names)
    names = [str(k) for k in keys]
    if len(set(names)) != len(names):
        raise ValueError(f"class names are not unique as strings: {names}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    clusters = clusters_of(patient_ids, yt.shape[0])
    aucs = per_class_auc(yt, ys, names)
    defined = [v for v in aucs.values() if v is not None]
    n_pos = yt.sum(axis=0)
    report: dict[str, Any] = {
        "n_images": int(yt.shape[0]),
        "classes": names,
        "n_positive": {k: int(p) for k, p in zip(names, n_pos, strict=True)},
        "n_negative": {k: int(yt.shape[0] - p) for k, p in zip(names, n_pos, strict=True)},
        "per_class_auc": aucs,
        "mean_auc": float(np.mean(defined)) if defined else None,
        "excluded_classes": [k for k, v in aucs.items() if v is None],
        "auc_ci": None,
        "ci_level": 1.0 - float(alpha),
        **clusters.record(),
        "n_boot": int(n_boot),
        "n_boot_skipped": None,
        "seed": int(seed),
    }
    if n_boot > 0 and defined:
        if not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
        means, skipped = bootstrap_mean_auc_samples(yt, ys, n_boot=n_boot, seed=seed, patient_ids=patient_ids)
        report["n_boot_skipped"] = skipped
        if means.size:
            low, high = percentile_interval(means, alpha)
            report["auc_ci"] = [_json_float(low), _json_float(high)]
    if yt.shape[1] == 1:
        report["accuracy"] = accuracy(yt, ys, threshold)
        report["threshold"] = float(threshold)
    return report
