"""Transforms: the asymmetric two-view SSL augmentation, the uint8 cache transforms and the downstream
preprocessing chain stored with every model (grey, MONAI)."""

from .cache import DequantizeUint8d, QuantizeUint8d
from .intensity import Normalize, RandBrightnessContrast, RandGaussianBlur, RandSolarize
from .preprocessing import Preprocessing, ToSourceCached
from .views import RandResizedCrop, TwoViewAugmentd, eval_transform, view_pipeline

__all__ = [
    "DequantizeUint8d",
    "QuantizeUint8d",
    "Normalize",
    "Preprocessing",
    "RandBrightnessContrast",
    "RandGaussianBlur",
    "RandResizedCrop",
    "RandSolarize",
    "ToSourceCached",
    "TwoViewAugmentd",
    "eval_transform",
    "view_pipeline",
]
