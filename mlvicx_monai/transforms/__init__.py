"""Transforms: the asymmetric two-view SSL augmentation and the downstream eval transform (grey, MONAI)."""

from .cache import DequantizeUint8d, QuantizeUint8d
from .intensity import Normalize, RandBrightnessContrast, RandGaussianBlur, RandSolarize
from .views import RandResizedCrop, TwoViewAugmentd, eval_transform, view_pipeline

__all__ = [
    "DequantizeUint8d",
    "QuantizeUint8d",
    "Normalize",
    "RandBrightnessContrast",
    "RandGaussianBlur",
    "RandResizedCrop",
    "RandSolarize",
    "TwoViewAugmentd",
    "eval_transform",
    "view_pipeline",
]
