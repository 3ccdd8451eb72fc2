"""U-Net for SIIM-ACR segmentation whose encoder IS the pretrained MLVICX encoder (random decoder).

Built on MONAI's :class:`~monai.networks.nets.FlexibleUNet`: :class:`MLVICXFlexEncoder` is the MLVICX encoder
(same modules and ``state_dict`` keys, context-bottleneck blocks in the forward path) implementing MONAI's
:class:`~monai.networks.blocks.BaseEncoder` contract, and it is registered in ``FLEXUNET_BACKBONE`` when this
module is imported:

- ``"mlvicx-resnet18"``: blocks at all five levels (reduction 2, 7x7 spatial gate; the pretraining default);
- ``"mlvicx-resnet18-plain"``: no blocks (the plain VICReg / ResNet18 baseline);
- any other configuration gets its own name from :func:`register_mlvicx_backbone`.

FlexibleUNet's contract: ``encoder(x)`` returns the list of the 5 feature maps at strides 2, 4, 8, 16, 32 (here
the refined stem, layer1..layer4 maps, 64/64/128/256/512 channels); the decoder (:class:`UNetDecoder` of
``UpCat`` blocks) consumes the deepest map, skips the 4 others in reverse, and a fifth up-sampling block plus a
3x3 segmentation head return to full resolution. FlexibleUNet builds its encoder itself (random), so
:func:`build_segmenter` then copies the pretrained weights into ``unet.encoder`` with strict key and shape checks.

Input ``H`` and ``W`` must be multiples of 32 (the five stride-2 stages then line up exactly with the decoder;
the network is built with ``is_pad=False``), otherwise a ``ValueError`` is raised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from mlvicx_monai.networks.classifier import EncoderSource, FrozenEncoderMixin, resolve_encoder
from mlvicx_monai.networks.encoder import LEVEL_CHANNELS, LEVELS, MLVICXEncoder

__all__ = [
    "MLVICX_BACKBONE",
    "MLVICX_PLAIN_BACKBONE",
    "MLVICXFlexEncoder",
    "MLVICXUNet",
    "build_segmenter",
    "register_mlvicx_backbone",
]

MLVICX_BACKBONE = "mlvicx-resnet18"
MLVICX_PLAIN_BACKBONE = "mlvicx-resnet18-plain"

_DEFAULT_REDUCTION = 2
_DEFAULT_KERNEL = 7
_CONFIG_KEYS = ("levels", "in_channels", "reduction", "spatial_kernel_size", "zero_init_residual")


class MLVICXFlexEncoder(MLVICXEncoder, BaseEncoder):
    """The MLVICX encoder as a FlexibleUNet backbone: ``forward(x)`` returns the 5-map feature pyramid.

    Same modules and ``state_dict`` keys as :class:`MLVICXEncoder` of the same configuration, so an
    ``encoder.pt`` loads into it strictly. Only ``forward`` differs: ``x`` ``[B, in_channels, H, W]`` ->
    ``[stem [B, 64, H/2, W/2], layer1 [B, 64, H/4, W/4], layer2 [B, 128, H/8, W/8], layer3 [B, 256, H/16, W/16],
    layer4 [B, 512, H/32, W/32]]`` (refined maps where a context block exists).

    Args:
        spatial_dims: must be 2 (FlexibleUNet passes it).
        in_channels: input channels (FlexibleUNet passes its own ``in_channels``).
        pretrained: must be ``False``: there are no built-in weights; load ``encoder.pt`` with
            :func:`build_segmenter` / :meth:`MLVICXUNet.load_encoder_weights`.
        levels, reduction, spatial_kernel_size, zero_init_residual: as :class:`MLVICXEncoder`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        pretrained: bool = False,
        levels: Sequence[str] = LEVELS,
        reduction: int = _DEFAULT_REDUCTION,
        spatial_kernel_size: int = _DEFAULT_KERNEL,
        zero_init_residual: bool = False,
    ) -> None:
        if spatial_dims != 2:
            raise ValueError(f"the MLVICX encoder is 2-D, got spatial_dims={spatial_dims}.")
        if pretrained:
            raise ValueError(
                "the MLVICX backbone has no built-in weights (pretrained=True); build with pretrained=False and "
                "load encoder.pt with build_segmenter() or MLVICXUNet.load_encoder_weights()."
            )
        super().__init__(
            levels=levels,
            in_channels=in_channels,
            reduction=reduction,
            spatial_kernel_size=spatial_kernel_size,
            zero_init_residual=zero_init_residual,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """``x`` ``[B, in_channels, H, W]`` -> the 5 maps at strides 2, 4, 8, 16, 32 (FlexibleUNet's contract)."""
        return self.feature_pyramid(x)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        """Constructor arguments of the registered names (see :meth:`get_encoder_names`)."""
        return [_parameters(LEVELS, _DEFAULT_REDUCTION, _DEFAULT_KERNEL), _parameters((), 2, 7)]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        """Channels of the 5 output maps, per registered name."""
        channels = tuple(LEVEL_CHANNELS[lvl] for lvl in LEVELS)
        return [channels, channels]

    @classmethod
    def num_outputs(cls) -> list[int]:
        """Number of output maps (5), per registered name."""
        return [len(LEVELS), len(LEVELS)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        """``["mlvicx-resnet18", "mlvicx-resnet18-plain"]``."""
        return [MLVICX_BACKBONE, MLVICX_PLAIN_BACKBONE]


def _parameters(
    levels: Sequence[str], reduction: int, spatial_kernel_size: int, zero_init_residual: bool = False
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "spatial_dims": 2,
        "in_channels": 1,
        "pretrained": False,
        "levels": tuple(levels),
        "reduction": reduction,
        "spatial_kernel_size": spatial_kernel_size,
    }
    if zero_init_residual:
        params["zero_init_residual"] = True
    return params


FLEXUNET_BACKBONE.register_class(MLVICXFlexEncoder)


def _canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown encoder configuration key(s) {unknown}; expected a subset of {list(_CONFIG_KEYS)}.")
    levels = config.get("levels", LEVELS)
    if isinstance(levels, str):
        raise TypeError(f"levels must be a sequence of level names, not the string {levels!r}.")
    levels = tuple(levels)
    bad = [lvl for lvl in levels if lvl not in LEVELS]
    if bad or len(set(levels)) != len(levels):
        raise ValueError(f"invalid encoder levels {list(levels)}; choose distinct names from {LEVELS}.")
    in_channels = config.get("in_channels", 1)
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}.")
    return {
        "levels": tuple(lvl for lvl in LEVELS if lvl in levels),
        "in_channels": in_channels,
        "reduction": int(config.get("reduction", _DEFAULT_REDUCTION)),
        "spatial_kernel_size": int(config.get("spatial_kernel_size", _DEFAULT_KERNEL)),
        "zero_init_residual": bool(config.get("zero_init_residual", False)),
    }


def register_mlvicx_backbone(config: Mapping[str, Any] | None = None) -> str:
    """Register (idempotently) the FlexibleUNet backbone of an encoder configuration and return its name.

    Args:
        config: :class:`MLVICXEncoder` arguments (``levels``, ``in_channels``, ``reduction``,
            ``spatial_kernel_size``, ``zero_init_residual``), e.g. ``info["config"]`` of ``load_encoder``;
            ``None``: the default (all five levels).

    Returns:
        ``"mlvicx-resnet18"`` / ``"mlvicx-resnet18-plain"`` for the two standard configurations, otherwise a
        descriptive name such as ``"mlvicx-resnet18-layer3-layer4-r2-k7"``, usable as
        ``FlexibleUNet(backbone=name)`` in this process.
    """
    cfg = _canonical_config(config or {})
    levels, r, k, zir = cfg["levels"], cfg["reduction"], cfg["spatial_kernel_size"], cfg["zero_init_residual"]
    if not zir and levels == LEVELS and (r, k) == (_DEFAULT_REDUCTION, _DEFAULT_KERNEL):
        return MLVICX_BACKBONE
    if not zir and levels == ():
        return MLVICX_PLAIN_BACKBONE  # reduction and kernel size do not exist without blocks
    name = f"{MLVICX_BACKBONE}-{'-'.join(levels) or 'plain'}-r{r}-k{k}" + ("-zir" if zir else "")
    FLEXUNET_BACKBONE.register_dict[name] = {
        "type": MLVICXFlexEncoder,
        "feature_number": len(LEVELS),
        "feature_channel": tuple(LEVEL_CHANNELS[lvl] for lvl in LEVELS),
        "parameter": _parameters(levels, r, k, zir),
    }
    return name


class MLVICXUNet(FrozenEncoderMixin, FlexibleUNet):
    """MONAI ``FlexibleUNet`` with the MLVICX encoder as backbone (``self.encoder``: :class:`MLVICXFlexEncoder`).

    Args:
        encoder_config: :class:`MLVICXEncoder` configuration of the backbone (``None``: all five levels).
            The encoder is randomly initialised here; use :func:`build_segmenter` (or
            :meth:`load_encoder_weights`) to put the pretrained weights in.
        out_channels: output channels (1: binary pneumothorax logits).
        freeze_encoder: decoder-only training: encoder parameters do not require gradients and the encoder
            stays in eval mode (BatchNorm statistics fixed) even after ``.train()``.
        decoder_channels: channels of the 5 decoder stages (strides 16, 8, 4, 2, 1).
        dropout: dropout of the decoder blocks.
        upsample, interp_mode: decoder up-sampling (MONAI ``UpCat``; default nearest-neighbour + conv).

    Input ``[B, in_channels, H, W]`` with ``H``, ``W`` multiples of 32; output logits ``[B, out_channels, H, W]``.
    :attr:`config` (the constructor arguments, the encoder's as its own config under ``encoder``) and
    :meth:`from_config` rebuild the architecture. TorchScript-compatible.
    """

    __jit_unused_properties__ = ["config", "freeze_encoder"]
    _CONFIG_KEYS = (
        "encoder", "out_channels", "freeze_encoder", "decoder_channels", "dropout", "upsample", "interp_mode"
    )

    def __init__(
        self,
        encoder_config: Mapping[str, Any] | None = None,
        out_channels: int = 1,
        freeze_encoder: bool = False,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: float = 0.0,
        upsample: str = "nontrainable",
        interp_mode: str = "nearest",
    ) -> None:
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"out_channels must be a positive integer, got {out_channels!r}.")
        decoder_channels = tuple(decoder_channels)
        if len(decoder_channels) != len(LEVELS) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_channels
        ):
            raise ValueError(
                f"decoder_channels must be {len(LEVELS)} positive integers (one per decoder stage), "
                f"got {decoder_channels!r}."
            )
        cfg = _canonical_config(encoder_config or {})
        super().__init__(
            in_channels=cfg["in_channels"],
            out_channels=out_channels,
            backbone=register_mlvicx_backbone(cfg),
            pretrained=False,
            decoder_channels=decoder_channels,
            spatial_dims=2,
            dropout=dropout,
            upsample=upsample,
            interp_mode=interp_mode,
            is_pad=False,
        )
        self.in_channels = cfg["in_channels"]
        self.out_channels = out_channels
        self._config = {
            "out_channels": int(out_channels), "freeze_encoder": bool(freeze_encoder),
            "decoder_channels": list(decoder_channels), "dropout": float(dropout), "upsample": str(upsample),
            "interp_mode": str(interp_mode),
        }
        self.set_encoder_frozen(freeze_encoder)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, with the encoder's :attr:`~MLVICXEncoder.config` under ``encoder``."""
        return {"encoder": self.encoder.config, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MLVICXUNet":
        """An untrained U-Net of the architecture ``config`` describes (see :attr:`config`).

        Raises:
            ValueError: an unknown key or an invalid value.
        """
        unknown = sorted(set(config) - set(cls._CONFIG_KEYS))
        if unknown:
            raise ValueError(f"U-Net config {dict(config)}: unknown keys {unknown}; expected {list(cls._CONFIG_KEYS)}.")
        args = {k: v for k, v in config.items() if k != "encoder"}
        return cls(encoder_config=config.get("encoder"), **args)

    def load_encoder_weights(self, source: MLVICXEncoder | Mapping[str, torch.Tensor]) -> None:
        """Copy pretrained encoder weights into ``self.encoder``, strictly.

        Args:
            source: an :class:`MLVICXEncoder` (its ``state_dict``) or an encoder ``state_dict``.

        Raises:
            ArtifactError: a missing, unexpected or mis-shaped key (named in the message).
        """
        from mlvicx_monai.networks.artifacts import strict_load

        weights = source.state_dict() if isinstance(source, torch.nn.Module) else dict(source)
        strict_load(self.encoder, weights, f"encoder weights do not fit the U-Net backbone {self.backbone!r}")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` ``[B, in_channels, H, W]`` (H, W multiples of 32) -> logits ``[B, out_channels, H, W]``."""
        if inputs.ndim != 4 or inputs.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape [B, {self.in_channels}, H, W], got {list(inputs.shape)}.")
        h, w = inputs.shape[2], inputs.shape[3]  # no int(): keeps H, W symbolic under torch.export
        if h % 32 != 0 or w % 32 != 0 or h == 0 or w == 0:
            raise ValueError(
                f"input height and width must be positive multiples of 32 for the MLVICX U-Net, got {h}x{w}; "
                "resize or pad the image (e.g. monai.transforms.DivisiblePad(k=32))."
            )
        # FlexibleUNet.forward, written out: TorchScript cannot compile super() calls
        return self.segmentation_head(self.decoder(self.encoder(inputs), self.skip_connect))


def build_segmenter(
    encoder_or_config: EncoderSource,
    out_channels: int = 1,
    freeze_encoder: bool = False,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    dropout: float = 0.0,
) -> MLVICXUNet:
    """The SIIM-ACR U-Net: MLVICX encoder (pretrained weights, context blocks) + randomly initialised decoder.

    Args:
        encoder_or_config: an :class:`MLVICXEncoder` (its weights are copied), a path to ``encoder.pt`` (loaded
            strictly; ``ArtifactError`` if missing or mismatched) or a configuration mapping (random
            encoder: the from-scratch baseline).
        out_channels: output channels (1 for binary pneumothorax logits).
        freeze_encoder: decoder-only training with the encoder bit-identical (see :class:`MLVICXUNet`).
        decoder_channels: channels of the 5 decoder stages.
        dropout: dropout of the decoder blocks.

    Returns:
        :class:`MLVICXUNet`; input ``[B, in_channels, H, W]`` (H, W multiples of 32) -> ``[B, out_channels, H, W]``.
    """
    if isinstance(encoder_or_config, Mapping):
        return MLVICXUNet(encoder_or_config, out_channels, freeze_encoder, decoder_channels, dropout)
    encoder = resolve_encoder(encoder_or_config)
    unet = MLVICXUNet(encoder.config, out_channels, False, decoder_channels, dropout)
    unet.load_encoder_weights(encoder)
    unet.set_encoder_frozen(freeze_encoder)
    return unet
