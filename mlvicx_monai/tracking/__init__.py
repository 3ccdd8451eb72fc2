"""Tracking: MLflow runs (named, resumable, rank 0 only), provenance, and the model registry."""

from .bundle_config import current_config, tunables
from .handler import RunCompletion, RunMLFlowHandler, TrackedRun
from .runs import default_tracking_uri, get_client, open_run, provenance_tags, resolve_tracking_uri

__all__ = [
    "RunCompletion",
    "RunMLFlowHandler",
    "TrackedRun",
    "current_config",
    "default_tracking_uri",
    "get_client",
    "open_run",
    "provenance_tags",
    "resolve_tracking_uri",
    "tunables",
]
