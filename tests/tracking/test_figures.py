"""Figures (``mlvicx_monai.tracking.figures``): valid PNGs in output_dir and in a real MLflow store, no figure leak,
recorders that survive a resume through ``ResumableCheckpoint``, and the Grad-CAM patient-pixel guard."""

from __future__ import annotations

import gc
import io
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from matplotlib.figure import Figure
from PIL import Image

from mlvicx_monai.engines import ResumableCheckpoint, TrainingMonitor
from mlvicx_monai.metrics import classification_report
from mlvicx_monai.tracking import TrackedRun
from mlvicx_monai.tracking import figures as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["Cardiomegaly", "Effusion", "Mass", "Hernia"]


def _classification_data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(CLASSES))) < [0.3, 0.4, 0.2, 0.0]).astype(np.float32)  # Hernia: no positive
    p = 1.0 / (1.0 + np.exp(-(2.0 * y + rng.normal(0, 1, y.shape))))
    return y, p


def _all_figures() -> dict[str, Figure | np.ndarray]:
    iters = np.arange(2, 42, 2)
    t = iters / 40.0
    stats = {"train/loss": 40 - 20 * t, "train/global/loss": 20 - 10 * t, "train/local/loss": 20 - 10 * t,
             "train/global/inv": 0.5 - 0.3 * t, "train/global/var": 0.8 * (1 - t),
             "train/global/cov": 30 * (1 - t) + 0.1,
             "std/global_mean": 0.2 + 0.5 * t, "nstd/global_mean": 0.3 + 0.6 * t, "lr": 0.01 * np.minimum(t * 4, 1)}
    rng = np.random.default_rng(0)
    std = {"std/global": rng.uniform(0.0, 1.2, 256), "std/local": rng.uniform(0.3, 1.0, 128),
           "nstd/global": rng.uniform(0.5, 1.5, 256)}
    y, p = _classification_data()
    report = classification_report(y, p, CLASSES, n_boot=50)
    truth, dice = [0, 0, 30, 50, 80], [1, 0, 0.5, 0.7, 0.9]
    rows = [(f"img{i}", t, 0, float(d)) for i, (t, d) in enumerate(zip(truth, dice, strict=True))]
    return {
        "pretrain_curves": F.pretrain_curves_figure(iters, stats, [20, 40], [30.0, 22.0]),
        "embedding_std": F.embedding_std_figure(std),
        "training_curves": F.downstream_curves_figure([1, 2, 3], [0.7, 0.5, 0.4], {"val_mean_auc": [0.6, 0.8, 0.75]}),
        **F.classification_figures(y, p, CLASSES, report),
        **F.segmentation_figures(rows, {"global_dice": 0.71}),
        "overlay": np.full((16, 24, 3), 128, dtype=np.uint8),
    }


def _check_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG" and img.width >= 16 and img.height >= 16
        return img.size


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> TrackedRun:
    """A real run in an embedded SQLite store (artifacts next to it), as the bundles open it."""
    root = tmp_path_factory.mktemp("figures-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return TrackedRun("figures-tests", "figures", tracking_uri=f"sqlite:///{root}/mlflow.db",
                          output_dir=root / "run").open()


def test_save_figures_writes_pngs_and_logs_them_to_mlflow(tracked: TrackedRun, tmp_path: Path) -> None:
    figures = _all_figures()
    written = F.save_figures(figures, tmp_path, *F.run_target(tracked))
    assert set(written) == set(figures)
    assert not list((tmp_path / "figures").glob(".*"))  # no temporary left behind
    logged = {a.path for a in tracked.client.list_artifacts(tracked.run_id, "figures")}
    assert logged == {f"figures/{name}.png" for name in figures}
    download = Path(tracked.client.download_artifacts(tracked.run_id, "figures", str(tmp_path / "dl")))
    for name, path in written.items():
        assert path == tmp_path / "figures" / f"{name}.png"
        local = path.read_bytes()
        size = _check_png(local)
        assert (download / f"{name}.png").read_bytes() == local  # the same file, rendered once
    assert size == (24, 16) and np.asarray(Image.open(written["overlay"])).shape == (16, 24, 3)


def test_disabled_or_absent_run_still_writes_the_files(tmp_path: Path) -> None:
    off = TrackedRun("x", "y", enabled=False)
    assert F.run_target(off) == (None, None) and F.run_target(None) == (None, None)
    written = F.save_figures({"training_curves": F.downstream_curves_figure([1, 2], [1.0, 0.5])}, tmp_path,
                             *F.run_target(off))
    _check_png(written["training_curves"].read_bytes())
    with pytest.raises(ValueError, match="without the .png suffix"):
        F.save_figures({"bad.png": F.downstream_curves_figure([1], [1.0])}, tmp_path)
    with pytest.raises(ValueError, match="both client and run_id"):
        F.save_figures({"a": np.zeros((4, 4), np.uint8)}, tmp_path, client=object())


def test_figures_are_closed_and_do_not_leak(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    start = plt.get_fignums()
    refs = []
    for i in range(5):
        figs = {"curves": F.downstream_curves_figure([1, 2], [1.0, 0.5])}
        refs.append(weakref.ref(figs["curves"]))
        F.save_figures(figs, tmp_path)
        del figs
        assert plt.get_fignums() == start, f"call {i} registered a pyplot figure"
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)  # nothing (pyplot, a cache, a canvas) keeps a figure alive
    made_by_pyplot = plt.figure()  # save_figures also closes a pyplot figure it is given, even on error
    with pytest.raises(ValueError):
        F.save_figures({"x": made_by_pyplot, "bad name": np.zeros((4, 4), np.uint8)}, tmp_path)
    assert plt.get_fignums() == start


def test_roc_and_auc_figures_show_the_metrics_values() -> None:
    from sklearn.metrics import roc_curve

    y, p = _classification_data()
    fig = F.roc_curves_figure(y, p, CLASSES)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("Effusion")]
    fpr, tpr, _ = roc_curve(y[:, 1], p[:, 1])
    assert len(lines) == 1 and np.allclose(lines[0].get_xdata(), fpr) and np.allclose(lines[0].get_ydata(), tpr)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any(label.startswith("Hernia:") for label in labels) and any("Hernia" in label for label in labels)
    report = classification_report(y, p, CLASSES, n_boot=50)
    bars = F.auc_bars_figure(report)
    texts = [t.get_text() for t in bars.axes[0].texts]
    assert f"{report['per_class_auc']['Effusion']:.3f}" in texts
    assert any("excluded from the mean (no positive" in t for t in texts)
    assert any(f"mean AUC {report['mean_auc']:.3f} over 3 classes" in t.get_text() for t in bars.legends[0].get_texts())
    with pytest.raises(ValueError):
        F.roc_curves_figure(y[:, :2], p, CLASSES)
    with pytest.raises(ValueError, match="for 3 x positions"):
        F.downstream_curves_figure([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        F.pretrain_curves_figure([2, 2], {"train/loss": [1.0, 1.0]})
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        F.dice_histogram_figure([0.5, 1.2])


class _Crash(RuntimeError):
    pass


def _pretrain_engine(tmp: Path, crash_at: int | None = None, every: int = 2):
    """A real ignite loop with the project's monitor and checkpoint around PretrainCurves (loss falls with the step;
    the process "dies" at iteration ``crash_at``)."""
    param = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=0.1)

    def step(engine, batch):
        i = engine.state.iteration
        if i == crash_at:
            raise _Crash(f"killed at iteration {i}")
        loss = torch.tensor(10.0 / i)
        return {"loss": loss, "global/loss": loss / 2, "global/inv": loss / 10, "batch_size": torch.tensor(4),
                "std/global": torch.linspace(0.05, 1.0, 16), "nstd/global": torch.linspace(0.5, 1.5, 16)}

    engine = Engine(step)
    monitor = TrainingMonitor(every=every, optimizer=optimizer, log=False)
    curves = F.PretrainCurves(tmp, monitor=monitor)
    monitor.attach(engine)
    curves.attach(engine)
    ResumableCheckpoint(tmp, {"optimizer": optimizer}).attach(engine)  # the curves register their state themselves
    return engine, curves


def test_pretrain_curves_survive_a_crash_and_resume(tmp_path: Path) -> None:
    engine, first = _pretrain_engine(tmp_path, crash_at=11)
    with pytest.raises(_Crash):
        engine.run(range(4), max_epochs=3)
    assert first.iterations == [2, 4, 6, 8, 10] and first.epochs == [1, 2]  # the checkpoint holds up to iteration 8
    assert first.series["train/loss"] == pytest.approx([5.0, 2.5, 10 / 6, 1.25, 1.0])
    assert set(first.series) >= {"train/global/loss", "lr", "std/global_mean"}
    assert "throughput/samples_per_s" not in first.series  # only what the figures need goes into the checkpoint
    assert first.epoch_loss[0] == pytest.approx(np.mean([10.0 / i for i in range(1, 5)]), rel=1e-6)
    assert not (tmp_path / "figures").exists()
    engine, resumed = _pretrain_engine(tmp_path)  # a new process: the history comes from checkpoints/last.pt
    engine.run(range(4), max_epochs=3)
    assert resumed.iterations == [2, 4, 6, 8, 10, 12] and resumed.epochs == [1, 2, 3]
    assert resumed.series["train/loss"] == pytest.approx([5.0, 2.5, 10 / 6, 1.25, 1.0, 10 / 12])
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["embedding_std.png", "pretrain_curves.png"]
    assert np.allclose(resumed.last_std["std/global"], np.linspace(0.05, 1.0, 16))
    clone = F.PretrainCurves(tmp_path)
    clone.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["objects"]["figures"])
    assert clone.state_dict() == resumed.state_dict()
    with pytest.raises(ValueError, match="not a PretrainCurves state"):
        clone.load_state_dict(F.DownstreamCurves(tmp_path).state_dict())
    wrong = Engine(lambda e, b: None)
    ResumableCheckpoint(tmp_path / "other", {}).attach(wrong)
    with pytest.raises(ValueError, match="before ResumableCheckpoint"):
        F.PretrainCurves(tmp_path).attach(wrong)


def test_pretrain_curves_bound_their_history(tmp_path: Path) -> None:
    curves = F.PretrainCurves(tmp_path, max_points=8)
    for i in range(1, 40):
        curves._seen += 1
        if (curves._seen - 1) % curves.stride == 0:
            curves.record(i, {"train/loss": float(i), "throughput/samples_per_s": 1.0})
    assert len(curves.iterations) <= 8 and curves.stride == 8
    assert curves.iterations == sorted(curves.iterations)
    assert curves.series["train/loss"] == [float(i) for i in curves.iterations]


def test_downstream_curves_record_epochs_and_mark_the_best(tmp_path: Path, tracked: TrackedRun) -> None:
    class Best:
        best_epoch = 2

    metrics = {1: {"train_loss": 0.9, "val_mean_dice": 0.4, "val_global_dice": 0.3},
               2: {"train_loss": 0.6, "val_mean_dice": 0.7, "val_global_dice": 0.6},
               3: {"train_loss": 0.5, "val_mean_dice": np.float32(0.7), "val_global_dice": torch.tensor(0.65)}}
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(metrics[e.state.epoch]))
    curves = F.DownstreamCurves(tmp_path, tracked, val_metrics=["val_mean_dice", "val_global_dice"], best=Best())
    curves.attach(engine)
    engine.run([0], max_epochs=3)
    assert curves.epochs == [1, 2, 3] and curves.series["val_global_dice"][2] == pytest.approx(0.65)
    fig = curves.figures()["training_curves"]
    assert any("best epoch 2: val_mean_dice 0.700" in t.get_text() for t in fig.axes[1].get_legend().get_texts())
    assert (tmp_path / "figures" / "training_curves.png").is_file() and not curves.errors
    assert "figures/training_curves.png" in {a.path for a in tracked.client.list_artifacts(tracked.run_id, "figures")}
    again = F.DownstreamCurves(tmp_path, val_metrics=["val_mean_dice", "val_global_dice", "val_new"])
    again.load_state_dict(curves.state_dict())
    assert again.epochs == [1, 2, 3] and all(math.isnan(v) for v in again.series["val_new"])
    again.record(3, {"train_loss": 0.1})  # a replayed epoch replaces its values
    assert again.epochs == [1, 2, 3] and again.series["train_loss"][-1] == 0.1


def test_gradcam_refuses_patient_pixels_unless_allowed() -> None:
    img = np.zeros((1, 8, 8), np.float32)

    class Untouchable(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the model ran before the guard")

    with pytest.raises(F.PatientPixelsError, match="synthetic=True"):
        F.gradcam_grid_figure(img, img, ["A"], [0.5], synthetic=False)
    with pytest.raises(F.PatientPixelsError):
        F.gradcam_examples(Untouchable(), [{"image": img, "label": [1]}], ["A"], {"mean": 0, "std": 1}, synthetic=False,
                           allow_patient_pixels=False)
    with pytest.raises(TypeError, match="must be True or False"):
        F.gradcam_grid_figure(img, img, ["A"], [0.5], synthetic="false")
    with pytest.raises(TypeError):
        F.gradcam_grid_figure(img, img, ["A"], [0.5])  # synthetic= has no default: the caller must say
    opted_in = F.gradcam_grid_figure(img, img, ["A"], [0.5], synthetic=False, allow_patient_pixels=True)
    assert "synthetic" not in opted_in.texts[0].get_text()


def test_gradcam_examples_on_synthetic_images_leave_the_classifier_untouched() -> None:
    from mlvicx_monai.data.phantom import render_cxr
    from mlvicx_monai.networks import MLVICXEncoder, build_classifier

    names = ["cardiomegaly", "effusion"]
    items = []
    for seed, findings in enumerate([[], ["effusion"], ["cardiomegaly"]]):
        image, _ = render_cxr(np.random.default_rng(seed), 32, findings)
        items.append({"image": (torch.as_tensor(image)[None] - 0.5) / 0.25,
                      "label": np.array([n in findings for n in names], np.float32)})
    torch.manual_seed(0)
    classifier = build_classifier(MLVICXEncoder(levels=["layer4"]), num_classes=2).train()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    fig = F.gradcam_examples(classifier, items, names, {"mean": 0.5, "std": 0.25}, synthetic=True, n=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("effusion\np = ") and "label: positive" in titles[0]  # positives first
    assert titles[1].startswith("cardiomegaly") and len(titles) == 2
    # at 32 px the refined layer4 map is 1 x 1: Grad-CAM is constant, shown as no heat (min-max would turn its
    # rounding noise into a full-range map), and the caption says so
    assert all(t.endswith("(no heat: map 0 or constant)") for t in titles)
    assert classifier.training and all(p.grad is None for p in classifier.parameters())
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    assert not any(m._forward_hooks or m._backward_hooks for m in classifier.modules())
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
