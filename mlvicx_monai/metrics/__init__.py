"""Metrics of the downstream tasks: AUC (per class, mean, bootstrap CI), accuracy, Dice (per image and global, bootstrap
CI); the bootstrap resamples patients where their ids are known (:mod:`.bootstrap`)."""

from .bootstrap import Clusters, bootstrap_counts, clusters_of, percentile_interval
from .classification import (
    accuracy,
    bootstrap_auc_ci,
    bootstrap_mean_auc_samples,
    classification_report,
    mean_auc,
    per_class_auc,
)
from .segmentation import DiceAccumulator, bootstrap_dice_ci, dice_per_image, global_dice, mean_dice

__all__ = [
    "Clusters",
    "DiceAccumulator",
    "accuracy",
    "bootstrap_auc_ci",
    "bootstrap_counts",
    "bootstrap_dice_ci",
    "bootstrap_mean_auc_samples",
    "classification_report",
    "clusters_of",
    "dice_per_image",
    "global_dice",
    "mean_auc",
    "mean_dice",
    "per_class_auc",
    "percentile_interval",
]
