"""End-of-training exports of the pretraining job: ``encoder.pt`` and the embedding-std record."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events

from mlvicx_monai.engines.distributed import is_rank0
from mlvicx_monai.networks.artifacts import save_model, unwrap_model
from mlvicx_monai.transforms.preprocessing import Preprocessing
from mlvicx_monai.utils.atomic import atomic_write_json

__all__ = ["EncoderExport"]


class EncoderExport:
    """At COMPLETED (rank 0): ``output_dir/encoder.pt`` (encoder alone, CBAM blocks included) and
    ``output_dir/embedding_std.json`` (the last per-dimension std of the global and multi-level embeddings that the
    :class:`~mlvicx_monai.engines.handlers.TrainingMonitor` left in ``engine.state.embedding_std``).

    Args:
        output_dir: the job folder.
        network: the model (``.encoder`` attribute; DDP-wrapped is fine).
        provenance: JSON-safe facts stored in encoder.pt (method, dataset, manifest id, run id...).
        preprocessing: the input the encoder was pretrained on (view size, normalisation, cache side).
    """

    def __init__(
        self,
        output_dir: str | Path,
        network: torch.nn.Module,
        provenance: dict | None = None,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.network = network
        self.provenance = dict(provenance or {})
        self.preprocessing = preprocessing

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    @property
    def encoder_path(self) -> Path:
        return self.output_dir / "encoder.pt"

    def __call__(self, engine: Engine) -> None:
        if not is_rank0():
            return
        model = unwrap_model(self.network)
        provenance = {**self.provenance, "epoch": engine.state.epoch, "iteration": engine.state.iteration}
        save_model(model.encoder, self.encoder_path, preprocessing=self.preprocessing, provenance=provenance)
        std = getattr(engine.state, "embedding_std", None) or {}
        atomic_write_json(self.output_dir / "embedding_std.json", {k: v.tolist() for k, v in std.items()}, indent=None)
