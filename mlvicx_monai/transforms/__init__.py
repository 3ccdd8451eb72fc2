"""Transforms: the asymmetric two-view SSL augmentation (per sample on the CPU, or batched on the device, one
shared configuration), the uint8 cache transforms and the downstream preprocessing chain stored with every model
(grey, MONAI)."""

from .batched_views import BatchedTwoViewAugment, ViewParams
from .cache import DequantizeUint8d, QuantizeUint8d
from .intensity import Normalize, RandBrightnessContrast, RandGaussianBlur, RandSolarize
from .preprocessing import Preprocessing, ToSourceCached
from .view_config import CROP_MODES, TwoViewConfig
from .views import RandResizedCrop, TwoViewAugmentd, eval_transform, view_pipeline

__all__ = [
    "BatchedTwoViewAugment",
    "CROP_MODES",
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
    "TwoViewConfig",
    "ViewParams",
    "eval_transform",
    "view_pipeline",
]
