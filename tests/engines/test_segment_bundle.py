"""The segment bundle (bundles/mlvicx_cxr/configs/segment.json) end to end on tiny synthetic SIIM data, and the Dice
bookkeeping and best-weights handling it is built from."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.handlers import CheckpointSaver

from mlvicx_monai.engines.downstream import SaverState, ValidationMetrics, restore_best
from mlvicx_monai.engines.segment import SegmentationReport
from mlvicx_monai.networks.artifacts import load_model
from mlvicx_monai.transforms import Preprocessing

from .conftest import REPO, TINY_SEGMENT

CONFIG = "bundles/mlvicx_cxr/configs/segment.json"


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


def test_the_bundles_test_evaluator_scores_a_hand_computed_case_with_empty_masks(tmp_path):
    logits, batches = _case()
    parser = ConfigParser()
    parser.read_config(str(REPO / CONFIG))
    parser.update({"test#dataloader": batches, "network": _Table(logits), "device_obj": torch.device("cpu"),
                   "output_dir": str(tmp_path)})
    report = SegmentationReport(tmp_path, _Table(logits), tmp_path / "best.pt", batches,
                                test_evaluator=parser.get_parsed_content("test#evaluator"),
                                preprocessing=Preprocessing(64), provenance={})
    summary, metrics = report.evaluate()
    with open(tmp_path / "test_dice.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [float(r["dice"]) for r in rows] == pytest.approx([1.0, 0.0, 2 / 3, 0.0])
    assert summary["mean_dice_per_image"] == pytest.approx((1 + 0 + 2 / 3 + 0) / 4)
    # global: intersections 0+0+2+0, |P|+|T| = 0 + 2 + 6 + 2
    assert summary["global_dice"] == pytest.approx(2 * 2 / 10) == metrics["test/global_dice"]
    assert summary["n_empty_truth"] == 2 and summary["empty_truth_correct"] == pytest.approx(0.5)
    assert summary["mean_dice_nonempty_truth"] == pytest.approx((2 / 3 + 0) / 2)
    assert set(summary["definitions"]) == {"mean_dice_per_image", "global_dice"}
    with open(tmp_path / "test_metrics" / "mean_dice_per_image_raw.csv") as handle:  # MONAI's MetricsSaver
        saved = {r["filename"]: float(r["mean"]) for r in csv.DictReader(handle)}
    assert saved == pytest.approx({"a": 1.0, "b": 0.0, "c": 2 / 3, "d": 0.0})


def test_best_weights_are_monais_checkpoint_saver_and_survive_a_resume(tmp_path):
    net = torch.nn.Linear(2, 1)
    scores = iter([0.5, 0.4, 0.45])

    def evaluator(metrics: ValidationMetrics, saver: CheckpointSaver) -> Engine:
        engine = Engine(lambda e, b: None)

        @engine.on(Events.EPOCH_COMPLETED)
        def _score(e):
            e.state.metrics["val_mean_dice"] = next(scores)

        metrics.attach(engine)  # first, as in the bundles: the history holds the epoch being saved
        saver.attach(engine)
        return engine

    def saver() -> CheckpointSaver:
        return CheckpointSaver(str(tmp_path), {"network": net, "validation": validation}, save_key_metric=True,
                               key_metric_name="val_mean_dice", key_metric_filename="best.pt",
                               key_metric_save_state=True)

    trainer = Engine(lambda e, b: None)
    trainer.state.epoch = 1
    validation = ValidationMetrics(trainer)
    first = saver()
    engine = evaluator(validation, first)
    engine.run([0], max_epochs=1)
    kept = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    trainer.state.epoch = 2
    engine.run([0], max_epochs=2)  # 0.4: worse, not saved
    state = {"best": SaverState(first).state_dict(), "validation": validation.state_dict()}

    # a resumed run: new handlers restored from the resumable checkpoint's state
    validation = ValidationMetrics(trainer)
    validation.load_state_dict(state["validation"])
    resumed = saver()
    SaverState(resumed).load_state_dict(state["best"])
    trainer.state.epoch = 3
    evaluator(validation, resumed).run([0], max_epochs=1)  # 0.45 < 0.5: a fresh saver would have overwritten best.pt
    assert [h["epoch"] for h in validation.history] == [1, 2, 3]
    assert restore_best(net, tmp_path / "best.pt") == {"epoch": 1, "metric": 0.5}
    assert all(torch.equal(kept[k], v) for k, v in net.state_dict().items())


@pytest.mark.slow
def test_segment_bundle_frozen_writes_both_dice_and_keeps_the_encoder(siim_demo, encoder_file, run_bundle, work):
    out = work / "segment-frozen"
    run_bundle(CONFIG, "--dataset_dir", siim_demo, "--output_dir", out, "--track", "False",
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
    # patient-level bootstrap intervals of both Dice numbers; the training subset is recorded
    assert test["ci_unit"] == "patient" and 0 < test["n_clusters"] <= test["n_images"] and test["n_boot"] == 1000
    for key in ("mean_dice_per_image", "global_dice"):
        low, high = test[f"{key}_ci"]
        assert low <= test[key] + 1e-9 and test[key] <= high + 1e-9
    subset = results["training_subset"]
    assert results["fraction_seed"] is None and subset["fraction_seed"] is None
    assert subset["n_images"] == results["n_images"]["train"] and len(subset["ids_sha256"]) == 64
    model, info = load_model(out / "model.pt", require_preprocessing=True)
    assert info.kind.value == "segmenter" and info.config["decoder_channels"] == [32, 16, 16, 8, 8]
    pretrained, _ = load_model(encoder_file, expect="encoder")
    before, after = pretrained.state_dict(), model.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], "decoder-only training changed the encoder"
