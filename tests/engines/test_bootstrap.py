"""Patient-level (cluster) bootstrap of the AUC and Dice confidence intervals (mlvicx_monai.metrics.bootstrap)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mlvicx_monai.metrics import (
    bootstrap_auc_ci,
    bootstrap_counts,
    bootstrap_dice_ci,
    bootstrap_mean_auc_samples,
    classification_report,
    clusters_of,
    global_dice,
    mean_dice,
)


def _clustered(n_patients: int, per_patient: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients with ``per_patient`` images that share the label and a patient random effect of weight ``rho``."""
    rng = np.random.default_rng(seed)
    patient_label = (rng.random((n_patients, 2)) < [0.3, 0.15]).astype(np.int64)
    effect = rng.normal(size=(n_patients, 2))
    pid = np.repeat(np.arange(n_patients), per_patient)
    y = patient_label[pid]
    noise = rng.normal(size=y.shape)
    s = 0.8 * y + np.sqrt(rho) * effect[pid] + np.sqrt(1 - rho) * noise
    return y, s, np.asarray([f"P{p:04d}" for p in pid], dtype=object)


def _width(ci: tuple[float, float]) -> float:
    return ci[1] - ci[0]


def test_correlated_images_give_a_wider_patient_interval() -> None:
    """10 strongly correlated images per patient: resampling images understates the uncertainty."""
    y, s, pid = _clustered(120, 10, rho=0.9, seed=0)
    image = bootstrap_auc_ci(y, s, n_boot=400, seed=1)
    patient = bootstrap_auc_ci(y, s, n_boot=400, seed=1, patient_ids=pid)
    assert _width(patient) > 2.0 * _width(image)
    # the Dice interval too: per-image Dice shared within patients
    rng = np.random.default_rng(2)
    per_patient = rng.integers(0, 60, size=(120, 3))
    n_true, n_pred = np.repeat(per_patient[:, 0], 10) + 20, np.repeat(per_patient[:, 1], 10) + 20
    inter = np.minimum(np.repeat(per_patient[:, 2], 10), np.minimum(n_true, n_pred))
    img = bootstrap_dice_ci(inter, n_pred, n_true, n_boot=400, seed=1)
    pat = bootstrap_dice_ci(inter, n_pred, n_true, patient_ids=pid, n_boot=400, seed=1)
    assert _width(pat["mean_dice_per_image_ci"]) > 2.0 * _width(img["mean_dice_per_image_ci"])
    assert _width(pat["global_dice_ci"]) > 2.0 * _width(img["global_dice_ci"])
    assert (img["ci_unit"], img["n_clusters"], pat["ci_unit"], pat["n_clusters"]) == ("image", 1200, "patient", 120)


def test_one_patient_per_image_is_the_image_bootstrap() -> None:
    y, s, _ = _clustered(150, 1, rho=0.0, seed=3)
    own = [f"img{i}" for i in range(len(y))]
    a, skipped_a = bootstrap_mean_auc_samples(y, s, n_boot=70, seed=5)
    b, skipped_b = bootstrap_mean_auc_samples(y, s, n_boot=70, seed=5, patient_ids=own)
    np.testing.assert_array_equal(a, b)
    assert skipped_a == skipped_b
    counts = np.arange(len(y)) % 7
    image = bootstrap_dice_ci(counts, counts + 1, counts + 2, n_boot=50, seed=2)
    patient = bootstrap_dice_ci(counts, counts + 1, counts + 2, patient_ids=own, n_boot=50, seed=2)
    assert image["mean_dice_per_image_ci"] == patient["mean_dice_per_image_ci"]
    assert image["global_dice_ci"] == patient["global_dice_ci"]


def test_cluster_bootstrap_equals_sklearn_on_the_resampled_patients() -> None:
    """Each resample is exactly ``roc_auc_score`` / Dice of all images of the drawn patients (ties included)."""
    rng = np.random.default_rng(4)
    sizes = rng.integers(1, 6, size=40)
    pid = np.repeat([f"p{k}" for k in range(40)], sizes)
    y = (rng.random((pid.size, 3)) < [0.2, 0.4, 0.5]).astype(int)
    s = np.round(rng.normal(size=y.shape) + y, 0)  # heavy ties
    n_boot, seed = 25, 9  # one chunk: the reference replays the same draws
    means, skipped = bootstrap_mean_auc_samples(y, s, n_boot=n_boot, seed=seed, patient_ids=pid)
    draws = np.random.default_rng(seed).integers(0, 40, size=(n_boot, 40))
    members = [np.flatnonzero(pid == f"p{k}") for k in range(40)]  # ids appear in order p0, p1, ...
    ref = []
    for row in draws:
        rows = np.concatenate([members[k] for k in row])
        if all(0 < y[rows, c].sum() < rows.size for c in range(3)):
            ref.append(np.mean([roc_auc_score(y[rows, c], s[rows, c]) for c in range(3)]))
    assert skipped == n_boot - len(ref)
    np.testing.assert_allclose(means, ref, rtol=0, atol=1e-12)
    # Dice: per-resample values equal mean_dice / global_dice of the resampled masks
    pred = rng.random((pid.size, 4, 4)) < 0.3
    truth = rng.random((pid.size, 4, 4)) < 0.3
    truth[::3] = False  # empty truths
    flat_p, flat_t = pred.reshape(pid.size, -1), truth.reshape(pid.size, -1)
    counts = [(flat_p & flat_t).sum(1), flat_p.sum(1), flat_t.sum(1)]
    got = bootstrap_dice_ci(*counts, patient_ids=pid, n_boot=n_boot, seed=seed, alpha=0.2)
    md, gd = [], []
    for row in draws:
        rows = np.concatenate([members[k] for k in row])
        md.append(mean_dice(pred[rows], truth[rows]))
        gd.append(global_dice(pred[rows], truth[rows]))
    assert got["mean_dice_per_image_ci"] == pytest.approx(list(np.quantile(md, [0.1, 0.9])), abs=1e-12)
    assert got["global_dice_ci"] == pytest.approx(list(np.quantile(gd, [0.1, 0.9])), abs=1e-12)


def test_seeds_are_reproducible_and_matter() -> None:
    y, s, pid = _clustered(60, 3, rho=0.5, seed=6)
    a = bootstrap_mean_auc_samples(y, s, n_boot=80, seed=11, patient_ids=pid)[0]
    b = bootstrap_mean_auc_samples(y, s, n_boot=80, seed=11, patient_ids=list(pid))[0]
    c = bootstrap_mean_auc_samples(y, s, n_boot=80, seed=12, patient_ids=pid)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the clusters, not the order of their ids, define the resampling: renaming patients changes nothing
    renamed = np.asarray([f"z{999 - int(p[1:])}" for p in pid], dtype=object)
    np.testing.assert_array_equal(a, bootstrap_mean_auc_samples(y, s, n_boot=80, seed=11, patient_ids=renamed)[0])


def test_report_records_the_resampled_unit() -> None:
    y, s, pid = _clustered(50, 4, rho=0.5, seed=7)
    report = classification_report(y, s, ["a", "b"], n_boot=60, seed=0, patient_ids=pid)
    assert (report["ci_unit"], report["n_clusters"], report["n_images"]) == ("patient", 50, 200)
    assert report["auc_ci"] == pytest.approx(list(bootstrap_auc_ci(y, s, n_boot=60, seed=0, patient_ids=pid)))
    image = classification_report(y, s, ["a", "b"], n_boot=60, seed=0)
    assert (image["ci_unit"], image["n_clusters"]) == ("image", 200)
    json.dumps(report, allow_nan=False)


def test_bad_patient_ids_are_rejected_precisely() -> None:
    y, s, pid = _clustered(20, 2, rho=0.5, seed=8)
    with pytest.raises(ValueError, match=r"patient_ids has 39 entries for 40 images"):
        bootstrap_auc_ci(y, s, n_boot=10, patient_ids=pid[:-1])
    with pytest.raises(ValueError, match=r"patient_ids has 39 entries for 40 images"):
        classification_report(y, s, n_boot=10, patient_ids=pid[:-1])
    with pytest.raises(ValueError, match=r"1 missing ids \(first at image 3\)"):
        bootstrap_dice_ci(np.zeros(40), np.ones(40), np.ones(40), patient_ids=[*pid[:3], None, *pid[4:]], n_boot=5)
    with pytest.raises(TypeError, match="not a single string"):
        clusters_of("P0001", 1)
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        next(bootstrap_counts(clusters_of(None, 5), 0))
    with pytest.raises(ValueError, match="inter exceeds"):
        bootstrap_dice_ci([3], [2], [5], n_boot=5)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_dice_ci([1, 1], [2], [5], n_boot=5)
