"""The configuration of the MONAI bundle being run, for the run record.

MONAI's bundle runner gives config expressions no handle on the parser, so :func:`current_parser` finds
the ``ConfigParser`` that is evaluating the calling expression by walking up the call stack (every
``$expression`` is evaluated inside ``ConfigParser.get_parsed_content``). This works the same for
``python -m monai.bundle run`` (overrides included), ``torchrun`` and programmatic use.
"""

from __future__ import annotations

import copy
import inspect
import json
from typing import Any

from monai.bundle import ConfigParser

__all__ = ["current_parser", "current_config", "tunables"]


def current_parser() -> ConfigParser | None:
    """The ``ConfigParser`` up the call stack, or None when not called from a bundle config."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return candidate
            frame = frame.f_back
        return None
    finally:
        del frame


def current_config() -> dict[str, Any]:
    """The merged bundle config (all files, command-line overrides applied), unevaluated; {} outside a bundle."""
    parser = current_parser()
    return copy.deepcopy(parser.get()) if parser is not None else {}


def _literal(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (bool, int, float)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_literal(v) and not isinstance(v, (list, dict)) for v in value)
    return False


def tunables(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Top-level literal values of a bundle config (its command-line tunables), JSON-safe."""
    config = current_config() if config is None else config
    out = {}
    for key, value in config.items():
        if key in ("imports",) or not _literal(value):
            continue
        out[key] = json.loads(json.dumps(value))
    return out
