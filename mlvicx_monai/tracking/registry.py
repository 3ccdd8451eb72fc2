"""Model registry: log + register our models, promote them by alias, load them back anywhere.

Registered names: ``mlvicx-encoder`` (pretrained encoder), ``cxr-classifier-<dataset>``,
``pneumothorax-segmenter``. A version is an MLflow pyfunc whose artifact is our own weights file
(format and why: :mod:`mlvicx_monai.tracking.pyfunc`). Each version carries:

- signature (float32 ``[-1, C, -1, -1]`` in) and an all-zeros input example of the training input shape
  (never patient pixels);
- ``artifacts/training_config.json`` (the training configuration), ``artifacts/encoder.pt`` or ``weights.pt``;
- model-version tags (also on the MLflow 3 LoggedModel): ``mlvicx.kind``, ``mlvicx.format``,
  ``mlvicx.weights_sha256``, ``mlvicx.input_shape``, ``mlvicx.datalist_id``, ``mlvicx.datalist_checksum``,
  ``mlvicx.encoder.*`` (pretrained-encoder lineage: model name, version, run id), ``mlvicx.metric.<name>``
  (test metrics), ``mlvicx.git_commit``/``mlvicx.git_dirty`` of the source run, and the caller's tags;
- the source run id (``ModelVersion.run_id``).

Stages are deprecated in MLflow 3: promotion is an alias (``champion``). URIs understood by
:func:`load_model` / :func:`download_encoder` / :func:`resolve_model`: ``models:/NAME@ALIAS``,
``models:/NAME/VERSION``, ``models:/NAME/latest``, ``models:/m-<logged model id>``, ``runs:/...``, a local
MLflow model folder, or a local ``encoder.pt`` / ``weights.pt``.

Store: ``$MLFLOW_TRACKING_URI`` > ``tracking_uri`` > ``sqlite:///./mlflow.db`` (as for runs); the
registry URI is always the tracking URI. A server that does not answer fails fast
(:class:`ServerUnreachableError`, a ``/health`` probe with a short timeout) instead of going through
MLflow's long HTTP retry schedule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mlvicx_monai.networks.artifacts import ArtifactError, ArtifactInfo, ModelKind, read_artifact, sniff
from mlvicx_monai.networks.artifacts import load_model as load_artifact
from mlvicx_monai.tracking.runs import resolve_tracking_uri
from mlvicx_monai.utils.atomic import atomic_write_json
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "CONFIG_TAG",
    "ENCODER_MODEL",
    "SEGMENTER_MODEL",
    "ModelNotFoundError",
    "RegistryError",
    "ResolvedModel",
    "ServerUnreachableError",
    "check_server",
    "classifier_model_name",
    "segmenter_model_name",
    "delete_alias",
    "describe_version",
    "download_encoder",
    "download_model",
    "encoder_lineage",
    "list_models",
    "load_model",
    "log_and_register",
    "model_card",
    "registry_client",
    "resolve_model",
    "set_alias",
]

logger = logging.getLogger(__name__)

ENCODER_MODEL = "mlvicx-encoder"
SEGMENTER_MODEL = "pneumothorax-segmenter"
_PREFIX = "mlvicx."
_KIND_TAG = f"{_PREFIX}kind"
_SHA_TAG = f"{_PREFIX}weights_sha256"
#: the architecture of a version (its artifact's ``config``, JSON): a downstream bundle builds its network from it
#: before any weights are downloaded
CONFIG_TAG = f"{_PREFIX}config"
_FILE_TAG = f"{_PREFIX}weights_file"
#: weights file names inside a version's ``artifacts/`` (``weights.pt``: versions registered before artifacts/2)
_WEIGHTS_NAMES = ("model.pt", "encoder.pt", "weights.pt")
KINDS = tuple(k.value for k in ModelKind)
_CACHE_ENV = "MLVICX_REGISTRY_CACHE"
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")
#: the mlvicx_monai package folder, logged with every model (``code_paths``): ``mlflow models serve`` and
#: ``mlflow.pyfunc.load_model`` import it from the model itself, in any environment with the pip requirements
_PACKAGE = Path(__file__).resolve().parents[1]
_DESCRIPTIONS = {
    "encoder": "MLVICX pretrained encoder (ResNet18 + context-bottleneck blocks); artifacts/encoder.pt loads "
    "with mlvicx_monai.networks.load_model(path, expect='encoder'). Input float32 [B, 1, H, W]; pyfunc output: "
    "pooled [B, 512].",
    "classifier": "Chest X-ray classifier (MLVICX encoder + linear head). Input float32 [B, 1, H, W]; "
    "output logits [B, C].",
    "segmenter": "Pneumothorax U-Net (MONAI FlexibleUNet, MLVICX encoder). Input float32 [B, 1, H, W], H and W "
    "multiples of 32; output logits [B, 1, H, W].",
}


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (the message says why and what to do)."""


class RegistryFormatError(RegistryError, ArtifactError):
    """A registered version or local file that is not one of this project's model artifacts."""


class ModelNotFoundError(RegistryError, LookupError):
    """Unknown registered model, version, alias or logged model."""


class ServerUnreachableError(RegistryError, ConnectionError):
    """The MLflow tracking server does not answer."""


def _dataset_name(dataset: str) -> str:
    dataset = str(dataset).strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", dataset):
        raise ValueError(f"invalid dataset name for a registered model: {dataset!r}")
    return dataset


def classifier_model_name(dataset: str) -> str:
    """``cxr-classifier-<dataset>`` (e.g. ``cxr-classifier-nih``, ``cxr-classifier-demo``)."""
    return f"cxr-classifier-{_dataset_name(dataset)}"


def segmenter_model_name(dataset: str) -> str:
    """``pneumothorax-segmenter`` for SIIM-ACR; ``pneumothorax-segmenter-<dataset>`` otherwise (the synthetic
    demo registers as ``pneumothorax-segmenter-demo``, never under the production name)."""
    dataset = _dataset_name(dataset)
    return SEGMENTER_MODEL if dataset == "siim" else f"{SEGMENTER_MODEL}-{dataset}"


# ---------------------------------------------------------------------------------------------- store access

_HEALTHY: dict[str, float] = {}


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Probe ``<uri>/health`` once (no retries) for an http(s) tracking URI; no-op for other stores.

    Raises:
        ServerUnreachableError: connection refused, DNS failure or no answer within ``timeout`` seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    if time.monotonic() - _HEALTHY.get(uri, -1e9) < 30.0:
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        reason = type(err).__name__
        raise ServerUnreachableError(
            f"MLflow server {_redact(uri)} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1 "
            "--port PORT --backend-store-uri sqlite:///... --artifacts-destination ...) or fix "
            "MLFLOW_TRACKING_URI / --tracking-uri"
        ) from None
    _HEALTHY[uri] = time.monotonic()


def _redact(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)


def registry_client(tracking_uri: str | None = None):
    """``MlflowClient`` on the resolved store with registry URI = tracking URI (servers are probed first).

    MLflow's global URIs (and ``$MLFLOW_TRACKING_URI``, which ``mlflow.set_tracking_uri`` overwrites) are left
    untouched.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    check_server(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _error_code(err: Exception) -> str:
    return str(getattr(err, "error_code", ""))


def _not_found(err: Exception) -> bool:
    return _error_code(err) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def _registered_model(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if not _not_found(err):
            raise
    known = sorted(m.name for m in client.search_registered_models(max_results=100))
    raise ModelNotFoundError(
        f"no registered model {name!r} in {_redact(client.tracking_uri)}; registered models: {known or 'none'}"
    ) from None


def _model_version(client, name: str, version: str | int | None = None, alias: str | None = None):
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise ValueError("give exactly one of version and alias")
    registered = _registered_model(client, name)
    if alias is not None:
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as err:
            if not _not_found(err) and _error_code(err) != "INVALID_PARAMETER_VALUE":
                raise
        aliases = dict(getattr(registered, "aliases", {}) or {})
        shown = ", ".join(f"@{a} -> v{v}" for a, v in sorted(aliases.items())) or "none"
        raise ModelNotFoundError(f"model {name!r} has no alias @{alias}; its aliases: {shown}") from None
    if str(version) == "latest":
        versions = _versions(client, name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions")
        return versions[-1]
    if not str(version).isdigit():
        raise ValueError(f"model version must be a positive integer (or 'latest'), got {version!r}")
    try:
        return client.get_model_version(name, str(int(version)))
    except MlflowException as err:
        if not _not_found(err):
            raise
    known = [v.version for v in _versions(client, name)]
    raise ModelNotFoundError(f"model {name!r} has no version {version}; versions: {known or 'none'}") from None


def _model_id_of(mv) -> str | None:
    """The LoggedModel id of a version (the SQL store leaves ``model_id`` empty; the source names it)."""
    model_id = getattr(mv, "model_id", None)
    if not model_id and str(mv.source or "").startswith("models:/m-"):
        model_id = mv.source[len("models:/") :].strip("/")
    return model_id or None


def _versions(client, name: str) -> list:
    found = client.search_model_versions(f"name = '{name}'", max_results=1000)
    return sorted(found, key=lambda v: int(v.version))


# ------------------------------------------------------------------------------------------------ resolution


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model URI or path points.

    Attributes:
        uri: what was asked for (``models:/NAME@champion``, a path...).
        kind: ``encoder`` / ``classifier`` / ``segmenter`` (None if the version carries no kind tag).
        name, version: the registered model version (None for a local path or a bare logged model).
        run_id: source run; model_id: MLflow 3 LoggedModel id.
        tags: model-version tags (or LoggedModel tags).
        aliases: aliases of the version.
        local_path: the local model folder or weights file, for local sources.
        artifact_uri: immutable URI of the MLflow model (``models:/NAME/VERSION`` / ``models:/m-...``).
    """

    uri: str
    kind: str | None
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    model_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    local_path: Path | None = None
    artifact_uri: str | None = None

    @property
    def registered_uri(self) -> str | None:
        """``models:/NAME/VERSION`` (immutable, unlike an alias)."""
        return f"models:/{self.name}/{self.version}" if self.name and self.version else None


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))?/?$")


def _weights_in(folder: Path) -> Path | None:
    """The weights file of a downloaded MLflow model folder (``artifacts/model.pt`` / ``encoder.pt`` / legacy)."""
    return next((folder / "artifacts" / n for n in _WEIGHTS_NAMES if (folder / "artifacts" / n).is_file()), None)


def _local_kind(path: Path) -> str | None:
    if path.is_dir():
        weights = _weights_in(path)
        path = weights if weights is not None else path
    kind = sniff(path) if path.is_file() else None
    return kind.value if kind is not None else None


def resolve_model(uri_or_path: str | os.PathLike, tracking_uri: str | None = None) -> ResolvedModel:
    """Resolve a model URI (alias -> version) or local path without downloading weights.

    Raises:
        ModelNotFoundError: unknown model, version, alias, logged model or missing path.
        ServerUnreachableError: the tracking server does not answer.
    """
    from mlflow.exceptions import MlflowException

    text = os.fspath(uri_or_path).strip()
    if not text:
        raise ValueError("empty model URI")
    if "://" not in text and not text.startswith(("models:", "runs:")):
        path = Path(text).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"model path {path} does not exist")
        return ResolvedModel(uri=text, kind=_local_kind(path), local_path=path.resolve())
    if text.startswith("runs:/"):
        client = registry_client(tracking_uri)
        run_id = text[len("runs:/") :].split("/", 1)[0]
        try:
            client.get_run(run_id)
        except MlflowException:
            raise ModelNotFoundError(f"{text}: no run {run_id} in {_redact(client.tracking_uri)}") from None
        return ResolvedModel(uri=text, kind=None, run_id=run_id, artifact_uri=text)
    match = _MODELS_URI.match(text)
    if not match:
        raise ValueError(
            f"unsupported model URI {text!r}; use models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id>, "
            "runs:/RUN_ID/PATH or a local path"
        )
    client = registry_client(tracking_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    if alias is None and version is None and name.startswith("m-"):
        try:
            logged = client.get_logged_model(name)
        except MlflowException as err:
            if not _not_found(err):
                raise
            raise ModelNotFoundError(f"no logged model {name} in {_redact(client.tracking_uri)}") from None
        tags = dict(logged.tags or {})
        return ResolvedModel(uri=text, kind=tags.get(_KIND_TAG), run_id=logged.source_run_id,
                             model_id=logged.model_id, tags=tags, artifact_uri=f"models:/{logged.model_id}")
    if alias is None and version is None:
        raise ValueError(f"{text!r} names no version: use models:/{name}@champion or models:/{name}/<version>")
    mv = _model_version(client, name, version=version, alias=alias)
    tags = dict(mv.tags or {})
    return ResolvedModel(
        uri=text, kind=tags.get(_KIND_TAG), name=mv.name, version=str(mv.version), run_id=mv.run_id,
        model_id=_model_id_of(mv), tags=tags, aliases=tuple(getattr(mv, "aliases", ()) or ()),
        artifact_uri=f"models:/{mv.name}/{mv.version}",
    )


# ------------------------------------------------------------------------------------------ fetching weights


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    root = cache_dir or os.environ.get(_CACHE_ENV) or Path.home() / ".cache" / "mlvicx" / "registry"
    return Path(root).expanduser()


def _cache_key(resolved: ResolvedModel, tracking_uri: str) -> str:
    if resolved.model_id:  # LoggedModel ids are globally unique (the name/version only make the folder readable)
        label = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{resolved.name}-v{resolved.version}-") if resolved.name else ""
        return f"{label}{resolved.model_id}"
    digest = hashlib.sha256(f"{tracking_uri}|{resolved.name}|{resolved.version}|{resolved.run_id}".encode()).hexdigest()
    return f"{resolved.name or 'run'}-v{resolved.version or 'x'}-{digest[:16]}"


def _download(artifact_uri: str, artifact_path: str | None, dst: Path, store_uri: str) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import (
        get_artifact_repository,
    )

    dst.mkdir(parents=True, exist_ok=True)
    try:
        # a models:/ repository resolves the version through MLflow's global registry URI, whatever is passed here
        with _global_uris(store_uri):
            repo = get_artifact_repository(artifact_uri, tracking_uri=store_uri, registry_uri=store_uri)
            return Path(repo.download_artifacts(artifact_path or "", dst_path=str(dst)))
    except (MlflowException, OSError) as err:
        raise RegistryError(
            f"cannot download {artifact_path or 'the model'} of {artifact_uri}: {type(err).__name__}: {err}"
        ) from None


def _fetch_weights(
    resolved: ResolvedModel, cache_dir: str | os.PathLike | None, tracking_uri: str | None
) -> tuple[Path, str]:
    """Local weights file of ``resolved`` and its kind (downloaded into the cache for remote models)."""
    if resolved.local_path is not None:
        path = resolved.local_path
        if path.is_dir():
            weights = _weights_in(path)
            if weights is None or resolved.kind is None:
                raise RegistryFormatError(
                    f"{path} is not an MLVICX registered model folder (no artifacts/model.pt or encoder.pt)"
                )
            return weights, resolved.kind
        if resolved.kind is None:
            raise RegistryFormatError(f"{path} is not a model file of this project (encoder.pt or model.pt)")
        return path, resolved.kind
    uri = resolve_tracking_uri(tracking_uri)
    kind = resolved.kind
    if kind is None:  # not logged by us (or the tag was removed): fetch the model folder and look
        root = _cache_root(cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        folder = _download(resolved.artifact_uri, None, Path(tempfile.mkdtemp(prefix=".untagged-", dir=root)), uri)
        weights, kind = _weights_in(folder), _local_kind(folder)
        if weights is None or kind is None:
            raise RegistryFormatError(
                f"{resolved.uri} is not an MLVICX registered model (no artifacts/model.pt or encoder.pt); "
                "register models with mlvicx_monai.tracking.registry.log_and_register"
            )
        return weights, kind
    if kind not in KINDS:
        raise RegistryFormatError(f"{resolved.uri} has an unknown {_KIND_TAG} tag {kind!r}")
    name = resolved.tags.get(_FILE_TAG) or ("encoder.pt" if kind == "encoder" else "weights.pt")
    entry = _cache_root(cache_dir) / _cache_key(resolved, uri)
    target = entry / name
    expected = resolved.tags.get(_SHA_TAG)
    if not (target.is_file() and expected and sha256_file(target) == expected):
        _download_into(resolved, name, entry, target, expected, uri)
    if kind == "encoder":  # what download_encoder's file came from, for encoder_lineage(path)
        atomic_write_json(entry / "lineage.json", _lineage_of(resolved))
    return target, kind


def _download_into(
    resolved: ResolvedModel, name: str, entry: Path, target: Path, expected: str | None, uri: str
) -> None:
    staging = entry.parent / f".{entry.name}.{uuid.uuid4().hex}.partial"
    try:
        got = _download(resolved.artifact_uri, f"artifacts/{name}", staging, uri)
        if expected and sha256_file(got) != expected:
            raise RegistryError(
                f"{resolved.uri}: downloaded weights do not match the version's {_SHA_TAG} tag "
                "(corrupted artifact store?)"
            )
        entry.mkdir(parents=True, exist_ok=True)
        os.replace(got, target)  # atomic: concurrent downloaders (DDP ranks, parallel jobs) never see half a file
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(
    uri_or_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    tracking_uri: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """The registered (or local) model as our torch module, weights loaded strictly, in eval mode on ``device``.

    Accepts ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-<id>``, ``runs:/...``, a local MLflow
    model folder or a local ``encoder.pt`` / ``weights.pt``. Remote weights are cached (see
    :func:`download_encoder`).
    """
    resolved = resolve_model(uri_or_path, tracking_uri)
    path, _ = _fetch_weights(resolved, cache_dir, tracking_uri)
    try:
        model, _ = load_artifact(path, map_location=device)
    except ArtifactError as err:
        raise RegistryFormatError(str(err)) from None
    return model


def download_encoder(
    uri_or_path: str | os.PathLike, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local ``encoder.pt`` (``save_encoder`` format, loads with ``load_encoder``) for an encoder URI or path.

    Remote versions are downloaded once into ``cache_dir`` (default ``$MLVICX_REGISTRY_CACHE`` or
    ``~/.cache/mlvicx/registry``), one folder per MLflow LoggedModel, checked against the version's
    ``mlvicx.weights_sha256`` tag (re-downloaded on mismatch); ``lineage.json`` next to it records the
    registered name, version and source run (read by :func:`encoder_lineage`). A local path is returned as is.

    Raises:
        RegistryError: the URI names a classifier/segmenter (or anything but an MLVICX encoder).
        ModelNotFoundError, ServerUnreachableError: as :func:`resolve_model`.
    """
    resolved = resolve_model(uri_or_path, tracking_uri)
    if resolved.kind not in (None, "encoder"):
        raise RegistryError(
            f"{resolved.uri} is a {resolved.kind}, not a pretrained encoder; pass a version of {ENCODER_MODEL!r} "
            f"(e.g. models:/{ENCODER_MODEL}@champion)"
        )
    path, kind = _fetch_weights(resolved, cache_dir, tracking_uri)
    if kind != "encoder":
        raise RegistryError(f"{resolved.uri} holds a {kind}, not a pretrained encoder")
    return path


def download_model(
    uri_or_path: str | os.PathLike, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local ``weights.pt`` (the bundles' ``model.pt`` format, loads with
    :func:`~mlvicx_monai.networks.downstream_io.load_downstream`) of a registered classifier or segmenter.

    Cached and checked as :func:`download_encoder`. A local path is returned as is.

    Raises:
        RegistryError: the URI names an encoder (or anything but a classifier/segmenter).
        ModelNotFoundError, ServerUnreachableError: as :func:`resolve_model`.
    """
    resolved = resolve_model(uri_or_path, tracking_uri)
    path, kind = _fetch_weights(resolved, cache_dir, tracking_uri)
    if kind not in ("classifier", "segmenter"):
        raise RegistryError(
            f"{resolved.uri} holds a {kind}, not a trained classifier or segmenter; deploy a version of "
            f"cxr-classifier-<dataset> or {SEGMENTER_MODEL!r} (e.g. models:/cxr-classifier-nih@champion)"
        )
    return path


# -------------------------------------------------------------------------------------------------- lineage


def _lineage_of(resolved: ResolvedModel) -> dict[str, str]:
    out = {f"{_PREFIX}encoder.uri": resolved.registered_uri or resolved.uri}
    if resolved.name:
        out[f"{_PREFIX}encoder.model_name"] = resolved.name
        out[f"{_PREFIX}encoder.version"] = str(resolved.version)
    if resolved.run_id:
        out[f"{_PREFIX}encoder.run_id"] = resolved.run_id
    if resolved.model_id:
        out[f"{_PREFIX}encoder.model_id"] = resolved.model_id
    return out


def encoder_lineage(
    source: str | os.PathLike | Mapping[str, Any] | None, tracking_uri: str | None = None
) -> dict[str, str]:
    """Tags naming the pretrained encoder a downstream model started from (``mlvicx.encoder.*``).

    ``source``: a ``models:/`` URI (resolved to name, version, run id), a local ``encoder.pt`` (the
    ``lineage.json`` written by :func:`download_encoder` next to it, else the ``mlflow_run_id`` in the file's
    provenance), a ready mapping, or None / ``"none"`` (random initialisation).
    """
    if source is None or (isinstance(source, str) and source.strip().lower() in ("", "none", "random", "scratch")):
        return {f"{_PREFIX}encoder.uri": "none (randomly initialised)"}
    if isinstance(source, Mapping):
        return {(k if k.startswith(_PREFIX) else f"{_PREFIX}encoder.{k}"): str(v) for k, v in source.items()}
    text = os.fspath(source)
    resolved = resolve_model(text, tracking_uri)
    if resolved.local_path is None:
        return _lineage_of(resolved)
    path = resolved.local_path
    out = {f"{_PREFIX}encoder.path": str(path)}
    sidecar = path.parent / "lineage.json" if path.is_file() else path / "lineage.json"
    if sidecar.is_file():
        out.update(json.loads(sidecar.read_text(encoding="utf-8")))
        return out
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            run_id = (state.get("provenance") or {}).get("mlflow_run_id") if isinstance(state, dict) else None
        except Exception:
            run_id = None
        if run_id:
            out[f"{_PREFIX}encoder.run_id"] = str(run_id)
    return out


# ----------------------------------------------------------------------------------------- log and register


def _run_of(run: Any, tracking_uri: str | None) -> tuple[str | None, str | None]:
    if isinstance(run, str):
        return run, tracking_uri
    enabled = getattr(run, "enabled", True)
    if not enabled:
        return None, None
    return run.run_id, tracking_uri or getattr(run, "tracking_uri", None)


def _in_channels(info: ArtifactInfo) -> int:
    config = info.config if info.kind is ModelKind.ENCODER else info.config["encoder"]
    return int(config.get("in_channels", 1))


def _example_shape(info: ArtifactInfo) -> tuple[int, int, int, int]:
    """``(1, C, S, S)`` of the all-zeros input example: the side the model was trained on (a multiple of 32)."""
    side = info.preprocessing.image_size if info.preprocessing is not None else 224
    return (1, _in_channels(info), 32 * max(1, round(side / 32)), 32 * max(1, round(side / 32)))


def _signature(info: ArtifactInfo):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype("float32")
    if info.kind is ModelKind.ENCODER:
        out: tuple[int, ...] = (-1, 512)
    elif info.kind is ModelKind.CLASSIFIER:
        out = (-1, int(info.config["num_classes"]))
    else:
        out = (-1, int(info.config["out_channels"]), -1, -1)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, _in_channels(info), -1, -1))]),  # unnamed: pyfunc gets a plain array
        outputs=Schema([TensorSpec(f32, out)]),
    )


def _requirements() -> list[str]:
    import importlib.metadata as md

    reqs = []
    # the package itself ships with the model (code_paths), so it is not a pip requirement
    for package in ("torch", "monai", "pytorch-ignite", "mlflow", "numpy", "pillow"):
        try:
            reqs.append(f"{package}=={md.version(package).split('+')[0]}")
        except md.PackageNotFoundError:
            continue
    return reqs


_PROGRESS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def _global_uris(uri: str) -> Iterator[None]:
    """MLflow's global tracking/registry URIs set to ``uri`` for a block (``Model.log`` and the ``models:/`` artifact
    repository read them), then restored with MLflow's public setters, environment variables included
    (``mlflow.set_tracking_uri`` exports ``$MLFLOW_TRACKING_URI``). Artifact progress bars are off inside unless
    ``$MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` is set."""
    import mlflow
    from mlflow.tracking import is_tracking_uri_set

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", _PROGRESS)}
    # no per-file download bars in a job's log (Model.log re-reads the input example it just wrote), unless asked
    os.environ.setdefault(_PROGRESS, "false")
    before_t = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    before_r = mlflow.get_registry_uri()
    before_r = before_r if before_r != mlflow.get_tracking_uri() else None  # unset: it follows the tracking URI
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before_t)
        mlflow.set_registry_uri(before_r)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _link_metrics(client: Any, run_id: str, model_id: str, metrics: Mapping[str, float]) -> None:
    """The test metrics on the LoggedModel (MLflow 3 model metrics). MLflow records a model metric in the run's
    history as well, so a metric the run already logged is re-logged as its very entry (same value, step and
    timestamp: the store keeps one row) and the run's curves get no extra point."""
    for key, value in metrics.items():
        value = float(value)
        same = [m for m in client.get_metric_history(run_id, key) if math.isclose(m.value, value, rel_tol=1e-12)]
        if same:
            last = max(same, key=lambda m: (m.step, m.timestamp))
            client.log_metric(run_id, key, last.value, timestamp=last.timestamp, step=last.step, model_id=model_id)
        else:
            client.log_metric(run_id, key, value, model_id=model_id)


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 5000 else text[:4997] + "..."


def log_and_register(
    run: Any,
    artifact: str | os.PathLike,
    name: str,
    *,
    register: bool = True,
    tags: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    config: Mapping[str, Any] | None = None,
    datalist: str | os.PathLike | None = None,
    datalist_id: str | None = None,
    datalist_checksum: str | None = None,
    encoder_source: str | os.PathLike | Mapping[str, Any] | None = None,
    description: str | None = None,
    alias: str | None = None,
    tracking_uri: str | None = None,
):
    """Log the model file ``artifact`` under ``run`` (an MLflow 3 LoggedModel) and register it as a new version of
    ``name``.

    Args:
        run: a run id, or a :class:`~mlvicx_monai.tracking.TrackedRun` (disabled / not rank 0: nothing is done,
            None is returned). The run may be finished already.
        artifact: the model file the bundle wrote (``encoder.pt`` / ``model.pt``, see
            :mod:`mlvicx_monai.networks.artifacts`); logged as is, so the registered weights are that very file.
        name: registered model name (``mlvicx-encoder``, ``cxr-classifier-<dataset>``, ``pneumothorax-segmenter``).
        register: False logs the model with the run but registers no version.
        tags: extra model-version tags. metrics: test metrics (``mlvicx.metric.<name>`` tags).
        config: the training configuration (``artifacts/training_config.json``).
        datalist: the datalist the model was trained on (id and SHA-256 are computed), or give
            ``datalist_id`` / ``datalist_checksum`` directly.
        encoder_source: the pretrained encoder of a downstream model (see :func:`encoder_lineage`).
        description: version description. alias: set this alias on the new version (e.g. ``"candidate"``).
        tracking_uri: store (``$MLFLOW_TRACKING_URI`` wins; else the TrackedRun's, else the default).

    Returns:
        The new ``ModelVersion`` (or None, see ``run`` and ``register``).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    run_id, uri_hint = _run_of(run, tracking_uri)
    if run_id is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ValueError(f"invalid registered model name {name!r}")
    try:
        info, _ = read_artifact(artifact)
    except ArtifactError as err:
        raise RegistryFormatError(str(err)) from None
    kind = info.kind.value
    shape = _example_shape(info)
    client = registry_client(uri_hint)
    uri = client.tracking_uri
    try:
        source_run = client.get_run(run_id)
    except MlflowException:
        raise ModelNotFoundError(f"no run {run_id} in {_redact(uri)} to log the model under") from None

    if datalist is not None:
        from mlvicx_monai.data.datalist import datalist_checksum as _checksum
        from mlvicx_monai.data.datalist import datalist_id as _ident

        datalist_id = datalist_id or _ident(datalist)
        datalist_checksum = datalist_checksum or _checksum(datalist)
    version_tags: dict[str, str] = {
        _KIND_TAG: kind,
        f"{_PREFIX}input_shape": "x".join(map(str, shape)),
        f"{_PREFIX}source_run_id": run_id,
        f"{_PREFIX}format": info.format,
        _FILE_TAG: info.kind.file_name,
        CONFIG_TAG: json.dumps(info.config, sort_keys=True),
        _SHA_TAG: sha256_file(artifact),
    }
    for key in ("git_commit", "git_dirty"):
        if f"{_PREFIX}{key}" in source_run.data.tags:
            version_tags[f"{_PREFIX}{key}"] = source_run.data.tags[f"{_PREFIX}{key}"]
    if datalist_id:
        version_tags[f"{_PREFIX}datalist_id"] = str(datalist_id)
    if datalist_checksum:
        version_tags[f"{_PREFIX}datalist_checksum"] = str(datalist_checksum)
    if kind != "encoder" or encoder_source is not None:
        version_tags.update(encoder_lineage(encoder_source, uri))
    for key, value in (metrics or {}).items():
        version_tags[f"{_PREFIX}metric.{key}"] = repr(float(value))
    version_tags.update({str(k): _tag_value(v) for k, v in (tags or {}).items()})

    existing = _same_version(client, name, run_id, version_tags[_SHA_TAG]) if register else None
    if existing is not None:  # e.g. a finished job rerun: the same weights are registered once
        logger.info(
            "%s version %s already holds these weights (run %s); not registered again", name, existing.version, run_id
        )
        if alias:
            set_alias(name, existing.version, alias, tracking_uri=uri)
        return client.get_model_version(name, existing.version)
    with tempfile.TemporaryDirectory(prefix="mlvicx-register-") as tmp:
        weights = Path(tmp) / info.kind.file_name
        shutil.copyfile(artifact, weights)
        artifacts = {"weights": str(weights)}
        if config is not None:
            config_file = Path(tmp) / "training_config.json"
            config_file.write_text(json.dumps(dict(config), indent=1, default=str) + "\n", encoding="utf-8")
            artifacts["training_config"] = str(config_file)
        logged = client.create_logged_model(
            experiment_id=source_run.info.experiment_id, name=name, source_run_id=run_id,
            tags=version_tags, params={"architecture": json.dumps(info.config)[:6000]}, model_type=kind,
        )
        with _global_uris(uri):
            Model.log(
                artifact_path=None, name=name, flavor=mlflow.pyfunc, flavor_name="pyfunc.ModelFromCode",
                run_id=run_id, model_id=logged.model_id,
                python_model=str(_PYFUNC_CODE), artifacts=artifacts,
                signature=_signature(info), input_example=np.zeros(shape, dtype=np.float32),
                pip_requirements=_requirements(), model_config={"torch_device": "cpu"}, code_paths=[str(_PACKAGE)],
                metadata={"mlvicx_kind": kind, "mlvicx_format": info.format},
            )
    _link_metrics(client, run_id, logged.model_id, metrics or {})
    if not register:
        return None
    if description is None:
        description = model_card(info, name, version_tags, metrics)
    try:
        client.create_registered_model(name, description=_DESCRIPTIONS[kind])
    except MlflowException as err:
        if _error_code(err) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    with _global_uris(uri):  # the registry store checks a models:/ source through MLflow's global tracking URI
        version = client.create_model_version(
            name=name, source=f"models:/{logged.model_id}", run_id=run_id, tags=version_tags,
            description=description, model_id=logged.model_id,
        )
    logger.info("registered %s version %s (run %s, logged model %s)", name, version.version, run_id, logged.model_id)
    if alias:
        set_alias(name, version.version, alias, tracking_uri=uri)
    return client.get_model_version(name, version.version)


def model_card(
    info: ArtifactInfo, name: str, tags: Mapping[str, str], metrics: Mapping[str, float] | None = None
) -> str:
    """Markdown description of a registered version: what the model is, the data it was trained on (datalist id and
    checksum, never patient data), its test metrics, intended use and how to load it."""
    rows = "\n".join(f"| {k} | {float(v):.4f} |" for k, v in sorted((metrics or {}).items())) or "| (none recorded) | |"
    classes = ", ".join(info.class_names) if info.class_names else "-"
    size = info.preprocessing.image_size if info.preprocessing is not None else "-"
    use = {
        "encoder": "initialising downstream chest X-ray classifiers and segmenters (bundles classify.json, "
        "segment.json: `--pretrained models:/NAME@ALIAS`); not a diagnostic model",
        "classifier": "research triage of frontal chest radiographs for the classes above; not a medical device, "
        "not for diagnosis without a radiologist",
        "segmenter": "research segmentation of pneumothorax on frontal chest radiographs; not a medical device",
    }[info.kind.value]
    encoder = tags.get(f"{_PREFIX}encoder.uri", "-")
    return (
        f"# {name}\n\n{_DESCRIPTIONS[info.kind.value]}\n\n"
        f"## Data\n\n- datalist: `{tags.get(f'{_PREFIX}datalist_id', '-')}`\n"
        f"- datalist SHA-256: `{tags.get(f'{_PREFIX}datalist_checksum', '-')}`\n"
        f"- input: {size} x {size} px, classes: {classes}\n- pretrained encoder: `{encoder}`\n\n"
        f"## Test metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Intended use\n\n{use}.\n\n"
        f"## Load\n\n`mlvicx_monai.tracking.registry.load_model('models:/{name}/<version>')`, or "
        f"`mlflow models serve -m models:/{name}/<version>`\n\n"
        f"Source run: `{tags.get(f'{_PREFIX}source_run_id', '-')}`, code: `{tags.get(f'{_PREFIX}git_commit', '-')}`\n"
    )


def _same_version(client, name: str, run_id: str, sha: str):
    """The version of ``name`` logged by ``run_id`` with these exact weights, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    return next((v for v in versions if (v.tags or {}).get(_SHA_TAG) == sha), None)


# ------------------------------------------------------------------------------------------------- aliases


def set_alias(name: str, version: str | int, alias: str, tracking_uri: str | None = None):
    """Point ``alias`` (e.g. ``champion``) of registered model ``name`` at ``version``; returns that version.

    Raises:
        ModelNotFoundError: unknown model or version. ValueError: an alias MLflow reserves
        (``latest``, ``v<digits>``) or with characters other than letters, digits, ``_`` and ``-``.
    """
    reserved = (alias or "").lower() == "latest" or re.fullmatch(r"[vV]\d+", alias or "")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias or "") or reserved:
        raise ValueError(f"invalid alias {alias!r}: letters, digits, '_' and '-', not 'latest' nor v<number>")
    client = registry_client(tracking_uri)
    mv = _model_version(client, name, version=version)
    client.set_registered_model_alias(name, alias, str(mv.version))
    return client.get_model_version(name, str(mv.version))


def delete_alias(name: str, alias: str, tracking_uri: str | None = None) -> None:
    """Remove ``alias`` from registered model ``name``."""
    client = registry_client(tracking_uri)
    _model_version(client, name, alias=alias)
    client.delete_registered_model_alias(name, alias)


# ------------------------------------------------------------------------------------------------- listing


def _version_record(mv, aliases: Mapping[str, str] | None = None) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    own_aliases = list(getattr(mv, "aliases", None) or [])
    if not own_aliases and aliases:
        own_aliases = sorted(a for a, v in aliases.items() if str(v) == str(mv.version))
    return {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": own_aliases,
        "kind": tags.get(_KIND_TAG),
        "run_id": mv.run_id,
        "model_id": _model_id_of(mv),
        "status": mv.status,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mv.creation_timestamp / 1000)),
        "description": mv.description or "",
    }


def list_models(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered models with their versions and aliases (``[{name, description, aliases, versions}]``)."""
    client = registry_client(tracking_uri)
    out = []
    for rm in sorted(client.search_registered_models(max_results=1000), key=lambda m: m.name):
        aliases = {a: str(v) for a, v in (getattr(rm, "aliases", {}) or {}).items()}
        out.append({
            "name": rm.name,
            "description": rm.description or "",
            "aliases": aliases,
            "versions": [_version_record(mv, aliases) for mv in _versions(client, rm.name)],
        })
    return out


def describe_version(
    name: str, version: str | int | None = None, alias: str | None = None, tracking_uri: str | None = None
) -> dict[str, Any]:
    """One version: tags split into metrics / lineage / data / other, and its source run.

    Give ``version`` or ``alias`` (neither: the latest version).
    """
    client = registry_client(tracking_uri)
    if version is None and alias is None:
        version = "latest"
    mv = _model_version(client, name, version=version, alias=alias)
    aliases = {a: str(v) for a, v in (getattr(client.get_registered_model(name), "aliases", {}) or {}).items()}
    record = _version_record(mv, aliases)
    tags = dict(mv.tags or {})
    metric, encoder = f"{_PREFIX}metric.", f"{_PREFIX}encoder."
    record["metrics"] = {k[len(metric) :]: float(v) for k, v in tags.items() if k.startswith(metric)}
    record["lineage"] = {k[len(encoder) :]: v for k, v in tags.items() if k.startswith(encoder)}
    data_keys = (f"{_PREFIX}datalist_id", f"{_PREFIX}datalist_checksum")
    record["data"] = {k[len(_PREFIX) :]: v for k, v in tags.items() if k in data_keys}
    shown = set()
    for group in ("metric.", "encoder."):
        shown |= {k for k in tags if k.startswith(_PREFIX + group)}
    shown |= {f"{_PREFIX}datalist_id", f"{_PREFIX}datalist_checksum"}
    record["tags"] = {k: v for k, v in sorted(tags.items()) if k not in shown}
    record["source"] = mv.source
    run_info: dict[str, Any] = {"run_id": mv.run_id}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            run_info.update({
                "run_name": run.info.run_name,
                "status": run.info.status,
                "experiment_id": run.info.experiment_id,
                "git_commit": run.data.tags.get(f"{_PREFIX}git_commit"),
                "git_dirty": run.data.tags.get(f"{_PREFIX}git_dirty"),
            })
        except Exception as err:  # a deleted run: still show the version
            run_info["error"] = f"{type(err).__name__}"
    record["run"] = run_info
    return record
