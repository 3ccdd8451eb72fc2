"""VICReg loss as published (facebookresearch/vicreg ``main_vicreg.py``), MLVICX paper eqs. (3), (6)-(8)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .distributed import dist_world_size, gather_batch

__all__ = [
    "VICRegLoss",
    "covariance_loss",
    "embedding_std",
    "invariance_loss",
    "off_diagonal",
    "variance_loss",
]


def _at_least_float32(z: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 (autocast) -> float32; float32/float64 unchanged."""
    return z.float() if torch.finfo(z.dtype).bits < 32 else z


def off_diagonal(c: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal entries of a square matrix ``[r, r]`` -> ``[r * (r - 1)]``."""
    n, m = c.shape
    if n != m:
        raise ValueError(f"expected a square matrix, got shape {tuple(c.shape)}.")
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """inv(Z, Z') = mean over batch AND dimensions of (z1 - z2)^2 (``F.mse_loss``), eq. (6)."""
    return F.mse_loss(z1, z2)


def variance_loss(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """var(Z) = (1/r) sum_j relu(1 - sqrt(Var(Z[:, j]) + eps)), Var unbiased (b - 1), eq. (7). ``z`` ``[b, r]``."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return torch.mean(F.relu(1.0 - std))


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """cov(Z) = (1/r) sum_{l != q} C(Z)_{lq}^2, C(Z) = Z_c^T Z_c / (b - 1), Z_c centred per dimension, eq. (8)."""
    b, r = z.shape
    z = z - z.mean(dim=0)
    c = (z.T @ z) / (b - 1)
    return off_diagonal(c).pow(2).sum() / r


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation ``[r]`` of ``z`` ``[b, r]`` (float32, no gradient): the collapse
    detector (a collapsed embedding has std ~ 0 in most dimensions; VICReg drives it towards >= 1)."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"embedding_std expects a [b >= 2, r] tensor, got shape {tuple(z.shape)}.")
    return z.detach().float().std(dim=0)


class VICRegLoss(nn.Module):
    """VICReg: ``loss = inv_coeff * inv(Z, Z') + var_coeff * (var(Z) + var(Z')) / 2 + cov_coeff * (cov(Z) + cov(Z'))``.

    As in the official code the variance term is the *mean* of the two views' hinge (solo-learn's is twice this)
    and the covariance term is the *sum* over the views. Statistics are computed in (at least) float32, also under
    autocast.

    Under torch.distributed (initialised, world size > 1) the variance and covariance use the embeddings gathered
    from all ranks through :class:`~mlvicx_monai.losses.distributed.FullGatherLayer` (gradient all-reduced back to
    each rank's slice); the invariance term stays local. With DistributedDataParallel (which averages gradients)
    this reproduces one process on the global batch exactly, given equal per-rank batches.

    Args:
        inv_coeff: alpha (25).
        var_coeff: beta (25).
        cov_coeff: gamma (1).
        eps: added to the variance before the square root (1e-4).
        gather: ``"auto"`` (gather when distributed with world size > 1), ``True`` (require an initialised
            process group) or ``False`` (per-rank statistics).

    ``forward(z1, z2)`` takes two ``[b, r]`` embeddings of the same shape and returns
    ``{"loss", "inv", "var", "cov"}`` (0-d tensors, float32 for half/bf16/float32 inputs): the weighted total and
    the unweighted terms.
    """

    def __init__(
        self,
        inv_coeff: float = 25.0,
        var_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        gather: bool | str = "auto",
    ) -> None:
        super().__init__()
        for arg, value in (("inv_coeff", inv_coeff), ("var_coeff", var_coeff), ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"{arg} must be >= 0, got {value}.")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}.")
        if gather not in ("auto", True, False):
            raise ValueError(f"gather must be 'auto', True or False, got {gather!r}.")
        self.inv_coeff, self.var_coeff, self.cov_coeff = float(inv_coeff), float(var_coeff), float(cov_coeff)
        self.eps = float(eps)
        self.gather = gather

    def _should_gather(self) -> bool:
        if self.gather is False:
            return False
        if self.gather is True:
            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("VICRegLoss(gather=True) needs an initialised torch.distributed process group.")
            return dist.get_world_size() > 1
        return dist_world_size() > 1

    @staticmethod
    def _check(z1: torch.Tensor, z2: torch.Tensor) -> None:
        if not (isinstance(z1, torch.Tensor) and isinstance(z2, torch.Tensor)):
            raise TypeError(f"z1 and z2 must be tensors, got {type(z1).__name__} and {type(z2).__name__}.")
        if z1.ndim != 2 or z2.ndim != 2:
            raise ValueError(f"z1 and z2 must be 2-D [batch, dim], got shapes {tuple(z1.shape)} and {tuple(z2.shape)}.")
        if z1.shape != z2.shape:
            raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}.")
        if not (z1.is_floating_point() and z2.is_floating_point()):
            raise TypeError(f"z1 and z2 must be floating point, got {z1.dtype} and {z2.dtype}.")
        if z1.shape[1] < 2:
            raise ValueError(f"the embedding dimension must be >= 2 for the covariance term, got {z1.shape[1]}.")

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
        """``z1``, ``z2`` ``[b, r]`` -> ``{"loss", "inv", "var", "cov"}``."""
        self._check(z1, z2)
        gather = self._should_gather()
        if z1.shape[0] < 2 and not gather:
            raise ValueError(f"VICReg statistics need a batch of at least 2 samples, got {z1.shape[0]}.")
        with torch.autocast(device_type=z1.device.type, enabled=False):
            z1, z2 = _at_least_float32(z1), _at_least_float32(z2)
            inv = invariance_loss(z1, z2)  # local: mean over this rank's pairs
            if gather:
                z1, z2 = gather_batch(z1), gather_batch(z2)
                if z1.shape[0] < 2:
                    raise ValueError(f"VICReg statistics need a global batch of at least 2, got {z1.shape[0]}.")
            var = (variance_loss(z1, self.eps) + variance_loss(z2, self.eps)) / 2
            cov = covariance_loss(z1) + covariance_loss(z2)
            loss = self.inv_coeff * inv + self.var_coeff * var + self.cov_coeff * cov
        return {"loss": loss, "inv": inv, "var": var, "cov": cov}
