"""Pneumothorax segmentation transfer (``segment.json``): data items, the Dice metrics and the final test report.

Two Dice numbers are reported, always under these names (SPEC section 3), both computed by MONAI metrics on
``sigmoid(logits) > threshold`` (the bundles' ``postprocessing``):

- ``mean_dice_per_image``: Dice of every test image, then the mean over images, with the SIIM-ACR convention for
  images without pneumothorax (empty truth and empty prediction = 1, empty truth and a non-empty prediction = 0):
  ``DiceMetric(include_background=True, ignore_empty=False)``;
- ``global_dice``: ``2 * sum(P & T) / (sum(P) + sum(T))`` over all pixels of all test images pooled: the F1 score of
  the pooled confusion matrix, ``ConfusionMatrixMetric(metric_name="f1 score", compute_sample=False, reduction="sum")``
  (1 when every truth and every prediction is empty).

Both get a percentile bootstrap 95% interval (``mean_dice_per_image_ci``, ``global_dice_ci``) that resamples the
test patients (all their images) when the datalist has patient ids, else the images (``ci_unit``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.handlers import ConfusionMatrix, IgniteMetricHandler
from monai.handlers.utils import from_engine
from monai.metrics import DiceMetric

from mlvicx_monai.data.datalist import DatalistError
from mlvicx_monai.engines.classify import patients_of, split_entries
from mlvicx_monai.engines.downstream import DownstreamReport
from mlvicx_monai.metrics.segmentation import bootstrap_dice_ci
from mlvicx_monai.utils.atomic import atomic_write_csv

__all__ = [
    "DICE_DEFINITIONS",
    "SEGMENT_DATASETS",
    "SegmentationReport",
    "global_dice_metric",
    "ids_as_meta",
    "mean_dice_metric",
    "segmentation_items",
]

logger = logging.getLogger(__name__)

#: ``demo``: the synthetic SIIM-layout data (generated on first use).
SEGMENT_DATASETS = ("demo", "siim")

DICE_DEFINITIONS = {
    "mean_dice_per_image": "Dice of each image, averaged over images; empty truth & empty prediction = 1, "
    "empty truth & non-empty prediction = 0 (SIIM-ACR leaderboard convention)",
    "global_dice": "2 * sum(P & T) / (sum(P) + sum(T)) over all pixels of all images pooled",
}

_PAIR = from_engine(["pred", "label"])


def mean_dice_metric(output_transform=_PAIR) -> IgniteMetricHandler:
    """Per-image mean Dice, SIIM-ACR convention (MONAI ``DiceMetric``, ``ignore_empty=False``: MONAI's ``MeanDice``
    handler does not expose it and would score empty truths NaN); per-image values in
    ``engine.state.metric_details``."""
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    return IgniteMetricHandler(metric_fn=metric, output_transform=output_transform, save_details=True)


def global_dice_metric(output_transform=_PAIR) -> ConfusionMatrix:
    """Global Dice: F1 of the confusion matrix pooled over every pixel of every image."""
    return ConfusionMatrix(include_background=True, metric_name="f1 score", compute_sample=False, reduction="sum",
                           output_transform=output_transform, save_details=False)


def _positive(entry: dict[str, Any]) -> int:
    if "label" in entry:
        return int(entry["label"][0])
    return int(bool(entry.get("mask_pixels_cached", entry.get("mask_pixels", 0))))


def segmentation_items(
    datalist_path: str | os.PathLike, split: str, fraction: float | None = None, fraction_seed: int | None = None
) -> list[dict[str, Any]]:
    """Items ``{"image": path, "label": mask path, "positive": 0/1, "id": str, "patient": str}`` of one split
    (``patient`` where the datalist has it).

    The mask goes under ``label``, the key MONAI's trainers and evaluators read the target from. ``fraction_seed``:
    ``None`` = the datalist's fixed fraction subset, an integer = a seeded patient-level subset stratified on
    ``positive`` (:func:`~mlvicx_monai.engines.classify.split_entries`).

    Raises:
        DatalistError: an entry has no mask (the datalist is not a segmentation datalist such as SIIM's).
    """
    entries = split_entries(datalist_path, split, fraction, fraction_seed, labels_of=lambda e: (_positive(e),))
    items = []
    for entry in entries:
        if not entry.get("mask"):
            raise DatalistError(
                f"{datalist_path}: entry {entry['id']} of split {split!r} has no mask; segmentation needs an ingested "
                "SIIM-ACR datalist (python -m pipelines.ingest --dataset siim ...)"
            )
        item = {"image": entry["image"], "label": entry["mask"], "positive": _positive(entry), "id": str(entry["id"])}
        if entry.get("patient"):
            item["patient"] = str(entry["patient"])
        items.append(item)
    return items


def ids_as_meta(batch: dict[str, Any]) -> list[dict[str, str]]:
    """``batch_transform`` of MONAI's ``MetricsSaver``: the items' ids as the file names of its per-image rows."""
    return [{"filename_or_obj": str(i)} for i in batch["id"]]


class SegmentationReport(DownstreamReport):
    """:class:`~mlvicx_monai.engines.downstream.DownstreamReport` of segmentation: runs ``test_evaluator`` (a MONAI
    evaluator over the test split with the two Dice metrics ``mean_dice_per_image`` / ``global_dice`` and the
    bundle's postprocessing) on the restored best weights and writes

    - ``output_dir/test_dice.csv``: ``id, truth_pixels, pred_pixels, dice`` per test image;
    - ``results.json["test"]``: both Dice numbers with their definitions and bootstrap intervals
      (``mean_dice_per_image_ci``, ``global_dice_ci``, ``ci_level``, ``ci_unit``, ``n_clusters``, ``n_boot``), the
      Dice of the images with a pneumothorax and the fraction of images without one that are predicted empty;
    - MLflow metrics ``test/mean_dice_per_image``, ``test/global_dice`` (each with ``_ci_low`` / ``_ci_high``),
      ``test/mean_dice_nonempty_truth``, ``test/empty_truth_correct``.

    ``class_names`` is the foreground class (default ``["Pneumothorax"]``). ``n_boot``: bootstrap resamples (0: no
    interval); ``test_patients``: ``{test id: patient}`` (:func:`~mlvicx_monai.engines.classify.patients_by_id`)
    for a patient-level bootstrap, ``None`` for an image-level one.
    """

    task = "segmentation"

    def __init__(
        self,
        *args: Any,
        test_evaluator: Engine,
        class_names=("Pneumothorax",),
        n_boot: int = 1000,
        test_patients: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, class_names=class_names, **kwargs)
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
            raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
        self.test_evaluator = test_evaluator
        self.n_boot = n_boot
        self.test_patients = dict(test_patients) if test_patients is not None else None
        self._rows: list[tuple[str, int, int]] = []
        self._inter: list[int] = []
        self._last: tuple[list[tuple[str, int, int, float]], dict[str, Any]] | None = None
        test_evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._count)

    def _count(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        pred, truth = output["pred"], output["label"]
        n_pred = pred.flatten(1).sum(1).tolist()
        n_true = truth.flatten(1).sum(1).tolist()
        self._inter.extend(int(v) for v in (pred.flatten(1).bool() & truth.flatten(1).bool()).sum(1).tolist())
        self._rows.extend(zip((str(i) for i in batch["id"]), map(int, n_true), map(int, n_pred)))

    def evaluate(self) -> tuple[dict[str, Any], dict[str, float]]:
        self._rows, self._inter = [], []
        self.test_evaluator.run()
        metrics = dict(self.test_evaluator.state.metrics)
        per_image = self.test_evaluator.state.metric_details["mean_dice_per_image"].flatten().cpu().numpy()
        if len(per_image) != len(self._rows):
            raise RuntimeError(f"{len(per_image)} per-image Dice values for {len(self._rows)} test images")
        empty = np.array([n_true == 0 for _, n_true, _ in self._rows])
        global_dice = float(metrics["global_dice"])
        if math.isnan(global_dice) and not any(n_true or n_pred for _, n_true, n_pred in self._rows):
            global_dice = 1.0  # nothing to find and nothing found
        summary = {
            "mean_dice_per_image": float(metrics["mean_dice_per_image"]),
            "global_dice": global_dice,
            "n_images": len(self._rows),
            "n_empty_truth": int(empty.sum()),
            "mean_dice_nonempty_truth": float(per_image[~empty].mean()) if (~empty).any() else None,
            "empty_truth_correct": float(per_image[empty].mean()) if empty.any() else None,
            "threshold": self.threshold,
            "definitions": DICE_DEFINITIONS,
        }
        if self.n_boot > 0:
            ids = [ident for ident, _, _ in self._rows]
            summary.update(bootstrap_dice_ci(
                self._inter, [q for _, _, q in self._rows], [t for _, t, _ in self._rows],
                patient_ids=patients_of(ids, self.test_patients), n_boot=self.n_boot,
                seed=int(self.provenance.get("seed", 0) or 0),
            ))
        rows = [[ident, n_true, n_pred, f"{dice:.8g}"] for (ident, n_true, n_pred), dice in zip(self._rows, per_image)]
        self._last = ([(i, t, q, float(d)) for (i, t, q), d in zip(self._rows, per_image)], summary)
        atomic_write_csv(self.output_dir / "test_dice.csv", rows, header=["id", "truth_pixels", "pred_pixels", "dice"])
        logger.info(
            "test: per-image mean Dice %.4f, global Dice %.4f (%d images, %d without pneumothorax); details in %s",
            summary["mean_dice_per_image"], summary["global_dice"], summary["n_images"], summary["n_empty_truth"],
            self.output_dir,
        )
        keys = ("mean_dice_per_image", "global_dice", "mean_dice_nonempty_truth", "empty_truth_correct")
        metrics = {f"test/{key}": summary[key] for key in keys if summary[key] is not None}
        for key in ("mean_dice_per_image", "global_dice"):
            low, high = summary.get(f"{key}_ci") or (None, None)
            if low is not None and math.isfinite(low):
                metrics[f"test/{key}_ci_low"], metrics[f"test/{key}_ci_high"] = low, high
        return summary, metrics

    def test_figures(self) -> dict[str, Any]:
        """The per-image Dice histogram of the test split."""
        from mlvicx_monai.tracking.figures import segmentation_figures

        return segmentation_figures(*self._last) if self._last is not None else {}
