"""``model.pt``: a trained downstream model (classifier or U-Net) in one self-contained file, and loading it.

This is the one file format of our downstream models: the bundles write it (``output_dir/model.pt``), the
registry logs it as the model version's ``artifacts/weights.pt`` (:mod:`mlvicx_monai.tracking.pyfunc`), and
``bundles/infer.json`` reads it from either place. Content (``torch.save`` of a dict, loadable with
``torch.load(weights_only=True)``; no pickled code)::

    {"format": "mlvicx-model/1",
     "kind": "classifier" | "segmenter",
     "config": {...},                        # constructor arguments (downstream_config): rebuilds the network,
                                             # encoder levels / CBAM settings, head or decoder included
     "state_dict": model.state_dict(),       # the whole model: encoder (CBAM blocks included) + head/decoder
     "class_names": [...] | None,            # one name per output channel (segmenter: the foreground class)
     "image_size": S | None,                 # the network's input side (square, after resizing)
     "normalization": {"mean": m, "std": s} | None,   # (x - mean) / std of an image in [0, 1], bone bright
     "threshold": t,                         # decision threshold on the sigmoid (segmenter: mask threshold)
     "source_size": s0 | None,               # side of the ingested cache images the model was trained on:
                                             # inference first resizes a decoded image to it, as ingestion did
     "provenance": {...}}                    # task, dataset, datalist id, protocol, fraction, seed, pretrained
                                             # source, MLflow run id, best epoch ... (JSON-safe)

``class_names``/``image_size``/``normalization`` (the *preprocessing record*) are what inference needs besides
the weights; a file saved without them still loads (e.g. for fine-tuning further) but cannot be deployed.
Saving rebuilds the network from ``config`` and loads the weights strictly before writing, so a file that is
written is a file that loads; loading is strict too (every key and shape), like :func:`load_encoder`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mlvicx_monai.networks.classifier import CXRClassifier, build_classifier
from mlvicx_monai.networks.pretrained import encoder_config, read_torch_file, state_dict_problems
from mlvicx_monai.networks.unet import MLVICXUNet
from mlvicx_monai.utils.atomic import atomic_write

__all__ = [
    "DOWNSTREAM_KINDS",
    "MODEL_FORMAT",
    "DownstreamModelError",
    "build_downstream",
    "downstream_config",
    "downstream_kind",
    "load_downstream",
    "read_downstream_info",
    "save_downstream",
    "strict_load",
    "unwrap_model",
]

MODEL_FORMAT = "mlvicx-model/1"
DOWNSTREAM_KINDS = ("classifier", "segmenter")
#: what inference needs besides the weights (see the module docstring)
PREPROCESSING_KEYS = ("class_names", "image_size", "normalization")


class DownstreamModelError(ValueError):
    """A ``model.pt`` that is missing, of another kind, or whose weights do not fit its declared network."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / DataParallel
        model = model.module
    return model


def downstream_kind(model: nn.Module) -> str:
    """``"classifier"`` or ``"segmenter"`` from the model's class (wrappers stripped)."""
    model = unwrap_model(model)
    if isinstance(model, CXRClassifier):
        return "classifier"
    if isinstance(model, MLVICXUNet):
        return "segmenter"
    raise TypeError(f"expected a CXRClassifier or an MLVICXUNet, got {type(model).__name__}")


def _segmenter_config(unet: MLVICXUNet) -> dict[str, Any]:
    blocks = list(unet.decoder.blocks)
    dropout = next((m.p for m in unet.decoder.modules() if isinstance(m, nn.Dropout)), 0.0)
    names = dict(blocks[0].upsample.named_children())
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


def downstream_config(model: nn.Module) -> dict[str, Any]:
    """JSON-safe constructor arguments that rebuild ``model`` (read back from its modules)."""
    model = unwrap_model(model)
    if downstream_kind(model) == "classifier":
        drop = model.dropout.p if isinstance(model.dropout, nn.Dropout) else 0.0
        return {
            "encoder": encoder_config(model.encoder),
            "num_classes": int(model.num_classes),
            "dropout": float(drop),
            "freeze_encoder": bool(model.freeze_encoder),
        }
    return _segmenter_config(model)


def build_downstream(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """An untrained network of ``kind`` from :func:`downstream_config`'s output."""
    cfg = dict(config)
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
    raise DownstreamModelError(f"kind must be one of {DOWNSTREAM_KINDS}, got {kind!r}")


def strict_load(model: nn.Module, weights: Mapping[str, torch.Tensor], what: str, error: type[Exception] = DownstreamModelError) -> None:
    """``model.load_state_dict(weights, strict=True)`` after listing every missing, unexpected and mis-shaped key
    in one ``error`` that starts with ``what`` (PyTorch stops at the first kind of problem)."""
    problems = state_dict_problems(model.state_dict(), weights)
    if problems:
        raise error(f"{what}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _preprocessing(
    n_out: int, class_names: Sequence[str] | None, image_size: int | None, normalization: Mapping[str, float] | None
) -> dict[str, Any]:
    given = [v is not None for v in (class_names, image_size, normalization)]
    if not any(given):
        return {key: None for key in PREPROCESSING_KEYS}
    if not all(given):
        raise ValueError("class_names, image_size and normalization go together (the preprocessing record of inference)")
    names = [str(c) for c in class_names]
    if len(names) != n_out:
        raise ValueError(f"{len(names)} class_names for a network with {n_out} outputs")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    if set(normalization) != {"mean", "std"} or float(normalization["std"]) <= 0:
        raise ValueError(f"normalization must be {{'mean': m, 'std': s > 0}}, got {dict(normalization)}")
    return {
        "class_names": names,
        "image_size": int(image_size),
        "normalization": {"mean": float(normalization["mean"]), "std": float(normalization["std"])},
    }


def save_downstream(
    model: nn.Module,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    image_size: int | None = None,
    normalization: Mapping[str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
    threshold: float = 0.5,
    source_size: int | None = None,
) -> Path:
    """Write a trained :class:`CXRClassifier` or :class:`MLVICXUNet` to ``path`` (atomically, weights on CPU).

    Args:
        model: the trained network (a DDP wrapper is unwrapped); not modified.
        path: destination, conventionally ``output_dir/model.pt``.
        class_names: one name per output channel (``num_classes`` of a classifier, ``out_channels`` of a U-Net).
        image_size: side of the square input the network was trained on.
        normalization: ``{"mean": m, "std": s}`` applied to ``[0, 1]`` images before the network.
        provenance: JSON-safe facts about the run (values that are not JSON types are stored as strings).
        threshold: decision threshold on the sigmoid output (the mask threshold of a segmenter).
        source_size: side of the ingested images the model was trained from (None: unknown; inference then
            resizes decoded images straight to ``image_size``).

    Raises:
        TypeError: ``model`` is neither kind.
        ValueError: only some of ``class_names``/``image_size``/``normalization``, or values that do not fit.
    """
    model = unwrap_model(model)
    kind = downstream_kind(model)
    n_out = model.num_classes if kind == "classifier" else model.out_channels
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    if source_size is not None and (isinstance(source_size, bool) or not isinstance(source_size, int) or source_size < 1):
        raise ValueError(f"source_size must be a positive integer or None, got {source_size!r}")
    config = downstream_config(model)
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    strict_load(build_downstream(kind, config), state_dict, f"{type(model).__name__} does not rebuild from {config}")
    state: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "kind": kind,
        "config": config,
        "state_dict": state_dict,
        **_preprocessing(n_out, class_names, image_size, normalization),
        "threshold": float(threshold),
        "source_size": source_size,
        "provenance": _json_safe(dict(provenance or {})),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=True)


_HINTS = {
    "mlvicx-encoder/1": " (a pretrained encoder: train a classifier or U-Net on it first)",
    "mlvicx-train-checkpoint/1": " (a training checkpoint: use the model.pt next to it)",
}


def _read(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    file, state = read_torch_file(
        path, DownstreamModelError, "downstream model {file} does not exist; train one with bundles/classify.json "
        "or bundles/segment.json (they write output_dir/model.pt)", map_location,
    )
    fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
    if fmt != MODEL_FORMAT:
        raise DownstreamModelError(f"{file} is not an MLVICX downstream model (format {fmt!r}){_HINTS.get(str(fmt), '')}")
    missing = [k for k in ("kind", "config", "state_dict") if k not in state]
    if missing:
        raise DownstreamModelError(f"{file} lacks {missing}; it was not written by save_downstream")
    if state["kind"] not in DOWNSTREAM_KINDS:
        raise DownstreamModelError(f"{file} has kind {state['kind']!r}; expected one of {DOWNSTREAM_KINDS}")
    return file, state


def _info(state: Mapping[str, Any]) -> dict[str, Any]:
    info = {k: v for k, v in state.items() if k != "state_dict"}
    info.setdefault("provenance", {})
    info.setdefault("source_size", None)
    for key in PREPROCESSING_KEYS:
        info.setdefault(key, None)
    return info


def read_downstream_info(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in ``model.pt`` except the weights (kind, config, classes, image size, normalisation, provenance)."""
    _, state = _read(path)
    return _info(state)


def load_downstream(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", require_preprocessing: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network saved at ``path`` and load its weights strictly; the model is returned in eval mode.

    Args:
        require_preprocessing: fail unless the file carries class names, image size and normalisation (inference).

    Returns:
        ``(model, info)``: a :class:`CXRClassifier` or :class:`MLVICXUNet` on ``map_location``, and
        :func:`read_downstream_info`'s record.

    Raises:
        DownstreamModelError: the file is missing, not a downstream model, lacks the preprocessing record, or
            its weights do not fit.
    """
    file, state = _read(path, map_location)
    info = _info(state)
    if require_preprocessing and any(info[k] is None for k in PREPROCESSING_KEYS):
        raise DownstreamModelError(
            f"{file} has no preprocessing record ({', '.join(PREPROCESSING_KEYS)}), so it cannot be deployed; use the "
            "model.pt written by bundles/classify.json or bundles/segment.json (or the version they registered)"
        )
    try:
        model = build_downstream(state["kind"], state["config"])
    except (TypeError, ValueError, KeyError) as err:
        raise DownstreamModelError(f"{file} declares an invalid {state['kind']} {state['config']} ({type(err).__name__}: {err})") from None
    strict_load(model, state["state_dict"], f"{file}: the weights do not fit the declared {state['kind']}")
    return model.to(map_location).eval(), info
