"""Patient-level seeded splits, nested label fractions and the leakage check.

Everything here is a pure function of its inputs and the integer seed: patients are sorted by id before a
``numpy.random.Generator`` (seeded from ``SeedSequence([seed, stream])``) permutes them, and no result
depends on dict/set iteration order or on ``PYTHONHASHSEED``.

- ``stratified_patient_split``: train/val/test (or any named ratios) over patients. A patient's label set is
  the union of its images' labels, plus a pseudo-class "no finding" for patients without any positive.
  Split sizes (in patients) are exact: ``round(ratio * n_patients)`` by the largest-remainder rule.
  Classes are spread by iterative stratification (Sechidis et al., 2011): rarest class first, each of its
  patients to the split that still lacks most of that class. A coverage pass first gives every split one
  positive patient of every class, rarest class first, where enough positive patients exist.
- ``label_fractions``: the 1% / 10% / 30% / 100% subsets of the training split, patient-level and nested.
  One seeded priority order over the training patients; each fraction starts from the previous one, first
  adds, for every class (and for "no finding") it lacks, the smallest positive patient (fewest images, then
  priority), then fills in priority order with every patient that still fits, up to
  ``round(fraction * n_images)`` images. Sizes are exact unless the coverage patients alone exceed the
  target. Each image is encoded by the smallest fraction (in percent) that contains it, so
  ``fraction <= f`` selects the f% subset and nesting holds by construction.
- ``check_patient_disjoint``: raises ``LeakageError`` naming how many and which patients occur in two splits.
- ``check_fractions``: re-verifies a fraction column (only training rows, patient-level, class coverage).
- ``seeded_fraction`` / ``subset_record``: a training subset drawn with its own seed (the downstream bundles'
  ``fraction_seed``, so that repeated runs also resample the labelled subset) and its provenance record.

pandas is imported by the two checks only (``import mlvicx_monai.data.splits`` stays light).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FRACTIONS",
    "LeakageError",
    "FractionError",
    "patient_labels",
    "stratified_patient_split",
    "label_fractions",
    "check_patient_disjoint",
    "check_fractions",
    "allocate",
    "balanced_patients",
    "seeded_fraction",
    "subset_record",
]

#: Label fractions of the training split, in percent (paper section IV).
FRACTIONS: tuple[int, ...] = (1, 10, 30, 100)
_SPLIT_STREAM = 1
_FRACTION_STREAM = 2
_BALANCE_STREAM = 3


class LeakageError(ValueError):
    """A patient occurs in more than one split."""


class FractionError(ValueError):
    """A label-fraction column that is not nested, patient-level or class-covering."""


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))


def _as_matrix(labels: Sequence | np.ndarray, n: int) -> np.ndarray:
    """``(n, C)`` uint8 from a sequence of 0/1 tuples or a 2-D array."""
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        matrix = labels
    else:
        items = list(labels)
        matrix = np.array(items, dtype=np.int64).reshape(len(items), -1) if items else np.zeros((0, 0))
    if matrix.shape[0] != n:
        raise ValueError(f"{matrix.shape[0]} label rows for {n} images")
    if matrix.size and not np.isin(matrix, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return matrix.astype(np.uint8)


def patient_labels(
    patient_ids: Sequence[str], labels: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per patient (sorted by id): ``(patients, Y, n_images, inverse)``.

    ``Y`` is the union of the patient's image labels with a last "no finding" column (1 when the patient has
    no positive); ``inverse[i]`` is the patient index of image ``i``.
    """
    ids = np.asarray([str(p) for p in patient_ids], dtype=object)
    matrix = _as_matrix(labels, len(ids))
    patients, inverse = np.unique(ids.astype(str), return_inverse=True)
    n_classes = matrix.shape[1]
    union = np.zeros((len(patients), n_classes), dtype=np.uint8)
    if n_classes:
        np.maximum.at(union, inverse, matrix)
    none = (union.sum(axis=1) == 0).astype(np.uint8)[:, None]
    n_images = np.bincount(inverse, minlength=len(patients))
    return patients.astype(object), np.hstack([union, none]), n_images, inverse


def allocate(total: int, ratios: Sequence[float]) -> np.ndarray:
    """Integer sizes summing to ``total`` proportional to ``ratios`` (largest-remainder rounding)."""
    weights = np.asarray(ratios, dtype=float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {list(ratios)}")
    exact = weights / weights.sum() * total
    sizes = np.floor(exact).astype(int)
    remainder = exact - sizes
    order = sorted(range(len(sizes)), key=lambda k: (-remainder[k], k))
    for k in order[: total - int(sizes.sum())]:
        sizes[k] += 1
    return sizes


def stratified_patient_split(
    patient_ids: Sequence[str],
    labels: Sequence | np.ndarray,
    ratios: Mapping[str, float],
    seed: int,
) -> np.ndarray:
    """Split name per image; patient-level, seeded, stratified over the patients' label sets.

    Args:
        patient_ids: one id per image.
        labels: one 0/1 tuple (or matrix row) per image.
        ratios: split name -> share of patients, e.g. ``{"train": 0.7, "val": 0.1, "test": 0.2}``.
        seed: the only source of randomness.
    """
    names = list(ratios)
    patients, y, _, inverse = patient_labels(patient_ids, labels)
    n_patients, n_classes = y.shape
    capacity = allocate(n_patients, [ratios[n] for n in names]).astype(float)
    share = capacity / max(n_patients, 1)
    wanted = share[:, None] * y.sum(axis=0)[None, :].astype(float)  # desired positives per split and class
    order = _rng(seed, _SPLIT_STREAM).permutation(n_patients)
    assigned = np.full(n_patients, -1, dtype=np.int64)

    def assign(p: int, s: int) -> None:
        assigned[p] = s
        capacity[s] -= 1
        wanted[s] -= y[p]

    counts = y.sum(axis=0)
    class_order = sorted(range(n_classes), key=lambda c: (counts[c], c))
    # Coverage pass: one positive patient of every class in every split, rarest class first.
    for c in class_order:
        positives = order[y[order, c] == 1].tolist()
        split_order = sorted(range(len(names)), key=lambda s: (-share[s], s))
        for s in split_order:
            if capacity[s] <= 0 or ((assigned == s) & (y[:, c] == 1)).any():
                continue
            free = next((p for p in positives if assigned[p] < 0), None)
            if free is None:
                break
            assign(int(free), s)
    # Iterative stratification of the rest.
    while (assigned < 0).any():
        free = assigned < 0
        remaining = y[free].sum(axis=0)
        candidates = [c for c in class_order if remaining[c] > 0]
        c = min(candidates, key=lambda k: (remaining[k], k))
        for p in order[free[order] & (y[order, c] == 1)]:
            open_splits = [s for s in range(len(names)) if capacity[s] > 0]
            s = max(open_splits, key=lambda k: (wanted[k, c], capacity[k], -k))
            assign(int(p), s)
    return np.asarray(names, dtype=object)[assigned[inverse]]


def label_fractions(
    patient_ids: Sequence[str],
    labels: Sequence | np.ndarray,
    seed: int,
    fractions: Sequence[int] = FRACTIONS,
) -> np.ndarray:
    """Smallest fraction (percent) containing each training image; nested, patient-level, seeded.

    Args:
        patient_ids, labels: the TRAINING images only (one entry per image).
        seed: the only source of randomness.
        fractions: increasing percents ending with 100.
    """
    fractions = [int(f) for f in fractions]
    if fractions != sorted(set(fractions)) or fractions[-1] != 100 or fractions[0] <= 0:
        raise ValueError(f"fractions must be increasing percents in (0, 100] ending with 100, got {fractions}")
    patients, y, n_images, inverse = patient_labels(patient_ids, labels)
    n_patients = len(patients)
    total_images = int(n_images.sum())
    order = _rng(seed, _FRACTION_STREAM).permutation(n_patients)
    rank = np.empty(n_patients, dtype=np.int64)
    rank[order] = np.arange(n_patients)
    level = np.full(n_patients, 100, dtype=np.int64)
    chosen = np.zeros(n_patients, dtype=bool)
    size = 0
    counts = y.sum(axis=0)
    class_order = sorted(range(y.shape[1]), key=lambda c: (counts[c], c))
    for fraction in fractions[:-1]:
        target = int(round(fraction / 100 * total_images))
        for c in class_order:
            if counts[c] == 0 or (chosen & (y[:, c] == 1)).any():
                continue
            positives = np.flatnonzero(y[:, c] == 1)
            best = int(min(positives, key=lambda p: (n_images[p], rank[p])))
            chosen[best] = True
            level[best] = fraction
            size += int(n_images[best])
        for p in order:
            if size >= target:
                break
            if not chosen[p] and size + n_images[p] <= target:
                chosen[p] = True
                level[p] = fraction
                size += int(n_images[p])
    return level[inverse]


def seeded_fraction(
    patient_ids: Sequence[str], labels: Sequence | np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """``[N]`` bool: the training images of the ``fraction`` subset drawn with ``seed`` (:func:`label_fractions`).

    For one seed the subsets of increasing fractions are nested, they are patient-level (all or none of a
    patient's images) and cover every class positive in the training images; different seeds draw different
    subsets. ``fraction`` 1.0 keeps every image.

    Args:
        patient_ids, labels: the TRAINING images only (one entry per image).
        fraction: one of 0.01, 0.1, 0.3, 1.0 (``FRACTIONS`` / 100).
        seed: the subset's seed (independent of the split's and of the datalist's fraction column).

    Raises:
        ValueError: ``fraction`` is not one of the label fractions, or ``seed`` is not an integer.
    """
    percent = float(fraction) * 100
    if not any(abs(percent - f) < 1e-9 for f in FRACTIONS):
        raise ValueError(f"fraction must be one of {[f / 100 for f in FRACTIONS]}, got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"the fraction seed must be an integer (or null for the datalist's subset), got {seed!r}")
    return label_fractions(patient_ids, labels, int(seed)) <= round(percent)


def subset_record(
    ids: Sequence[str], patient_ids: Sequence[str] | None, fraction: float | None, seed: int | None
) -> dict[str, Any]:
    """Provenance of a training subset: ``{"fraction", "fraction_seed", "n_images", "n_patients", "ids_sha256"}``.

    ``fraction_seed`` ``None`` means the datalist's fixed fraction column; ``ids_sha256`` is the SHA-256 of the
    sorted image ids joined by newlines (equal subsets have equal checksums whatever their order);
    ``n_patients`` is ``None`` when the patients are unknown.
    """
    ids = [str(i) for i in ids]
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
    return {
        "fraction": None if fraction is None else float(fraction),
        "fraction_seed": None if seed is None else int(seed),
        "n_images": len(ids),
        "n_patients": None if patient_ids is None else len({str(p) for p in patient_ids}),
        "ids_sha256": digest,
    }


def balanced_patients(patient_ids: Sequence[str], positive: Sequence[bool], seed: int) -> np.ndarray:
    """Per image: True for every image of every positive patient and of an equal number of negative
    patients drawn with the seed (all negatives when there are fewer than positives)."""
    positive = np.asarray(positive, dtype=bool)
    patients, y, _, inverse = patient_labels(patient_ids, positive.astype(np.uint8)[:, None])
    is_pos = y[:, 0] == 1
    negatives = np.flatnonzero(~is_pos)
    order = _rng(seed, _BALANCE_STREAM).permutation(len(negatives))
    keep = is_pos.copy()
    keep[negatives[order[: int(is_pos.sum())]]] = True
    return keep[inverse]


def check_patient_disjoint(patient_ids: Sequence[str], splits: Sequence[str], *, show: int = 5) -> None:
    """Raise ``LeakageError`` if any patient has images in more than one split (missing splits ignored)."""
    import pandas as pd

    frame = pd.DataFrame({"patient": np.asarray(patient_ids, dtype=object).astype(str),
                          "split": np.asarray(splits, dtype=object)})
    frame = frame[frame["split"].notna()]
    pairs_of = frame.drop_duplicates(["patient", "split"])
    n_splits = pairs_of["patient"].value_counts()
    if (n_splits > 1).any():
        multi = pairs_of[pairs_of["patient"].isin(list(n_splits.index[n_splits > 1]))]
        leaked = multi.groupby("patient", sort=True)["split"].agg(lambda s: tuple(sorted(map(str, s))))
        images = int(frame["patient"].isin(list(leaked.index)).sum())
        pairs = leaked.map(" & ".join).value_counts().sort_index()
        examples = ", ".join(f"{p} ({' & '.join(s)})" for p, s in leaked.head(show).items())
        raise LeakageError(
            f"{len(leaked)} patients ({images} images) occur in more than one split "
            f"[{', '.join(f'{k}: {v}' for k, v in pairs.items())}]; first: {examples}"
        )


def check_fractions(
    patient_ids: Sequence[str],
    splits: Sequence[str],
    fractions: Sequence,
    labels: Sequence | np.ndarray,
    *,
    allowed: Sequence[int] = FRACTIONS,
    train: str = "train",
) -> None:
    """Verify a fraction column: set exactly on training rows, values in ``allowed``, one value per patient,
    and every class positive in the training split has a positive patient in every fraction.

    Raises:
        FractionError: naming the first offending row or class.
    """
    import pandas as pd

    split = np.asarray(splits, dtype=object)
    values = pd.array(list(fractions), dtype="Int64")
    is_train = split == train
    has = ~np.asarray(pd.isna(values))
    if (has != is_train).any():
        row = int(np.flatnonzero(has != is_train)[0])
        raise FractionError(
            f"row {row}: fraction {values[row]} on split {split[row]!r}; fractions belong to the training rows only"
        )
    train_values = np.asarray(values[is_train], dtype=np.int64)
    bad = ~np.isin(train_values, list(allowed))
    if bad.any():
        raise FractionError(f"fraction values {sorted(set(train_values[bad].tolist()))} not in {list(allowed)}")
    pids = np.asarray(patient_ids, dtype=object).astype(str)[is_train]
    per_patient = pd.Series(train_values).groupby(pids).nunique()
    if (per_patient > 1).any():
        raise FractionError(f"patient {per_patient[per_patient > 1].index[0]!r} has images in different fractions")
    matrix = _as_matrix(labels, len(split))[is_train]
    for f in allowed:
        inside = train_values <= f
        missing = np.flatnonzero((matrix.sum(axis=0) > 0) & (matrix[inside].sum(axis=0) == 0))
        if missing.size:
            raise FractionError(f"fraction {f}% has no positive of class index {missing.tolist()} present in training")
