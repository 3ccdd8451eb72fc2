"""MLVICX loss: L = L_G(z, z') + lambda * L_L(m, m'), paper eq. (5), with Table IV's ablations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .vicreg import VICRegLoss

__all__ = ["MLVICXLoss"]

_TERMS = ("both", "global", "local")


class MLVICXLoss(nn.Module):
    """``loss = L_G(z1, z2) + lambda_multilevel * L_L(m1, m2)``, both VICReg losses with the same coefficients.

    Args:
        lambda_multilevel: weight lambda of the multi-level term (1.0). ``0`` gives VICReg on the same encoder
            (L_L is still computed and logged; its gradient is zero).
        terms: ``"both"`` (eq. 5), ``"global"`` (L_G only, lambda ignored, m not needed) or ``"local"`` (L_L only,
            z not needed): the ablations of Table IV. Under DistributedDataParallel an unused expander then
            needs ``find_unused_parameters=True`` (or build the model without it).
        vicreg_kwargs: ``inv_coeff``, ``var_coeff``, ``cov_coeff``, ``eps``, ``gather`` of :class:`VICRegLoss`.

    ``forward(z1=None, z2=None, m1=None, m2=None)`` (so ``loss_fn(**model(v1, v2))`` works) returns a flat dict:
    ``loss`` (the differentiable total) and, detached for logging, ``global/{inv,var,cov,loss}`` and
    ``local/{inv,var,cov,loss}`` for every level that was computed.
    """

    def __init__(self, lambda_multilevel: float = 1.0, terms: str = "both", **vicreg_kwargs: Any) -> None:
        super().__init__()
        if terms not in _TERMS:
            raise ValueError(f"terms must be one of {_TERMS}, got {terms!r}.")
        if lambda_multilevel < 0:
            raise ValueError(f"lambda_multilevel must be >= 0, got {lambda_multilevel}.")
        self.lambda_multilevel = float(lambda_multilevel)
        self.terms = terms
        self.vicreg = VICRegLoss(**vicreg_kwargs)

    def forward(
        self,
        z1: torch.Tensor | None = None,
        z2: torch.Tensor | None = None,
        m1: torch.Tensor | None = None,
        m2: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Global embeddings ``z1, z2`` ``[b, r]`` and multi-level ``m1, m2`` ``[b, r']`` -> flat dict of scalars."""
        use_global = self.terms in ("both", "global")
        use_local = self.terms in ("both", "local")
        if use_global and (z1 is None or z2 is None):
            raise ValueError(f"terms={self.terms!r} needs the global embeddings z1 and z2.")
        if use_local and (m1 is None or m2 is None):
            raise ValueError(
                f"terms={self.terms!r} needs the multi-level embeddings m1 and m2 "
                "(build the model with multilevel=True)."
            )
        out: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        if use_global:
            g = self.vicreg(z1, z2)
            out.update({f"global/{k}": v.detach() for k, v in g.items()})
            total = g["loss"]
        if use_local:
            loc = self.vicreg(m1, m2)
            out.update({f"local/{k}": v.detach() for k, v in loc.items()})
            total = loc["loss"] if total is None else total + self.lambda_multilevel * loc["loss"]
        assert total is not None
        out["loss"] = total
        return out
