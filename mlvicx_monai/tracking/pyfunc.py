"""Registry format of our models: our own weights file + an MLflow pyfunc that rebuilds the model with this package.

Why not MLflow's own PyTorch flavour (measured with MLflow 3.17.2, torch 2.13 CPU; see tests/tracking):

- ``pt2`` (torch.export, MLflow's default outside Databricks): the encoder cannot be exported (its
  :class:`EncoderOutput` NamedTuple output has no registered serialisation); MONAI's stock ``FlexibleUNet``
  (resnet18 backbone) fails ("fake tensor in the exported program constant's list"); our ``MLVICXUNet``
  and the classifier do export, but what loads back is a ``GraphModule`` (no ``.encoder``, no frozen-encoder
  semantics, no GradCAM layer name, cannot be re-exported as ``encoder.pt``), shapes are guarded to what the
  signature declares, and export costs 10-35 s per model on 2 CPU cores.
- ``pickle`` (cloudpickle of the module): round-trips, but loading unpickles arbitrary code (MLflow warns),
  and the file is tied to the class layout of the code that wrote it.

This format: the artifact is a weights-only torch file (``encoder.pt`` exactly as
:func:`~mlvicx_monai.networks.save_encoder` writes it, or ``weights.pt`` = ``{"format": "mlvicx-model/1",
"kind", "config", "state_dict"}`` for the downstream models), read with ``torch.load(weights_only=True)`` and
loaded strictly into a model rebuilt from ``config`` by :mod:`mlvicx_monai.networks`. The pyfunc is logged
as *code* (:mod:`mlvicx_monai.tracking.pyfunc_code`), so no pickle at all is stored or loaded. Any batch size,
any image size the network accepts, any device (weights are mapped on load), and it loads as our own classes.
The cost: the loading environment needs this package installed (as it does for the pickle flavour).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
import torch.nn as nn

from mlvicx_monai.networks import (
    ENCODER_FORMAT,
    CXRClassifier,
    MLVICXEncoder,
    MLVICXUNet,
    PretrainedEncoderError,
    build_classifier,
    encoder_config,
    load_encoder,
    save_encoder,
)
from mlvicx_monai.utils.atomic import atomic_write

__all__ = [
    "KINDS",
    "MODEL_FORMAT",
    "WEIGHTS_FILES",
    "MLVICXPythonModel",
    "RegistryFormatError",
    "build_model",
    "infer_kind",
    "load_weights",
    "model_config",
    "save_weights",
    "unwrap_model",
]

#: Format tag of ``weights.pt`` (classifier, segmenter); the encoder uses ``encoder.pt`` (``mlvicx-encoder/1``).
MODEL_FORMAT = "mlvicx-model/1"
KINDS: tuple[str, ...] = ("encoder", "classifier", "segmenter")
#: File name of the weights artifact, per kind.
WEIGHTS_FILES: dict[str, str] = {"encoder": "encoder.pt", "classifier": "weights.pt", "segmenter": "weights.pt"}


class RegistryFormatError(ValueError):
    """A model or weights file that is not one of our registrable kinds, or does not fit its configuration."""


def unwrap_model(model: nn.Module, kind: str | None = None) -> nn.Module:
    """Strip DDP/DataParallel wrappers; for ``kind="encoder"`` take ``.encoder`` of a whole MLVICX model."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    if kind == "encoder" and not isinstance(model, MLVICXEncoder) and isinstance(getattr(model, "encoder", None), MLVICXEncoder):
        if not isinstance(model, (CXRClassifier, MLVICXUNet)):  # the siamese MLVICX model: its encoder is the export
            model = model.encoder
    return model


def infer_kind(model: nn.Module) -> str:
    """``"encoder"``, ``"classifier"`` or ``"segmenter"`` from the model's class."""
    model = unwrap_model(model)
    if isinstance(model, MLVICXUNet):
        return "segmenter"
    if isinstance(model, CXRClassifier):
        return "classifier"
    if isinstance(model, MLVICXEncoder):
        return "encoder"
    raise RegistryFormatError(
        f"cannot register a {type(model).__name__}: expected an MLVICXEncoder, a CXRClassifier or an MLVICXUNet"
    )


def _check_kind(model: nn.Module, kind: str) -> None:
    if kind not in KINDS:
        raise RegistryFormatError(f"kind must be one of {KINDS}, got {kind!r}")
    actual = infer_kind(model)
    if actual != kind:
        raise RegistryFormatError(f"kind={kind!r} but the model is a {type(model).__name__} ({actual})")


def _segmenter_config(unet: MLVICXUNet) -> dict[str, Any]:
    blocks = list(unet.decoder.blocks)
    dropout = next((m.p for m in unet.decoder.modules() if isinstance(m, nn.Dropout)), 0.0)
    first = blocks[0].upsample
    names = dict(first.named_children())
    if "deconv" in names:
        upsample, interp = "deconv", "nearest"
    elif "pixelshuffle" in names:
        upsample, interp = "pixelshuffle", "nearest"
    else:
        upsample, interp = "nontrainable", str(names["upsample_non_trainable"].mode)
    return {
        "encoder": encoder_config(unet.encoder),
        "out_channels": int(unet.out_channels),
        "decoder_channels": [int(b.convs.conv_1.conv.out_channels) for b in blocks],
        "dropout": float(dropout),
        "upsample": upsample,
        "interp_mode": interp,
        "freeze_encoder": bool(unet.freeze_encoder),
    }


def model_config(model: nn.Module, kind: str) -> dict[str, Any]:
    """JSON-safe constructor arguments that rebuild ``model`` (read back from its modules)."""
    model = unwrap_model(model, kind)
    _check_kind(model, kind)
    if kind == "encoder":
        return encoder_config(model)
    if kind == "classifier":
        drop = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
        return {
            "encoder": encoder_config(model.encoder),
            "num_classes": int(model.num_classes),
            "dropout": float(drop),
            "freeze_encoder": bool(model.freeze_encoder),
        }
    return _segmenter_config(model)


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained model of ``kind`` from :func:`model_config`'s output."""
    cfg = dict(config)
    if kind == "encoder":
        return MLVICXEncoder(**cfg)
    if kind == "classifier":
        return build_classifier(dict(cfg["encoder"]), cfg["num_classes"], cfg.get("freeze_encoder", False), cfg.get("dropout", 0.0))
    if kind == "segmenter":
        return MLVICXUNet(
            encoder_config=dict(cfg["encoder"]),
            out_channels=cfg["out_channels"],
            freeze_encoder=cfg.get("freeze_encoder", False),
            decoder_channels=tuple(cfg["decoder_channels"]),
            dropout=cfg.get("dropout", 0.0),
            upsample=cfg.get("upsample", "nontrainable"),
            interp_mode=cfg.get("interp_mode", "nearest"),
        )
    raise RegistryFormatError(f"kind must be one of {KINDS}, got {kind!r}")


def _strict_load(model: nn.Module, weights: Mapping[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}")
    if mismatched:
        problems.append(f"shape mismatch: {', '.join(mismatched[:5])}")
    if problems:
        raise RegistryFormatError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def save_weights(
    model: nn.Module, kind: str, path: str | os.PathLike, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write the weights artifact of ``model`` to ``path`` (atomically) and check it rebuilds strictly.

    ``kind="encoder"`` writes :func:`~mlvicx_monai.networks.save_encoder`'s ``encoder.pt``; the others
    ``weights.pt`` (:data:`MODEL_FORMAT`). The check at save time (rebuild from the config, strict load)
    means a version that registers is a version that loads.
    """
    model = unwrap_model(model, kind)
    _check_kind(model, kind)
    if kind == "encoder":
        return save_encoder(model, path, provenance=dict(provenance or {}))
    config = model_config(model, kind)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _strict_load(build_model(kind, config), state_dict, f"{type(model).__name__} does not rebuild from {config}")
    state = {"format": MODEL_FORMAT, "kind": kind, "config": config, "state_dict": state_dict,
             "provenance": dict(provenance or {})}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=True)


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a weights artifact (``encoder.pt`` or ``weights.pt``), strictly, in eval mode.

    Returns:
        (model, info) with info ``{"kind", "format", "config", "provenance"}``.

    Raises:
        RegistryFormatError: not one of our weights files, or weights that do not fit the declared config.
    """
    file = Path(path)
    if not file.is_file():
        raise RegistryFormatError(f"model weights file {file} does not exist")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RegistryFormatError(f"{file} is not a readable PyTorch file ({type(err).__name__}: {err})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt == ENCODER_FORMAT:
        try:
            encoder, info = load_encoder(file, map_location=map_location)
        except PretrainedEncoderError as err:
            raise RegistryFormatError(str(err)) from None
        return encoder.to(map_location).eval(), {"kind": "encoder", "format": fmt, **info}
    if fmt != MODEL_FORMAT:
        raise RegistryFormatError(f"{file} is not an MLVICX model file (format {fmt!r}; expected {MODEL_FORMAT!r} or {ENCODER_FORMAT!r})")
    kind, config = state.get("kind"), state.get("config") or {}
    try:
        model = build_model(kind, config)
    except (TypeError, ValueError, KeyError) as err:
        raise RegistryFormatError(f"{file} declares an invalid {kind} configuration {config}: {err}") from None
    _strict_load(model, state["state_dict"], f"{file} does not fit a {kind} of config {config}")
    model.to(map_location)
    return model.eval(), {"kind": kind, "format": fmt, "config": config, "provenance": state.get("provenance", {})}


def forward_array(model: nn.Module, kind: str, batch: torch.Tensor) -> torch.Tensor:
    """The tensor a registered model serves: encoder -> pooled ``[B, 512]``; classifier -> logits
    ``[B, C]``; segmenter -> logits ``[B, C, H, W]``."""
    out = model(batch)
    return out.pooled if kind == "encoder" else out


class MLVICXPythonModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of a registered MLVICX model: float32 ``[B, C, H, W]`` array in, float32 array out.

    Loading (``mlflow.pyfunc.load_model``) rebuilds the model from ``context.artifacts["weights"]`` on the
    device given as ``model_config={"device": ...}`` (default ``"cpu"``). The torch module is
    :attr:`model` (``loaded.unwrap_python_model().model``).
    """

    # predict() has no type hints on purpose (MLflow would infer a list-based signature from them instead of our
    # tensor signature); this MLflow class flag skips its type-hint wrapper and the warning it prints per import.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.kind: str | None = None
        self.device = torch.device("cpu")

    def load_context(self, context: Any) -> None:
        config = getattr(context, "model_config", None) or {}
        self.device = torch.device(config.get("device", "cpu"))
        self.model, info = load_weights(context.artifacts["weights"], map_location=self.device)
        self.kind = info["kind"]

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """float32 ``[B, C, H, W]`` (array, or a one-entry dict of it) -> float32 array (see :func:`forward_array`)."""
        if self.model is None:
            self.load_context(context)
        if isinstance(model_input, dict):
            if len(model_input) != 1:
                raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
            model_input = next(iter(model_input.values()))
        array = np.asarray(model_input, dtype=np.float32)
        with torch.inference_mode():
            out = forward_array(self.model, self.kind, torch.from_numpy(array).to(self.device))
        return out.float().cpu().numpy()
