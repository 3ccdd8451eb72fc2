"""bundles/segment.json end to end on tiny synthetic SIIM data, and the Dice bookkeeping of its report."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from mlvicx_monai.engines.downstream import BestCheckpoint
from mlvicx_monai.engines.segment import evaluate_segmentation
from mlvicx_monai.networks import load_encoder
from mlvicx_monai.networks.downstream_io import load_downstream

from .conftest import TINY_SEGMENT

pytestmark = pytest.mark.slow


class _Table(torch.nn.Module):
    """A 'network' that returns stored logits for the batch (looked up by the image's first pixel)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0, 0, 0].long()] + self.bias


def _case():
    """Four 4x4 images: hand-computed Dice 1 (both empty), 0 (empty truth, 2 predicted pixels),
    2*2/(3+3) = 2/3, and 0 (truth 2 pixels, empty prediction)."""
    truth = torch.zeros(4, 1, 4, 4)
    pred = torch.zeros(4, 1, 4, 4, dtype=torch.bool)
    pred[1, 0, 0, :2] = True
    truth[2, 0, 1, :3] = 1
    pred[2, 0, 1, 1:3] = True
    pred[2, 0, 2, 0] = True
    truth[3, 0, 3, 2:] = 1
    logits = torch.where(pred, 5.0, -5.0)
    images = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 4, 4).clone()
    batches = [{"image": images[:3], "label": truth[:3], "id": ["a", "b", "c"]},
               {"image": images[3:], "label": truth[3:], "id": ["d"]}]
    return logits, batches


def test_dice_of_the_engine_matches_a_hand_computed_case_with_empty_masks():
    logits, batches = _case()
    summary, rows = evaluate_segmentation(_Table(logits), batches, torch.device("cpu"))
    assert [r[0] for r in rows] == ["a", "b", "c", "d"]
    assert [r[3] for r in rows] == pytest.approx([1.0, 0.0, 2 / 3, 0.0])
    assert summary["mean_dice_per_image"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)
    # global: intersections 0+0+2+0, |P|+|T| = 0 + 2 + 6 + 2
    assert summary["global_dice"] == pytest.approx(2 * 2 / 10)
    assert summary["n_empty_truth"] == 2 and summary["empty_truth_correct"] == pytest.approx(0.5)
    assert summary["mean_dice_nonempty_truth"] == pytest.approx((2 / 3 + 0) / 2)
    assert set(summary["definitions"]) == {"mean_dice_per_image", "global_dice"}


def test_best_checkpoint_keeps_the_best_epoch_and_survives_a_resume(tmp_path):
    net = torch.nn.Linear(2, 1)

    def validate(score: float, epoch: int) -> None:
        engine = type("E", (), {"state": type("S", (), {"metrics": {"val_mean_dice": score}, "epoch": epoch})})()
        best(engine)

    best = BestCheckpoint(net, "val_mean_dice", tmp_path)
    validate(0.5, 1)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    validate(0.4, 2)  # worse: not saved
    resumed = BestCheckpoint(net, "val_mean_dice", tmp_path)
    resumed.load_state_dict(best.state_dict())
    assert resumed.best_epoch == 1 and resumed.best_metric == 0.5 and resumed.history == [(1, 0.5), (2, 0.4)]
    assert resumed.restore() == {"epoch": 1, "metric": {"val_mean_dice": 0.5}}
    assert all(torch.equal(kept[k], v) for k, v in net.state_dict().items())


def test_segment_bundle_frozen_writes_both_dice_and_keeps_the_encoder(siim_demo, encoder_file, run_bundle, work):
    out = work / "segment-frozen"
    run_bundle("bundles/segment.json", "--data_dir", siim_demo, "--output_dir", out, "--track", "false",
               "--pretrained", encoder_file, "--protocol", "frozen", *TINY_SEGMENT)
    results = json.loads((out / "results.json").read_text())
    test = results["test"]
    assert results["task"] == "segmentation" and results["protocol"] == "frozen"
    assert results["settings"] == {"batch_size": 8, "lr": 3e-4, "max_epochs": 2, "image_size": 64}
    assert results["n_positive"]["test"] * 2 == results["n_images"]["test"] or abs(
        results["n_positive"]["test"] * 2 - results["n_images"]["test"]) <= 2  # the balanced split
    with open(out / "test_dice.csv") as handle:
        rows = list(csv.DictReader(handle))
    dice = np.array([float(r["dice"]) for r in rows])
    n_true = np.array([int(r["truth_pixels"]) for r in rows])
    n_pred = np.array([int(r["pred_pixels"]) for r in rows])
    assert len(rows) == test["n_images"] == results["n_images"]["test"]
    assert test["mean_dice_per_image"] == pytest.approx(dice.mean())
    inter = dice * (n_true + n_pred) / 2
    expected_global = 1.0 if (n_true + n_pred).sum() == 0 else 2 * inter.sum() / (n_true + n_pred).sum()
    assert test["global_dice"] == pytest.approx(expected_global)
    assert (dice[(n_true == 0) & (n_pred == 0)] == 1).all() and (dice[(n_true == 0) & (n_pred > 0)] == 0).all()
    model, info = load_downstream(out / "model.pt")
    assert info["kind"] == "segmenter" and info["config"]["decoder_channels"] == [32, 16, 16, 8, 8]
    pretrained, _ = load_encoder(encoder_file)
    before, after = pretrained.state_dict(), model.encoder.state_dict()
    assert [k for k in before if not torch.equal(before[k], after[k])] == [], "decoder-only training changed the encoder"
