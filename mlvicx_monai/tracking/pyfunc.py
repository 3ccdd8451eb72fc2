"""Registry format of our models: our own weights file + an MLflow pyfunc that rebuilds the model with this package.

Why not MLflow's own PyTorch flavour (measured with MLflow 3.17.2, torch 2.13 CPU; see tests/tracking):

- ``pt2`` (torch.export, MLflow's default outside Databricks): MONAI's stock ``FlexibleUNet`` (resnet18
  backbone) fails ("fake tensor in the exported program constant's list"); our encoder, ``MLVICXUNet`` and the
  classifier do export, but what loads back is a ``GraphModule`` (no ``forward_features``, no ``.encoder``, no
  frozen-encoder
  semantics, no GradCAM layer name, cannot be re-exported as ``encoder.pt``), shapes are guarded to what the
  signature declares, and export costs 10-35 s per model on 2 CPU cores.
- ``pickle`` (cloudpickle of the module): round-trips, but loading unpickles arbitrary code (MLflow warns),
  and the file is tied to the class layout of the code that wrote it.

This format: the artifact is the very file the bundle wrote (``encoder.pt`` or ``model.pt``, the one model file format
of :mod:`mlvicx_monai.networks.artifacts`, preprocessing record included), read with ``torch.load(weights_only=True)``
and loaded strictly into a model rebuilt from its ``config``. The pyfunc is logged
as *code* (:mod:`mlvicx_monai.tracking.pyfunc_code`), so no pickle at all is stored or loaded. Any batch size,
any image size the network accepts, any device (weights are mapped on load), and it loads as our own classes.
The package's source is logged with the model (``code_paths``), so a registered version loads, and
``mlflow models serve`` serves it, in an environment that has only its pip requirements (torch, MONAI, MLflow).
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import torch
import torch.nn as nn

from mlvicx_monai.networks.artifacts import load_model

__all__ = ["MLVICXPythonModel"]


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
        self.model, info = load_model(context.artifacts["weights"], map_location=self.device)
        self.kind = info.kind.value

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a signature from them
        """float32 ``[B, C, H, W]`` (array, or a one-entry dict of it) -> float32 array: the model's ``forward``
        (encoder: pooled ``[B, 512]``; classifier: logits ``[B, C]``; segmenter: logits ``[B, C, H, W]``)."""
        if self.model is None:
            self.load_context(context)
        if isinstance(model_input, dict):
            if len(model_input) != 1:
                raise ValueError(f"expected one input tensor, got {sorted(model_input)}")
            model_input = next(iter(model_input.values()))
        array = np.asarray(model_input, dtype=np.float32)
        with torch.inference_mode():
            out = self.model(torch.from_numpy(array).to(self.device))
        return out.float().cpu().numpy()
