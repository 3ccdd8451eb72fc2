"""Single-channel MONAI ResNet18 with context-bottleneck blocks in the forward path (the MLVICX encoder f)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from monai.networks.nets import ResNet, ResNetBlock

from .cbam import ContextBottleneck

__all__ = ["LEVELS", "LEVEL_CHANNELS", "LEVEL_STRIDES", "EncoderOutput", "MLVICXEncoder"]

#: Feature levels of ResNet18 in forward order: the stem (conv1+bn+relu, before the max-pool) and the 4 stages.
LEVELS: tuple[str, ...] = ("stem", "layer1", "layer2", "layer3", "layer4")
#: Channels of each level's feature map.
LEVEL_CHANNELS: dict[str, int] = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
#: Down-sampling factor of each level with respect to the input.
LEVEL_STRIDES: dict[str, int] = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class EncoderOutput(NamedTuple):
    """Output of :class:`MLVICXEncoder`.

    Attributes:
        pooled: ``[B, 512]`` global average of the (refined) layer4 map: the representation ``y`` of the paper.
        features: level name -> feature map ``[B, C_l, H / s_l, W / s_l]`` for all five levels in
            :data:`LEVELS` order; a level with a context-bottleneck block holds its refined map ``y_hat``.
    """

    pooled: torch.Tensor
    features: dict[str, torch.Tensor]


class MLVICXEncoder(ResNet):
    """ResNet18 (MONAI, 2-D, single channel input) with a :class:`ContextBottleneck` after each chosen level.

    The blocks sit in the forward path: the refined map of a level is what the next level consumes, so they are
    part of the backbone that downstream tasks inherit. ``levels=()`` is exactly MONAI's
    ``resnet18(spatial_dims=2, n_input_channels=1, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
    feed_forward=False)`` (the torchvision ResNet18 layout): same modules, same ``state_dict`` keys.

    ``state_dict()`` of this module is the pretrained encoder (``encoder.pt``); it loads strictly only into an
    encoder of the same configuration (the block parameters live under ``context.<level>.``). :attr:`config` holds
    the constructor arguments as given (stored, never read back from the modules) and :meth:`from_config` rebuilds
    the same architecture from them.

    Args:
        levels: levels refined by a context-bottleneck block, a subset of :data:`LEVELS` (any order, no
            duplicates). ``()`` gives the plain ResNet18 (the VICReg baseline).
        in_channels: input channels (1 for radiographs; do not replicate grey to RGB).
        reduction: bottleneck ratio of the blocks' channel MLP (2 in the authors' code).
        spatial_kernel_size: kernel size of the blocks' spatial gate convolution (7).
        zero_init_residual: zero-initialise the last BN of every residual block (official VICReg does;
            the MLVICX authors use the torchvision default, ``False``).

    Input ``[B, in_channels, H, W]`` (H, W multiples of 32 give exact strides); ``forward`` returns the pooled
    representation ``[B, 512]`` (what the encoder exports), :meth:`encode` the :class:`EncoderOutput` with the
    feature pyramid too. TorchScript-compatible (``torch.jit.script``), like MONAI's ResNet.
    """

    __jit_unused_properties__ = ["config", "feature_dim", "level_channels", "level_strides"]
    #: constructor arguments recorded in :attr:`config`
    CONFIG_KEYS: tuple[str, ...] = ("levels", "in_channels", "reduction", "spatial_kernel_size", "zero_init_residual")

    def __init__(
        self,
        levels: Sequence[str] = LEVELS,
        in_channels: int = 1,
        reduction: int = 2,
        spatial_kernel_size: int = 7,
        zero_init_residual: bool = False,
    ) -> None:
        if isinstance(levels, str):
            raise TypeError(f"levels must be a sequence of level names, not the string {levels!r}.")
        levels = tuple(levels)
        unknown = [lvl for lvl in levels if lvl not in LEVELS]
        if unknown:
            raise ValueError(f"unknown encoder level(s) {unknown}; choose from {LEVELS}.")
        if len(set(levels)) != len(levels):
            raise ValueError(f"duplicate encoder levels in {levels}.")
        for name, value in (
            ("in_channels", in_channels), ("reduction", reduction), ("spatial_kernel_size", spatial_kernel_size)
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        super().__init__(
            block=ResNetBlock,
            layers=[2, 2, 2, 2],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,  # the 1x1 shortcut conv is followed by BN: a bias there would be dead
            feed_forward=False,
        )
        # keep the configured order canonical so that equal configurations have equal state_dict layouts
        self.levels: tuple[str, ...] = tuple(lvl for lvl in LEVELS if lvl in levels)
        self.in_channels = in_channels
        self.reduction = reduction
        self.spatial_kernel_size = spatial_kernel_size
        self._config = {
            "levels": list(self.levels),
            "in_channels": int(in_channels),
            "reduction": int(reduction),
            "spatial_kernel_size": int(spatial_kernel_size),
            "zero_init_residual": bool(zero_init_residual),
        }
        self.context = nn.ModuleDict(
            {lvl: ContextBottleneck(LEVEL_CHANNELS[lvl], reduction, spatial_kernel_size) for lvl in self.levels}
        )
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, ResNetBlock):
                    nn.init.zeros_(m.bn2.weight)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-safe copy): :meth:`from_config` rebuilds the same modules and keys."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MLVICXEncoder":
        """An untrained encoder of the architecture ``config`` describes (see :attr:`config`).

        Raises:
            TypeError: ``config`` is not a mapping. ValueError: an unknown key or an invalid value.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"an encoder config must be a mapping, got {type(config).__name__}.")
        unknown = sorted(set(config) - set(cls.CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown encoder config key(s) {unknown}; expected a subset of {list(cls.CONFIG_KEYS)}.")
        return cls(**dict(config))

    @property
    def feature_dim(self) -> int:
        """Width of the pooled representation (512)."""
        return LEVEL_CHANNELS["layer4"]

    @property
    def level_channels(self) -> dict[str, int]:
        """Level name -> channels of its map, for all five levels."""
        return dict(LEVEL_CHANNELS)

    @property
    def level_strides(self) -> dict[str, int]:
        """Level name -> down-sampling factor of its map, for all five levels."""
        return dict(LEVEL_STRIDES)

    def _refine(self, level: str, x: torch.Tensor) -> torch.Tensor:
        # a loop over the ModuleDict rather than ``self.context[level]``: keeps the module TorchScript-compatible
        for name, block in self.context.items():
            if name == level:
                x = block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature pyramid ``{level: map}`` at strides 2, 4, 8, 16, 32 (refined where a block exists)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape [B, {self.in_channels}, H, W], got {list(x.shape)}.")
        feats: dict[str, torch.Tensor] = {}
        x = feats["stem"] = self._refine("stem", self.act(self.bn1(self.conv1(x))))
        x = self.maxpool(x)
        x = feats["layer1"] = self._refine("layer1", self.layer1(x))
        x = feats["layer2"] = self._refine("layer2", self.layer2(x))
        x = feats["layer3"] = self._refine("layer3", self.layer3(x))
        feats["layer4"] = self._refine("layer4", self.layer4(x))
        return feats

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five maps as a list in stride order 2, 4, 8, 16, 32 (e.g. for a U-Net decoder)."""
        feats = self.forward_features(x)
        return [feats["stem"], feats["layer1"], feats["layer2"], feats["layer3"], feats["layer4"]]  # scriptable

    def pool(self, layer4: torch.Tensor) -> torch.Tensor:
        """Global average of the (refined) layer4 map ``[B, 512, h, w]`` -> ``[B, 512]``."""
        return torch.flatten(self.avgpool(layer4), 1)

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """``x`` ``[B, in_channels, H, W]`` -> ``EncoderOutput(pooled [B, 512], features)``."""
        feats = self.forward_features(x)
        return EncoderOutput(self.pool(feats["layer4"]), feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x`` ``[B, in_channels, H, W]`` -> the pooled representation ``[B, 512]``."""
        return self.pool(self.forward_features(x)["layer4"])
