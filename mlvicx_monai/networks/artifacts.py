"""Model artifacts: the one file format of every model this project writes, and the one way to read it back.

Every writer and reader of weights goes through this module: the pretraining export (``encoder.pt``), the
downstream bundles' ``model.pt``, the registered versions' weights (:mod:`mlvicx_monai.tracking.pyfunc`), the
pretrained source of a downstream run, inference, and (through :func:`write_torch_file` /
:func:`read_torch_file`) the training and best-epoch checkpoints.

Kinds (:class:`ModelKind`): ``encoder`` (:class:`MLVICXEncoder`), ``classifier`` (:class:`CXRClassifier`),
``segmenter`` (:class:`MLVICXUNet`). File content (``torch.save`` of a dict; loads with
``torch.load(weights_only=True)``, no pickled code)::

    {"format": "mlvicx-artifact/2",
     "kind": "encoder" | "classifier" | "segmenter",
     "config": model.config,                 # the constructor arguments the model stored when it was built
     "state_dict": model.state_dict(),       # on CPU
     "preprocessing": Preprocessing.to_dict() | None,   # the input chain (mlvicx_monai.transforms.preprocessing)
     "class_names": [...] | None,            # one name per output channel (downstream models)
     "threshold": t | None,                  # decision threshold on the sigmoid (mask threshold of a segmenter)
     "provenance": {...}}                    # JSON-safe facts: task, dataset, datalist, seed, run id, metrics...

Architectures are rebuilt with each class's own ``from_config`` (nothing is read back from module internals) and
weights are loaded strictly: a missing, unexpected or mis-shaped key is an :class:`ArtifactError` that names the
keys, never a silent fall-back to random weights (the MLVICX authors' downstream code did that). Files of the
first format generation (``mlvicx-encoder/1``, ``mlvicx-model/1``) are still read.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mlvicx_monai.networks.classifier import CXRClassifier
from mlvicx_monai.networks.encoder import MLVICXEncoder
from mlvicx_monai.networks.unet import MLVICXUNet
from mlvicx_monai.transforms.preprocessing import Preprocessing
from mlvicx_monai.utils.atomic import atomic_write

__all__ = [
    "ARTIFACT_FORMAT",
    "ArtifactError",
    "ArtifactInfo",
    "ModelKind",
    "build_model",
    "load_model",
    "read_artifact",
    "read_torch_file",
    "save_model",
    "sniff",
    "state_dict_problems",
    "strict_load",
    "unwrap_model",
    "write_torch_file",
]

ARTIFACT_FORMAT = "mlvicx-artifact/2"
_LEGACY_ENCODER = "mlvicx-encoder/1"
_LEGACY_MODEL = "mlvicx-model/1"

#: other files of this project that people pass where a model is expected, and what to do instead
_NOT_A_MODEL = {
    "mlvicx-train-checkpoint/1": "a resumable training checkpoint (checkpoints/last.pt); use the encoder.pt or "
    "model.pt the run wrote next to its checkpoints folder",
}


class ArtifactError(ValueError):
    """A model file that is missing, of another kind, or whose weights do not fit the architecture it declares."""


class ModelKind(str, Enum):
    """The models this project trains, registers and deploys."""

    ENCODER = "encoder"
    CLASSIFIER = "classifier"
    SEGMENTER = "segmenter"

    @property
    def model_class(self) -> type[nn.Module]:
        return {
            ModelKind.ENCODER: MLVICXEncoder, ModelKind.CLASSIFIER: CXRClassifier, ModelKind.SEGMENTER: MLVICXUNet
        }[self]

    @property
    def file_name(self) -> str:
        """Conventional file name: ``encoder.pt`` for the pretrained encoder, ``model.pt`` for downstream models."""
        return "encoder.pt" if self is ModelKind.ENCODER else "model.pt"

    @classmethod
    def of(cls, model: nn.Module) -> "ModelKind":
        """The kind of ``model`` (DDP / DataParallel / ``torch.compile`` wrappers stripped).

        Raises:
            ArtifactError: none of the three classes (e.g. the siamese pretraining model: export its ``.encoder``).
        """
        module = unwrap_model(model)
        # the U-Net's encoder is an MLVICXEncoder subclass with another forward: check the downstream classes first
        for kind in (cls.SEGMENTER, cls.CLASSIFIER):
            if isinstance(module, kind.model_class):
                return kind
        if isinstance(module, MLVICXEncoder) and type(module).forward is MLVICXEncoder.forward:
            return cls.ENCODER
        raise ArtifactError(
            f"{type(module).__name__} is not a model this project saves; expected an MLVICXEncoder, a CXRClassifier or "
            "an MLVICXUNet (for the pretraining model, save its .encoder)"
        )


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


# ---------------------------------------------------------------------------------------------------- weights


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def state_dict_problems(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[str]:
    """What stops ``weights`` from loading strictly where ``expected`` (a ``state_dict()``) is: missing, unexpected
    and mis-shaped keys, each named (PyTorch's own error stops at the first kind of problem). Empty: it fits."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_describe(unexpected)}")
    if mismatched:
        problems.append(
            "shape mismatch: "
            + _describe([f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched])
        )
    return problems


def strict_load(model: nn.Module, weights: Mapping[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(weights, strict=True)`` after listing every missing, unexpected and mis-shaped key in
    one :class:`ArtifactError` that starts with ``what``."""
    problems = state_dict_problems(model.state_dict(), weights)
    if problems:
        raise ArtifactError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def build_model(kind: ModelKind | str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained model of ``kind`` from its ``config`` (the class's own ``from_config``).

    Raises:
        ArtifactError: an unknown kind or a config the class rejects.
    """
    try:
        kind = ModelKind(kind)
    except ValueError:
        raise ArtifactError(f"unknown model kind {kind!r}; expected one of {[k.value for k in ModelKind]}") from None
    try:
        return kind.model_class.from_config(dict(config))
    except (TypeError, ValueError, KeyError) as err:
        raise ArtifactError(f"invalid {kind.value} config {dict(config)} ({type(err).__name__}: {err})") from None


# ---------------------------------------------------------------------------------------------- torch files


def write_torch_file(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically and durably (fsync): a reader or a rerun after SIGKILL sees the old
    file or the new one, never half."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=True)


def read_torch_file(
    path: str | os.PathLike,
    missing: str = "{file} does not exist",
    map_location: str | torch.device = "cpu",
    weights_only: bool = True,
) -> tuple[Path, Any]:
    """``(path, torch.load(path))``.

    Raises:
        ArtifactError: ``missing.format(file=path)`` when there is no such file; the file and the cause when it is
            not a readable PyTorch file.
    """
    file = Path(path)
    if not file.is_file():
        raise ArtifactError(missing.format(file=file))
    try:
        return file, torch.load(file, map_location=map_location, weights_only=weights_only)
    except Exception as err:
        raise ArtifactError(f"{file} is not a readable PyTorch file ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class ArtifactInfo:
    """Everything in an artifact but the weights."""

    path: Path
    kind: ModelKind
    format: str
    config: dict[str, Any]
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    threshold: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def deployable(self) -> bool:
        """Whether inference can use it: a downstream model with its class names and preprocessing record."""
        return self.kind is not ModelKind.ENCODER and self.class_names is not None and self.preprocessing is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (``preprocessing`` as its record)."""
        return {
            "path": str(self.path), "kind": self.kind.value, "format": self.format, "config": self.config,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "class_names": self.class_names, "threshold": self.threshold, "provenance": self.provenance,
        }


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _n_outputs(model: nn.Module, kind: ModelKind) -> int | None:
    if kind is ModelKind.CLASSIFIER:
        return int(model.num_classes)
    if kind is ModelKind.SEGMENTER:
        return int(model.out_channels)
    return None


def save_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` (an encoder, classifier or U-Net; wrappers are stripped; not modified) to ``path`` atomically.

    The file is checked before it is written: the architecture is rebuilt from ``model.config`` and the weights load
    strictly into it, so a file that is written is a file that loads.

    Args:
        preprocessing: the input chain (:class:`Preprocessing` or its record).
        class_names: one name per output (downstream models only).
        threshold: decision threshold on the sigmoid output, in (0, 1) (downstream models only).
        provenance: JSON-safe facts about the run (other values are stored as strings).

    Raises:
        ArtifactError: not one of the three model kinds. ValueError: class names, threshold or preprocessing
            that do not fit.
    """
    module = unwrap_model(model)
    kind = ModelKind.of(module)
    n_out = _n_outputs(module, kind)
    if kind is ModelKind.ENCODER and (class_names is not None or threshold is not None):
        raise ValueError("an encoder has no class names or decision threshold")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != n_out:
            raise ValueError(f"{len(class_names)} class_names for a {kind.value} with {n_out} outputs")
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if isinstance(preprocessing, Mapping):
        preprocessing = Preprocessing.from_dict(preprocessing)
    config = module.config
    state_dict = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    strict_load(
        build_model(kind, config), state_dict, f"{type(module).__name__} does not rebuild from its config {config}"
    )
    state = {
        "format": ARTIFACT_FORMAT,
        "kind": kind.value,
        "config": _json_safe(config),
        "state_dict": state_dict,
        "preprocessing": preprocessing.to_dict() if preprocessing is not None else None,
        "class_names": class_names,
        "threshold": float(threshold) if threshold is not None else None,
        "provenance": _json_safe(dict(provenance or {})),
    }
    return write_torch_file(path, state)


def _legacy(state: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """A first-generation file (``mlvicx-encoder/1`` or ``mlvicx-model/1``) in today's layout."""
    if fmt == _LEGACY_ENCODER:
        return {"kind": "encoder", "config": state.get("config"), "state_dict": state.get("state_dict"),
                "provenance": state.get("provenance") or {}}
    norm, size = state.get("normalization"), state.get("image_size")
    preprocessing = None
    if norm and size:
        preprocessing = Preprocessing(
            int(size), float(norm["mean"]), float(norm["std"]), state.get("source_size")
        ).to_dict()
    return {"kind": state.get("kind"), "config": state.get("config"), "state_dict": state.get("state_dict"),
            "preprocessing": preprocessing, "class_names": state.get("class_names"),
            "threshold": state.get("threshold"), "provenance": state.get("provenance") or {}}


def _parse(file: Path, state: Any) -> tuple[ArtifactInfo, dict[str, torch.Tensor]]:
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt in _NOT_A_MODEL:
        raise ArtifactError(f"{file} is {_NOT_A_MODEL[fmt]}")
    if fmt in (_LEGACY_ENCODER, _LEGACY_MODEL):
        state = _legacy(state, fmt)
    elif fmt != ARTIFACT_FORMAT:
        what = f"format {fmt!r}" if fmt else f"a {type(state).__name__}, not an artifact dict"
        raise ArtifactError(
            f"{file} is not a model file of this project ({what}); pass an encoder.pt written by the pretraining "
            "bundle or a model.pt written by the classify/segment bundles"
        )
    missing = [k for k in ("kind", "config", "state_dict") if not state.get(k)]
    if missing:
        raise ArtifactError(f"{file} lacks {missing}; it was not written by mlvicx_monai.networks.artifacts.save_model")
    try:
        kind = ModelKind(state["kind"])
    except ValueError:
        raise ArtifactError(
            f"{file} has kind {state['kind']!r}; expected one of {[k.value for k in ModelKind]}"
        ) from None
    try:
        preprocessing = Preprocessing.from_dict(state["preprocessing"]) if state.get("preprocessing") else None
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{file} holds an invalid preprocessing record: {err}") from None
    info = ArtifactInfo(
        path=file, kind=kind, format=str(fmt), config=dict(state["config"]), preprocessing=preprocessing,
        class_names=list(state["class_names"]) if state.get("class_names") is not None else None,
        threshold=float(state["threshold"]) if state.get("threshold") is not None else None,
        provenance=dict(state.get("provenance") or {}),
    )
    return info, state["state_dict"]


def read_artifact(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[ArtifactInfo, dict[str, torch.Tensor]]:
    """``(info, state_dict)`` of an artifact, without building the model.

    Raises:
        ArtifactError: missing, unreadable, or not a model file of this project (the message says what it is).
    """
    file, state = read_torch_file(path, "model file {file} does not exist", map_location)
    return _parse(file, state)


def _expected(expect: ModelKind | str | Iterable[ModelKind | str] | None) -> set[ModelKind] | None:
    if expect is None:
        return None
    if isinstance(expect, (str, ModelKind)):
        expect = [expect]
    return {ModelKind(k) for k in expect}


_HINTS = {
    ModelKind.ENCODER: "train a classifier or U-Net on it first (bundles classify.json / segment.json)",
    ModelKind.CLASSIFIER: "pass the encoder.pt written by the pretraining bundle",
    ModelKind.SEGMENTER: "pass the encoder.pt written by the pretraining bundle",
}


def load_model(
    path: str | os.PathLike,
    expect: ModelKind | str | Iterable[ModelKind | str] | None = None,
    map_location: str | torch.device = "cpu",
    require_preprocessing: bool = False,
) -> tuple[nn.Module, ArtifactInfo]:
    """Rebuild the model saved at ``path``, load its weights strictly; returned in eval mode on ``map_location``.

    Args:
        expect: the kind(s) the caller can use; another kind is an error that says what the file is.
        require_preprocessing: fail unless the file can be deployed (class names and preprocessing record).

    Raises:
        ArtifactError: the file is missing, not a model of this project, of another kind, not deployable, or its
            weights do not fit its declared architecture.
    """
    info, weights = read_artifact(path, map_location)
    wanted = _expected(expect)
    if wanted is not None and info.kind not in wanted:
        names = " or ".join(sorted(k.value for k in wanted))
        raise ArtifactError(f"{info.path} holds a {info.kind.value}, not a {names}; {_HINTS[info.kind]}")
    if require_preprocessing and not info.deployable:
        raise ArtifactError(
            f"{info.path} has no class names or preprocessing record, so it cannot be deployed; use the model.pt "
            "written by the classify or segment bundle (or the version they registered)"
        )
    model = build_model(info.kind, info.config)
    strict_load(model, weights, f"{info.path}: the weights do not fit the declared {info.kind.value} {info.config}")
    return model.to(map_location).eval(), info


def sniff(path: str | os.PathLike) -> ModelKind | None:
    """The kind of model in ``path``, or None when it is not a (readable) model file of this project."""
    try:
        return read_artifact(path)[0].kind
    except ArtifactError:
        return None
