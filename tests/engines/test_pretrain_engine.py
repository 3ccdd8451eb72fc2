"""The pretraining step and its handlers on a tiny model: events, NaN guard, exact resumption, augmentation on the
device, torch.compile and the engine's inferer."""

from __future__ import annotations

import json

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents

from mlvicx_monai.engines import NonFiniteGuard, NonFiniteLossError, PretrainStep, ResumableCheckpoint, TrainingMonitor
from mlvicx_monai.engines.checkpoint import CheckpointError
from mlvicx_monai.losses import MLVICXLoss
from mlvicx_monai.optim import LARS, lars_param_groups, warmup_cosine
from mlvicx_monai.transforms import BatchedTwoViewAugment


class TinySiamese(torch.nn.Module):
    """A stand-in for MLVICX with the same output contract (z and m for both views)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.g = torch.nn.Linear(16, 8)
        self.h = torch.nn.Linear(16, 8)

    def forward(self, view1, view2):
        e1, e2 = self.encoder(view1), self.encoder(view2)
        return {"z1": self.g(e1), "z2": self.g(e2), "m1": self.h(e1), "m2": self.h(e2)}


def _data(n_batches: int = 4, batch: int = 8):
    generator = torch.Generator().manual_seed(0)
    return [
        {"view1": torch.randn(batch, 1, 8, 8, generator=generator),
         "view2": torch.randn(batch, 1, 8, 8, generator=generator)}
        for _ in range(n_batches)
    ]


def _images(n_batches: int = 4, batch: int = 8):
    """Cached uint8 images (B, 1, 12, 12), as the data loader yields them with augment_on=device."""
    generator = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (batch, 1, 12, 12), generator=generator, dtype=torch.uint8)}
            for _ in range(n_batches)]


def _trainer(tmp_path, epochs: int, loss=None, seed: int = 0, guard: bool = True, device_augment: bool = False,
             **step_options):
    torch.manual_seed(seed)
    model = TinySiamese()
    optimizer = LARS(lars_param_groups(model, 1e-6), lr=0.1)
    scheduler = warmup_cosine(optimizer, 0.5, 4, 4 * 6)
    augment = BatchedTwoViewAugment(image_size=8, seed=seed) if device_augment else None
    step = PretrainStep(scheduler=scheduler, amp="none", augment=augment, **step_options)
    monitor = TrainingMonitor(every=2, optimizer=optimizer, log=False)
    handlers = ([NonFiniteGuard(every=2)] if guard else []) + [
        monitor,
        ResumableCheckpoint(tmp_path, {"network": model, "optimizer": optimizer, "scheduler": scheduler, "step": step}),
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_images() if device_augment else _data(),
        network=model, optimizer=optimizer, loss_function=loss or MLVICXLoss(), iteration_update=step,
        train_handlers=handlers, decollate=False,
    )
    return trainer, model


def test_step_fires_model_completed_and_keeps_outputs_on_device(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=1)
    seen = []
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: seen.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(seen) == 4
    output = trainer.state.output
    assert {"loss", "global/inv", "global/var", "global/cov", "local/inv", "std/global", "nstd/local",
            "emb/global", "emb/local"} <= set(output)
    assert output["std/global"].shape == (8,)
    assert set(trainer.state.train_stats) >= {"train/loss", "lr", "throughput/samples_per_s", "std/global_mean",
                                              "rank/global", "rank/local"}
    assert 1.0 <= trainer.state.train_stats["rank/global"] <= output["emb/global"].shape[0]


class NaNAfter(MLVICXLoss):
    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, **kwargs):
        out = super().forward(**kwargs)
        self.calls += 1
        if self.calls >= self.bad_call:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nonfinite_loss_stops_the_run_naming_the_step_before_any_checkpoint(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=3, loss=NaNAfter(bad_call=6))
    with pytest.raises(NonFiniteLossError, match="iteration 6"):
        trainer.run()
    saved = json.loads((tmp_path / "checkpoints" / "last.json").read_text())
    assert saved["iteration"] == 4  # the epoch-1 checkpoint; nothing written after the NaN step


@pytest.mark.parametrize("device_augment", [False, True])
def test_resumed_run_ends_exactly_where_an_uninterrupted_run_ends(tmp_path, device_augment):
    whole, whole_model = _trainer(tmp_path / "whole", epochs=6, device_augment=device_augment)
    whole.run()
    first, _ = _trainer(tmp_path / "split", epochs=3, device_augment=device_augment)
    first.run()
    # other init and augmentation seed: all state (the augmentation's generator too) must come from the checkpoint
    second, second_model = _trainer(tmp_path / "split", epochs=6, seed=123, device_augment=device_augment)
    second.run()
    assert second.state.iteration == whole.state.iteration == 24
    for (name, a), b in zip(whole_model.state_dict().items(), second_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=f"{name} differs after resumption")


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=1)
    trainer.run()
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    other = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=_data(), network=model, optimizer=optimizer,
        loss_function=MLVICXLoss(), iteration_update=PretrainStep(amp="none"), decollate=False,
        train_handlers=[ResumableCheckpoint(tmp_path, {"network": model, "optimizer": optimizer})],
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        other.run()


def test_device_augmentation_makes_the_views_in_the_step(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=1, device_augment=True)
    views = []
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: views.append(e.state.output["pred"]["z1"]))
    trainer.run()
    assert len(views) == 4 and int(trainer.state.output["batch_size"]) == 8
    assert torch.isfinite(trainer.state.output["loss"])
    step = trainer._process_function  # ignite's process function is the iteration_update
    assert isinstance(step, PretrainStep) and step.state_dict()["augment"]["generators"]  # checkpointed


def test_device_augmentation_needs_the_cached_image_and_the_cpu_path_the_views(tmp_path):
    trainer, _ = _trainer(tmp_path, epochs=1, device_augment=True)
    trainer.data_loader = _data()  # views, no image: the preprocessing and augment_on disagree
    with pytest.raises(KeyError, match="'image'.*augment_on"):
        trainer.run()
    plain, _ = _trainer(tmp_path / "plain", epochs=1)
    plain.data_loader = _images()
    with pytest.raises(KeyError, match="view1.*augment_on=device"):
        plain.run()


class CountingInferer:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, inputs, network, *args):
        self.calls += 1
        return network(inputs, *args)


def test_compiled_step_uses_the_inferer_and_matches_eager(tmp_path):
    eager, eager_model = _trainer(tmp_path / "eager", epochs=1)
    eager.run()
    # the "eager" backend compiles the graph with dynamo and runs it without code generation (fast on CPU)
    compiled, compiled_model = _trainer(tmp_path / "compiled", epochs=1, compile=True,
                                        compile_options={"backend": "eager"})
    compiled.inferer = CountingInferer()
    compiled.run()
    assert compiled.inferer.calls == 4
    step = compiled._process_function
    assert step._compiled is not None and step._compiled[0] is compiled_model
    for a, b in zip(eager_model.state_dict().values(), compiled_model.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(TypeError, match="compile must be True or False"):
        PretrainStep(compile="yes")
