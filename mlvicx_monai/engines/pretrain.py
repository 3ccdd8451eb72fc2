"""One MLVICX pretraining iteration, as the ``iteration_update`` of MONAI's ``SupervisedTrainer``.

The step keeps everything on the device: it returns detached tensors (loss terms, per-dimension
embedding std) and never calls ``.item()``, so the host never waits for the GPU inside a step. Handlers
read the output every ``log_every`` iterations (see :mod:`mlvicx_monai.engines.handlers`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from monai.engines.utils import IterationEvents

__all__ = ["PretrainStep", "resolve_amp", "schedule_steps"]


def schedule_steps(epochs: int, warmup_epochs: float, steps_per_epoch: int) -> tuple[int, int]:
    """(warm-up steps, total steps) of a run, checked in the bundle's own terms."""
    if steps_per_epoch < 1:
        raise ValueError(
            "the training data gives no full batch (steps_per_epoch = 0): use a smaller batch_size or more images"
        )
    if epochs < 1 or warmup_epochs < 0:
        raise ValueError(f"epochs must be >= 1 and warmup_epochs >= 0, got {epochs} and {warmup_epochs}")
    if warmup_epochs >= epochs:
        raise ValueError(
            f"warmup_epochs ({warmup_epochs}) must be smaller than epochs ({epochs}); "
            "for a short run pass e.g. --warmup_epochs 0"
        )
    return int(round(warmup_epochs * steps_per_epoch)), int(epochs * steps_per_epoch)


def resolve_amp(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a CUDA device that supports it, else off; ``bf16``/``fp16``/``none`` as named."""
    if amp in (None, False, "none", "off", "fp32"):
        return None
    if amp in (True, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if amp not in table:
        raise ValueError(f"amp must be one of auto, none, bf16, fp16; got {amp!r}")
    if table[amp] is torch.float16 and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use amp=bf16 or none on CPU")
    return table[amp]


class PretrainStep:
    """Two augmented views -> model -> MLVICX loss -> optimiser step -> per-step LR schedule.

    Args:
        scheduler: stepped after every optimiser step (warm-up + cosine is per step).
        amp: ``auto``, ``none``, ``bf16`` or ``fp16`` (fp16 uses a gradient scaler).
        channels_last: feed the network NHWC tensors (faster convolutions on tensor cores).
        view_keys: batch keys of the two views, each (B, 1, H, W).

    The engine's ``network`` returns a dict with ``z1, z2`` (and ``m1, m2`` for the multi-level term);
    its ``loss_function`` returns a dict of scalars with a ``loss`` entry.
    """

    def __init__(
        self,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        amp: str = "auto",
        channels_last: bool = False,
        view_keys: tuple[str, str] = ("view1", "view2"),
    ) -> None:
        self.scheduler = scheduler
        self.amp = amp
        self.channels_last = channels_last
        self.view_keys = tuple(view_keys)
        self.scaler: torch.amp.GradScaler | None = None
        self._dtype: torch.dtype | None = None
        self._resolved = False
        self._pending_scaler: dict[str, Any] | None = None

    def _setup(self, device: torch.device) -> None:
        self._dtype = resolve_amp(self.amp, device)
        if self._dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(device.type)
            if self._pending_scaler:  # restored from a checkpoint before the first step
                self.scaler.load_state_dict(self._pending_scaler)
        self._resolved = True

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("scaler"):
            return
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        else:
            self._pending_scaler = state["scaler"]

    def _to_device(self, tensor: torch.Tensor, device: torch.device, non_blocking: bool) -> torch.Tensor:
        if hasattr(tensor, "as_tensor"):
            tensor = tensor.as_tensor()  # MetaTensor -> Tensor: no metadata tracking in the hot path
        tensor = tensor.to(device=device, non_blocking=non_blocking)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def __call__(self, engine, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = engine.state.device
        if not self._resolved:
            self._setup(device)
        missing = [k for k in self.view_keys if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing}; the preprocessing must produce the two views {self.view_keys}")
        view1, view2 = (self._to_device(batch[k], device, engine.non_blocking) for k in self.view_keys)
        network, optimizer = engine.network, engine.optimizer
        network.train()
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device_type=device.type, dtype=self._dtype) if self._dtype is not None else contextlib.nullcontext()
        )
        with autocast:
            out = network(view1, view2)
        engine.state.output = {"pred": out}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        # the loss computes its statistics in float32 whatever the autocast dtype
        terms = engine.loss_function(**out)
        loss = terms["loss"]
        engine.state.output["loss"] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        output: dict[str, torch.Tensor] = {k: v.detach() for k, v in terms.items()}
        with torch.no_grad():
            for name, key in (("global", "z1"), ("local", "m1")):
                if out.get(key) is not None:
                    z = out[key].detach().float()
                    output[f"std/{name}"] = z.std(dim=0)
                    # scale-free: std of L2-normalised embeddings x sqrt(d) is ~1 when the batch spreads over
                    # all directions and 0 when it collapses to one point, whatever the output scale
                    output[f"nstd/{name}"] = torch.nn.functional.normalize(z, dim=1).std(dim=0) * z.shape[1] ** 0.5
        output["batch_size"] = torch.tensor(view1.shape[0])
        engine.state.output = output
        # MONAI handlers that read the loss wait for this event (SPEC section 6)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output
