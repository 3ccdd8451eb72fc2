"""Engines: the pretraining iteration, its handlers (guard, monitor, checkpoint, export) and DDP helpers."""

from .checkpoint import CheckpointError, ResumableCheckpoint, read_resume_info, register_resumable
from .distributed import init_distributed, is_rank0, per_rank_batch, resolve_device
from .export import EncoderExport
from .handlers import NonFiniteGuard, NonFiniteLossError, TrainingMonitor, effective_rank
from .pretrain import PretrainStep, resolve_amp, schedule_steps

__all__ = [
    "CheckpointError",
    "EncoderExport",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PretrainStep",
    "ResumableCheckpoint",
    "TrainingMonitor",
    "effective_rank",
    "init_distributed",
    "is_rank0",
    "per_rank_batch",
    "read_resume_info",
    "register_resumable",
    "resolve_amp",
    "resolve_device",
    "schedule_steps",
]
