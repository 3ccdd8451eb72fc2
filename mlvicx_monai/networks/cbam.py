"""Context-bottleneck block (CBAM-style channel then spatial gating), MLVICX paper eqs. (1)-(2)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ContextBottleneck"]


class ContextBottleneck(nn.Module):
    """Context-bottleneck head ``C_t`` of MLVICX (CBAM: channel gate, then spatial gate).

    For a feature map ``y`` of shape ``[B, C, h, w]``::

        a_ch  = sigmoid(M(AvgPool(y)) + M(MaxPool(y)))          # [B, C, 1, 1]   eq. (1)
        k     = a_ch * y                                        # [B, C, h, w]
        a_s   = sigmoid(Conv7x7([mean_c(k); max_c(k)]))         # [B, 1, h, w]   eq. (2)
        y_hat = a_s * k                                         # [B, C, h, w]

    ``M`` is a shared bottleneck MLP of 1x1 convolutions ``C -> C/r -> C`` with ReLU and no bias (the
    authors' code, r = 2; the paper writes a single 1x1 conv). The 7x7 convolution has no bias (authors).

    Args:
        channels: number of channels ``C`` of the refined map.
        reduction: bottleneck ratio ``r`` of the channel MLP (hidden width ``max(1, C // r)``).
        spatial_kernel_size: odd kernel size of the spatial gate convolution (7 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 2, spatial_kernel_size: int = 7) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}.")
        if reduction < 1:
            raise ValueError(f"reduction must be >= 1, got {reduction}.")
        if spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(f"spatial_kernel_size must be a positive odd integer, got {spatial_kernel_size}.")
        hidden = max(1, channels // reduction)
        self.channels = channels
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )
        self.spatial_conv = nn.Conv2d(
            2, 1, kernel_size=spatial_kernel_size, padding=spatial_kernel_size // 2, bias=False
        )

    def channel_gate(self, y: torch.Tensor) -> torch.Tensor:
        """``a_ch`` of shape ``[B, C, 1, 1]`` for ``y`` of shape ``[B, C, h, w]``."""
        avg = torch.mean(y, dim=(2, 3), keepdim=True)
        mx = F.adaptive_max_pool2d(y, 1)  # index-based backward: cheaper than amax's equality mask
        both = self.channel_mlp(torch.cat([avg, mx], dim=0))  # the shared MLP, one call for both poolings
        return torch.sigmoid(both[: y.shape[0]] + both[y.shape[0] :])

    def spatial_gate(self, k: torch.Tensor) -> torch.Tensor:
        """``a_s`` of shape ``[B, 1, h, w]`` for the channel-refined ``k`` of shape ``[B, C, h, w]``."""
        avg = torch.mean(k, dim=1, keepdim=True)
        mx = torch.max(k, dim=1, keepdim=True)[0]  # index-based backward, as above
        return torch.sigmoid(self.spatial_conv(torch.cat([avg, mx], dim=1)))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Refine ``y`` ``[B, C, h, w]`` into ``y_hat`` of the same shape."""
        if y.ndim != 4 or y.shape[1] != self.channels:
            raise ValueError(f"expected a [B, {self.channels}, h, w] feature map, got shape {list(y.shape)}.")
        k = self.channel_gate(y) * y
        return self.spatial_gate(k) * k
