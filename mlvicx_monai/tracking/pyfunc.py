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
:func:`~mlvicx_monai.networks.save_encoder` writes it, or ``weights.pt`` = the bundles' ``model.pt``
(:mod:`mlvicx_monai.networks.downstream_io`, preprocessing record included) for the downstream models), read with ``torch.load(weights_only=True)`` and
loaded strictly into a model rebuilt from ``config`` by :mod:`mlvicx_monai.networks`. The pyfunc is logged
as *code* (:mod:`mlvicx_monai.tracking.pyfunc_code`), so no pickle at all is stored or loaded. Any batch size,
any image size the network accepts, any device (weights are mapped on load), and it loads as our own classes.
The cost: the loading environment needs this package installed (as it does for the pickle flavour).
"""

from __future__ import annotations

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
    encoder_config,
    load_encoder,
    save_encoder,
)
from mlvicx_monai.networks.downstream_io import (
    MODEL_FORMAT,
    DownstreamModelError,
    build_downstream,
    downstream_config,
    downstream_kind,
    load_downstream,
    save_downstream,
)
from mlvicx_monai.networks.downstream_io import unwrap_model as _unwrap
from mlvicx_monai.networks.pretrained import read_torch_file

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

KINDS: tuple[str, ...] = ("encoder", "classifier", "segmenter")
#: File name of the weights artifact, per kind.
WEIGHTS_FILES: dict[str, str] = {"encoder": "encoder.pt", "classifier": "weights.pt", "segmenter": "weights.pt"}


class RegistryFormatError(DownstreamModelError):
    """A model or weights file that is not one of our registrable kinds, or does not fit its configuration."""


def unwrap_model(model: nn.Module, kind: str | None = None) -> nn.Module:
    """Strip DDP/DataParallel wrappers; for ``kind="encoder"`` take ``.encoder`` of a whole MLVICX model."""
    model = _unwrap(model)
    if kind == "encoder" and not isinstance(model, MLVICXEncoder) and isinstance(getattr(model, "encoder", None), MLVICXEncoder):
        if not isinstance(model, (CXRClassifier, MLVICXUNet)):  # the siamese MLVICX model: its encoder is the export
            model = model.encoder
    return model


def infer_kind(model: nn.Module) -> str:
    """``"encoder"``, ``"classifier"`` or ``"segmenter"`` from the model's class."""
    model = _unwrap(model)
    if isinstance(model, MLVICXEncoder):
        return "encoder"
    try:
        return downstream_kind(model)
    except TypeError:
        raise RegistryFormatError(
            f"cannot register a {type(model).__name__}: expected an MLVICXEncoder, a CXRClassifier or an MLVICXUNet"
        ) from None


def _check_kind(model: nn.Module, kind: str) -> None:
    if kind not in KINDS:
        raise RegistryFormatError(f"kind must be one of {KINDS}, got {kind!r}")
    actual = infer_kind(model)
    if actual != kind:
        raise RegistryFormatError(f"kind={kind!r} but the model is a {type(model).__name__} ({actual})")


def model_config(model: nn.Module, kind: str) -> dict[str, Any]:
    """JSON-safe constructor arguments that rebuild ``model`` (read back from its modules)."""
    model = unwrap_model(model, kind)
    _check_kind(model, kind)
    return encoder_config(model) if kind == "encoder" else downstream_config(model)


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained model of ``kind`` from :func:`model_config`'s output."""
    if kind == "encoder":
        return MLVICXEncoder(**dict(config))
    if kind not in KINDS:
        raise RegistryFormatError(f"kind must be one of {KINDS}, got {kind!r}")
    return build_downstream(kind, config)


def save_weights(
    model: nn.Module,
    kind: str,
    path: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> Path:
    """Write the weights artifact of ``model`` to ``path`` (atomically); it is checked to rebuild strictly.

    ``kind="encoder"`` writes :func:`~mlvicx_monai.networks.save_encoder`'s ``encoder.pt``; the others the
    bundles' ``model.pt`` format (:func:`~mlvicx_monai.networks.downstream_io.save_downstream`), with
    ``preprocessing`` = ``{class_names, image_size, normalization[, threshold, source_size]}`` so that the registered version
    can be deployed by ``bundles/infer.json``.
    """
    model = unwrap_model(model, kind)
    _check_kind(model, kind)
    if kind == "encoder":
        return save_encoder(model, path, provenance=dict(provenance or {}))
    return save_downstream(model, path, provenance=provenance, **dict(preprocessing or {}))


def load_weights(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a weights artifact (``encoder.pt`` or ``weights.pt``/``model.pt``), strictly,
    in eval mode.

    Returns:
        (model, info) with info ``{"kind", "format", "config", "provenance"}`` (+ the preprocessing record of a
        downstream model).

    Raises:
        RegistryFormatError: not one of our weights files, or weights that do not fit the declared config.
    """
    file, state = read_torch_file(path, RegistryFormatError, "model weights file {file} does not exist", map_location)
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt == ENCODER_FORMAT:
        try:
            encoder, info = load_encoder(file, map_location=map_location)
        except PretrainedEncoderError as err:
            raise RegistryFormatError(str(err)) from None
        return encoder.to(map_location).eval(), {"kind": "encoder", "format": fmt, **info}
    if fmt != MODEL_FORMAT:
        raise RegistryFormatError(f"{file} is not an MLVICX model file (format {fmt!r}; expected {MODEL_FORMAT!r} or {ENCODER_FORMAT!r})")
    try:
        return load_downstream(file, map_location=map_location)
    except DownstreamModelError as err:
        raise RegistryFormatError(str(err)) from None


def forward_array(model: nn.Module, kind: str, batch: torch.Tensor) -> torch.Tensor:
    """The tensor a registered model serves: encoder -> pooled ``[B, 512]``; classifier -> logits
    ``[B, C]``; segmenter -> logits ``[B, C, H, W]``."""
    out = model(batch)
    return out.pooled if kind == "encoder" else out


class MLVICXPythonModel(mlflow.pyfunc.PythonModel):
    """The pyfunc of a registered MLVICX model: float32 ``[B, C, H, W]`` array in, float32 array out.

    Loading (``mlflow.pyfunc.load_model``) rebuilds the model from ``context.artifacts["weights"]`` on the
    device given as ``model_config={"torch_device": ...}`` (default ``"cpu"``; not ``device``, which
    MLflow would log as a run param and collide with the bundles' own ``device`` param). The torch module is
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
        self.device = torch.device(config.get("torch_device", "cpu"))
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
