"""``encoder.pt``: the pretrained MLVICX encoder alone (context-bottleneck blocks included), and loading it.

File content (``torch.save`` of a dict)::

    {"format": "mlvicx-encoder/1", "config": {levels, in_channels, reduction, spatial_kernel_size},
     "state_dict": MLVICXEncoder.state_dict(), "provenance": {...}}

Loading is strict: a missing, unexpected or mis-shaped key is an error that names the keys, never a
silent fall-back to random weights (the authors' downstream code did both: dropped the blocks and fell
back to random init on a missing key).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlvicx_monai.networks.encoder import MLVICXEncoder
from mlvicx_monai.utils.atomic import atomic_write

__all__ = [
    "ENCODER_FORMAT",
    "PretrainedEncoderError",
    "build_encoder",
    "encoder_config",
    "load_encoder",
    "read_torch_file",
    "save_encoder",
    "state_dict_problems",
]

ENCODER_FORMAT = "mlvicx-encoder/1"


class PretrainedEncoderError(ValueError):
    """A pretrained-encoder file that is missing, of another kind, or does not fit the encoder."""


def encoder_config(encoder: MLVICXEncoder) -> dict[str, Any]:
    """Constructor arguments that rebuild ``encoder`` (same modules, same state_dict keys)."""
    config: dict[str, Any] = {"levels": list(encoder.levels), "in_channels": encoder.in_channels}
    block = next(iter(encoder.context.values()), None)
    if block is not None:  # read back from the modules, so the file always describes the weights it holds
        config["reduction"] = block.channels // block.channel_mlp[0].out_channels
        config["spatial_kernel_size"] = block.spatial_conv.kernel_size[0]
    return config


def build_encoder(config: dict[str, Any]) -> MLVICXEncoder:
    """An untrained encoder of the given configuration."""
    return MLVICXEncoder(**config)


def save_encoder(encoder: MLVICXEncoder, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``encoder`` (weights on CPU) and its configuration atomically to ``path``."""
    if not isinstance(encoder, MLVICXEncoder):
        raise TypeError(f"expected an MLVICXEncoder, got {type(encoder).__name__}")
    state = {
        "format": ENCODER_FORMAT,
        "config": encoder_config(encoder),
        "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "provenance": dict(provenance or {}),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), fsync=True)


def _describe(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def read_torch_file(
    path: str | os.PathLike, error: type[Exception], missing: str, map_location: str | torch.device = "cpu"
) -> tuple[Path, Any]:
    """``(path, torch.load(path, weights_only=True))``; ``error(missing.format(file=path))`` when the file does
    not exist, ``error`` naming the file and the cause when it is not a readable weights-only PyTorch file."""
    file = Path(path)
    if not file.is_file():
        raise error(missing.format(file=file))
    try:
        return file, torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:
        raise error(f"{file} is not a readable PyTorch file ({type(err).__name__}: {err})") from None


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


def load_encoder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[MLVICXEncoder, dict[str, Any]]:
    """Rebuild the encoder saved at ``path`` and load its weights strictly.

    Returns:
        (encoder, info) where info holds ``config`` and ``provenance``.

    Raises:
        PretrainedEncoderError: the file is missing, not a torch file, not an encoder export (e.g. a
            training checkpoint), or its weights do not fit the configuration it declares.
    """
    file, state = read_torch_file(
        path, PretrainedEncoderError, "pretrained encoder {file} does not exist; pass the encoder.pt written by "
        "bundles/pretrain.json (or pretrained=none for a randomly initialised baseline)", map_location,
    )
    if not isinstance(state, dict) or state.get("format") != ENCODER_FORMAT:
        kind = state.get("format") if isinstance(state, dict) else type(state).__name__
        hint = " (a training checkpoint: use the encoder.pt next to it)" if kind == "mlvicx-train-checkpoint/1" else ""
        raise PretrainedEncoderError(f"{file} is not an MLVICX encoder export (format {kind!r}){hint}")
    try:
        encoder = build_encoder(state["config"])
    except (TypeError, ValueError) as err:
        raise PretrainedEncoderError(f"{file} declares an invalid encoder configuration {state['config']}: {err}") from None
    weights = state["state_dict"]
    problems = state_dict_problems(encoder.state_dict(), weights)
    if problems:
        raise PretrainedEncoderError(f"{file} does not fit an encoder of config {state['config']}: " + "; ".join(problems))
    encoder.load_state_dict(weights, strict=True)
    return encoder, {"config": state["config"], "provenance": state.get("provenance", {})}
