"""Metrics of the downstream tasks: AUC (per class, mean, bootstrap CI), accuracy, Dice (per image and global)."""

from .classification import accuracy, bootstrap_auc_ci, bootstrap_mean_auc_samples, classification_report, mean_auc, per_class_auc
from .segmentation import DiceAccumulator, dice_per_image, global_dice, mean_dice

__all__ = [
    "DiceAccumulator",
    "accuracy",
    "bootstrap_auc_ci",
    "bootstrap_mean_auc_samples",
    "classification_report",
    "dice_per_image",
    "global_dice",
    "mean_auc",
    "mean_dice",
    "per_class_auc",
]
