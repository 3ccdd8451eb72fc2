"""Resumable training checkpoints: rerunning the same command continues where a run stopped.

MONAI's CheckpointSaver/CheckpointLoader need the file to load named before the run starts and do
not capture RNG state; this handler keeps both jobs in one place: ``<output_dir>/checkpoints/last.pt``
(model, optimiser, scheduler, AMP scaler, engine epoch/iteration, Python/NumPy/torch RNG states) is
written atomically on rank 0 at every epoch end (and every ``every_n_iterations`` if set), next to a
small ``last.json`` (epoch, iteration, MLflow run id) that can be read without torch. At STARTED, if
``last.pt`` exists, everything is restored and the engine continues with the next iteration.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from mlvicx_monai.engines.distributed import is_distributed, is_rank0
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_json

__all__ = ["CheckpointError", "ResumableCheckpoint", "read_resume_info", "register_resumable"]

logger = logging.getLogger(__name__)

_FORMAT = "mlvicx-train-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run (other model, corrupt file)."""


def register_resumable(engine: Engine, name: str, obj: Any) -> None:
    """Have the engine's :class:`ResumableCheckpoint` save and restore ``obj`` (``state_dict``/``load_state_dict``)
    under ``name`` too: a handler with history (e.g. the figure recorders) registers itself when it attaches, so a
    bundle needs no cross-reference between its handlers."""
    if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
        raise TypeError(f"{type(obj).__name__} has no state_dict/load_state_dict")
    registry = getattr(engine.state, "resumables", None)
    if registry is None:
        registry = engine.state.resumables = {}
    if name in registry and registry[name] is not obj:
        raise ValueError(f"two handlers register the resumable state {name!r}")
    registry[name] = obj


def read_resume_info(output_dir: str | Path) -> dict[str, Any]:
    """The ``last.json`` of a previous run in ``output_dir`` ({} when there is none)."""
    path = Path(output_dir) / "checkpoints" / "last.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete it and checkpoints/last.pt to start over") from None


def _unwrap(module: Any) -> Any:
    return module.module if hasattr(module, "module") and isinstance(module, torch.nn.Module) else module


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableCheckpoint:
    """Save on rank 0, restore on every rank.

    Args:
        output_dir: run folder; files go to ``output_dir/checkpoints``.
        objects: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer, scheduler, step...).
        every_n_iterations: also save mid-epoch (for long epochs); resumption then continues mid-epoch.
        extra: JSON-serialisable values written to ``last.json`` (e.g. the MLflow run id).
        resume: restore from an existing ``last.pt`` (default); False refuses to run over one.
    """

    def __init__(
        self,
        output_dir: str | Path,
        objects: Mapping[str, Any],
        every_n_iterations: int | None = None,
        extra: Mapping[str, Any] | None = None,
        resume: bool = True,
    ) -> None:
        self.dir = Path(output_dir) / "checkpoints"
        self.objects = dict(objects)
        for name, obj in self.objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(f"checkpoint object {name!r} ({type(obj).__name__}) has no state_dict/load_state_dict")
        if every_n_iterations is not None and every_n_iterations < 1:
            raise ValueError(f"every_n_iterations must be >= 1 or None, got {every_n_iterations}")
        self.every_n_iterations = every_n_iterations
        self.extra = dict(extra or {})
        self.resume = resume
        self.resumed_from: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.dir / "last.pt"

    def attach(self, engine: Engine) -> None:
        # restore before any other STARTED handler runs (e.g. trackers that log the starting epoch)
        engine.add_event_handler(Events.STARTED, self.load)
        engine._event_handlers[Events.STARTED].insert(0, engine._event_handlers[Events.STARTED].pop())
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)
        if self.every_n_iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iterations), self.save)

    def _all_objects(self, engine: Engine) -> dict[str, Any]:
        registered = dict(getattr(engine.state, "resumables", None) or {})
        clash = sorted(set(registered) & set(self.objects))
        if clash:
            raise ValueError(
                f"resumable state {clash} is both given to ResumableCheckpoint and registered by a handler"
            )
        return {**self.objects, **registered}

    def save(self, engine: Engine) -> None:
        if not is_rank0():
            return
        state = {
            "format": _FORMAT,
            "engine": {
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "epoch_length": engine.state.epoch_length,
            },
            "objects": {name: _unwrap(obj).state_dict() for name, obj in self._all_objects(engine).items()},
            "rng": _rng_state(),
            "extra": self.extra,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        atomic_write(self.path, lambda tmp: tmp.write_bytes(data), fsync=True)
        atomic_write_json(
            self.dir / "last.json",
            {"epoch": engine.state.epoch, "iteration": engine.state.iteration, **self.extra},
            fsync=True,
        )

    def load(self, engine: Engine) -> None:
        if not self.path.exists():
            return
        if not self.resume:
            raise CheckpointError(f"{self.path} exists and resume is off; use a new output_dir or resume=true")
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise CheckpointError(
                f"cannot read {self.path} ({type(err).__name__}: {err}); delete it (and last.json) to start over"
            ) from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise CheckpointError(f"{self.path} is not a training checkpoint of this pipeline")
        objects = self._all_objects(engine)
        missing = set(self.objects) - set(state["objects"])
        if missing:
            raise CheckpointError(f"{self.path} lacks {sorted(missing)}; it was written by a different configuration")
        for name, obj in objects.items():
            if name not in state["objects"]:  # a handler added since the checkpoint (e.g. figures): starts empty
                logger.info("checkpoint %s has no state for %r; it starts fresh", self.path, name)
                continue
            try:
                _unwrap(obj).load_state_dict(state["objects"][name])
            except (RuntimeError, ValueError, KeyError) as err:
                raise CheckpointError(
                    f"{self.path}: the saved {name!r} does not fit this run's {name} ({err}). The checkpoint was "
                    "written with other settings (network, levels, optimiser): rerun with those, or use a new "
                    "output_dir"
                ) from None
        _set_rng_state(state["rng"])
        saved = state["engine"]
        if saved.get("epoch_length") not in (None, engine.state.epoch_length):
            logger.warning(
                "epoch length changed from %s to %s since the checkpoint (different data or batch size)",
                saved.get("epoch_length"), engine.state.epoch_length,
            )
        epoch_length = engine.state.epoch_length
        if epoch_length and saved.get("epoch_length") == epoch_length:
            # ignite continues a partly done epoch from iteration % epoch_length (mid-epoch checkpoints)
            engine.state.iteration = saved["iteration"]
            engine.state.epoch = saved["iteration"] // epoch_length
        else:  # other data or batch size: continue at the next epoch boundary
            engine.state.epoch = saved["epoch"]
            engine.state.iteration = saved["epoch"] * (epoch_length or 0)
        if is_distributed():
            torch.distributed.barrier()
        self.resumed_from = saved
        if engine.state.epoch >= engine.state.max_epochs:
            logger.info(
                "checkpoint %s is already at epoch %d of %d: nothing left to train",
                self.path,
                saved["epoch"],
                engine.state.max_epochs,
            )
        else:
            logger.info("resumed from %s at epoch %d, iteration %d", self.path, saved["epoch"], saved["iteration"])
