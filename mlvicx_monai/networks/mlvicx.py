"""The MLVICX siamese model (and plain VICReg as its special case)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .aggregator import MultiLevelAggregator
from .encoder import LEVEL_CHANNELS, LEVELS, MLVICXEncoder
from .expander import Expander

__all__ = ["MLVICX", "build_model"]


class MLVICX(nn.Module):
    """Joint-embedding model of MLVICX: one encoder f shared by both views, a global expander g and a
    multi-level expander h on the aggregated refined maps (Fig. 1 of the paper)::

        pooled, maps = f(v)                 # pooled [B, 512], maps {level: [B, C_l, h_l, w_l]}
        z = g(pooled)                       # [B, expander_dim]   global embedding
        m = h(aggregator(maps))             # [B, expander_dim]   multi-level embedding (if multilevel)

    Plain VICReg is ``MLVICX(encoder_levels=(), multilevel=False)`` (see :func:`build_model`).

    Args:
        encoder: the encoder f to train (e.g. the bundle's exportable ``network_def``); ``None`` builds one from
            ``encoder_levels``, ``in_channels``, ``reduction`` and ``zero_init_residual``, which must then keep their
            defaults-or-values consistent with it (passing both an encoder and non-default encoder arguments is an
            error).
        encoder_levels: levels refined by context-bottleneck blocks inside the encoder (``()``: plain ResNet18).
        aggregate: ``"sum"`` (authors' code) or ``"concat"`` (paper), see :class:`MultiLevelAggregator`.
        expander_dim: output width of g and h (2048 in the paper, 4096 in the authors' code).
        multilevel: build h and return ``m1``, ``m2``.
        aggregate_levels: levels fed to the aggregator; default: ``encoder_levels`` or, when that is empty,
            all five levels (the unrefined maps).
        expander_hidden_dim: hidden width of g and h (default ``expander_dim``).
        last_bn: BatchNorm after the last layer of g and h (authors: yes).
        common_size, aggregate_channels, pool_size: aggregator geometry (authors: 64, 512, 4).
        in_channels, reduction, zero_init_residual: passed to :class:`MLVICXEncoder`.

    ``forward(view1, view2)`` takes two ``[B, in_channels, H, W]`` batches and returns
    ``{"z1", "z2"}`` (each ``[B, expander_dim]``) plus ``{"m1", "m2"}`` when ``multilevel``.
    """

    def __init__(
        self,
        encoder: MLVICXEncoder | None = None,
        encoder_levels: Sequence[str] | None = None,
        aggregate: str = "sum",
        expander_dim: int = 2048,
        multilevel: bool = True,
        aggregate_levels: Sequence[str] | None = None,
        expander_hidden_dim: int | None = None,
        last_bn: bool = True,
        common_size: int = 64,
        aggregate_channels: int = 512,
        pool_size: int = 4,
        in_channels: int | None = None,
        reduction: int | None = None,
        zero_init_residual: bool | None = None,
    ) -> None:
        super().__init__()
        encoder_args = {"levels": encoder_levels, "in_channels": in_channels, "reduction": reduction,
                        "zero_init_residual": zero_init_residual}
        given = {k: v for k, v in encoder_args.items() if v is not None}
        if encoder is not None:
            if not isinstance(encoder, MLVICXEncoder) or type(encoder).forward is not MLVICXEncoder.forward:
                raise TypeError(f"encoder must be a plain MLVICXEncoder, got {type(encoder).__name__}.")
            config = encoder.config
            clash = {k: v for k, v in given.items() if (list(v) if k == "levels" else v) != config[k]}
            if clash:
                raise ValueError(f"encoder arguments {clash} contradict the given encoder's config {config}.")
            self.encoder = encoder
        else:
            self.encoder = MLVICXEncoder(**{"levels": LEVELS, **given})
        hidden = expander_hidden_dim or expander_dim
        self.global_expander = Expander(self.encoder.feature_dim, hidden, expander_dim, last_bn=last_bn)
        self.multilevel = multilevel
        self.aggregator: MultiLevelAggregator | None = None
        self.multilevel_expander: Expander | None = None
        if multilevel:
            if aggregate_levels is None:
                aggregate_levels = self.encoder.levels or LEVELS
            if isinstance(aggregate_levels, str):
                raise TypeError(f"aggregate_levels must be a sequence of level names, not {aggregate_levels!r}.")
            unknown = [lvl for lvl in aggregate_levels if lvl not in LEVELS]
            if unknown or not aggregate_levels:
                raise ValueError(f"aggregate_levels must be a non-empty subset of {LEVELS}, got {aggregate_levels}.")
            ordered = [lvl for lvl in LEVELS if lvl in aggregate_levels]
            self.aggregator = MultiLevelAggregator(
                {lvl: LEVEL_CHANNELS[lvl] for lvl in ordered},
                mode=aggregate,
                common_size=common_size,
                out_channels=aggregate_channels,
                pool_size=pool_size,
            )
            self.multilevel_expander = Expander(self.aggregator.out_dim, hidden, expander_dim, last_bn=last_bn)
        self.expander_dim = expander_dim

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One view ``[B, C, H, W]`` -> ``{"z": [B, r]}`` (+ ``"m": [B, r]`` when multilevel)."""
        pooled, maps = self.encoder.encode(x)
        out = {"z": self.global_expander(pooled)}
        if self.aggregator is not None and self.multilevel_expander is not None:
            out["m"] = self.multilevel_expander(self.aggregator(maps))
        return out

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict[str, torch.Tensor]:
        """Two views of the same images -> ``{"z1", "z2"[, "m1", "m2"]}``.

        The views go through the shared encoder in two calls (BatchNorm statistics per view, as in the official
        VICReg and the authors' code).
        """
        if view1.shape[0] != view2.shape[0]:
            raise ValueError(f"the two views must have the same batch size, got {view1.shape[0]} and {view2.shape[0]}.")
        e1, e2 = self.embed(view1), self.embed(view2)
        out = {"z1": e1["z"], "z2": e2["z"]}
        if "m" in e1:
            out["m1"], out["m2"] = e1["m"], e2["m"]
        return out


def build_model(name: str = "mlvicx", **kwargs: Any) -> MLVICX:
    """``"mlvicx"``: :class:`MLVICX` (context blocks on all five levels, multi-level head by default);
    ``"vicreg"``: the plain-VICReg baseline, ``MLVICX(encoder_levels=(), multilevel=False)``. ``kwargs`` override
    (``encoder=`` an existing encoder: for ``vicreg`` it must have no context blocks)."""
    key = name.lower()
    if key == "mlvicx":
        return MLVICX(**kwargs)
    if key == "vicreg":
        for arg, value in (("encoder_levels", ()), ("multilevel", False)):
            if arg in kwargs and kwargs[arg] != value and not (arg == "encoder_levels" and tuple(kwargs[arg]) == ()):
                raise ValueError(f"build_model('vicreg') fixes {arg}={value!r}; got {kwargs[arg]!r} (use 'mlvicx').")
        if kwargs.get("encoder") is not None:
            if kwargs["encoder"].levels:
                raise ValueError(
                    "build_model('vicreg') needs an encoder without context blocks, "
                    f"got levels {kwargs['encoder'].levels}."
                )
            kwargs.update(multilevel=False)
        else:
            kwargs.update(encoder_levels=(), multilevel=False)
        return MLVICX(**kwargs)
    raise ValueError(f"unknown model {name!r}; choose 'mlvicx' or 'vicreg'.")
