"""Classification (AUC, bootstrap CI, accuracy) and segmentation (Dice) metrics of the downstream protocols."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric
from sklearn.metrics import roc_auc_score

from mlvicx_monai.metrics.classification import (
    accuracy,
    bootstrap_auc_ci,
    bootstrap_mean_auc_samples,
    classification_report,
    mean_auc,
    per_class_auc,
)
from mlvicx_monai.metrics.segmentation import DiceAccumulator, dice_per_image, global_dice, mean_dice


def _multilabel(n: int, c: int, seed: int, decimals: int | None = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels with class prevalences 5-40% and scores that are informative; rounding creates many ties."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.05, 0.4, c)
    y = (rng.random((n, c)) < prevalence).astype(np.int64)
    s = rng.normal(size=(n, c)) + 0.9 * y
    return y, (np.round(s, decimals) if decimals is not None else s)


# ----------------------------------------------------------------------------------------------- AUC


def test_per_class_auc_matches_sklearn_with_ties() -> None:
    y, s = _multilabel(300, 5, seed=1, decimals=1)
    assert len(np.unique(s[:, 0])) < 100  # many ties
    names = ["a", "b", "c", "d", "e"]
    got = per_class_auc(y, s, names)
    assert list(got) == names
    for j, name in enumerate(names):
        assert got[name] == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    assert mean_auc(y, s) == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(5)]), abs=1e-12)
    # torch tensors, bool labels and default integer keys give the same values
    got_t = per_class_auc(torch.as_tensor(y).bool(), torch.as_tensor(s, dtype=torch.float32).double())
    assert list(got_t) == [0, 1, 2, 3, 4]
    assert [got_t[j] for j in range(5)] == pytest.approx([got[n] for n in names], abs=1e-12)


def test_undefined_class_is_excluded_from_the_mean_and_reported() -> None:
    y, s = _multilabel(200, 4, seed=2)
    y[:, 1] = 0  # no positive
    y[:, 3] = 1  # no negative
    aucs = per_class_auc(y, s, ["a", "b", "c", "d"])
    assert aucs["b"] is None and aucs["d"] is None
    assert mean_auc(y, s) == pytest.approx(np.mean([aucs["a"], aucs["c"]]))
    report = classification_report(y, s, ["a", "b", "c", "d"], n_boot=50, seed=0)
    assert report["excluded_classes"] == ["b", "d"]
    assert report["n_positive"] == {"a": int(y[:, 0].sum()), "b": 0, "c": int(y[:, 2].sum()), "d": 200}
    assert report["mean_auc"] == pytest.approx(mean_auc(y, s))
    json.dumps(report, allow_nan=False)  # JSON-serialisable, no NaN
    assert "accuracy" not in report  # multi-label: accuracy only for a binary task
    # nothing defined: mean is nan, report says None
    assert math.isnan(mean_auc(np.zeros((10, 2)), np.random.default_rng(0).random((10, 2))))
    empty = classification_report(np.zeros((10, 2)), np.zeros((10, 2)), n_boot=10)
    assert empty["mean_auc"] is None and empty["auc_ci"] is None and empty["excluded_classes"] == ["0", "1"]


def test_bootstrap_equals_sklearn_on_the_resampled_rows() -> None:
    """The vectorised weighted-rank bootstrap gives exactly ``roc_auc_score`` on each resample (ties included)."""
    y, s = _multilabel(120, 4, seed=3, decimals=0)  # heavy ties
    y[:, 0] = 0
    y[:3, 0] = 1  # a rare class: some resamples lose all its positives and are skipped
    n_boot, seed = 30, 7  # a single chunk: the reference can draw the same rows
    means, skipped = bootstrap_mean_auc_samples(y, s, n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed).integers(0, 120, size=(n_boot, 120))
    ref = []
    for idx in draws:
        yy, ss = y[idx], s[idx]
        if all(0 < yy[:, j].sum() < len(idx) for j in range(4)):
            ref.append(np.mean([roc_auc_score(yy[:, j], ss[:, j]) for j in range(4)]))
    assert skipped == n_boot - len(ref) and skipped > 0
    np.testing.assert_allclose(means, ref, rtol=0, atol=1e-12)


def test_bootstrap_ci_contains_estimate_narrows_with_data_and_is_seeded() -> None:
    y_small, s_small = _multilabel(300, 3, seed=4, decimals=None)
    y_big, s_big = _multilabel(3000, 3, seed=5, decimals=None)
    lo_s, hi_s = bootstrap_auc_ci(y_small, s_small, n_boot=300, seed=0)
    lo_b, hi_b = bootstrap_auc_ci(y_big, s_big, n_boot=300, seed=0)
    assert lo_s < mean_auc(y_small, s_small) < hi_s
    assert lo_b < mean_auc(y_big, s_big) < hi_b
    assert (hi_b - lo_b) < 0.6 * (hi_s - lo_s)  # ~ 1/sqrt(10) expected
    assert bootstrap_auc_ci(y_small, s_small, n_boot=100, seed=1) == bootstrap_auc_ci(
        y_small, s_small, n_boot=100, seed=1
    )
    assert bootstrap_auc_ci(y_small, s_small, n_boot=100, seed=1) != bootstrap_auc_ci(
        y_small, s_small, n_boot=100, seed=2
    )
    wide = bootstrap_auc_ci(y_small, s_small, n_boot=300, alpha=0.01, seed=0)
    assert wide[0] <= lo_s and wide[1] >= hi_s
    report = classification_report(y_small, s_small, ["x", "y", "z"], n_boot=300, seed=0)
    assert report["auc_ci"] == pytest.approx([lo_s, hi_s])
    assert report["n_boot_skipped"] == 0 and report["ci_level"] == pytest.approx(0.95)


def test_binary_accuracy_and_report() -> None:
    y = np.array([1, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.2, 0.4, 0.5, 0.7, 0.1])
    assert accuracy(y, p) == pytest.approx(4 / 6)  # 0.5 counts as positive
    assert accuracy(y, p, threshold=0.35) == pytest.approx(5 / 6)
    assert accuracy(y[:, None], torch.as_tensor(p)[:, None]) == pytest.approx(4 / 6)
    report = classification_report(y, p, ["pneumonia"], n_boot=20)
    assert report["accuracy"] == pytest.approx(4 / 6) and report["threshold"] == 0.5
    assert report["per_class_auc"]["pneumonia"] == pytest.approx(roc_auc_score(y, p))
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match="binary"):
        accuracy(np.zeros((4, 2)), np.zeros((4, 2)))


def test_classification_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="same shape"):
        per_class_auc(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="only 0/1"):
        per_class_auc(np.array([0, 1, -1, 1]), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        per_class_auc(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.2, 0.3]))
    with pytest.raises(ValueError, match="class_names"):
        per_class_auc(np.array([[0, 1], [1, 0]]), np.zeros((2, 2)), ["only-one"])
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_auc_ci(np.array([0, 1]), np.array([0.1, 0.2]), n_boot=0)
    with pytest.raises(ValueError, match="undefined"):
        bootstrap_auc_ci(np.zeros(5), np.zeros(5), n_boot=5)


# ----------------------------------------------------------------------------------------------- Dice


def _hand_cases() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((4, 4, 4), dtype=bool)
    target = np.zeros((4, 4, 4), dtype=bool)
    # 0: empty truth, empty prediction -> 1
    # 1: empty truth, 2 predicted pixels -> 0
    pred[1, 0, :2] = True
    # 2: 3 true pixels, empty prediction -> 0
    target[2, 1, :3] = True
    # 3: |P| = 3, |T| = 2, |P & T| = 1 -> 2 * 1 / 5 = 0.4
    pred[3, 0, :3] = True
    target[3, 0, 2] = True
    target[3, 1, 2] = True
    return pred, target


def test_dice_hand_computed_siim_convention() -> None:
    pred, target = _hand_cases()
    np.testing.assert_allclose(dice_per_image(pred, target), [1.0, 0.0, 0.0, 0.4])
    assert mean_dice(pred, target) == pytest.approx((1.0 + 0.0 + 0.0 + 0.4) / 4)
    # global: sum|P & T| = 1, sum|P| = 2 + 3 = 5, sum|T| = 3 + 2 = 5
    assert global_dice(pred, target) == pytest.approx(2 * 1 / 10)
    # the all-empty case is defined (= 1) for both
    empty = np.zeros((3, 8, 8), dtype=bool)
    assert mean_dice(empty, empty) == 1.0 and global_dice(empty, empty) == 1.0
    # [N, 1, H, W], numeric 0/1 and torch tensors are accepted
    np.testing.assert_allclose(
        dice_per_image(torch.as_tensor(pred[:, None]).float(), target[:, None].astype(np.uint8)), [1, 0, 0, 0.4]
    )


def test_dice_matches_monai_dicemetric_on_non_empty_truth() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((6, 32, 32)) < 0.2
    pred = rng.random((6, 32, 32)) < 0.3
    target[:, 0, 0] = True  # every truth non-empty
    pred[2] = False  # an empty prediction against a non-empty truth -> 0 in both
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    metric(y_pred=torch.as_tensor(pred[:, None]).float(), y=torch.as_tensor(target[:, None]).float())
    monai_dice = metric.aggregate().numpy()[:, 0]
    np.testing.assert_allclose(dice_per_image(pred, target), monai_dice, atol=1e-6)
    # where they differ on purpose: MONAI leaves an empty truth undefined (nan), the SIIM convention scores it
    metric.reset()
    metric(y_pred=torch.zeros(1, 1, 8, 8), y=torch.zeros(1, 1, 8, 8))
    assert torch.isnan(metric.aggregate()).all()
    assert dice_per_image(np.zeros((1, 8, 8), bool), np.zeros((1, 8, 8), bool))[0] == 1.0


def test_dice_accumulator_streams_exactly() -> None:
    rng = np.random.default_rng(1)
    pred = rng.random((10, 16, 16)) < 0.1
    target = rng.random((10, 16, 16)) < 0.1
    target[3] = False
    pred[3] = False
    target[5] = False
    acc = DiceAccumulator()
    with pytest.raises(RuntimeError, match="before any update"):
        acc.compute()
    for start in (0, 4, 7):
        stop = {0: 4, 4: 7, 7: 10}[start]
        batch = acc.update(torch.as_tensor(pred[start:stop, None]), torch.as_tensor(target[start:stop, None]))
        assert batch.shape == (stop - start,)
    out = acc.compute()
    assert out["n_images"] == 10 and out["n_empty_truth"] == 2
    assert out["mean_dice"] == pytest.approx(mean_dice(pred, target))
    assert out["global_dice"] == pytest.approx(global_dice(pred, target))
    np.testing.assert_allclose(acc.per_image(), dice_per_image(pred, target))
    json.dumps(out, allow_nan=False)
    acc.reset()
    assert acc.n_images == 0


def test_dice_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        dice_per_image(np.full((1, 4, 4), 0.3), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="same shape"):
        dice_per_image(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="batch of masks"):
        dice_per_image(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="empty batch"):
        mean_dice(np.zeros((0, 4, 4), bool), np.zeros((0, 4, 4), bool))


@pytest.fixture(autouse=True)
def _no_sklearn_undefined_warnings():
    """The metrics never call sklearn on a single-class column (no UndefinedMetricWarning leaks)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Only one class")
        yield
