"""The MONAI bundle invocation: what the user asked for on the command line, checked before anything runs.

MONAI's bundle runner (``python -m monai.bundle run --config_file A.json --key value ...``) merges the config files,
adds every ``--key value`` pair to the config whether or not the key exists, and reports a failing expression with
its own ``RuntimeError`` as the last line of the traceback. The bundles of this project call :func:`check_invocation`
as their first ``initialize`` step, which

- rejects an override whose key no config file defines (``--epoch 3`` for ``--epochs 3``), and an override whose
  type contradicts the default (``--track false`` is the *string* ``'false'`` for the command line parser, which a
  bundle would take as true: write ``--track False``);
- refuses ``--tracking mlflow`` (the bundles track every run in MLflow themselves: a second, unnamed MLFlowHandler
  would log the same run twice and append to the latest unfinished run of the experiment);
- makes an uncaught error end with one line naming its root cause (``mlvicx: error: ...``).

The merged, unevaluated config of the invocation (:func:`invocation`) is what the run records in MLflow
(:func:`tunables`, :func:`current_config`). It is rebuilt from ``sys.argv`` with MONAI's own ``ConfigParser`` and the
command line's own value parser (``fire``), so it is exactly what MONAI ran; outside ``monai.bundle run`` (a bundle
driven from Python) there is no invocation and these return empty results.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BundleInvocationError", "Invocation", "check_invocation", "current_config", "invocation", "tunables"]

logger = logging.getLogger(__name__)

#: arguments of ``monai.bundle run`` itself (not config overrides)
_RUN_ARGS = {"config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "args_file",
             "workflow_name", "workflow_type", "properties_path"}


class BundleInvocationError(ValueError):
    """The command line asks for something the bundle does not have (unknown key, wrong type, ``--tracking``)."""


@dataclass(frozen=True)
class Invocation:
    """A ``monai.bundle run`` command line, parsed as MONAI parses it.

    Attributes:
        config_files: the ``--config_file`` value(s), in merge order.
        overrides: ``{key: value}`` of every other ``--key value`` pair (values as ``fire`` parses them).
        run_args: the runner's own arguments (``tracking``, ``meta_file``...).
        files_config: the merged config of the files alone; config: with the overrides applied.
    """

    config_files: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    run_args: dict[str, Any] = field(default_factory=dict)
    files_config: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _parse_argv(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(run_args, overrides)`` of ``[..., "run", "--k", "v", "--k2=v2", ...]`` or None if not a bundle run."""
    from fire.parser import DefaultParseValue

    if len(argv) < 2 or argv[1] != "run" or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return None
    run_args: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    items = list(argv[2:])
    i = 0
    while i < len(items):
        token = items[i]
        if not token.startswith("--"):  # a positional run_id
            i += 1
            continue
        key, eq, value = token[2:].partition("=")
        if eq:
            i += 1
        elif i + 1 < len(items) and not items[i + 1].startswith("--"):
            value, i = items[i + 1], i + 2
        else:  # a bare flag: True, as fire reads it
            value, i = "True", i + 1
        (run_args if key in _RUN_ARGS else overrides)[key] = DefaultParseValue(value)
    return run_args, overrides


def invocation(argv: Sequence[str] | None = None) -> Invocation | None:
    """The current ``monai.bundle run`` invocation (None when the process is not one)."""
    from monai.bundle import ConfigParser

    parsed = _parse_argv(list(sys.argv if argv is None else argv))
    if parsed is None:
        return None
    run_args, overrides = parsed
    files = run_args.get("config_file")
    if not files:
        return None
    files = tuple(str(f) for f in (files if isinstance(files, (list, tuple)) else [files]))
    base = ConfigParser()
    base.read_config(list(files))
    merged = ConfigParser()
    merged.read_config(list(files))
    merged.update(dict(overrides))
    return Invocation(files, dict(overrides), run_args, copy.deepcopy(base.get()), copy.deepcopy(merged.get()))


def _type_problem(key: str, value: Any, default: Any) -> str | None:
    if isinstance(default, str) and default.startswith(("$", "@", "%")):
        return None  # an expression: any value may replace it
    if isinstance(default, bool):
        if isinstance(value, bool):
            return None
        return f"--{key} expects True or False (Python spelling), got {value!r}"
    if default is None or isinstance(value, str) and value.startswith(("$", "@", "%")):
        return None
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if isinstance(value, str) and value.lower() == "auto":
            return None
        return f"--{key} expects a number (default {default!r}), got {value!r}"
    if isinstance(default, list) and not isinstance(value, (list, tuple)) and value is not None:
        return f"--{key} expects a list such as {json.dumps(default)}, got {value!r}"
    return None


def check_invocation(argv: Sequence[str] | None = None, install_error_hook: bool = True) -> Invocation | None:
    """Check the command line before the bundle runs (see the module docstring); returns the invocation.

    Raises:
        BundleInvocationError: an unknown override key, a value of the wrong type, or ``--tracking``.
    """
    if install_error_hook:
        _install_error_hook()
    inv = invocation(argv)
    if inv is None:
        return None
    if inv.run_args.get("tracking"):
        raise BundleInvocationError(
            "--tracking is not supported by these bundles: they track every run in MLflow themselves (tunables track, "
            "tracking_uri, experiment_name, run_name); drop --tracking, and pass --tracking_uri URI to choose the store"
        )
    unknown, wrong = [], []
    for key, value in inv.overrides.items():
        top = key.split("#", 1)[0]
        if top not in inv.files_config:
            unknown.append(key)
        elif "#" not in key:
            problem = _type_problem(key, value, inv.files_config[top])
            if problem:
                wrong.append(problem)
    if unknown:
        known = sorted(k for k, v in inv.files_config.items() if not isinstance(v, (dict, list)) or k in ("levels",))
        raise BundleInvocationError(
            f"unknown override key(s) {', '.join('--' + k for k in unknown)} for {', '.join(inv.config_files)}; "
            f"the tunables are: {', '.join(known)}"
        )
    if wrong:
        raise BundleInvocationError("; ".join(wrong))
    return inv


def _literal(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, (bool, int, float)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_literal(v) and not isinstance(v, (list, dict)) for v in value)
    return False


def current_config(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The merged, unevaluated config of the invocation (files + overrides); ``{}`` outside ``monai.bundle run``."""
    inv = invocation(argv)
    return copy.deepcopy(inv.config) if inv is not None else {}


def tunables(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Top-level literal values of a bundle config (its command-line tunables), JSON-safe; default: the invocation's."""
    config = current_config() if config is None else config
    return {k: json.loads(json.dumps(v)) for k, v in config.items() if k != "imports" and _literal(v)}


# ------------------------------------------------------------------------------------------------ errors


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of a ``raise ... from ...`` / during-handling chain."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        nxt = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if nxt is None:
            break
        error = nxt
    return error


def _hook(kind, value, tb) -> None:  # noqa: ANN001 - sys.excepthook's signature
    traceback.print_exception(kind, value, tb)
    cause = root_cause(value)
    message = " ".join(line.strip() for line in str(cause).strip().splitlines())
    print(f"mlvicx: error: {type(cause).__name__}: {message}".rstrip(), file=sys.stderr)


def _install_error_hook() -> None:
    if sys.excepthook is not _hook:
        sys.excepthook = _hook
