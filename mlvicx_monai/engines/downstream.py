"""What the downstream bundles (``classify.json``, ``segment.json``) share: the pretrained-encoder source,
per-dataset defaults, and the resumable best-checkpoint / early-stopping handlers.

Per-dataset defaults (SPEC section 3, paper section IV). A bundle tunable whose value is ``"auto"`` is
resolved by :func:`dataset_default` from :data:`DOWNSTREAM_DEFAULTS` for the bundle's task, ``dataset`` and
``protocol``; any other value is used as given, so every setting stays overridable on the command line
(``--lr 1e-4``). The resolved values are recorded in ``results.json`` and as MLflow params ``resolved.*``.
Where the paper gives no value (e.g. the NIH frozen learning rate) the table says so in :data:`DEFAULT_NOTES`.

Pretrained source (:func:`resolve_pretrained`): a path to ``encoder.pt`` (strict load), an MLflow model URI
(``models:/name@alias``, ``runs:/id/path``; downloaded by ``mlvicx_monai.tracking.registry.download_encoder``,
imported only for such URIs) or ``none`` (random initialisation: the only way to get random weights).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

from mlvicx_monai.networks.downstream_io import save_downstream
from mlvicx_monai.networks.encoder import LEVELS, MLVICXEncoder
from mlvicx_monai.networks.pretrained import (
    PretrainedEncoderError,
    build_encoder,
    load_encoder,
)
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_json
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "AUTO",
    "DEFAULT_NOTES",
    "DOWNSTREAM_DEFAULTS",
    "MLFLOW_URI_PREFIXES",
    "PRETRAINED_NONE",
    "PROTOCOLS",
    "BestCheckpoint",
    "CopyMetrics",
    "DownstreamReport",
    "EpochLoss",
    "ResumableEarlyStop",
    "check_protocol",
    "dataset_default",
    "resolve_pretrained",
    "resolve_settings",
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
        "vindr": {"batch_size": 16, "lr": 1e-3, "max_epochs": 100, "image_size": 224, "classes": "all", "augment": _AUGMENT},
        "rsna": {"batch_size": 16, "lr": 1e-3, "max_epochs": 100, "image_size": 224, "classes": "all", "augment": _AUGMENT},
        "demo": {"batch_size": 16, "lr": {"finetune": 3e-4, "frozen": 1e-3}, "max_epochs": {"finetune": 20, "frozen": 100},
                 "image_size": 128, "augment": _AUGMENT,
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
        raise ValueError(f"protocol must be one of {PROTOCOLS} (linear probe / decoder only, or full fine-tuning), got {protocol!r}")
    return protocol


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


def resolve_pretrained(
    pretrained: str | os.PathLike,
    random_init_levels: Sequence[str] = LEVELS,
    tracking_uri: str | None = None,
    downloader: Callable[..., Path] | None = None,
) -> tuple[MLVICXEncoder, dict[str, Any]]:
    """The encoder a downstream run starts from, and a JSON-safe record of where it came from.

    Args:
        pretrained: ``none`` (random initialisation, the from-scratch baseline), a path to the ``encoder.pt``
            written by ``bundles/pretrain.json``, or an MLflow model URI (``models:/...`` or ``runs:/...``).
        random_init_levels: context-bottleneck levels of the random encoder (``none`` only); the default matches
            the pretraining default so that ``none`` and a pretrained encoder have the same architecture.
        tracking_uri: the MLflow store of a URI (empty: ``$MLFLOW_TRACKING_URI`` or the default store).
        downloader: ``(uri, tracking_uri=...)`` -> local ``encoder.pt``; default
            ``mlvicx_monai.tracking.registry.download_encoder``.

    Returns:
        ``(encoder, source)``; ``source`` has ``pretrained`` (as given), ``kind`` (``none``/``file``/``mlflow``),
        ``config`` and, for a file, ``path``, ``sha256`` and the encoder's own ``provenance``.

    Raises:
        PretrainedEncoderError: the file is missing (with the command that makes it), not an encoder export, or
            does not fit; an MLflow URI that cannot be resolved.
    """
    text = os.fspath(pretrained).strip() if isinstance(pretrained, (str, os.PathLike)) else pretrained
    if not isinstance(text, str) or not text:
        raise PretrainedEncoderError(
            f"pretrained must be a path to encoder.pt, an MLflow model URI or 'none', got {pretrained!r}"
        )
    if text.lower() == PRETRAINED_NONE:
        encoder = build_encoder({"levels": list(random_init_levels)})
        return encoder, {"pretrained": PRETRAINED_NONE, "kind": "none", "config": encoder.config}
    source: dict[str, Any] = {"pretrained": text}
    if text.startswith(MLFLOW_URI_PREFIXES):
        if downloader is None:
            try:
                from mlvicx_monai.tracking.registry import (
                    download_encoder as downloader,
                )
            except ImportError as err:
                raise PretrainedEncoderError(
                    f"pretrained={text!r} is an MLflow URI, but mlvicx_monai.tracking.registry.download_encoder is not "
                    f"available in this installation ({err}); pass the path of a local encoder.pt instead"
                ) from None
        try:
            path = Path(downloader(text, tracking_uri=tracking_uri or None))
        except PretrainedEncoderError:
            raise
        except Exception as err:
            raise PretrainedEncoderError(
                f"cannot fetch the pretrained encoder {text!r} from MLflow ({type(err).__name__}: {err})"
            ) from None
        source.update(kind="mlflow", uri=text)
    else:
        path = Path(text)
        source["kind"] = "file"
        if not path.is_file():
            hint = (
                f"run the pretraining demo first: `python -m monai.bundle run --config_file bundles/pretrain.json "
                f"--output_dir {path.parent}`"
                if path.name == "encoder.pt"
                else "pass the encoder.pt written by bundles/pretrain.json"
            )
            raise PretrainedEncoderError(
                f"pretrained encoder {path} does not exist; {hint}, or pass --pretrained none for a randomly "
                "initialised baseline"
            )
    encoder, info = load_encoder(path)
    source.update(path=str(path), sha256=sha256_file(path), config=info["config"], provenance=info["provenance"])
    return encoder, source


# ------------------------------------------------------------------------------------------------------
# handlers
# ------------------------------------------------------------------------------------------------------


class BestCheckpoint:
    """Keep the weights of the best validation epoch on disk; restore them for the test evaluation.

    Attach to the evaluator (the validator run by MONAI's ``ValidationHandler``). After each validation the
    metric ``metric_name`` of ``evaluator.state.metrics`` is compared with the best so far (higher is better);
    an improvement of more than ``min_delta`` writes ``output_dir/checkpoints/best.pt`` atomically.

    Unlike MONAI's ``CheckpointSaver(save_key_metric=True)``, its state (best value and epoch) goes into the
    resumable checkpoint (``state_dict``/``load_state_dict``), so a resumed run keeps comparing against the
    true best instead of starting over.

    Args:
        network: the module whose weights are kept (the classifier, its head alone for the frozen
            protocol, or the U-Net).
        metric_name: key of the evaluator's metric.
        output_dir: the run folder.
        min_delta: the smallest increase that counts as an improvement.
    """

    FORMAT = "mlvicx-best-weights/1"

    def __init__(self, network: torch.nn.Module, metric_name: str, output_dir: str | os.PathLike, min_delta: float = 0.0) -> None:
        self.network = network
        self.metric_name = metric_name
        self.path = Path(output_dir) / "checkpoints" / "best.pt"
        self.min_delta = float(min_delta)
        self.best_metric: float = -math.inf
        self.best_epoch: int = 0
        self.history: list[tuple[int, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"the evaluator computed no {self.metric_name!r} (it has {sorted(engine.state.metrics)})")
        score = float(engine.state.metrics[self.metric_name])
        epoch = int(engine.state.epoch)
        self.history.append((epoch, score))
        if math.isfinite(score) and score > self.best_metric + self.min_delta:
            self.best_metric, self.best_epoch = score, epoch
            state = {
                "format": self.FORMAT,
                "epoch": epoch,
                "metric": {self.metric_name: score},
                "state_dict": {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()},
            }
            atomic_write(self.path, lambda tmp: torch.save(state, tmp), fsync=True)
            logger.info("epoch %d: best %s so far %.4f (saved %s)", epoch, self.metric_name, score, self.path)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.history = [tuple(h) for h in state.get("history", [])]

    def restore(self) -> dict[str, Any]:
        """Load the best weights into ``network``; returns ``{"epoch", "metric"}`` of the restored state.

        Raises:
            RuntimeError: no validation improved on the initial state (e.g. every score was NaN).
        """
        if not self.path.is_file():
            raise RuntimeError(
                f"no best checkpoint at {self.path}: no validation epoch produced a finite {self.metric_name}; "
                "check that the validation split has positive and negative cases"
            )
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state["state_dict"], strict=True)
        return {"epoch": state["epoch"], "metric": state["metric"]}


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
            logger.info("early stopping had already ended this run (epoch %d): not training further", engine.state.epoch)
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


class CopyMetrics:
    """Copy the evaluator's metrics into the trainer's ``state.metrics`` after each validation, so that the
    trainer's MLflow handler logs them at the same epoch step (attach to the evaluator)."""

    def __init__(self, trainer: Engine | None = None, prefix: str = "") -> None:
        self.trainer = trainer
        self.prefix = prefix

    def set_trainer(self, trainer: Engine) -> None:
        self.trainer = trainer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.trainer is None:
            raise RuntimeError("CopyMetrics has no trainer: call set_trainer() before running")
        for key, value in engine.state.metrics.items():
            if isinstance(value, (int, float)):
                self.trainer.state.metrics[f"{self.prefix}{key}"] = float(value)


class EpochLoss:
    """Mean training loss of every epoch into ``engine.state.metrics["train_loss"]`` (logged by the MLflow
    handler) and the log. Reads ``engine.state.output["loss"]`` (MONAI trainers with ``decollate=False``)."""

    def __init__(self, key: str = "train_loss") -> None:
        self.key = key
        self._sum = 0.0
        self._n = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._add)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._done)

    def _reset(self, engine: Engine) -> None:
        self._sum, self._n = 0.0, 0

    def _add(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output["loss"] if isinstance(output, Mapping) else output[0]["loss"]
        self._sum += float(loss.detach() if torch.is_tensor(loss) else loss)
        self._n += 1

    def _done(self, engine: Engine) -> None:
        mean = self._sum / max(self._n, 1)
        engine.state.metrics[self.key] = mean
        logger.info("epoch %d/%d: %s %.4f", engine.state.epoch, engine.state.max_epochs, self.key, mean)


class DownstreamReport:
    """At the trainer's COMPLETED: restore the best validation weights, evaluate the test split, and write

    - ``output_dir/results.json``: the run record (``provenance`` + MLflow run id), the resolved ``settings``,
      training facts (epochs, best epoch, validation history) and ``test`` (:meth:`evaluate`'s summary);
    - ``output_dir/model.pt``: the trained model with its preprocessing record
      (:func:`~mlvicx_monai.networks.downstream_io.save_downstream`), deployable by ``bundles/infer.json``;
    - the test metrics to the MLflow run (``test/...``) and to :attr:`metrics` (the registered version's tags).

    Subclasses implement :meth:`evaluate` (classification: AUC; segmentation: Dice) and set :attr:`task`.

    Args:
        output_dir: the run folder.
        network: the model saved to ``model.pt`` (the whole classifier or U-Net).
        best: the :class:`BestCheckpoint` of the run (restored first).
        test_loader: test items for the evaluation.
        class_names: names of the outputs.
        image_size, normalization: preprocessing recorded in model.pt.
        provenance: run facts (task, dataset, datalist, protocol, fraction, seed, pretrained source ...).
        settings: the resolved per-dataset settings.
        tracking_run: the :class:`~mlvicx_monai.tracking.TrackedRun` (may be disabled) or None.
        threshold: decision threshold on the sigmoid output (binary accuracy; mask threshold).
        device: where the test evaluation runs.
        source_size: side of the ingested images the model was trained from (inference resizes to it first).
    """

    task = "downstream"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        best: BestCheckpoint,
        test_loader: Any,
        class_names: Sequence[str],
        image_size: int,
        normalization: Mapping[str, float],
        provenance: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        tracking_run: Any = None,
        threshold: float = 0.5,
        device: str | torch.device = "cpu",
        source_size: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.best = best
        self.test_loader = test_loader
        self.class_names = [str(c) for c in class_names]
        self.image_size = int(image_size)
        self.normalization = dict(normalization)
        self.provenance = dict(provenance)
        self.settings = dict(settings or {})
        self.run = tracking_run
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.source_size = source_size
        self.results: dict[str, Any] | None = None
        self.metrics: dict[str, float] = {}

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What inference needs besides the weights (stored in model.pt and in the registered version)."""
        return {"class_names": self.class_names, "image_size": self.image_size, "normalization": self.normalization,
                "threshold": self.threshold, "source_size": self.source_size}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def evaluate(self) -> tuple[dict[str, Any], dict[str, float]]:
        """``(summary for results.json["test"], MLflow metrics)`` of the restored model on the test split."""
        raise NotImplementedError

    def __call__(self, engine: Engine) -> None:
        restored = self.best.restore()
        summary, metrics = self.evaluate()
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        metrics["best_epoch"] = float(restored["epoch"])
        run_id = getattr(self.run, "run_id", None) if self.run is not None else None
        provenance = {**self.provenance, "mlflow_run_id": run_id}
        training = {
            "epochs_trained": int(engine.state.epoch),
            "max_epochs": int(engine.state.max_epochs),
            "best_epoch": restored["epoch"],
            "best_validation": restored["metric"],
            "validation_history": [list(h) for h in self.best.history],
        }
        self.results = {**provenance, "settings": self.settings, "training": training, "test": summary}
        save_downstream(
            self.network,
            self.output_dir / "model.pt",
            provenance={**provenance, "task": self.task, "best_epoch": restored["epoch"],
                        "best_validation": restored["metric"], "test": metrics},
            **self.preprocessing,
        )
        atomic_write_json(self.output_dir / "results.json", json.loads(json.dumps(self.results, default=str)))
        self.metrics = metrics
        if self.run is not None:
            self.run.log_metrics(metrics)
