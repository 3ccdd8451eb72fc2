"""Ignite handlers of the pretraining loop: non-finite loss guard and training monitor.

Both read the step's device tensors only every ``every`` iterations (one host sync per interval), so
the step itself never waits for the GPU.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from ignite.engine import Engine, Events

from mlvicx_monai.engines.distributed import is_rank0, world_size

__all__ = ["NonFiniteLossError", "NonFiniteGuard", "TrainingMonitor", "effective_rank"]

logger = logging.getLogger(__name__)


def effective_rank(z: torch.Tensor) -> torch.Tensor:
    """Effective rank (Roy and Vetterli, 2007) of a batch of embeddings ``z`` (B, d): exp of the Shannon entropy of
    the normalised singular values of the centred batch, a float in [1, min(B, d)] (a 0-d tensor on ``z``'s
    device). 1 when the batch lies on one line, ~min(B, d) when it spreads evenly over all directions.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"effective_rank needs a (batch >= 2, dim) matrix, got shape {tuple(z.shape)}")
    s = torch.linalg.svdvals(z.float() - z.float().mean(dim=0, keepdim=True))
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny)
    entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()
    return torch.exp(entropy)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops before a checkpoint of the broken weights is written."""


class NonFiniteGuard:
    """Stop the run at a non-finite loss, naming the first bad iteration.

    Each iteration records, on the device, the first iteration whose loss was not finite; the host
    checks every ``every`` iterations and at every epoch end (attach this before the checkpoint handler,
    so a checkpoint never holds weights updated by a NaN step).
    """

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self._first_bad: torch.Tensor | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self.check)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check)

    def _record(self, engine: Engine) -> None:
        loss = engine.state.output["loss"]
        step = torch.full((), engine.state.iteration, device=loss.device, dtype=torch.long)
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, device=loss.device, dtype=torch.long)
        bad = (~torch.isfinite(loss.detach())) & (self._first_bad < 0)
        self._first_bad = torch.where(bad, step, self._first_bad)

    def check(self, engine: Engine) -> None:
        if self._first_bad is None:
            return
        first = int(self._first_bad.item())
        if first >= 0:
            terms = {k: float(v) for k, v in engine.state.output.items() if torch.is_tensor(v) and v.ndim == 0}
            raise NonFiniteLossError(
                f"the loss became non-finite at iteration {first} (epoch {engine.state.epoch}); last terms: {terms}. "
                "Nothing was saved after it: lower lr, check the data (e.g. constant images), or use amp=none; "
                "rerunning resumes from the last checkpoint"
            )


class TrainingMonitor:
    """Every ``every`` iterations: loss terms, lr, samples/s and embedding std into ``engine.state.train_stats``.

    Log keys (mean, min and fraction of dimensions below 0.1 of each):

    - ``std/global``, ``std/local``: per-dimension std of the global and multi-level embeddings. VICReg's variance term
      pushes every dimension to std >= 1, so without a final BatchNorm a collapsing run shows dimensions near 0. With
      ``expander_last_bn`` (the authors' heads, the paper profile) the last layer is a BatchNorm, whose output has
      std ~1 per dimension *by construction*, collapsed or not: ``std/*`` then says nothing about collapse.
    - ``nstd/global``, ``nstd/local``: the scale-free detector, std of the L2-normalised embeddings x sqrt(d): ~1 when
      the embeddings spread over all directions, 0 when they collapse to one point, whatever the output scale or a
      final BatchNorm. Watch these rather than ``std/*``. (Neither per-dimension statistic sees a *dimensional*
      collapse onto a few directions: a batch of +-u has nstd ~1.)
    - ``rank/global``, ``rank/local``: :func:`effective_rank` of the batch embeddings (the step's ``emb/*``
      outputs), which does see a dimensional collapse: it falls towards 1 as the embeddings crowd onto few
      directions. Computed only every ``every`` iterations (one small SVD).

    ``engine.state.epoch_stats`` gets epoch time and epoch-average throughput and loss;
    ``engine.state.embedding_std`` the last per-dimension std arrays (what :class:`EncoderExport` records).
    """

    def __init__(self, every: int = 10, optimizer: torch.optim.Optimizer | None = None, log: bool = True) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every
        self.optimizer = optimizer
        self.log = log and is_rank0()
        self._t_interval = 0.0
        self._t_epoch = 0.0
        self._samples_interval = 0
        self._samples_epoch = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self.last_std: dict[str, torch.Tensor] = {}

    def attach(self, engine: Engine) -> None:
        engine.state.train_stats = {}
        engine.state.epoch_stats = {}
        engine.state.embedding_std = {}
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self._interval)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        now = time.perf_counter()
        self._t_interval = self._t_epoch = now
        self._samples_interval = self._samples_epoch = 0
        self._loss_sum, self._loss_count = None, 0

    def _count(self, engine: Engine) -> None:
        output = engine.state.output
        samples = int(output["batch_size"]) * world_size()  # a CPU tensor: no device sync
        self._samples_interval += samples
        self._samples_epoch += samples
        loss = output["loss"].detach()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._loss_count += 1

    def _interval(self, engine: Engine) -> None:
        output = engine.state.output
        stats: dict[str, float] = {}
        for key, value in output.items():
            if torch.is_tensor(value) and value.ndim == 0 and key != "batch_size":
                stats[f"train/{key}"] = float(value)  # the one host sync of the interval
        for key in ("std/global", "std/local", "nstd/global", "nstd/local"):
            if key in output:
                std = output[key].float()
                self.last_std[key] = std.detach().cpu()
                engine.state.embedding_std = dict(self.last_std)
                stats[f"{key}_mean"] = float(std.mean())
                stats[f"{key}_min"] = float(std.min())
                stats[f"{key}_frac_below_0.1"] = float((std < 0.1).float().mean())
        for name in ("global", "local"):
            emb = output.get(f"emb/{name}")
            if torch.is_tensor(emb) and emb.ndim == 2 and emb.shape[0] >= 2:
                stats[f"rank/{name}"] = float(effective_rank(emb.detach()))
        now = time.perf_counter()
        elapsed = max(now - self._t_interval, 1e-9)
        stats["throughput/samples_per_s"] = self._samples_interval / elapsed
        if self.optimizer is not None:
            stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self._t_interval, self._samples_interval = now, 0
        engine.state.train_stats = stats
        if self.log:
            logger.info(
                "epoch %d iter %d loss %.4f  %.1f samples/s  std(global) mean %.3f min %.3f  "
                "normalised std x sqrt(d) %.3f  effective rank %.1f",
                engine.state.epoch, engine.state.iteration, stats.get("train/loss", math.nan),
                stats["throughput/samples_per_s"], stats.get("std/global_mean", math.nan),
                stats.get("std/global_min", math.nan),
                stats.get("nstd/global_mean", math.nan), stats.get("rank/global", math.nan),
            )

    def _epoch_completed(self, engine: Engine) -> None:
        elapsed = max(time.perf_counter() - self._t_epoch, 1e-9)
        epoch_loss = float(self._loss_sum) / max(self._loss_count, 1) if self._loss_sum is not None else math.nan
        engine.state.epoch_stats = {
            "epoch/time_s": elapsed,
            "epoch/samples_per_s": self._samples_epoch / elapsed,
            "epoch/loss": epoch_loss,
        }
        engine.state.metrics.update(engine.state.epoch_stats)
        if self.log:
            logger.info(
                "epoch %d/%d done in %.1f s, %.1f samples/s, mean loss %.4f",
                engine.state.epoch, engine.state.max_epochs, elapsed, self._samples_epoch / elapsed, epoch_loss,
            )

    def summary(self) -> dict[str, Any]:
        return {k: v.tolist() for k, v in self.last_std.items()}
