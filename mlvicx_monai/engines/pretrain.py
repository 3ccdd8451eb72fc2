"""One MLVICX pretraining iteration, as the ``iteration_update`` of MONAI's ``SupervisedTrainer``.

The step keeps everything on the device: it returns detached tensors (loss terms, per-dimension
embedding std, the batch embeddings) and never calls ``.item()``, so the host never waits for the GPU inside a
step. Handlers read the output every ``log_every`` iterations (see :mod:`mlvicx_monai.engines.handlers`).

With ``augment`` (the bundle's ``augment_on: "device"``) the data loader yields the cached uint8 images and the
step makes the two views on the device (:class:`~mlvicx_monai.transforms.BatchedTwoViewAugment`); with
``compile`` the network's forward runs through ``torch.compile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from monai.engines.utils import IterationEvents

__all__ = ["AUGMENT_ON", "PretrainStep", "check_augment_on", "resolve_amp", "schedule_steps"]

#: where the two views are made: in the data-loader workers ("cpu") or by the step on the training device
AUGMENT_ON = ("cpu", "device")


def check_augment_on(value: str) -> str:
    """The bundle's ``augment_on``, checked: ``cpu`` or ``device``."""
    if value not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {value!r} (e.g. --augment_on device)")
    return value


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
        view_keys: batch keys of the two views, each (B, 1, H, W) (when ``augment`` is None).
        augment: a batched two-view augmentation (``images -> (view1, view2)``, e.g.
            :class:`~mlvicx_monai.transforms.BatchedTwoViewAugment`) run on the device; the batch then holds the
            cached images (B, 1, H, W) (uint8) at ``image_key``, moved to the device ``non_blocking``.
        image_key: batch key of the cached images (with ``augment``).
        compile: run the network's forward through ``torch.compile`` (made at the first step; the parameters
            are shared, so checkpoints and exports keep using the plain network).
        compile_options: keyword arguments of ``torch.compile`` (``mode``, ``backend``...).

    The network is called through the engine's ``inferer`` when it has one (``inferer(view1, network, view2)``;
    MONAI's ``SimpleInferer`` is ``network(view1, view2)``). It returns a dict with ``z1, z2`` (and ``m1, m2`` for
    the multi-level term); the engine's ``loss_function`` returns a dict of scalars with a ``loss`` entry.
    """

    def __init__(
        self,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        amp: str = "auto",
        channels_last: bool = False,
        view_keys: tuple[str, str] = ("view1", "view2"),
        augment: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        image_key: str = "image",
        compile: bool = False,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable (images -> (view1, view2)), got {type(augment).__name__}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        self.scheduler = scheduler
        self.amp = amp
        self.channels_last = channels_last
        self.view_keys = tuple(view_keys)
        self.augment = augment
        self.image_key = image_key
        self.compile = compile
        self.compile_options = dict(compile_options or {})
        self._compiled: tuple[torch.nn.Module, Callable[..., Any]] | None = None
        self._pending_augment: dict[str, Any] | None = None
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
        state: dict[str, Any] = {"scaler": self.scaler.state_dict() if self.scaler is not None else None}
        if self.augment is not None and hasattr(self.augment, "state_dict"):
            state["augment"] = self.augment.state_dict()  # the generators: exact resumption
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("augment") is not None and self.augment is not None and hasattr(self.augment, "load_state_dict"):
            self.augment.load_state_dict(state["augment"])
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

    def _views(self, engine, batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
        if self.augment is None:
            missing = [k for k in self.view_keys if k not in batch]
            if missing:
                raise KeyError(
                    f"batch has no {missing}; the preprocessing must produce the two views {self.view_keys} "
                    "(or give the step an augment to make them on the device: augment_on=device)"
                )
            return tuple(self._to_device(batch[k], device, engine.non_blocking) for k in self.view_keys)
        if self.image_key not in batch:
            raise KeyError(
                f"batch has no {self.image_key!r}: with augmentation on the device the preprocessing must keep the "
                f"cached image (got keys {sorted(batch)}); check that augment_on is the same for both"
            )
        images = batch[self.image_key]
        if hasattr(images, "as_tensor"):
            images = images.as_tensor()
        views = self.augment(images.to(device=device, non_blocking=engine.non_blocking))
        if self.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        return tuple(views)

    def _forward_fn(self, network: torch.nn.Module) -> Callable[..., Any]:
        if not self.compile:
            return network
        if self._compiled is None or self._compiled[0] is not network:
            self._compiled = (network, torch.compile(network, **self.compile_options))
        return self._compiled[1]

    def __call__(self, engine, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = engine.state.device
        if not self._resolved:
            self._setup(device)
        view1, view2 = self._views(engine, batch, device)
        network, optimizer = engine.network, engine.optimizer
        network.train()
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device_type=device.type, dtype=self._dtype)
            if self._dtype is not None
            else contextlib.nullcontext()
        )
        forward = self._forward_fn(network)
        inferer = getattr(engine, "inferer", None)
        with autocast:
            out = inferer(view1, forward, view2) if inferer is not None else forward(view1, view2)
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
                    # the batch itself (detached, no copy): TrainingMonitor takes its effective rank every interval
                    output[f"emb/{name}"] = z
        output["batch_size"] = torch.tensor(view1.shape[0])
        engine.state.output = output
        # MONAI handlers that read the loss wait for this event (SPEC section 6)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output
