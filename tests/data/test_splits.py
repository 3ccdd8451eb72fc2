"""Patient-level splits, nested label fractions, leakage check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlvicx_monai.data import splits
from mlvicx_monai.data.splits import (
    FRACTIONS,
    FractionError,
    LeakageError,
    balanced_patients,
    check_fractions,
    check_patient_disjoint,
    label_fractions,
    stratified_patient_split,
)

RATIOS = {"train": 0.7, "val": 0.1, "test": 0.2}
REPO = Path(__file__).resolve().parents[2]


def synthetic(n_patients: int = 3000, n_classes: int = 6, seed: int = 0) -> tuple[list[str], list[tuple[int, ...]]]:
    """Patients with 1-4 images each, class prevalences from 30% down to a handful of patients."""
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.3, 0.1, 0.03, 0.01, 0.003, 0.0])[:n_classes]
    patient_ids, labels = [], []
    for p in range(n_patients):
        for _ in range(int(rng.integers(1, 5))):
            patient_ids.append(f"P{p:05d}")
            labels.append(tuple(int(v) for v in (rng.random(n_classes) < prevalence)))
    # the last class: exactly 4 positive patients (one image each)
    for p in (5, 17, 123, n_patients - 1):
        index = patient_ids.index(f"P{p:05d}")
        labels[index] = labels[index][:-1] + (1,)
    return patient_ids, labels


@pytest.fixture(scope="module")
def data():
    return synthetic()


def test_split_sizes_disjoint_and_class_coverage(data):
    pids, labels = data
    split = stratified_patient_split(pids, labels, RATIOS, seed=0)
    check_patient_disjoint(pids, split)
    frame = pd.DataFrame({"p": pids, "s": split})
    per_split = frame.drop_duplicates("p")["s"].value_counts().to_dict()
    n = frame["p"].nunique()
    assert per_split == dict(zip(RATIOS, splits.allocate(n, list(RATIOS.values())).tolist()))
    assert abs(per_split["val"] - 0.1 * n) <= 1 and abs(per_split["test"] - 0.2 * n) <= 1
    matrix = np.array(labels)
    for name in RATIOS:
        assert (matrix[split == name].sum(axis=0) > 0).all(), f"a class is missing from {name}"
        assert (matrix[split == name].sum(axis=1) == 0).any()
    # stratification keeps each class near its share (classes with >= 100 positive patients)
    patients, y, _, inverse = splits.patient_labels(pids, labels)
    patient_split = np.empty(len(patients), dtype=object)
    patient_split[inverse] = split
    for c in range(y.shape[1]):
        if y[:, c].sum() >= 100:
            assert abs((patient_split[y[:, c] == 1] == "train").mean() - 0.7) < 0.03


def test_split_is_seeded(data):
    pids, labels = data
    a = stratified_patient_split(pids, labels, RATIOS, seed=0)
    b = stratified_patient_split(list(reversed(pids)), list(reversed(labels)), RATIOS, seed=0)[::-1]
    assert np.array_equal(a, stratified_patient_split(pids, labels, RATIOS, seed=0))
    assert np.array_equal(a, b)  # input order does not matter
    assert not np.array_equal(a, stratified_patient_split(pids, labels, RATIOS, seed=1))


def test_split_with_too_few_positives_still_assigns_everything():
    pids = ["a", "b", "c", "d", "e"]
    labels = [(1,), (0,), (0,), (0,), (0,)]
    split = stratified_patient_split(pids, labels, RATIOS, seed=3)
    assert set(split) <= set(RATIOS) and len(split) == 5
    assert split[0] == "train"  # the only positive goes to the largest split


def test_fractions_nested_exact_patient_level_and_covering(data):
    pids, labels = data
    fraction = label_fractions(pids, labels, seed=0)
    assert set(fraction) <= set(FRACTIONS)
    check_fractions(pids, ["train"] * len(pids), fraction, labels)
    matrix = np.array(labels)
    previous: set[int] = set()
    for f in FRACTIONS:
        inside = set(np.flatnonzero(fraction <= f).tolist())
        assert previous <= inside  # 1% within 10% within 30% within 100%
        previous = inside
        assert len(inside) == round(f / 100 * len(pids))  # exact image count
        assert (matrix[sorted(inside)].sum(axis=0) > 0).all()  # every class, even the 4-patient one
    frame = pd.DataFrame({"p": pids, "f": fraction})
    assert (frame.groupby("p")["f"].nunique() == 1).all()  # all images of a patient together


def test_fractions_seeded_and_order_independent(data):
    pids, labels = data
    a = label_fractions(pids, labels, seed=0)
    assert np.array_equal(a, label_fractions(pids, labels, seed=0))
    assert np.array_equal(a, label_fractions(pids[::-1], labels[::-1], seed=0)[::-1])
    assert not np.array_equal(a, label_fractions(pids, labels, seed=1))


def test_fractions_coverage_beats_target_on_tiny_data():
    pids = [f"p{i}" for i in range(20)]
    labels = [(1, 0)] + [(0, 1)] + [(0, 0)] * 18
    fraction = label_fractions(pids, labels, seed=0)
    assert fraction[0] == 1 and fraction[1] == 1  # both rare classes in the 1% subset
    assert (fraction == 1).sum() == 3  # ... and a "no finding" patient


def test_fraction_argument_validation(data):
    with pytest.raises(ValueError, match="ending with 100"):
        label_fractions(["a"], [(1,)], seed=0, fractions=(1, 10))


SCRIPT = """
import hashlib, json, sys
sys.path.insert(0, {repo!r})
from tests.data.test_splits import synthetic
from mlvicx_monai.data.splits import stratified_patient_split, label_fractions, balanced_patients
pids, labels = synthetic(800)
split = stratified_patient_split(pids, labels, {{"train": 0.7, "val": 0.1, "test": 0.2}}, seed=7)
train = [i for i, s in enumerate(split) if s == "train"]
fr = label_fractions([pids[i] for i in train], [labels[i] for i in train], seed=7)
keep = balanced_patients(pids, [l[0] == 1 for l in labels], seed=7)
print(hashlib.sha256(json.dumps([list(map(str, split)), fr.tolist(), keep.tolist()]).encode()).hexdigest())
"""


@pytest.mark.slow  # fresh interpreters with other PYTHONHASHSEEDs
def test_reproducible_across_hash_seeds():
    outputs = set()
    for hash_seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        result = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO))], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=120, check=True)
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1


def test_leakage_error_names_count_and_patients():
    pids = ["p1", "p1", "p2", "p3", "p3", "p4"]
    split = ["train", "test", "val", "train", "val", None]
    with pytest.raises(LeakageError) as err:
        check_patient_disjoint(pids, split)
    message = str(err.value)
    assert message.startswith("2 patients (4 images) occur in more than one split")
    assert "test & train: 1" in message and "train & val: 1" in message
    assert "p1 (test & train)" in message and "p3 (train & val)" in message
    check_patient_disjoint(["a", "a", "b"], ["train", "train", "test"])


def test_check_fractions_errors():
    pids, split, labels = ["a", "b", "c"], ["train", "train", "test"], [(1,), (0,), (1,)]
    check_fractions(pids, split, [1, 100, None], labels)
    with pytest.raises(FractionError, match="training rows only"):
        check_fractions(pids, split, [1, 100, 100], labels)
    with pytest.raises(FractionError, match=r"not in \[1, 10, 30, 100\]"):
        check_fractions(pids, split, [5, 100, None], labels)
    with pytest.raises(FractionError, match="fraction 1% has no positive of class index"):
        check_fractions(pids, split, [100, 1, None], labels)
    with pytest.raises(FractionError, match="different fractions"):
        check_fractions(["a", "a", "c"], split, [1, 100, None], labels)


def test_balanced_patients():
    pids = [f"p{i}" for i in range(100)]
    positive = [i < 10 for i in range(100)]
    keep = balanced_patients(pids, positive, seed=0)
    assert keep[:10].all() and keep.sum() == 20
    assert np.array_equal(keep, balanced_patients(pids, positive, seed=0))
    assert not np.array_equal(keep, balanced_patients(pids, positive, seed=1))


# ------------------------------------------------------------------ seeded training subsets (fraction_seed)


def test_seeded_fractions_are_nested_patient_level_and_differ_by_seed() -> None:
    pids, labels = synthetic(n_patients=600, seed=3)
    pids_arr = np.asarray(pids)
    subsets = {}
    for seed in (0, 1):
        masks = [splits.seeded_fraction(pids, labels, f / 100, seed) for f in FRACTIONS]
        for small, large in zip(masks, masks[1:]):
            assert not (small & ~large).any()  # nested
        for mask in masks:  # patient-level: a patient is all in or all out
            inside, outside = set(pids_arr[mask]), set(pids_arr[~mask])
            assert not inside & outside
            assert (np.asarray(labels)[mask].sum(axis=0) > 0).sum() == (np.asarray(labels).sum(axis=0) > 0).sum()
        assert masks[-1].all()
        assert abs(masks[1].sum() - round(0.1 * len(pids))) <= 4
        subsets[seed] = masks[1]
    assert not np.array_equal(subsets[0], subsets[1])
    np.testing.assert_array_equal(subsets[0], splits.seeded_fraction(pids, labels, 0.1, 0))
    np.testing.assert_array_equal(subsets[0], label_fractions(pids, labels, seed=0) <= 10)


def test_seeded_fraction_rejects_bad_arguments_and_records_a_subset() -> None:
    pids, labels = synthetic(n_patients=300, seed=4)
    with pytest.raises(ValueError, match=r"fraction must be one of \[0.01, 0.1, 0.3, 1.0\], got 0.2"):
        splits.seeded_fraction(pids, labels, 0.2, 0)
    with pytest.raises(ValueError, match="fraction seed must be an integer"):
        splits.seeded_fraction(pids, labels, 0.1, "1")
    record = splits.subset_record(["b", "a", "c"], ["p1", "p1", "p2"], 0.1, 7)
    assert record == {"fraction": 0.1, "fraction_seed": 7, "n_images": 3, "n_patients": 2,
                      "ids_sha256": splits.subset_record(["c", "a", "b"], None, 0.1, 7)["ids_sha256"]}
    assert splits.subset_record(["a"], None, None, None)["n_patients"] is None
    assert record["ids_sha256"] != splits.subset_record(["a", "b"], None, 0.1, 7)["ids_sha256"]
