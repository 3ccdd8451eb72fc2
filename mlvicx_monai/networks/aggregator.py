"""Multi-level aggregation: the compound representation ``u`` of the refined maps (MLVICX section III-A1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MultiLevelAggregator", "resize_pool_matrix"]

_MODES = ("sum", "concat")


def resize_pool_matrix(
    size_in: int, common_size: int, pool_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Matrix ``[pool_size, size_in]`` of "bilinear resize to ``common_size`` then adaptive-average-pool to
    ``pool_size``" along one axis.

    Bilinear interpolation (``align_corners=False``, no antialias) is separable and applies the same 1-D linear
    weights per axis, and adaptive average pooling is separable too, so for a map ``y`` ``[..., h, w]``::

        adaptive_avg_pool2d(interpolate(y, common_size, "bilinear"), pool_size) == A_h @ y @ A_w.T

    The matrix is obtained by pushing the identity through ``F.interpolate(mode="linear")`` and
    ``F.adaptive_avg_pool1d``: the same operators PyTorch uses, not a re-derivation. Rows sum to 1.
    """
    eye = torch.eye(size_in, dtype=torch.float64)[:, None, :]  # [size_in, 1, size_in]: one basis vector per row
    resized = F.interpolate(eye, size=common_size, mode="linear", align_corners=False)  # [size_in, 1, common]
    pooled = F.adaptive_avg_pool1d(resized, pool_size)  # [size_in, 1, pool]
    return pooled[:, 0, :].T.contiguous().to(device=device, dtype=dtype or torch.get_default_dtype())


class MultiLevelAggregator(nn.Module):
    """Compound multi-level representation ``u`` of the refined maps ``{y_hat_p}``, flattened for the expander h.

    Modes:
        ``"sum"`` (authors' code): every map is resized (bilinear) to ``common_size`` x ``common_size``, projected
        by its own 1x1 conv to ``out_channels``, the projections are summed, average-pooled to ``pool_size`` x
        ``pool_size`` and flattened: ``u`` has ``out_channels * pool_size**2`` features.

        ``"concat"`` (paper, Fig. 1): every map is resized to the common size, the maps are concatenated along
        channels, pooled and flattened: ``u`` has ``sum(level_channels) * pool_size**2`` features. No parameters.

    Cost. The 1x1 conv, the bilinear resize and the average pooling are all linear, and the resize and pooling
    weights sum to 1 per output pixel, so ``pool(conv1x1(resize(y))) == conv1x1(pool(resize(y)))`` exactly, bias
    included. We therefore resize-and-pool first (one small separable matrix product per axis, see
    :func:`resize_pool_matrix`) and apply the 1x1 convs to ``pool_size x pool_size`` maps instead of 64x64 ones:
    the authors' order costs ``64*64 / (4*4) = 256`` times more conv FLOPs and materialises ``[B, 512, 64, 64]``
    per level. ``tests/networks/test_cbam_encoder.py`` checks numerical equality with the authors' order.

    Every parameter is created here, in ``__init__`` (the authors created the 1x1 convs lazily in ``forward``,
    after the optimiser had been built, so they never trained and strict loading failed).

    Args:
        level_channels: ``{level: channels}`` (ordered) of the maps to aggregate, or a sequence of channels
            (then ``forward`` takes a sequence of maps in that order).
        mode: ``"sum"`` or ``"concat"``.
        common_size: side of the common grid the maps are resized to (64 in the authors' code).
        out_channels: width of the per-level 1x1 projections (``"sum"`` only; 512 in the authors' code).
        pool_size: side of the pooled grid (4 in the authors' code).
        bias: bias of the 1x1 projections. Default ``False``: ``u`` feeds a linear layer followed by BatchNorm,
            which removes any constant offset, so a bias here would never receive a gradient.
    """

    def __init__(
        self,
        level_channels: Mapping[str, int] | Sequence[int],
        mode: str = "sum",
        common_size: int = 64,
        out_channels: int = 512,
        pool_size: int = 4,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        if isinstance(level_channels, Mapping):
            names = [str(k) for k in level_channels]
            channels = [int(v) for v in level_channels.values()]
        else:
            channels = [int(v) for v in level_channels]
            names = [str(i) for i in range(len(channels))]
        if not channels:
            raise ValueError("level_channels must name at least one level.")
        if any(c < 1 for c in channels):
            raise ValueError(f"every level needs >= 1 channel, got {dict(zip(names, channels))}.")
        for arg, value in (("common_size", common_size), ("out_channels", out_channels), ("pool_size", pool_size)):
            if value < 1:
                raise ValueError(f"{arg} must be >= 1, got {value}.")
        if pool_size > common_size:
            raise ValueError(f"pool_size ({pool_size}) cannot exceed common_size ({common_size}).")
        self.mode = mode
        self.level_names: tuple[str, ...] = tuple(names)
        self.level_channels: tuple[int, ...] = tuple(channels)
        self.keyed = isinstance(level_channels, Mapping)
        self.common_size = common_size
        self.pool_size = pool_size
        self.out_channels = out_channels if mode == "sum" else sum(channels)
        self.projections = (
            nn.ModuleDict({n: nn.Conv2d(c, out_channels, kernel_size=1, bias=bias) for n, c in zip(names, channels)})
            if mode == "sum"
            else None
        )
        self._matrices: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def out_dim(self) -> int:
        """Length of the flattened ``u``."""
        return self.out_channels * self.pool_size**2

    def _matrix(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.device, like.dtype)
        if key not in self._matrices:
            self._matrices[key] = resize_pool_matrix(n, self.common_size, self.pool_size, like.device, like.dtype)
        return self._matrices[key]

    def resize_pool(self, y: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C, pool, pool]`` == ``adaptive_avg_pool(interpolate(y, common_size))``."""
        a_h = self._matrix(y.shape[-2], y)
        a_w = self._matrix(y.shape[-1], y)
        return torch.matmul(a_h, torch.matmul(y, a_w.T))

    def _maps(self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(features, Mapping):
            if not self.keyed:
                raise TypeError("this aggregator was built from a channel sequence: pass a sequence of maps.")
            missing = [n for n in self.level_names if n not in features]
            if missing:
                raise KeyError(f"missing feature level(s) {missing}; got {list(features)}.")
            maps = [features[n] for n in self.level_names]
        else:
            maps = list(features)
            if len(maps) != len(self.level_channels):
                raise ValueError(f"expected {len(self.level_channels)} feature maps, got {len(maps)}.")
        for name, c, y in zip(self.level_names, self.level_channels, maps):
            if y.ndim != 4 or y.shape[1] != c:
                raise ValueError(f"level {name!r}: expected a [B, {c}, h, w] map, got {tuple(y.shape)}.")
        return maps

    def forward(self, features: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Maps ``{level: [B, C_l, h_l, w_l]}`` (extra levels ignored) -> ``u`` ``[B, out_dim]``."""
        maps = self._maps(features)
        pooled = [self.resize_pool(y) for y in maps]  # each [B, C_l, pool, pool]
        if self.projections is None:  # concat
            u = torch.cat(pooled, dim=1)
        else:  # sum of per-level 1x1 projections, applied after pooling (exactly equal, see class docstring)
            u = torch.stack([self.projections[n](p) for n, p in zip(self.level_names, pooled)]).sum(dim=0)
        return torch.flatten(u, 1)
