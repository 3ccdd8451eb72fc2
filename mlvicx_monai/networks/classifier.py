"""Downstream classifier: the pretrained MLVICX encoder (context-bottleneck blocks kept) + one linear layer.

Two protocols (SPEC section 3):

- fine-tune (``freeze_encoder=False``): everything trains.
- frozen / linear probe (``freeze_encoder=True``): the encoder's parameters have ``requires_grad=False`` and the
  encoder stays in eval mode even after ``model.train()``, so its BatchNorm running statistics never change;
  only the linear head trains. Build the optimiser from :meth:`CXRClassifier.trainable_parameters`.

GradCAM: use the refined layer4 map, the map that is average-pooled into the head. It is the output of
``encoder.context.layer4`` when layer4 has a context block (the default) and of ``encoder.layer4`` otherwise;
:attr:`CXRClassifier.gradcam_target_layer` gives the right name::

    from monai.visualize import GradCAM
    cam = GradCAM(nn_module=model, target_layers=model.gradcam_target_layer)
    saliency = cam(x, class_idx=k)  # [B, 1, H, W], scaled to [0, 1]

With a frozen encoder no activation inside it requires a gradient; call ``x.requires_grad_(True)`` first so
that GradCAM's backward hook fires.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from mlvicx_monai.networks.encoder import MLVICXEncoder

__all__ = ["CXRClassifier", "EncoderSource", "FrozenEncoderMixin", "build_classifier", "resolve_encoder"]

#: What downstream builders accept as the encoder: an encoder module (used as is), a path to ``encoder.pt``
#: (loaded strictly by :func:`~mlvicx_monai.networks.artifacts.load_model`) or a configuration mapping
#: (a randomly initialised encoder, e.g. the from-scratch baseline).
EncoderSource = MLVICXEncoder | str | os.PathLike | Mapping


def resolve_encoder(source: EncoderSource) -> MLVICXEncoder:
    """Turn an :data:`EncoderSource` into an :class:`MLVICXEncoder`.

    Raises:
        TypeError: ``source`` is none of the accepted kinds.
        ArtifactError: a path that is missing or does not hold a fitting encoder artifact.
    """
    if isinstance(source, MLVICXEncoder):
        return source
    if isinstance(source, (str, os.PathLike)):
        from mlvicx_monai.networks.artifacts import ModelKind, load_model

        return load_model(source, expect=ModelKind.ENCODER)[0]
    if isinstance(source, Mapping):
        return MLVICXEncoder.from_config(source)
    raise TypeError(
        "expected an MLVICXEncoder, a path to encoder.pt or an encoder configuration mapping, "
        f"got {type(source).__name__}."
    )


class FrozenEncoderMixin:
    """Frozen-encoder semantics shared by the downstream models (mix in before :class:`torch.nn.Module`).

    The host module must have an ``encoder`` submodule. When frozen, the encoder's parameters do not require
    gradients and :meth:`train` keeps the encoder in eval mode (BatchNorm statistics fixed, no dropout).
    """

    @property
    def freeze_encoder(self) -> bool:
        """Whether the encoder is frozen (linear-probe / decoder-only protocol)."""
        return self._freeze_encoder

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the encoder: ``requires_grad`` of its parameters and its train/eval mode."""
        self._freeze_encoder = bool(frozen)
        if hasattr(self, "_config"):
            self._config["freeze_encoder"] = self._freeze_encoder
        for p in self.encoder.parameters():
            p.requires_grad_(not self._freeze_encoder)
        self.train(self.training)  # type: ignore[attr-defined]

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """As :meth:`torch.nn.Module.train`, but a frozen encoder always stays in eval mode."""
        super().train(mode)  # type: ignore[misc]
        if getattr(self, "_freeze_encoder", False):
            self.encoder.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters that require gradients (the new layers only when frozen): give these to the optimiser."""
        return (p for p in self.parameters() if p.requires_grad)  # type: ignore[attr-defined]


def _check_encoder(encoder: Any) -> None:
    if not isinstance(encoder, MLVICXEncoder):
        raise TypeError(f"encoder must be an MLVICXEncoder, got {type(encoder).__name__}.")
    if type(encoder).forward is not MLVICXEncoder.forward:
        raise TypeError(
            f"{type(encoder).__name__} overrides forward() (e.g. the U-Net backbone returns a feature list); "
            "pass a plain MLVICXEncoder: MLVICXEncoder.from_config(e.config) then load_state_dict(e.state_dict())."
        )


class CXRClassifier(FrozenEncoderMixin, nn.Module):
    """MLVICX encoder + one linear layer on the pooled 512-d representation.

    ``logits = head(dropout(encoder(x)))`` (``encoder(x)`` is the pooled ``[B, 512]``); the encoder keeps its
    context-bottleneck blocks.

    Args:
        encoder: the (pretrained) :class:`MLVICXEncoder`; used as is, not copied.
        num_classes: output logits ``C`` (14 for NIH multi-label, 1 for a binary task with a sigmoid loss).
        freeze_encoder: linear-probe protocol (see the module docstring); ``False``: fine-tune everything.
        dropout: dropout probability on the pooled features before the head (0: none).

    Input ``x`` ``[B, in_channels, H, W]`` (``in_channels`` of the encoder, 1 for radiographs; H, W >= 32);
    output logits ``[B, num_classes]``. :attr:`config` (the constructor arguments, the encoder's as its own config)
    and :meth:`from_config` rebuild the architecture.
    """

    __jit_unused_properties__ = ["config", "freeze_encoder", "gradcam_target_layer"]

    def __init__(
        self, encoder: MLVICXEncoder, num_classes: int, freeze_encoder: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        self.encoder = encoder
        self.num_classes = num_classes
        self.dropout = nn.Dropout(float(dropout)) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(encoder.feature_dim, num_classes)
        self._config = {"encoder": encoder.config, "num_classes": int(num_classes),
                                        "freeze_encoder": bool(freeze_encoder), "dropout": float(dropout)}
        self.set_encoder_frozen(freeze_encoder)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, with the encoder's :attr:`~MLVICXEncoder.config` under ``encoder``."""
        return {**self._config, "encoder": self.encoder.config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CXRClassifier":
        """An untrained classifier (random encoder and head) of the architecture ``config`` describes.

        Raises:
            ValueError: a missing or unknown key, or an invalid value.
        """
        known = {"encoder", "num_classes", "freeze_encoder", "dropout"}
        unknown, missing = sorted(set(config) - known), sorted({"encoder", "num_classes"} - set(config))
        if unknown or missing:
            raise ValueError(f"classifier config {dict(config)}: unknown keys {unknown}, missing keys {missing}.")
        return cls(MLVICXEncoder.from_config(config["encoder"]), int(config["num_classes"]),
                   bool(config.get("freeze_encoder", False)), float(config.get("dropout", 0.0)))

    @property
    def gradcam_target_layer(self) -> str:
        """Name (for MONAI's ``GradCAM(target_layers=...)``) of the module that outputs the pooled map."""
        return "encoder.context.layer4" if "layer4" in self.encoder.context else "encoder.layer4"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.dropout(self.encoder(x)))


def build_classifier(
    encoder_or_config: EncoderSource, num_classes: int, freeze_encoder: bool = False, dropout: float = 0.0
) -> CXRClassifier:
    """A :class:`CXRClassifier` from an encoder module, a path to ``encoder.pt`` or an encoder configuration.

    A path is loaded strictly (a missing or mismatched file raises ``ArtifactError``); a configuration mapping
    gives a randomly initialised encoder (from-scratch baseline).
    """
    return CXRClassifier(resolve_encoder(encoder_or_config), num_classes, freeze_encoder, dropout)
