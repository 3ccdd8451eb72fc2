"""Losses: VICReg (official formulation, DDP-correct gathering) and the two-level MLVICX loss."""

from .distributed import FullGatherLayer, dist_world_size, gather_batch
from .mlvicx import MLVICXLoss
from .vicreg import VICRegLoss, covariance_loss, embedding_std, invariance_loss, off_diagonal, variance_loss

__all__ = [
    "FullGatherLayer",
    "MLVICXLoss",
    "VICRegLoss",
    "covariance_loss",
    "dist_world_size",
    "embedding_std",
    "gather_batch",
    "invariance_loss",
    "off_diagonal",
    "variance_loss",
]
