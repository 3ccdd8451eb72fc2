"""End-of-training exports of the pretraining job: ``encoder.pt`` and the embedding-std record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from mlvicx_monai.engines.distributed import is_rank0
from mlvicx_monai.networks.pretrained import save_encoder
from mlvicx_monai.utils.atomic import atomic_write_json

__all__ = ["EncoderExport"]


class EncoderExport:
    """At COMPLETED (rank 0): ``output_dir/encoder.pt`` (encoder alone, CBAM blocks included) and
    ``output_dir/embedding_std.json`` (last per-dimension std of the global and multi-level embeddings).

    Args:
        output_dir: the job folder.
        network: the model (``.encoder`` attribute; DDP-wrapped is fine).
        monitor: the :class:`~mlvicx_monai.engines.handlers.TrainingMonitor` (for the std record).
        provenance: JSON-safe facts stored in encoder.pt (method, dataset, manifest id, run id...).
    """

    def __init__(self, output_dir: str | Path, network: torch.nn.Module, monitor: Any = None, provenance: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.monitor = monitor
        self.provenance = dict(provenance or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    @property
    def encoder_path(self) -> Path:
        return self.output_dir / "encoder.pt"

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        model = self.network.module if hasattr(self.network, "module") else self.network
        provenance = {**self.provenance, "epoch": engine.state.epoch, "iteration": engine.state.iteration}
        save_encoder(model.encoder, self.encoder_path, provenance=json.loads(json.dumps(provenance, default=str)))
        if self.monitor is not None:
            atomic_write_json(self.output_dir / "embedding_std.json", self.monitor.summary(), indent=None)
