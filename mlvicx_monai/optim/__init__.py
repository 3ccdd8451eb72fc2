"""Optimisation: LARS (official VICReg form) and the warm-up + cosine learning-rate schedule."""

from .lars import LARS, exclude_bias_and_norm, lars_param_groups
from .schedule import WarmupCosine, scaled_lr, warmup_cosine

__all__ = ["LARS", "WarmupCosine", "exclude_bias_and_norm", "lars_param_groups", "scaled_lr", "warmup_cosine"]
