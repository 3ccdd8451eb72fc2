"""MLflow runs: where they are stored, how they are opened and resumed, and what is recorded with them.

Tracking store, in order of precedence: ``$MLFLOW_TRACKING_URI``, the bundle's ``tracking_uri``, else MLflow's own
default, the embedded SQLite store ``./mlflow.db`` with artifacts in ``./mlruns`` (MLflow 3.13+ refuses the old file
store), which a plain ``mlflow ui`` started in the same folder shows. Every bundle in the same working directory
shares it, so the registry sees every run.

Runs are always named and created explicitly. A run is never picked up by name (MONAI's MLFlowHandler
would append to the latest unfinished run of that name, e.g. a crashed one): a training job that
resumes from its checkpoint reattaches to the run id stored in that checkpoint, tags it
``mlvicx.resumed=<n>``, and says so in the log.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "default_tracking_uri",
    "resolve_tracking_uri",
    "get_client",
    "open_run",
    "finish_run",
    "provenance_tags",
    "standard_tags",
    "log_datalist",
    "flatten_params",
    "ui_command",
]

logger = logging.getLogger(__name__)

_TAG_PREFIX = "mlvicx."


def default_tracking_uri(root: str | os.PathLike | None = None) -> str:
    """``sqlite:///<root>/mlflow.db`` (root: the working directory): MLflow's own default store."""
    return f"sqlite:///{Path(root or os.getcwd()).resolve() / 'mlflow.db'}"


def ui_command(uri: str | None) -> str:
    """The command that shows a store in the MLflow UI (a server URI is opened in a browser instead)."""
    uri = uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db == Path(os.getcwd()).resolve() / "mlflow.db":
            return "mlflow ui   (in this folder)"
        return f"mlflow ui --backend-store-uri {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The store to use: ``$MLFLOW_TRACKING_URI`` > ``tracking_uri`` > :func:`default_tracking_uri`.

    Raises:
        ValueError: for a plain folder or ``file:`` URI (the file store is refused by MLflow 3.13+).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (tracking_uri or "").strip() or default_tracking_uri()
    if uri.startswith("file:") or "://" not in uri:
        raise ValueError(
            f"tracking URI {uri!r} names a folder (MLflow file store), which MLflow 3.13+ refuses; use "
            "sqlite:///path/to/mlflow.db, or http://host:port of an `mlflow server`"
        )
    return uri


def _artifact_location(uri: str) -> str | None:
    """For a local SQLite store, artifacts go to ``mlruns/`` next to the database (MLflow's default for the default
    store, ``./mlruns``); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()
    return None


def get_client(tracking_uri: str | None = None):
    """An ``MlflowClient`` on the resolved store; the model registry lives in the same store.

    The process-wide ``mlflow.set_tracking_uri`` is deliberately not called: in MLflow 3 it also sets
    ``MLFLOW_TRACKING_URI`` in the environment, which would silently redirect every later run of the process.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or choose another experiment_name")
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client.tracking_uri))
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def open_run(
    experiment_name: str,
    run_name: str,
    tracking_uri: str | None = None,
    resume_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> tuple[Any, str]:
    """Create a named run, or reattach to ``resume_run_id`` (a run this job started and checkpointed).

    Returns:
        (client, run_id)
    """
    if not run_name or not str(run_name).strip():
        raise ValueError("run_name must be set: unnamed runs make crashed runs easy to confuse")
    client = get_client(tracking_uri)
    if resume_run_id:
        try:
            run = client.get_run(resume_run_id)
        except Exception as err:
            raise ValueError(
                f"the checkpoint names MLflow run {resume_run_id}, which the store {client.tracking_uri} does not "
                f"have ({type(err).__name__}); point tracking_uri at the store the run was logged to, or start "
                "a new output_dir"
            ) from None
        count = int(run.data.tags.get(f"{_TAG_PREFIX}resumed", "0")) + 1
        client.set_tag(resume_run_id, f"{_TAG_PREFIX}resumed", str(count))
        client.update_run(resume_run_id, status="RUNNING")
        logger.info("resuming MLflow run %s (%s), resumption #%d", run.info.run_name, resume_run_id, count)
        return client, resume_run_id
    experiment_id = _experiment_id(client, experiment_name)
    run = client.create_run(experiment_id, run_name=str(run_name), tags=dict(tags or {}))
    logger.info(
        "MLflow run %s (%s) in experiment %s at %s", run_name, run.info.run_id, experiment_name, client.tracking_uri
    )
    return client, run.info.run_id


def finish_run(client, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run finished (or FAILED / KILLED)."""
    client.set_terminated(run_id, status=status)


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def standard_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's standard run tags (the names in :mod:`mlflow.utils.mlflow_tags`, shown in the MLflow UI): who started
    the run (``mlflow.user``), what (``mlflow.source.name``: the program, ``mlflow.source.type``: ``LOCAL``) and, in a
    git checkout only, the code (``mlflow.source.git.commit``; absent otherwise, never a placeholder)."""
    import getpass

    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    main = sys.modules.get("__main__")
    source = getattr(getattr(main, "__spec__", None), "name", None) or Path(sys.argv[0] or "python").name
    tags = {MLFLOW_USER: user, MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}
    commit = commit if commit is not None else _git("rev-parse", "HEAD")
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def provenance_tags() -> dict[str, str]:
    """MLflow's standard tags (:func:`standard_tags`), code version, package versions and hardware of this process
    (no patient data)."""
    import importlib.metadata as md

    import torch

    commit = _git("rev-parse", "HEAD")
    tags: dict[str, str] = standard_tags(commit or "")
    tags[f"{_TAG_PREFIX}git_commit"] = commit or "unknown (not a git checkout)"
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        tags[f"{_TAG_PREFIX}git_dirty"] = "unknown" if status is None else str(bool(status)).lower()
    for package in ("mlvicx-monai", "torch", "monai", "pytorch-ignite", "pydicom", "mlflow", "numpy"):
        try:
            tags[f"{_TAG_PREFIX}version.{package}"] = md.version(package)
        except md.PackageNotFoundError:
            tags[f"{_TAG_PREFIX}version.{package}"] = "not installed"
    tags[f"{_TAG_PREFIX}python"] = sys.version.split()[0]
    tags[f"{_TAG_PREFIX}platform"] = platform.platform()
    tags[f"{_TAG_PREFIX}cpu_count"] = str(os.cpu_count())
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        tags[f"{_TAG_PREFIX}gpu"] = f"{torch.cuda.device_count()} x {', '.join(names)}"
        tags[f"{_TAG_PREFIX}cuda"] = str(torch.version.cuda)
    else:
        tags[f"{_TAG_PREFIX}gpu"] = "none"
    return tags


def flatten_params(config: dict[str, Any], prefix: str = "", max_len: int = 500) -> dict[str, str]:
    """Nested config -> flat ``a.b.c`` params as strings (MLflow caps a param value's length)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}.", max_len=max_len))
        else:
            text = str(value)
            flat[name] = text if len(text) <= max_len else text[: max_len - 3] + "..."
    return flat


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when below it, else its last two parts (never an absolute path:
    a folder name can carry an institution's or a patient's name)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(*path.resolve().parts[-2:]).as_posix()


def log_datalist(client, run_id: str, datalist: str | os.PathLike) -> list[str]:
    """Record ``datalist`` as the run's input dataset (MLflow's Datasets tab), once per split it has (context
    ``train`` / ``val`` / ``test``); returns the contexts logged.

    Each record holds the dataset name and split (``demo-train``), the digest (the first 32 hex digits of the
    datalist's SHA-256), the datalist's
    relative path as its source, and a profile of split sizes and class names: never a patient id or a file name.
    """
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from mlvicx_monai.data.datalist import SPLIT_KEYS, datalist_checksum, read_datalist

    document = read_datalist(datalist)
    sizes = {split: len(document.get(key) or []) for split, key in SPLIT_KEYS.items() if split != "excluded"}
    profile = {"num_rows": sizes, "class_names": list(document.get("class_names") or [])}
    manifest = (document.get("splits") or {}).get("manifest_id")
    if manifest:
        profile["splits"] = str(manifest)
    digest, source = datalist_checksum(datalist)[:32], json.dumps({"uri": _relative(Path(datalist))})
    name = str(document.get("dataset") or "datalist")
    contexts = [split for split, n in sizes.items() if n]
    # one dataset record per split (MLflow keeps one input per name and digest): "<dataset>-<split>", one digest
    inputs = [
        DatasetInput(
            Dataset(name=f"{name}-{split}", digest=digest, source_type="local", source=source,
                    profile=json.dumps({**profile, "split": split})),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)],
        )
        for split in contexts
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return contexts
