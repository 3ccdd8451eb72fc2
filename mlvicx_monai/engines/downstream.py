"""What the downstream bundles (``classify.json``, ``segment.json``) share: the pretrained-encoder source,
per-dataset defaults, the handlers MONAI lacks and the final test report.

Handlers: best weights are MONAI's ``CheckpointSaver`` (``key_metric_save_state``), its bookkeeping carried in the
resumable checkpoint by :class:`SaverState`; early stopping is MONAI's ``EarlyStopHandler`` with a counter that
survives a resume (:class:`ResumableEarlyStop`); :class:`ValidationMetrics` puts the validation metrics on the
trainer's epoch step and keeps their history; :class:`DownstreamReport` restores the best weights, evaluates the
test split and writes ``model.pt`` / ``results.json``.

Per-dataset defaults (SPEC section 3, paper section IV). A bundle tunable whose value is ``"auto"`` is
resolved by :func:`dataset_default` from :data:`DOWNSTREAM_DEFAULTS` for the bundle's task, ``dataset`` and
``protocol``; any other value is used as given, so every setting stays overridable on the command line
(``--lr 1e-4``). The resolved values are recorded in ``results.json`` and as MLflow params ``resolved.*``.
Where the paper gives no value (e.g. the NIH frozen learning rate) the table says so in :data:`DEFAULT_NOTES`.

Pretrained source (:func:`resolve_pretrained`): a path to ``encoder.pt`` (strict load), an MLflow model URI
(``models:/name@alias``, ``runs:/id/path``; downloaded by ``mlvicx_monai.tracking.registry.download_encoder`` in the
bundle's ``initialize``, never while a config is resolved) or ``none`` (random initialisation: the only way to get
random weights).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver, EarlyStopHandler

from mlvicx_monai.networks.artifacts import (
    ArtifactError,
    ModelKind,
    load_model,
    read_artifact,
    read_torch_file,
    save_model,
    strict_load,
    unwrap_model,
)
from mlvicx_monai.networks.encoder import LEVELS, MLVICXEncoder
from mlvicx_monai.transforms.preprocessing import Preprocessing
from mlvicx_monai.utils.atomic import atomic_write_json
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "AUTO",
    "DEFAULT_NOTES",
    "DOWNSTREAM_DEFAULTS",
    "MLFLOW_URI_PREFIXES",
    "PRETRAINED_NONE",
    "PROTOCOLS",
    "DownstreamReport",
    "PretrainedSource",
    "ResumableEarlyStop",
    "SaverState",
    "ValidationMetrics",
    "check_dataset",
    "check_evaluation_data",
    "check_protocol",
    "read_test_metrics",
    "dataset_default",
    "resolve_pretrained",
    "resolve_settings",
    "restore_best",
]

logger = logging.getLogger(__name__)

AUTO = "auto"
PRETRAINED_NONE = "none"
MLFLOW_URI_PREFIXES = ("models:/", "runs:/")
PROTOCOLS = ("frozen", "finetune")

#: fine-tuning sees randomly shifted/rotated/scaled images; the frozen protocol caches features, so none
_AUGMENT = {"finetune": True, "frozen": False}

#: task -> dataset -> setting -> value, or {protocol: value}. ``demo`` is the synthetic data of each task.
DOWNSTREAM_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "classify": {
        "nih": {"batch_size": 64, "lr": {"finetune": 1e-5, "frozen": 1e-3}, "max_epochs": 100, "image_size": 224,
                "classes": "all", "augment": _AUGMENT},
        "vindr": {"batch_size": 16, "lr": 1e-3, "max_epochs": 100, "image_size": 224, "classes": "all",
                  "augment": _AUGMENT},
        "rsna": {"batch_size": 16, "lr": 1e-3, "max_epochs": 100, "image_size": 224, "classes": "all",
                 "augment": _AUGMENT},
        "demo": {"batch_size": 16, "lr": {"finetune": 3e-4, "frozen": 1e-3},
                 "max_epochs": {"finetune": 20, "frozen": 100}, "image_size": 128, "augment": _AUGMENT,
                 "classes": ["Cardiomegaly", "Consolidation", "Effusion", "Mass", "Pneumothorax"]},
    },
    "segment": {
        "siim": {"batch_size": 32, "lr": 3e-4, "max_epochs": 100, "image_size": 256},
        "demo": {"batch_size": 16, "lr": 3e-4, "max_epochs": 12, "image_size": 128},
    },
}

#: Where a default is ours rather than the paper's, and why.
DEFAULT_NOTES: dict[str, str] = {
    "classify.nih.lr.frozen": "the paper gives lr 1e-5 for NIH fine-tuning only; the linear probe uses the "
    "VinDr/RSNA value 1e-3 (a single linear layer on fixed features)",
    "*.max_epochs": "the paper uses early stopping (patience 10) without a stated epoch cap; 100 is our cap",
    "*.image_size": "224 as in the paper (classification); 256 for SIIM (our choice: thin pneumothoraces)",
    "classify.demo": "synthetic data, sized to run in minutes on 2 CPU cores: 128 px, 5 localised findings, "
    "fine-tuning for 20 epochs (the Grad-CAM heatmaps of a linear probe on the demo encoder do not localise)",
    "segment.demo": "synthetic SIIM layout at 128 px, batch 16, 12 epochs",
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is ``frozen`` or ``finetune``; otherwise a ``ValueError`` naming the choices."""
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"protocol must be one of {PROTOCOLS} (linear probe / decoder only, or full fine-tuning), got {protocol!r}"
        )
    return protocol


def read_test_metrics(output_dir: str | os.PathLike) -> dict[str, float]:
    """The flat test metrics (``test/...``, ``best_epoch``) a downstream run wrote to ``output_dir/results.json``
    (the registered version's ``mlvicx.metric.*`` tags)."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not reach its test evaluation")
    return dict(json.loads(path.read_text(encoding="utf-8")).get("metrics") or {})


def check_evaluation_data(datalist: str | os.PathLike, model_path: str | os.PathLike) -> None:
    """Before ``configs/evaluate.json`` runs: the datalist exists and the model file is a downstream model whose
    classes the datalist has (a classifier of other classes would be scored on the wrong columns).

    Raises:
        DatalistError, ArtifactError: with what to run first.
    """
    from mlvicx_monai.data.datalist import read_datalist

    document = read_datalist(datalist)
    info, _ = read_artifact(model_path)
    if info.kind is ModelKind.CLASSIFIER:
        missing = [c for c in info.class_names or [] if c not in (document.get("class_names") or [])]
        if missing:
            raise ArtifactError(
                f"{model_path} predicts {missing}, which {datalist} does not label; evaluate it on its own dataset"
            )
    elif info.kind is not ModelKind.SEGMENTER:
        raise ArtifactError(f"{model_path} holds a {info.kind.value}; evaluate.json scores classifiers and segmenters")


def check_dataset(task: str, dataset: str) -> str:
    """``dataset`` if the ``task`` bundle knows it; otherwise a ``ValueError`` naming the choices."""
    if task not in DOWNSTREAM_DEFAULTS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DOWNSTREAM_DEFAULTS)}")
    if dataset not in DOWNSTREAM_DEFAULTS[task]:
        raise ValueError(
            f"unknown dataset {dataset!r} for the {task} bundle; choose one of {sorted(DOWNSTREAM_DEFAULTS[task])} "
            "(demo = synthetic data generated on first use)"
        )
    return dataset


def dataset_default(task: str, dataset: str, protocol: str, key: str, value: Any = AUTO) -> Any:
    """``value`` unless it is ``"auto"``; then the default of ``key`` for ``task``/``dataset``/``protocol``.

    Raises:
        ValueError: unknown task, dataset or protocol, or no default for ``key`` (name the value explicitly).
    """
    if not (isinstance(value, str) and value == AUTO):
        return value
    if task not in DOWNSTREAM_DEFAULTS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DOWNSTREAM_DEFAULTS)}")
    table = DOWNSTREAM_DEFAULTS[task]
    if dataset not in table:
        raise ValueError(
            f"no default {key} for dataset {dataset!r} in {task}; pass --{key} explicitly "
            f"(datasets with defaults: {sorted(table)})"
        )
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    settings = table[dataset]
    if key not in settings:
        raise ValueError(f"no default for {key!r} ({task}, {dataset}); pass --{key} explicitly")
    chosen = settings[key]
    if isinstance(chosen, Mapping):
        chosen = chosen[protocol]
    return copy.deepcopy(chosen)


def resolve_settings(task: str, dataset: str, protocol: str, **values: Any) -> dict[str, Any]:
    """:func:`dataset_default` for several settings at once: ``{name: resolved value}``."""
    return {key: dataset_default(task, dataset, protocol, key, value) for key, value in values.items()}


# ------------------------------------------------------------------------------------------------------
# pretrained encoder
# ------------------------------------------------------------------------------------------------------


def _missing_file_hint(path: Path) -> str:
    if path.name == "encoder.pt":
        return (f"run the pretraining demo first: `python -m monai.bundle run --config_file bundles/pretrain.json "
                f"--output_dir {path.parent}`")
    return "pass the encoder.pt written by bundles/pretrain.json"


@dataclass
class PretrainedSource:
    """Where the encoder of a downstream run comes from, resolved WITHOUT loading or downloading weights (so that
    a bundle can build its ``network_def`` from :attr:`config` with no side effect); :meth:`apply` then fetches the
    weights (a download for an MLflow URI) and loads them strictly into the network's encoder.

    Attributes:
        spec: what the user passed (``none``, a path, an MLflow URI).
        kind: ``none`` (random initialisation), ``file`` or ``mlflow``.
        config: the encoder architecture (:attr:`MLVICXEncoder.config`).
        path: the local ``encoder.pt`` (``file``; for ``mlflow`` once downloaded).
    """

    spec: str
    kind: str
    config: dict[str, Any]
    path: Path | None = None
    tracking_uri: str | None = None
    downloader: Callable[..., Path] | None = field(default=None, repr=False)
    record: dict[str, Any] = field(default_factory=dict)

    def fetch(self) -> MLVICXEncoder | None:
        """The pretrained encoder (downloaded first for an MLflow URI); ``None`` for ``kind == "none"``.

        Raises:
            ArtifactError: the file is not an encoder artifact, or does not fit :attr:`config`.
        """
        if self.kind == "none":
            self.record = {"pretrained": PRETRAINED_NONE, "kind": "none", "config": self.config}
            return None
        if self.kind == "mlflow" and self.path is None:
            self.path = _download_encoder(self.spec, self.tracking_uri, self.downloader)
        encoder, info = load_model(self.path, expect=ModelKind.ENCODER)
        if encoder.config != self.config:
            raise ArtifactError(
                f"{self.path} holds an encoder of config {encoder.config}, but {self.config} was resolved"
            )
        self.record = {"pretrained": self.spec, "kind": self.kind, "path": str(self.path),
                       "sha256": sha256_file(self.path), "config": info.config, "provenance": info.provenance}
        if self.kind == "mlflow":
            self.record["uri"] = self.spec
        return encoder

    def apply(self, network: torch.nn.Module) -> dict[str, Any]:
        """Copy the pretrained weights into ``network.encoder`` (classifier or U-Net), strictly; nothing for
        ``none``. Returns the JSON-safe :attr:`record` of the source (kind, path, SHA-256, the encoder's provenance)."""
        encoder = self.fetch()
        if encoder is not None:
            target = unwrap_model(network).encoder
            strict_load(
                target, encoder.state_dict(), f"pretrained encoder {self.path} does not fit the network's encoder"
            )
        return self.record


def _download_encoder(uri: str, tracking_uri: str | None, downloader: Callable[..., Path] | None) -> Path:
    if downloader is None:
        from mlvicx_monai.tracking.registry import download_encoder as downloader
    try:
        return Path(downloader(uri, tracking_uri=tracking_uri or None))
    except ArtifactError:
        raise
    except Exception as err:
        raise ArtifactError(
            f"cannot fetch the pretrained encoder {uri!r} from MLflow ({type(err).__name__}: {err})"
        ) from None


def resolve_pretrained(
    pretrained: str | os.PathLike,
    random_init_levels: Sequence[str] = LEVELS,
    tracking_uri: str | None = None,
    downloader: Callable[..., Path] | None = None,
) -> PretrainedSource:
    """Where the encoder of a downstream run comes from (see :class:`PretrainedSource`); reads at most the header of
    a local file or the tags of a registered version, never downloads.

    Args:
        pretrained: ``none`` (random initialisation, the from-scratch baseline), a path to the ``encoder.pt``
            written by ``bundles/pretrain.json``, or an MLflow model URI (``models:/...`` or ``runs:/...``).
        random_init_levels: context-bottleneck levels of the random encoder (``none`` only); the default matches
            the pretraining default so that ``none`` and a pretrained encoder have the same architecture.
        tracking_uri: the MLflow store of a URI (empty: ``$MLFLOW_TRACKING_URI`` or the default store).
        downloader: ``(uri, tracking_uri=...)`` -> local ``encoder.pt`` (default
            :func:`mlvicx_monai.tracking.registry.download_encoder`); also used to read the architecture of a
            registered version that does not record it in its tags.

    Raises:
        ArtifactError: a missing file (with the command that makes it), a file that is not an encoder artifact, an
            MLflow URI that cannot be resolved.
    """
    text = os.fspath(pretrained).strip() if isinstance(pretrained, (str, os.PathLike)) else pretrained
    if not isinstance(text, str) or not text:
        raise ArtifactError(
            f"pretrained must be a path to encoder.pt, an MLflow model URI or 'none', got {pretrained!r}"
        )
    if text.lower() == PRETRAINED_NONE:
        return PretrainedSource(PRETRAINED_NONE, "none", MLVICXEncoder(levels=list(random_init_levels)).config)
    if text.startswith(MLFLOW_URI_PREFIXES):
        config = _registered_encoder_config(text, tracking_uri)
        if config is None:  # a version registered without its architecture tag: read it from the weights file
            path = _download_encoder(text, tracking_uri, downloader)
            return PretrainedSource(text, "mlflow", read_artifact(path)[0].config, path, tracking_uri, downloader)
        return PretrainedSource(text, "mlflow", config, None, tracking_uri, downloader)
    path = Path(text)
    if not path.is_file():
        raise ArtifactError(
            f"pretrained encoder {path} does not exist; {_missing_file_hint(path)}, or pass --pretrained none for a "
            "randomly initialised baseline"
        )
    info, _ = read_artifact(path)
    if info.kind is not ModelKind.ENCODER:
        raise ArtifactError(f"{path} holds a {info.kind.value}, not a pretrained encoder; {_missing_file_hint(path)}")
    return PretrainedSource(text, "file", info.config, path)


def _registered_encoder_config(uri: str, tracking_uri: str | None) -> dict[str, Any] | None:
    """The ``mlvicx.config`` tag of the registered version ``uri`` names (None when it has none)."""
    try:
        from mlvicx_monai.tracking.registry import CONFIG_TAG, RegistryError, resolve_model
    except ImportError as err:
        raise ArtifactError(
            f"pretrained={uri!r} is an MLflow URI, but the tracking package cannot be imported ({err})"
        ) from None
    try:
        resolved = resolve_model(uri, tracking_uri or None)
    except RegistryError as err:
        raise ArtifactError(f"cannot resolve the pretrained encoder {uri!r}: {err}") from None
    if resolved.kind not in (None, ModelKind.ENCODER.value):
        raise ArtifactError(
            f"{uri} is a {resolved.kind}, not a pretrained encoder (e.g. models:/mlvicx-encoder@champion)"
        )
    tag = resolved.tags.get(CONFIG_TAG)
    return json.loads(tag) if tag else None


# ------------------------------------------------------------------------------------------------------
# handlers
# ------------------------------------------------------------------------------------------------------


class SaverState:
    """The best-metric bookkeeping of MONAI's ``CheckpointSaver`` as a ``state_dict``/``load_state_dict`` object, so
    that the resumable checkpoint (written atomically with the trainer's state) carries it: MONAI saves that state
    only inside the best file itself (``key_metric_save_state``) and has no ``state_dict`` for it."""

    def __init__(self, saver: CheckpointSaver) -> None:
        if saver._key_metric_checkpoint is None:
            raise ValueError("the CheckpointSaver must be built with save_key_metric=True")
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        return self.saver._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state))


def restore_best(network: torch.nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load the best-epoch weights that MONAI's ``CheckpointSaver`` wrote (``key_metric_save_state=True``,
    ``save_dict={"network": ..., "validation": ValidationMetrics}``) into ``network``; returns ``{"epoch", "metric"}``
    of that validation (the saver's score and the last epoch of the validation history it saved).

    Raises:
        RuntimeError: no validation produced a best checkpoint.
    """
    file = Path(path)
    if not file.is_file():
        raise RuntimeError(
            f"no best checkpoint at {file}: no validation epoch completed; check that the validation split has "
            "positive and negative cases"
        )
    _, state = read_torch_file(file)
    strict_load(unwrap_model(network), state["network"], f"{file} does not fit the network")
    saved = (state.get("checkpointer") or {}).get("_saved") or [(math.nan, "")]  # ignite Checkpoint.state_dict()
    history = (state.get("validation") or {}).get("history") or [{"epoch": 0}]
    return {"epoch": int(history[-1]["epoch"]), "metric": float(saved[-1][0])}


class ResumableEarlyStop(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` whose counter survives a resume, and which does not train on after a resume
    of a run that had already stopped (the trainer is terminated at ``STARTED``, so only the completion
    handlers run again).

    Same arguments as ``EarlyStopHandler``; pass the trainer with :meth:`set_trainer` (in the bundle's
    ``initialize``, as MONAI's model-zoo bundles do, to avoid a circular reference).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped = False
        self._pending: dict[str, Any] | None = None

    def set_trainer(self, trainer: Engine) -> None:
        super().set_trainer(trainer)
        self._trainer = trainer
        if self._pending is not None:
            self._apply(self._pending)
        if not trainer.has_event_handler(self._skip_if_stopped, Events.STARTED):
            trainer.add_event_handler(Events.STARTED, self._skip_if_stopped)

    def _skip_if_stopped(self, engine: Engine) -> None:
        if self.stopped:
            logger.info(
                "early stopping had already ended this run (epoch %d): not training further", engine.state.epoch
            )
            engine.terminate()

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        if self._handler is not None and self._handler.counter >= self.patience:
            self.stopped = True

    def _apply(self, state: Mapping[str, Any]) -> None:
        self._handler.counter = int(state["counter"])
        self._handler.best_score = state["best_score"]
        self.stopped = bool(state["stopped"])

    def state_dict(self) -> dict[str, Any]:
        handler = self._handler
        return {
            "counter": handler.counter if handler is not None else 0,
            "best_score": handler.best_score if handler is not None else None,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self._handler is None:
            self._pending = dict(state)
        else:
            self._apply(state)


class ValidationMetrics:
    """After each validation: the evaluator's scalar metrics are copied into the trainer's ``state.metrics`` (so the
    trainer's MLflow handler logs them at the trainer's epoch step) and appended to :attr:`history`, which survives a
    resume (``state_dict``; MONAI keeps no per-epoch record). Attach to the evaluator; give the trainer with
    :meth:`set_trainer` (in the bundle's ``initialize``, as MONAI's model-zoo bundles do)."""

    def __init__(self, trainer: Engine | None = None) -> None:
        self.trainer = trainer
        self.history: list[dict[str, float]] = []

    def set_trainer(self, trainer: Engine) -> None:
        self.trainer = trainer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.trainer is None:
            raise RuntimeError("ValidationMetrics has no trainer: call set_trainer() before running")
        scalars = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        self.trainer.state.metrics.update(scalars)
        self.history.append({"epoch": int(self.trainer.state.epoch), **scalars})

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]


class DownstreamReport:
    """At the trainer's COMPLETED: restore the best validation weights, evaluate the test split, and write

    - ``output_dir/results.json``: the run record (``provenance`` + MLflow run id), the resolved ``settings``,
      training facts (epochs, best epoch, validation history) and ``test`` (:meth:`evaluate`'s summary);
    - ``output_dir/model.pt``: the trained model with its class names, threshold and :class:`Preprocessing`
      (:func:`~mlvicx_monai.networks.artifacts.save_model`), deployable by the inference bundle;
    - the test metrics to the MLflow run (``test/...``) and to :attr:`metrics` (the registered version's tags).

    Subclasses implement :meth:`evaluate` (classification: AUC; segmentation: Dice) and set :attr:`task`.

    Args:
        output_dir: the run folder.
        network: the model saved to ``model.pt`` (the whole classifier or U-Net).
        best_path: the best-epoch file of the run's ``CheckpointSaver`` (restored first, see :func:`restore_best`).
        trained_network: the module whose weights the best file holds (default ``network``; the classifier's head
            for the frozen protocol).
        test_loader: test items for the evaluation.
        class_names: names of the outputs.
        preprocessing: the input chain (recorded in model.pt).
        provenance: run facts (task, dataset, datalist, protocol, fraction, seed ...).
        pretrained: the run's :class:`PretrainedSource` (its record goes into the provenance).
        validation: the :class:`ValidationMetrics` handler (validation history).
        settings: the resolved per-dataset settings.
        tracking_run: the :class:`~mlvicx_monai.tracking.TrackedRun` (may be disabled) or None.
        threshold: decision threshold on the sigmoid output (binary accuracy; mask threshold).
        device: where the test evaluation runs.
    """

    task = "downstream"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        best_path: str | os.PathLike,
        test_loader: Any,
        class_names: Sequence[str],
        preprocessing: Preprocessing,
        provenance: Mapping[str, Any],
        pretrained: PretrainedSource | None = None,
        validation: ValidationMetrics | None = None,
        settings: Mapping[str, Any] | None = None,
        tracking_run: Any = None,
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
        trained_network: torch.nn.Module | None = None,
        synthetic: bool = False,
        allow_patient_pixels: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.trained_network = trained_network if trained_network is not None else network
        self.best_path = Path(best_path)
        self.test_loader = test_loader
        self.class_names = [str(c) for c in class_names]
        self.preprocessing = preprocessing
        self.provenance = dict(provenance)
        self.pretrained = pretrained
        self.validation = validation
        self.settings = dict(settings or {})
        self.run = tracking_run
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.synthetic = bool(synthetic)
        self.allow_patient_pixels = bool(allow_patient_pixels)
        self.results: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def evaluate_model_file(self, model_path: str | os.PathLike) -> dict[str, Any]:
        """Evaluate a trained ``model.pt`` on the test split without training (``configs/evaluate.json``): its weights
        are loaded strictly into the network, the evaluation is written to ``output_dir/evaluation.json`` (plus the
        per-image CSV of the task) and returned."""
        model, info = load_model(model_path, expect=ModelKind.of(self.network))
        strict_load(unwrap_model(self.network), model.state_dict(), f"{model_path} does not fit the bundle's network")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary, metrics = self.evaluate()
        record = {
            "model": str(model_path),
            "model_sha256": sha256_file(model_path),
            "model_provenance": info.provenance,
            "evaluation": {k: v for k, v in self.provenance.items() if k != "n_images"},
            "test": summary,
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        }
        atomic_write_json(self.output_dir / "evaluation.json", json.loads(json.dumps(record, default=str)))
        logger.info("evaluation of %s written to %s", model_path, self.output_dir / "evaluation.json")
        return record

    def evaluate(self) -> tuple[dict[str, Any], dict[str, float]]:
        """``(summary for results.json["test"], MLflow metrics)`` of the restored model on the test split."""
        raise NotImplementedError

    def test_figures(self) -> dict[str, Any]:
        """Figures of the last :meth:`evaluate` (:mod:`mlvicx_monai.tracking.figures`), by name."""
        return {}

    def _save_figures(self) -> None:
        """Write and log the test figures; a figure that fails costs the figure, never the run's results."""
        from mlvicx_monai.tracking.figures import run_target, save_figures

        try:
            save_figures(self.test_figures(), self.output_dir, *run_target(self.run))
        except Exception as err:  # the results and model.pt are already written
            logger.warning("the test figures were not written (%s: %s)", type(err).__name__, err)

    def __call__(self, engine: Engine) -> None:
        restored = restore_best(self.trained_network, self.best_path)
        summary, metrics = self.evaluate()
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        metrics["best_epoch"] = float(restored["epoch"])
        run_id = getattr(self.run, "run_id", None) if self.run is not None else None
        provenance = {**self.provenance, "pretrained": self.pretrained.record if self.pretrained else None,
                      "mlflow_run_id": run_id}
        training = {
            "epochs_trained": int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs),
            "best_epoch": restored["epoch"],
            "best_validation": restored["metric"],
            "validation_history": self.validation.history if self.validation is not None else [],
        }
        self.results = {
            **provenance, "settings": self.settings, "training": training, "test": summary, "metrics": metrics
        }
        save_model(
            self.network, self.output_dir / "model.pt", preprocessing=self.preprocessing, class_names=self.class_names,
            threshold=self.threshold,
            provenance={**provenance, "task": self.task, "best_epoch": restored["epoch"],
                        "best_validation": restored["metric"], "test": metrics},
        )
        atomic_write_json(self.output_dir / "results.json", json.loads(json.dumps(self.results, default=str)))
        self.metrics = metrics
        if self.run is not None:
            self.run.log_metrics(metrics)
        self._save_figures()
