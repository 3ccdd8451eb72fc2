"""Pneumothorax segmentation transfer (``bundles/segment.json``): data items and the final test report.

Two Dice numbers are reported, always under these names (SPEC section 3):

- ``mean_dice_per_image``: Dice of every test image, then the mean over images, with the SIIM-ACR convention for
  images without pneumothorax (empty truth and empty prediction = 1, empty truth and a non-empty prediction = 0);
- ``global_dice``: ``2 * sum(P & T) / (sum(P) + sum(T))`` over all pixels of all test images pooled.

Both come from :class:`mlvicx_monai.metrics.DiceAccumulator` on ``sigmoid(logits) > threshold``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import convert_to_tensor
from monai.data import DataLoader

from mlvicx_monai.data.datalist import DatalistError, load_datalist
from mlvicx_monai.engines.downstream import DownstreamReport
from mlvicx_monai.metrics import DiceAccumulator
from mlvicx_monai.utils.atomic import atomic_write_csv

__all__ = ["DICE_DEFINITIONS", "SEGMENT_DATASETS", "SegmentationReport", "segmentation_items"]

logger = logging.getLogger(__name__)

#: ``demo``: the synthetic SIIM-layout data (generated on first use).
SEGMENT_DATASETS = ("demo", "siim")

DICE_DEFINITIONS = {
    "mean_dice_per_image": "Dice of each image, averaged over images; empty truth & empty prediction = 1, "
    "empty truth & non-empty prediction = 0 (SIIM-ACR leaderboard convention)",
    "global_dice": "2 * sum(P & T) / (sum(P) + sum(T)) over all pixels of all images pooled",
}


def segmentation_items(datalist_path: str | os.PathLike, split: str, fraction: float | None = None) -> list[dict[str, Any]]:
    """Items ``{"image": path, "label": mask path, "positive": 0/1, "id": str}`` of one split.

    The mask goes under ``label``, the key MONAI's trainers and evaluators read the target from.

    Raises:
        DatalistError: an entry has no mask (the datalist is not a segmentation datalist such as SIIM's).
    """
    entries = load_datalist(datalist_path, split, fraction=fraction if split == "train" else None)
    items = []
    for entry in entries:
        if not entry.get("mask"):
            raise DatalistError(
                f"{datalist_path}: entry {entry['id']} of split {split!r} has no mask; segmentation needs an ingested "
                "SIIM-ACR datalist (python -m pipelines.ingest --dataset siim ...)"
            )
        positive = int(bool(entry.get("mask_pixels_cached", entry.get("mask_pixels", 0)))) if "label" not in entry else int(entry["label"][0])
        items.append({"image": entry["image"], "label": entry["mask"], "positive": positive, "id": str(entry["id"])})
    return items


def _write_per_image(path: Path, rows: list[tuple[str, int, int, float]]) -> None:
    table = [[ident, n_true, n_pred, f"{dice:.8g}"] for ident, n_true, n_pred, dice in rows]
    atomic_write_csv(path, table, header=["id", "truth_pixels", "pred_pixels", "dice"])


@torch.no_grad()
def evaluate_segmentation(
    network: torch.nn.Module, loader: DataLoader, device: torch.device, threshold: float = 0.5
) -> tuple[dict[str, Any], list[tuple[str, int, int, float]]]:
    """Dice of ``network`` on ``loader`` (items with ``image``, ``label`` = mask, ``id``).

    Returns:
        ``(summary, rows)``: ``summary`` has ``mean_dice_per_image``, ``global_dice`` (see :data:`DICE_DEFINITIONS`),
        ``n_images``, ``n_empty_truth``, ``mean_dice_nonempty_truth`` and ``empty_truth_correct`` (fraction of
        images without pneumothorax predicted empty); ``rows`` = ``(id, truth pixels, predicted pixels, dice)``.
    """
    logit_threshold = math.log(threshold / (1.0 - threshold))
    acc = DiceAccumulator()
    rows: list[tuple[str, int, int, float]] = []
    was_training = network.training
    network.eval()
    try:
        for batch in loader:
            x = convert_to_tensor(batch["image"], device=device, track_meta=False)
            pred = (network(x) > logit_threshold).cpu()
            truth = torch.as_tensor(batch["label"]) > 0.5
            dice = acc.update(pred, truth)
            n_pred = pred.flatten(1).sum(1).tolist()
            n_true = truth.flatten(1).sum(1).tolist()
            rows.extend(zip((str(i) for i in batch["id"]), map(int, n_true), map(int, n_pred), map(float, dice)))
    finally:
        network.train(was_training)
    result = acc.compute()
    per_image = acc.per_image()
    empty = np.array([r[1] == 0 for r in rows])
    summary = {
        "mean_dice_per_image": result["mean_dice"],
        "global_dice": result["global_dice"],
        "n_images": result["n_images"],
        "n_empty_truth": result["n_empty_truth"],
        "mean_dice_nonempty_truth": float(per_image[~empty].mean()) if (~empty).any() else None,
        "empty_truth_correct": float(per_image[empty].mean()) if empty.any() else None,
        "threshold": float(threshold),
        "definitions": DICE_DEFINITIONS,
    }
    return summary, rows


class SegmentationReport(DownstreamReport):
    """:class:`~mlvicx_monai.engines.downstream.DownstreamReport` of segmentation: the test evaluation writes

    - ``output_dir/test_dice.csv``: ``id, truth_pixels, pred_pixels, dice`` per test image;
    - ``results.json["test"]`` = :func:`evaluate_segmentation` (``mean_dice_per_image`` and ``global_dice``, with
      their definitions);
    - MLflow metrics ``test/mean_dice_per_image``, ``test/global_dice``, ``test/mean_dice_nonempty_truth``,
      ``test/empty_truth_correct``.

    ``network`` is the U-Net; ``threshold`` the mask threshold on the sigmoid output; ``class_names`` the
    foreground class (default ``["Pneumothorax"]``).
    """

    task = "segmentation"

    def __init__(self, *args: Any, class_names: Sequence[str] = ("Pneumothorax",), **kwargs: Any) -> None:
        super().__init__(*args, class_names=class_names, **kwargs)

    def evaluate(self) -> tuple[dict[str, Any], dict[str, float]]:
        summary, rows = evaluate_segmentation(self.network, self.test_loader, self.device, self.threshold)
        _write_per_image(self.output_dir / "test_dice.csv", rows)
        logger.info(
            "test: per-image mean Dice %.4f, global Dice %.4f (%d images, %d without pneumothorax); results in %s",
            summary["mean_dice_per_image"], summary["global_dice"], summary["n_images"], summary["n_empty_truth"],
            self.output_dir / "results.json",
        )
        keys = ("mean_dice_per_image", "global_dice", "mean_dice_nonempty_truth", "empty_truth_correct")
        return summary, {f"test/{key}": summary[key] for key in keys if summary[key] is not None}
