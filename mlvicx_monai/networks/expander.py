"""Expander heads g and h: three linear layers, BN + ReLU after the first two (MLVICX section IV-C)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["Expander"]


class Expander(nn.Sequential):
    """``Linear-BN-ReLU, Linear-BN-ReLU, Linear[-BN]``: ``[B, in_dim]`` -> ``[B, out_dim]``.

    The linear layers carry no bias: each is followed by BatchNorm, which removes a constant offset, so a bias
    there would never receive a gradient (without ``last_bn`` the last layer has no bias either, as in the
    official VICReg projector).

    Args:
        in_dim: input features (512 for g on the pooled ResNet18 output; the aggregator's ``out_dim`` for h).
        hidden_dim: width of the two hidden layers (2048 in the paper, 4096 in the authors' code).
        out_dim: embedding width ``r``.
        last_bn: BatchNorm after the last linear layer (the MLVICX authors do; official VICReg does not).
        last_bn_affine: whether that last BatchNorm is affine (authors: ``True``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        last_bn: bool = True,
        last_bn_affine: bool = True,
    ) -> None:
        for arg, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}.")
        layers: list[nn.Module] = [
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        ]
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
        super().__init__(*layers)
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x`` ``[B, in_dim]`` -> ``[B, out_dim]``."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected input of shape [B, {self.in_dim}], got {tuple(x.shape)}.")
        return super().forward(x)
