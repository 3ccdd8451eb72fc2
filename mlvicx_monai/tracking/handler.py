"""Training runs in MLflow: :class:`TrackedRun` opens (or resumes) the run, :class:`RunMLFlowHandler` logs to it.

:class:`RunMLFlowHandler` is MONAI's ``MLFlowHandler`` bound to a run id instead of a run name (the
name lookup would append to a crashed run of the same name, SPEC section 6). Only rank 0 talks to
MLflow: on other ranks :class:`TrackedRun` opens nothing and the handler does not attach.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from mlvicx_monai.engines.checkpoint import read_resume_info
from mlvicx_monai.engines.distributed import is_rank0
from mlvicx_monai.tracking.runs import (
    finish_run,
    flatten_params,
    log_datalist,
    open_run,
    provenance_tags,
    resolve_tracking_uri,
    ui_command,
)

__all__ = ["TrackedRun", "RunLogger", "RunMLFlowHandler", "RunCompletion"]

logger = logging.getLogger(__name__)


class RunMLFlowHandler(MLFlowHandler):
    """MONAI's MLFlowHandler on a run created beforehand (by id), logging ``engine.state.train_stats``.

    Every ``every`` iterations it logs the monitor's interval statistics (loss terms, lr, samples/s,
    embedding std); at every epoch end ``engine.state.metrics`` (epoch time, epoch throughput, validation
    metrics). Params already on a resumed run are not logged again.
    """

    def __init__(self, run_id: str, tracking_uri: str, experiment_name: str, every: int = 10, **kwargs: Any) -> None:
        self.run_id = run_id
        self.every = every
        super().__init__(
            tracking_uri=tracking_uri,
            iteration_log=lambda engine, iteration: iteration % every == 0,
            epoch_log=True,
            iteration_logger=self._log_interval,
            experiment_name=experiment_name,
            **kwargs,
        )

    def attach(self, engine: Engine) -> None:
        if not is_rank0():
            return
        super().attach(engine)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._failed)

    def start(self, engine: Engine) -> None:
        self.cur_run = self.client.get_run(self.run_id)
        if self.experiment_param:
            self._delete_exist_param_in_dict(self.experiment_param)
        super().start(engine)

    def _log_interval(self, engine: Engine) -> None:
        stats = getattr(engine.state, "train_stats", None)
        if stats:
            self._log_metrics(dict(stats), step=engine.state.iteration)

    def _failed(self, engine: Engine, error: Exception) -> None:
        if self.cur_run is not None:
            self.client.set_tag(self.run_id, "mlvicx.error", f"{type(error).__name__}: {error}"[:5000])
            finish_run(self.client, self.run_id, status="FAILED")
        raise error


class TrackedRun:
    """The MLflow run of one training job (rank 0), resumed when ``output_dir`` holds a checkpoint of it.

    Building it has no side effect (a bundle config resolves without touching the store); :meth:`open` (the
    bundles' ``initialize`` step) creates the run, or reattaches to the one the job's checkpoint names.

    Args:
        experiment_name, run_name, tracking_uri: where to log (see :mod:`mlvicx_monai.tracking.runs`).
        output_dir: the job's folder; its ``checkpoints/last.json`` names the run to resume.
        params: flat or nested dict logged as params (e.g. the bundle's tunables).
        config: the merged bundle config, logged as ``config/bundle_config.json`` at the end.
        tags: extra tags (dataset, manifest id and checksum, method...).
        datalist: the datalist the job trains on (recorded as the run's input dataset).
        enabled: False turns tracking off (no run, handler does nothing).
    """

    def __init__(
        self,
        experiment_name: str,
        run_name: str,
        tracking_uri: str | None = None,
        output_dir: str | os.PathLike | None = None,
        params: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        datalist: str | os.PathLike | None = None,
        enabled: bool = True,
    ) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled (the bundles' track) must be True or False, got {enabled!r}")
        self.enabled = enabled and is_rank0()
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.requested_uri = tracking_uri
        self.output_dir = Path(output_dir) if output_dir else None
        self.params = flatten_params(params or {})
        self.config = dict(config or {})
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.datalist = datalist
        self.client = None
        self._run_id: str | None = None
        self.tracking_uri: str | None = None

    def open(self) -> "TrackedRun":
        """Create the run (or reattach to the checkpointed one); idempotent; nothing when disabled."""
        if not self.enabled or self._run_id is not None:
            return self
        self.tracking_uri = resolve_tracking_uri(self.requested_uri)
        resume_id = read_resume_info(self.output_dir).get("mlflow_run_id") if self.output_dir else None
        all_tags = {**provenance_tags(), **self.tags}
        self.client, self._run_id = open_run(
            self.experiment_name, self.run_name, self.tracking_uri, resume_run_id=resume_id, tags=all_tags
        )
        if resume_id:  # tags may have changed (code version, hardware): keep the latest
            for key, value in all_tags.items():
                self.client.set_tag(self._run_id, key, value)
        elif self.datalist is not None and Path(self.datalist).exists():
            log_datalist(self.client, self._run_id, self.datalist)
        return self

    @property
    def run_id(self) -> str | None:
        """The run's id (None when disabled). Raises RuntimeError before :meth:`open`."""
        if not self.enabled:
            return None
        if self._run_id is None:
            raise RuntimeError(
                "the MLflow run is not open yet: call TrackedRun.open() first (the bundles' initialize does)"
            )
        return self._run_id

    def handler(self, every: int = 10) -> RunMLFlowHandler | "_NullHandler":
        """The ignite handler that logs this run (a no-op off rank 0 or when disabled)."""
        if not self.enabled:
            return _NullHandler()
        return RunMLFlowHandler(
            self.run_id, self.tracking_uri, self.experiment_name, every=every, experiment_param=dict(self.params)
        )

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_dict(self.run_id, obj, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, float(value), step=step or 0)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, str(value))

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            finish_run(self.client, self.run_id, status=status)

    @property
    def extra(self) -> dict[str, Any]:
        """What a checkpoint records to resume this run."""
        return {"mlflow_run_id": self.run_id, "mlflow_tracking_uri": self.tracking_uri} if self.enabled else {}

    def summary(
        self, outputs: list[str | os.PathLike] | None = None, next_steps: list[str] | None = None
    ) -> dict[str, Any]:
        """Log (and return) the end-of-run summary: the run, where to look at it (the exact ``mlflow ui`` command for a
        local store), the outputs and the next command."""
        record: dict[str, Any] = {"run_id": self.run_id if self.enabled else None, "tracking_uri": self.tracking_uri}
        lines = ["run finished"]
        if self.output_dir is not None:
            lines.append(f"  outputs:  {self.output_dir}")
        for path in outputs or []:
            lines.append(f"            {path}")
        if self.enabled:
            lines.append(f"  MLflow run {self.run_name} ({self.run_id}) in experiment {self.experiment_name}")
            lines.append(f"  look at it: {ui_command(self.tracking_uri)}")
        for step in next_steps or []:
            lines.append(f"  next:     {step}")
        logger.info("\n".join(lines))
        record["lines"] = lines
        return record


class _NullHandler:
    def attach(self, engine: Engine) -> None:
        return None


class RunLogger:
    """The trainer handler that logs :class:`TrackedRun` ``run`` (every ``every`` iterations and every epoch; nothing
    when the run is disabled or off rank 0): ``run.handler(every)`` as a config component."""

    def __init__(self, run: TrackedRun, every: int = 10) -> None:
        self.run, self.every = run, every

    def attach(self, engine: Engine) -> None:
        self.run.handler(self.every).attach(engine)


class RunCompletion:
    """At COMPLETED: the run's files (those that exist) and its config go to MLflow, then the run is FINISHED.

    Args:
        run: the :class:`TrackedRun` (nothing happens when it is disabled).
        files: small outputs to keep with the run (results, tables; not the weights: those are stored once, in the
            logged model).
        config: the bundle config to log (default: the run's own ``config``).
    """

    def __init__(
        self, run: TrackedRun, files: list[str | os.PathLike] | None = None, config: dict[str, Any] | None = None
    ) -> None:
        self.run = run
        self.files = [Path(f) for f in files or []]
        self.config = config if config is not None else run.config

    def attach(self, engine: Engine) -> None:
        if self.run.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.config:
            self.run.log_dict(self.config, "config/bundle_config.json")
        for path in self.files:
            if path.is_file():
                self.run.log_artifact(path)
        self.run.finish("FINISHED")
