"""Tracking: MLflow runs (named, resumable, rank 0 only), provenance, the model registry and the PHI audit.

Names are imported on first use, so the registry command line does not pay for MONAI's import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunCompletion": "handler",
    "RunLogger": "handler",
    "RunMLFlowHandler": "handler",
    "TrackedRun": "handler",
    "default_tracking_uri": "runs",
    "get_client": "runs",
    "open_run": "runs",
    "provenance_tags": "runs",
    "resolve_tracking_uri": "runs",
    "log_and_register": "registry",
    "set_alias": "registry",
    "load_model": "registry",
    "download_encoder": "registry",
    "download_model": "registry",
    "resolve_model": "registry",
    "encoder_lineage": "registry",
    "classifier_model_name": "registry",
    "segmenter_model_name": "registry",
    "ENCODER_MODEL": "registry",
    "SEGMENTER_MODEL": "registry",
    "RegistryError": "registry",
    "audit_phi": "audit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
