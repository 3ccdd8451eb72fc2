"""torch.distributed helpers for the bundles: initialise from torchrun's environment, rank checks, devices."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = [
    "init_distributed",
    "cleanup_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "is_rank0",
    "resolve_device",
    "per_rank_batch",
    "wrap_ddp",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_rank0() -> bool:
    return rank() == 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: this rank's GPU when CUDA is available, else the CPU; otherwise ``torch.device(device)``."""
    if device in ("auto", "", None):
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device=cpu or auto")
    return resolved


def init_distributed(backend: str = "auto") -> bool:
    """Initialise the process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...).

    ``auto`` picks NCCL when CUDA is available and gloo otherwise. Returns True when running distributed.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError(
            "multi_gpu.json needs the environment torchrun sets (RANK, WORLD_SIZE, ...): launch with "
            "`torchrun --nproc_per_node=N -m monai.bundle run --config_file "
            "\"['bundles/pretrain.json','bundles/multi_gpu.json']\"`"
        )
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def cleanup_distributed() -> None:
    """Leave the process group: a barrier first, so no rank tears down gloo/NCCL while another still uses it (seen
    as ``terminate called without an active exception`` / SIGABRT in a gloo rank), then destroy it."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def per_rank_batch(global_batch: int) -> int:
    """The per-process batch of a global batch split across ranks (it must divide evenly)."""
    world = world_size()
    if global_batch % world:
        raise ValueError(
            f"batch_size {global_batch} is not divisible by the {world} processes; choose a multiple of {world}"
        )
    return global_batch // world


def wrap_ddp(
    network: torch.nn.Module,
    device: torch.device,
    sync_bn: bool | str = "auto",
    channels_last: bool = False,
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """Move ``network`` to this rank's device and wrap it in DistributedDataParallel.

    Args:
        sync_bn: convert BatchNorm to SyncBatchNorm, so that every BatchNorm (encoder and expanders) normalises with
            the statistics of the global batch, as official VICReg always does; ``"auto"``: on CUDA, off on the CPU
            (PyTorch's SyncBatchNorm has no CPU kernel; the gloo CPU runs then normalise per rank).
        channels_last: NHWC weights (use with channels-last inputs).
        find_unused_parameters: needed when a head is unused (loss_terms ``global``/``local``).
    """
    if not is_distributed():
        raise RuntimeError("wrap_ddp needs an initialised process group (init_distributed)")
    if sync_bn == "auto":
        sync_bn = device.type == "cuda"
        if not sync_bn:
            logger.info("sync_bn auto: off on %s (SyncBatchNorm needs CUDA); BatchNorm statistics are per rank", device)
    elif not isinstance(sync_bn, bool):
        raise ValueError(f"sync_bn must be True, False or 'auto', got {sync_bn!r}")
    if sync_bn:
        if device.type != "cuda":
            raise ValueError(
                "sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU implementation); use sync_bn=false"
            )
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network = network.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return torch.nn.parallel.DistributedDataParallel(
        network,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )
