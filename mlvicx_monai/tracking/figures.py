"""Figures of a run: training curves, embedding-std histogram, test AUC bars and ROC curves, Dice histogram, Grad-CAM.

Three layers, each usable alone:

- **figure functions** (``*_figure``, :func:`gradcam_examples`): plain data in, a :class:`matplotlib.figure.Figure`
  out. They never touch ``matplotlib.pyplot``: each figure gets its own Agg canvas, so nothing is registered in
  pyplot's global figure list, no backend is switched, and a figure is freed once its last reference goes.
- :func:`save_figures`: renders each figure (or image array) once to ``output_dir/figures/<name>.png`` (atomically)
  and, when a run is given, logs that very file to MLflow as ``figures/<name>.png``. It closes every figure it was
  given, also on error.
- **ignite handlers** :class:`PretrainCurves` (trainer of ``pretrain.json``) and :class:`DownstreamCurves`
  (trainer of ``classify.json`` / ``segment.json``): they record what the curves need while training, write the
  figures at ``COMPLETED`` (and optionally every few epochs), and keep their history in the resumable checkpoint
  (``state_dict`` / ``load_state_dict``), so the curves of a resumed run start at iteration 1.

Patient pixels: only the Grad-CAM figures show image content. They refuse to draw unless the caller states
``synthetic=True`` (the synthetic demo data) or ``allow_patient_pixels=True`` (the user opted in to storing
patient images in ``output_dir`` and in the MLflow run): :class:`PatientPixelsError` otherwise.
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mlvicx_monai.utils.atomic import atomic_write_bytes

__all__ = [
    "COLLAPSE_STD",
    "FIGURE_DIR",
    "DownstreamCurves",
    "PatientPixelsError",
    "PretrainCurves",
    "auc_bars_figure",
    "check_pixels_allowed",
    "classification_figures",
    "dice_histogram_figure",
    "downstream_curves_figure",
    "embedding_std_figure",
    "gradcam_examples",
    "gradcam_grid_figure",
    "pretrain_curves_figure",
    "roc_curves_figure",
    "run_target",
    "save_figures",
    "segmentation_figures",
]

logger = logging.getLogger(__name__)

#: Sub-folder of ``output_dir`` and artifact path in the MLflow run.
FIGURE_DIR = "figures"
#: Per-dimension embedding std below which a dimension counts as collapsed (as in ``TrainingMonitor``).
COLLAPSE_STD = 0.1
#: Resolution of the saved PNGs.
DPI = 110

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TERM_COLOURS = {"inv": "tab:blue", "var": "tab:orange", "cov": "tab:green"}
_PART_STYLE = {"global": "-", "local": "--"}
_PART_LABEL = {"global": "global (z)", "local": "multi-level (m)"}
_BAR = "#4a86c0"


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def _figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], sharex: bool = False
) -> tuple[Figure, np.ndarray]:
    """A figure on its own Agg canvas (not in pyplot's registry) and its ``[nrows, ncols]`` axes."""
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, axes


def _series(values: Any, name: str, length: int | None = None) -> np.ndarray:
    """``values`` as float64 ``[T]`` (NaN allowed: a gap in the curve); ``length`` checked when given."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has {arr.shape[0]} values for {length} x positions")
    return arr


def _steps(values: Any, name: str) -> np.ndarray:
    """Strictly increasing integer x positions (iterations or epochs) ``[T]``."""
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of integers, got {arr.dtype} of shape {arr.shape}")
    if arr.size > 1 and not (np.diff(arr) > 0).all():
        raise ValueError(f"{name} must be strictly increasing")
    return arr.astype(np.int64)


def _has_data(arr: np.ndarray) -> bool:
    return bool(np.isfinite(arr).any())


def _log_scale_if_positive(ax: Any, arrays: Iterable[np.ndarray]) -> None:
    """Log y axis when every finite value is positive and they span more than a factor 20."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")


def _number(value: Any) -> float:
    """A real number (Python, NumPy or 0-d tensor) as float; anything else NaN."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if getattr(value, "ndim", None) == 0 and getattr(value, "dtype", None) is not None:
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan
    return math.nan


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------------------
# pretraining
# ------------------------------------------------------------------------------------------------------


def pretrain_curves_figure(
    iterations: Sequence[int],
    stats: Mapping[str, Sequence[float]],
    epoch_iterations: Sequence[int] | None = None,
    epoch_loss: Sequence[float] | None = None,
    title: str = "MLVICX pretraining",
) -> Figure:
    """Loss terms, embedding std and learning rate versus iteration.

    Args:
        iterations: ``[T]`` strictly increasing iterations at which ``stats`` were taken.
        stats: ``TrainingMonitor`` keys -> ``[T]`` values (NaN where a value is missing): ``train/loss`` (total
            L = L_G + lambda L_L), ``train/global/{loss,inv,var,cov}`` (L_G and its unweighted VICReg terms),
            ``train/local/...`` (L_L), ``std/{global,local}_{mean,min}``, ``nstd/{global,local}_mean`` and ``lr``;
            any subset, but at least one loss.
        epoch_iterations, epoch_loss: ``[E]`` the last iteration of each epoch and the epoch's mean loss
            (drawn as markers on the loss panel).

    Returns:
        A figure with up to four panels sharing the x axis: losses, VICReg terms (log scale), embedding std with
        the collapse line at :data:`COLLAPSE_STD`, learning rate.
    """
    x = _steps(iterations, "iterations")
    data = {str(k): _series(v, f"stats[{k!r}]", x.size) for k, v in stats.items()}
    losses = [k for k in ("train/loss", "train/global/loss", "train/local/loss") if k in data and _has_data(data[k])]
    if not losses:
        raise ValueError(f"no loss values to plot: stats has {sorted(data)}; expected train/loss or train/global/loss")
    terms = [(part, term) for part in ("global", "local") for term in ("inv", "var", "cov")
             if _has_data(data.get(f"train/{part}/{term}", np.full(1, np.nan)))]
    stds = [k for k in ("std/global_mean", "std/local_mean", "nstd/global_mean", "nstd/local_mean", "std/global_min",
                        "std/local_min") if k in data and _has_data(data[k])]
    has_lr = "lr" in data and _has_data(data["lr"])
    panels = ["loss"] + (["terms"] if terms else []) + (["std"] if stds else []) + (["lr"] if has_lr else [])
    fig, axes = _figure(len(panels), 1, figsize=(10.0, 2.3 * len(panels) + 0.6), sharex=True)
    axes = axes[:, 0]
    fig.suptitle(title)
    single = len(x) == 1
    marker = "o" if single else None
    for ax, panel in zip(axes, panels, strict=True):
        ax.grid(True, alpha=0.3)
        if panel == "loss":
            labels = {"train/loss": "total L = L_G + λ·L_L", "train/global/loss": "L_G (global)",
                      "train/local/loss": "L_L (multi-level)"}
            colours = {"train/loss": "black", "train/global/loss": "tab:blue", "train/local/loss": "tab:red"}
            for key in losses:
                ax.plot(x, data[key], color=colours[key], label=labels[key], lw=1.4 if key == "train/loss" else 1.0,
                        marker=marker)
            if epoch_iterations is not None and epoch_loss is not None:
                ex = _steps(epoch_iterations, "epoch_iterations")
                ey = _series(epoch_loss, "epoch_loss", ex.size)
                if _has_data(ey):
                    ax.plot(ex, ey, "D", color="tab:purple", ms=4, label="epoch mean of total")
            _log_scale_if_positive(ax, [data[k] for k in losses])
            ax.set_ylabel("loss")
            ax.set_title("loss (interval values)")
        elif panel == "terms":
            for part, term in terms:
                ax.plot(x, data[f"train/{part}/{term}"], color=_TERM_COLOURS[term], ls=_PART_STYLE[part], lw=1.0,
                        label=f"{term} {_PART_LABEL[part]}", marker=marker)
            _log_scale_if_positive(ax, [data[f"train/{p}/{t}"] for p, t in terms])
            ax.set_ylabel("term (unweighted)")
            ax.set_title("VICReg terms: invariance, variance hinge, covariance")
        elif panel == "std":
            styles = {"std/global_mean": ("tab:blue", "-", "std mean, global"),
                      "std/local_mean": ("tab:red", "-", "std mean, multi-level"),
                      "std/global_min": ("tab:blue", ":", "std min, global"),
                      "std/local_min": ("tab:red", ":", "std min, multi-level"),
                      "nstd/global_mean": ("tab:cyan", "--", "normalised std × √d, global"),
                      "nstd/local_mean": ("tab:pink", "--", "normalised std × √d, multi-level")}
            for key in stds:
                colour, ls, label = styles[key]
                ax.plot(x, data[key], color=colour, ls=ls, lw=1.0, label=label, marker=marker)
            ax.axhline(COLLAPSE_STD, color="crimson", lw=1.0, ls="-.", label=f"collapse line {COLLAPSE_STD}")
            ax.set_ylim(bottom=0)
            ax.set_ylabel("std per dimension")
            ax.set_title("embedding std (collapse monitor)")
        else:
            ax.plot(x, data["lr"], color="tab:green", label="lr (param group 0)", marker=marker)
            ax.set_ylabel("learning rate")
            ax.set_title("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, borderaxespad=0.0)
    axes[-1].set_xlabel("iteration")
    return fig


def embedding_std_figure(
    std: Mapping[str, Sequence[float] | np.ndarray], threshold: float = COLLAPSE_STD, title: str | None = None
) -> Figure:
    """Histograms of the per-dimension std of the embeddings, with the collapse line.

    Args:
        std: any of ``std/global`` ``[r]``, ``std/local`` ``[r']`` (per-dimension std of the global and
            multi-level embeddings over a batch) and ``nstd/global``, ``nstd/local`` (std of the L2-normalised
            embeddings x sqrt(d)), as in ``TrainingMonitor.last_std`` or ``embedding_std.json``.
        threshold: the collapse line (dimensions below it count as collapsed).

    Returns:
        One panel per family present (raw std, normalised std); each legend gives the share of dimensions below
        the line.
    """
    arrays = {}
    for key, values in std.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ValueError(f"std[{key!r}] must be a non-empty array of finite values")
        arrays[str(key)] = arr
    families = [(fam, label) for fam, label in (("std", "per-dimension std"), ("nstd", "normalised std × √d"))
                if any(k in arrays for k in (f"{fam}/global", f"{fam}/local"))]
    if not families:
        raise ValueError(f"no embedding std to plot: got keys {sorted(arrays)}; expected std/global, std/local, "
                         "nstd/global or nstd/local")
    fig, axes = _figure(1, len(families), figsize=(5.2 * len(families), 3.8))
    fig.suptitle(title or "Embedding std per dimension (last logged batch)")
    for ax, (fam, label) in zip(axes[0], families, strict=True):
        present = [(part, arrays[f"{fam}/{part}"]) for part in ("global", "local") if f"{fam}/{part}" in arrays]
        top = max(float(a.max()) for _, a in present)
        bins = np.linspace(0.0, max(top * 1.05, threshold * 2), 41)
        for part, arr in present:
            below = float((arr < threshold).mean())
            colour = "tab:blue" if part == "global" else "tab:red"
            ax.hist(arr, bins=bins, histtype="stepfilled", alpha=0.45, color=colour,
                    label=f"{_PART_LABEL[part]}: {arr.size} dims, {below:.1%} < {threshold:g}")
        ax.axvline(threshold, color="crimson", ls="--", lw=1.2, label=f"collapse line {threshold:g}")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # headroom for the legend
        ax.set_xlabel(label)
        ax.set_ylabel("dimensions")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    return fig


# ------------------------------------------------------------------------------------------------------
# downstream
# ------------------------------------------------------------------------------------------------------


def _best_epoch(epochs: np.ndarray, values: np.ndarray) -> int | None:
    finite = np.isfinite(values)
    if not finite.any():
        return None
    return int(epochs[np.flatnonzero(finite)[np.argmax(values[finite])]])  # the first epoch reaching the maximum


def downstream_curves_figure(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    val_metrics: Mapping[str, Sequence[float]] | None = None,
    best_metric: str | None = None,
    best_epoch: int | None = None,
    title: str = "Downstream training",
) -> Figure:
    """Training loss and validation metric(s) versus epoch, with the best epoch marked.

    Args:
        epochs: ``[E]`` strictly increasing epoch numbers.
        train_loss: ``[E]`` mean training loss of each epoch.
        val_metrics: name -> ``[E]`` validation metrics (e.g. ``val_mean_auc``; ``val_mean_dice``,
            ``val_global_dice``); NaN where an epoch was not validated.
        best_metric: the metric whose best epoch is marked (default: the first of ``val_metrics``).
        best_epoch: the epoch kept for the test (e.g. ``BestCheckpoint.best_epoch``); default: the first epoch
            with the highest ``best_metric``.
    """
    x = _steps(epochs, "epochs")
    loss = _series(train_loss, "train_loss", x.size)
    metrics = {str(k): _series(v, f"val_metrics[{k!r}]", x.size) for k, v in (val_metrics or {}).items()}
    if best_metric is not None and best_metric not in metrics:
        raise ValueError(f"best_metric {best_metric!r} is not among the validation metrics {sorted(metrics)}")
    best_metric = best_metric or next(iter(metrics), None)
    fig, axes = _figure(2 if metrics else 1, 1, figsize=(7.5, 5.6 if metrics else 3.2), sharex=True)
    axes = axes[:, 0]
    fig.suptitle(title)
    marker = "o" if x.size <= 30 else None
    axes[0].plot(x, loss, color="black", marker=marker, ms=3, label="training loss (epoch mean)")
    axes[0].set_ylabel("loss")
    axes[0].set_title("training loss")
    if metrics:
        ax = axes[1]
        for i, (name, values) in enumerate(metrics.items()):
            ax.plot(x, values, marker=marker, ms=3, color=f"C{i}", label=name)
        chosen = best_epoch if best_epoch is not None else _best_epoch(x, metrics[best_metric])
        if chosen is not None and chosen in set(x.tolist()):
            value = float(metrics[best_metric][list(x).index(chosen)])
            for a in axes:
                a.axvline(chosen, color="tab:green", ls=":", lw=1.2)
            ax.plot([chosen], [value], "*", color="tab:green", ms=13, zorder=5,
                    label=f"best epoch {chosen}: {best_metric} {_fmt(value)}")
        ax.set_ylabel("validation metric")
        ax.set_title("validation")
    for a in axes:
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("epoch")
    if x.size <= 30:
        axes[-1].set_xticks(x if x.size <= 15 else x[:: int(math.ceil(x.size / 15))])
    return fig


def auc_bars_figure(report: Mapping[str, Any], title: str = "Test AUC per class") -> Figure:
    """Per-class test AUC as bars, the mean AUC with its bootstrap CI, excluded classes shown as such.

    Args:
        report: :func:`mlvicx_monai.metrics.classification_report`'s output (``results.json["test"]``): uses
            ``per_class_auc`` (``None`` = excluded), ``mean_auc``, ``auc_ci``, ``ci_level``, ``n_positive``,
            ``n_negative`` and ``excluded_classes``.
    """
    aucs = report.get("per_class_auc")
    if not isinstance(aucs, Mapping) or not aucs:
        raise ValueError("report has no per_class_auc: pass mlvicx_monai.metrics.classification_report's output")
    names = [str(k) for k in aucs]
    n_pos = report.get("n_positive") or {}
    n_neg = report.get("n_negative") or {}
    excluded = {str(c) for c in report.get("excluded_classes") or []} | {n for n in names if aucs[n] is None}
    fig, axes = _figure(figsize=(8.0, 1.5 + 0.38 * len(names)))
    ax = axes[0, 0]
    y = np.arange(len(names))[::-1]
    for yi, name in zip(y, names, strict=True):
        value = aucs[name]
        if name in excluded or value is None:
            why = "no positive" if n_pos.get(name) == 0 else "no negative" if n_neg.get(name) == 0 else "undefined"
            ax.barh(yi, 1.0, color="none", edgecolor="grey", hatch="//", lw=0.6)
            ax.text(0.02, yi, f"excluded from the mean ({why} in the test split)", va="center", fontsize=8,
                    color="dimgrey")
        else:
            ax.barh(yi, float(value), color=_BAR, zorder=2)
            inside = float(value) >= 0.15  # the value inside the bar's end, or just right of a short bar
            ax.text(float(value) + (-0.01 if inside else 0.01), yi, f"{float(value):.3f}", va="center", zorder=5,
                    ha="right" if inside else "left", fontsize=8, color="white" if inside else "black",
                    fontweight="bold", bbox={"boxstyle": "square,pad=0.15", "fc": _BAR if inside else "white",
                                             "ec": "none"})
    labels = [f"{n}  (+{n_pos[n]}/−{n_neg[n]})" if n in n_pos and n in n_neg else n for n in names]
    ax.set_yticks(y, labels, fontsize=8)
    ax.axvline(0.5, color="grey", ls=":", lw=1.0, label="chance 0.5")
    mean = report.get("mean_auc")
    ci = report.get("auc_ci")
    n_defined = len(names) - len(excluded)
    if mean is not None and math.isfinite(float(mean)):
        label = f"mean AUC {float(mean):.3f} over {n_defined} classes"
        if ci and all(v is not None for v in ci):
            level = float(report.get("ci_level", 0.95))
            ax.axvspan(float(ci[0]), float(ci[1]), color="tab:orange", alpha=0.2, zorder=1,
                       label=f"{level:.0%} bootstrap CI {float(ci[0]):.3f}–{float(ci[1]):.3f}")
        ax.axvline(float(mean), color="tab:orange", lw=1.8, label=label, zorder=4)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("ROC AUC (test)")
    ax.set_title(title + ("  ·  (+pos/−neg images)" if n_pos else ""))
    ax.grid(True, axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def roc_curves_figure(
    y_true: Any, y_score: Any, class_names: Sequence[str] | None = None, title: str = "Test ROC curves"
) -> Figure:
    """ROC curve of every class (scikit-learn's ``roc_curve``) with its AUC in the legend.

    Args:
        y_true: ``[N, C]`` (or ``[N]``) 0/1 labels.
        y_score: ``[N, C]`` (or ``[N]``) scores (probabilities or logits).
        class_names: ``C`` names (default ``0..C-1``). A class without a positive or a negative image has no curve
            and is listed as excluded.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    from mlvicx_monai.metrics.classification import _validate  # the metrics' own shape/value checks

    yt, ys, keys = _validate(y_true, y_score, class_names)
    fig, axes = _figure(figsize=(8.6, 6.0))
    ax = axes[0, 0]
    excluded = []
    for c, key in enumerate(keys):
        column = yt[:, c]
        if column.all() or not column.any():
            excluded.append(str(key))
            continue
        fpr, tpr, _ = roc_curve(column, ys[:, c])
        auc = roc_auc_score(column, ys[:, c])
        ax.plot(fpr, tpr, lw=1.3, color=f"C{c % 10}", ls="-" if c < 10 else "--",
                label=f"{key}: AUC {auc:.3f} (+{int(column.sum())})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1.0, label="chance")
    if excluded:
        listed = textwrap.fill(", ".join(excluded), 40)
        ax.plot([], [], " ", label=f"excluded (no positive or\nno negative image):\n{listed}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(f"{title}  ·  {yt.shape[0]} images")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right center", fontsize=7, title="class: AUC (+positives)", title_fontsize=8)
    return fig


def dice_histogram_figure(
    dice: Sequence[float],
    truth_pixels: Sequence[int] | None = None,
    global_dice: float | None = None,
    title: str = "Test Dice per image",
) -> Figure:
    """Histogram of the per-image Dice, split by whether the truth mask is empty.

    Args:
        dice: ``[N]`` Dice of each test image in [0, 1] (empty truth: 1 if the prediction is empty, else 0).
        truth_pixels: ``[N]`` truth mask pixels per image (splits the bars into "pneumothorax" / "no
            pneumothorax"); ``None``: one histogram.
        global_dice: the pooled Dice over all pixels, shown in the title when given.
    """
    d = _series(dice, "dice")
    if d.size == 0 or not np.isfinite(d).all() or d.min() < 0 or d.max() > 1:
        raise ValueError("dice must be a non-empty sequence of values in [0, 1]")
    fig, axes = _figure(figsize=(7.0, 4.0))
    ax = axes[0, 0]
    bins = np.linspace(0, 1, 21)
    if truth_pixels is not None:
        t = np.asarray(truth_pixels)
        if t.shape != d.shape:
            raise ValueError(f"truth_pixels has shape {t.shape}, dice {d.shape}")
        empty = t == 0
        groups = [d[~empty], d[empty]]
        labels = [f"with pneumothorax ({int((~empty).sum())})",
                  f"empty truth ({int(empty.sum())}): 1 = predicted empty"]
        ax.hist(groups, bins=bins, stacked=True, color=["tab:red", "tab:grey"], alpha=0.8, label=labels)
    else:
        ax.hist(d, bins=bins, color="tab:red", alpha=0.8, label=f"{d.size} images")
    ax.axvline(float(d.mean()), color="black", ls="--", lw=1.2, label=f"per-image mean Dice {d.mean():.3f}")
    ax.set_xlim(0, 1)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Dice")
    ax.set_ylabel("images")
    ax.set_title(title + (f"  ·  global Dice {global_dice:.3f}" if global_dice is not None else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper center")
    return fig


def classification_figures(
    y_true: Any, y_score: Any, class_names: Sequence[str], report: Mapping[str, Any]
) -> dict[str, Figure]:
    """The test figures of a classification run: ``{"test_auc": bars, "test_roc": curves}``.

    ``y_true``/``y_score`` ``[N, C]`` as in ``test_predictions.csv``; ``report`` = ``classification_report(...)``.
    """
    return {"test_auc": auc_bars_figure(report), "test_roc": roc_curves_figure(y_true, y_score, class_names)}


def segmentation_figures(
    rows: Sequence[tuple[str, int, int, float]], summary: Mapping[str, Any] | None = None
) -> dict[str, Figure]:
    """The test figure of a segmentation run: ``{"test_dice": histogram}``.

    ``rows`` = ``(id, truth_pixels, pred_pixels, dice)`` per image (``test_dice.csv``, ``evaluate_segmentation``);
    ``summary`` = its summary (for the global Dice).
    """
    if not rows:
        raise ValueError("no test images: nothing to plot")
    global_dice = (summary or {}).get("global_dice")
    return {"test_dice": dice_histogram_figure([r[3] for r in rows], [r[1] for r in rows], global_dice)}


# ------------------------------------------------------------------------------------------------------
# Grad-CAM
# ------------------------------------------------------------------------------------------------------


class PatientPixelsError(PermissionError):
    """Image pixels of possibly real patients were about to be written into a figure without the user's consent."""


def check_pixels_allowed(synthetic: bool, allow_patient_pixels: bool) -> None:
    """Refuse to draw image pixels unless they are synthetic or the user opted in.

    Raises:
        TypeError: either flag is not a bool (``"false"`` is truthy: it must not pass by accident).
        PatientPixelsError: ``synthetic`` and ``allow_patient_pixels`` are both False.
    """
    for name, value in (("synthetic", synthetic), ("allow_patient_pixels", allow_patient_pixels)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    if not (synthetic or allow_patient_pixels):
        raise PatientPixelsError(
            "refusing to draw Grad-CAM figures: the images are not the synthetic demo data, so they may be patient "
            "pixels, and figures are written to output_dir/figures and logged to the MLflow run, where everyone with "
            "access to the run could see them. Pass synthetic=True only for synthetic data, or "
            "allow_patient_pixels=True if storing patient images there is permitted"
        )


def gradcam_grid_figure(
    images: Any,
    heatmaps: Any,
    class_names: Sequence[str],
    probabilities: Sequence[float],
    *,
    synthetic: bool,
    allow_patient_pixels: bool = False,
    labels: Sequence[bool | None] | None = None,
    ncols: int = 4,
    title: str = "Grad-CAM (refined layer4 map)",
) -> Figure:
    """A grid of Grad-CAM overlays (``mlvicx_monai.engines.infer.heatmap_overlay``: jet over the grey image).

    Args:
        images: ``[N, H, W]`` grey images in [0, 1] (as displayed).
        heatmaps: ``[N, H, W]`` heat maps in [0, 1] (bright = evidence for the class), same size as the images.
        class_names: ``[N]`` the class each map explains.
        probabilities: ``[N]`` the model's probability of that class.
        synthetic: the images are synthetic (the demo data); see :func:`check_pixels_allowed`.
        allow_patient_pixels: the user opted in to storing patient pixels in figures.
        labels: ``[N]`` whether the class is present in the image's label (None = unknown), shown in the caption.
        ncols: panels per row.

    Raises:
        PatientPixelsError: neither ``synthetic`` nor ``allow_patient_pixels`` (checked before anything else).
    """
    check_pixels_allowed(synthetic, allow_patient_pixels)
    from mlvicx_monai.engines.infer import heatmap_overlay

    imgs = np.asarray(images, dtype=np.float32)
    heats = np.asarray(heatmaps, dtype=np.float32)
    if imgs.ndim != 3 or heats.shape != imgs.shape or imgs.shape[0] == 0:
        raise ValueError(f"images and heatmaps must both be [N >= 1, H, W], got {imgs.shape} and {heats.shape}")
    n = imgs.shape[0]
    if len(class_names) != n or len(probabilities) != n or (labels is not None and len(labels) != n):
        raise ValueError(f"class_names, probabilities (and labels) need one entry per image ({n})")
    for name, arr in (("images", imgs), ("heatmaps", heats)):
        if not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
            raise ValueError(f"{name} must be finite and in [0, 1] (got {arr.min():.3g}..{arr.max():.3g})")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    cols = min(ncols, n)
    rows = int(math.ceil(n / cols))
    fig, axes = _figure(rows, cols, figsize=(2.7 * cols, 2.9 * rows + 0.4))
    fig.suptitle(title + ("  ·  synthetic images" if synthetic else ""), fontsize=10)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(heatmap_overlay(imgs[i], heats[i]), interpolation="bilinear")
        caption = f"{class_names[i]}\np = {float(probabilities[i]):.2f}"
        if labels is not None and labels[i] is not None:
            caption += "  ·  label: " + ("positive" if labels[i] else "negative")
        if float(heats[i].max()) <= 0.0:  # nothing left by Grad-CAM's ReLU, or a constant map
            caption += "\n(no heat: map 0 or constant)"
        ax.set_title(caption, fontsize=8)
    scale = ScalarMappable(norm=Normalize(0.0, 1.0), cmap="jet")
    bar = fig.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01, aspect=30)
    bar.set_label("Grad-CAM heat (per image, min-max; grey below 0.2)", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return fig


def gradcam_examples(
    classifier: Any,
    items: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    normalization: Mapping[str, float],
    *,
    synthetic: bool,
    allow_patient_pixels: bool = False,
    n: int = 4,
    target_layer: str = "auto",
    device: Any = "cpu",
    max_scan: int = 256,
) -> Figure:
    """Grad-CAM overlays of a few images of a dataset, as a :func:`gradcam_grid_figure`.

    Images with a positive label come first (the first ``n`` among the first ``max_scan`` items; the rest filled
    with negatives). Each panel explains the image's positive class with the highest probability, or for an
    image without a positive class the most probable class. MONAI's ``GradCAM`` runs on a deep copy of
    ``classifier`` (its hooks stay on the copy; the classifier's weights, gradients and mode are untouched); the map
    is upsampled as ``GradCAM.__call__`` does and scaled by ``gradcam_normalizer`` (min-max to [0, 1], bright =
    evidence) as ``bundles/infer.json`` does, except that a constant map (no location, e.g. the 1 x 1 layer4 map of a
    32 px input) is shown as no heat instead of its min-max-scaled rounding noise.

    Args:
        classifier: a :class:`~mlvicx_monai.networks.CXRClassifier` (or any module with ``gradcam_target_layer``
            when ``target_layer`` is ``"auto"``): ``[B, 1, S, S]`` -> logits ``[B, C]``.
        items: indexable dataset of ``{"image": [1, S, S] normalised network input, "label": [C]}`` (e.g. the
            classify bundle's ``test_images``; not the frozen protocol's cached features).
        class_names: ``C`` names.
        normalization: ``{"mean", "std"}`` of the inputs (to show the images as the model saw them, in [0, 1]).
        synthetic, allow_patient_pixels: see :func:`check_pixels_allowed` (checked before any image is read).
        n: number of panels.

    Raises:
        PatientPixelsError: neither ``synthetic`` nor ``allow_patient_pixels``.
    """
    check_pixels_allowed(synthetic, allow_patient_pixels)
    import copy

    import torch
    from monai.visualize import GradCAM, default_upsampler

    from mlvicx_monai.engines.infer import gradcam_normalizer

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(items) == 0:
        raise ValueError("no images to explain")
    chosen: list[Mapping[str, Any]] = []
    negatives: list[Mapping[str, Any]] = []
    for i in range(min(len(items), max_scan)):
        item = items[i]
        (chosen if np.asarray(item["label"]).any() else negatives).append(item)
        if len(chosen) >= n:
            break
    chosen = (chosen + negatives)[:n]
    device = torch.device(device)
    model = copy.deepcopy(classifier).to(device).eval()
    layer = model.gradcam_target_layer if target_layer == "auto" else target_layer
    cam = GradCAM(nn_module=model, target_layers=layer)
    mean, std = float(normalization["mean"]), float(normalization["std"])
    xs, ys = [], []
    for item in chosen:
        x = torch.as_tensor(np.asarray(item["image"]), dtype=torch.float32)
        if x.ndim != 3 or x.shape[0] != 1 or (xs and x.shape != xs[0].shape):
            raise ValueError(f"items need an 'image' of one shape [1, S, S] (network input), got {tuple(x.shape)}")
        label = np.asarray(item["label"]).astype(bool).ravel()
        if label.shape[0] != len(class_names):
            raise ValueError(f"an item's label has {label.shape[0]} classes for {len(class_names)} class names")
        xs.append(x)
        ys.append(label)
    batch = torch.stack(xs).to(device)
    with torch.no_grad():
        prob = torch.sigmoid(model(batch)).float().cpu().numpy()
    images, heats, names, probs, labels = [], [], [], [], []
    for x, label, p in zip(batch, ys, prob, strict=True):
        x = x[None]
        k = int(np.flatnonzero(label)[np.argmax(p[label])]) if label.any() else int(np.argmax(p))
        raw = cam.compute_map(x.detach().clone().requires_grad_(True), class_idx=k).detach().float()  # [1, 1, h, w]
        span, top = float(raw.max() - raw.min()), float(raw.abs().max())
        if span <= 1e-6 * top or top == 0.0:
            # a constant map (e.g. 1 x 1 at small inputs) carries no location; min-max would blow its rounding noise
            # up to the full [0, 1] range, so it is shown as no heat
            heat = np.zeros(tuple(x.shape[2:]), dtype=np.float32)
        else:  # what GradCAM.__call__ does: MONAI's default upsampler, then the [0, 1] scaling of infer.py
            heat = gradcam_normalizer(default_upsampler(tuple(x.shape[2:]))(raw))[0, 0].cpu().numpy()
        images.append(np.clip(x[0, 0].cpu().numpy() * std + mean, 0.0, 1.0))
        heats.append(np.clip(heat, 0.0, 1.0))
        names.append(str(class_names[k]))
        probs.append(float(p[k]))
        labels.append(bool(label[k]))
    return gradcam_grid_figure(np.stack(images), np.stack(heats), names, probs, synthetic=synthetic,
                               allow_patient_pixels=allow_patient_pixels, labels=labels)


# ------------------------------------------------------------------------------------------------------
# saving and logging
# ------------------------------------------------------------------------------------------------------


def run_target(tracking_run: Any) -> tuple[Any, str | None]:
    """``(client, run_id)`` of a :class:`~mlvicx_monai.tracking.TrackedRun` (``(None, None)`` if absent/disabled)."""
    if tracking_run is None or not getattr(tracking_run, "enabled", False):
        return None, None
    return tracking_run.client, tracking_run.run_id


def _close(fig: Any) -> None:
    if isinstance(fig, Figure):
        if "matplotlib.pyplot" in sys.modules:  # a pyplot-made figure is also in pyplot's registry
            sys.modules["matplotlib.pyplot"].close(fig)
        fig.clear()


def _as_uint8_image(image: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"image {name!r} must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
        return np.round(arr * 255).astype(np.uint8)
    raise ValueError(f"image {name!r} must be uint8 or float in [0, 1], got {arr.dtype}")


def save_figures(
    figures: Mapping[str, Figure | np.ndarray],
    output_dir: str | os.PathLike,
    client: Any = None,
    run_id: str | None = None,
) -> dict[str, Path]:
    """Write every figure to ``output_dir/figures/<name>.png`` and log it to the MLflow run as ``figures/<name>.png``.

    Args:
        figures: name (letters, digits, ``_.-``; no extension) -> matplotlib figure, or an image array (``uint8`` or
            float in [0, 1], ``(H, W)`` / ``(H, W, 3)`` / ``(H, W, 4)``).
        output_dir: the run folder; files are written atomically (a reader never sees half a PNG).
        client, run_id: an ``MlflowClient`` and the run to log to (see :func:`run_target`); ``None``: files only. The
            PNG is logged with ``client.log_artifact`` (what ``log_figure``/``log_image`` do after encoding it again).

    Returns:
        ``{name: path of the PNG}``. Every figure given is closed afterwards, also when an error is raised.
    """
    try:
        for name in figures:
            if not isinstance(name, str) or not _NAME.match(name) or name.lower().endswith(".png"):
                raise ValueError(f"figure name {name!r} must be letters, digits, '_', '.', '-' without the .png suffix")
        if (client is None) != (run_id is None):
            raise ValueError("pass both client and run_id to log to MLflow, or neither to write the files only")
        from PIL import Image

        folder = Path(output_dir) / FIGURE_DIR
        written: dict[str, Path] = {}
        for name, obj in figures.items():
            buffer = io.BytesIO()
            if isinstance(obj, Figure):
                obj.savefig(buffer, format="png", dpi=DPI)
            else:
                image = _as_uint8_image(obj, name)
                Image.fromarray(image).save(buffer, format="png")
            written[name] = atomic_write_bytes(folder / f"{name}.png", buffer.getvalue())
            if client is not None:
                # the file just written, as it is: MlflowClient.log_figure / log_image would encode (for a figure:
                # render, the costly part) the same PNG a second time into a temporary file and log_artifact that
                client.log_artifact(run_id, str(written[name]), FIGURE_DIR)
        return written
    finally:
        for obj in figures.values():
            _close(obj)


# ------------------------------------------------------------------------------------------------------
# ignite handlers
# ------------------------------------------------------------------------------------------------------


def _checkpoint_attached_before(engine: Any) -> bool:
    """Whether a ``ResumableCheckpoint`` already saves on this engine (its state would then miss our last point)."""
    from mlvicx_monai.engines.checkpoint import ResumableCheckpoint

    for handlers in getattr(engine, "_event_handlers", {}).values():  # ignite keeps no public listing
        for entry in handlers:
            handler = entry[0]
            parent = getattr(handler, "_parent", None)  # ignite wraps filtered handlers (every=N)
            handler = parent() if callable(parent) else handler
            if isinstance(getattr(handler, "__self__", None), ResumableCheckpoint):
                return True
    return False


class _FigureHandler:
    """What both recorders share: rank-0 only, attach-order check, figures at COMPLETED (and every N epochs)."""

    def __init__(
        self, output_dir: str | os.PathLike, tracking_run: Any = None, every_epochs: int | None = None
    ) -> None:
        if every_epochs is not None and (isinstance(every_epochs, bool) or int(every_epochs) < 1):
            raise ValueError(f"every_epochs must be >= 1 or None, got {every_epochs!r}")
        self.output_dir = Path(output_dir)
        self.tracking_run = tracking_run
        self.every_epochs = every_epochs
        self.written: dict[str, Path] = {}
        self.errors: list[str] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        from mlvicx_monai.engines.distributed import is_rank0

        if not is_rank0():
            return
        if _checkpoint_attached_before(engine):
            raise ValueError(
                f"attach {type(self).__name__} before ResumableCheckpoint (earlier in the trainer's handler list): "
                "the checkpoint saves at the same events and would otherwise store the history without its last point"
            )
        from mlvicx_monai.engines.checkpoint import register_resumable

        register_resumable(engine, "figures", self)  # the run's resumable checkpoint keeps the history
        engine.add_event_handler(Events.STARTED, self._started)
        self._attach_recording(engine)
        if self.every_epochs:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=int(self.every_epochs)), self._write_safely)
        engine.add_event_handler(Events.COMPLETED, self._write_safely)

    def _attach_recording(self, engine: Any) -> None:
        raise NotImplementedError

    def _started(self, engine: Any) -> None:
        """Drop points past the engine's position (a resume that restarts from an earlier epoch boundary)."""

    def figures(self) -> dict[str, Figure]:
        """The figures of the history so far (an empty history gives none)."""
        raise NotImplementedError

    def write(self) -> dict[str, Path]:
        """Write (and log) :meth:`figures` now; returns ``{name: png path}``."""
        written = save_figures(self.figures(), self.output_dir, *run_target(self.tracking_run))
        self.written.update(written)
        return written

    def _write_safely(self, engine: Any) -> None:
        # figures are a by-product: a failure (full disk, unreachable server) is reported, never ends the training job
        try:
            self.write()
        except Exception as err:
            message = f"{type(err).__name__}: {err}"
            self.errors.append(message)
            logger.warning("%s: figures not written (%s)", type(self).__name__, message)


class PretrainCurves(_FigureHandler):
    """Trainer handler of ``pretrain.json``: records the monitor's statistics and writes the pretraining figures.

    Records, whenever ``TrainingMonitor`` publishes a new ``engine.state.train_stats`` (every ``log_every``
    iterations), the loss terms, lr and embedding-std summaries (keys matching ``keys``), and the last
    per-dimension std vectors (``monitor.last_std``, else the ``engine.state.embedding_std`` the monitor publishes, else
    ``engine.state.output["std/..."]``); at every epoch end
    the epoch's mean loss (``engine.state.epoch_stats["epoch/loss"]``). Writes ``pretrain_curves.png``
    (:func:`pretrain_curves_figure`) and ``embedding_std.png`` (:func:`embedding_std_figure`) at COMPLETED.

    Attach after ``TrainingMonitor`` and before ``ResumableCheckpoint``, and put it in the checkpoint's
    ``objects`` (its history survives a resume). At most ``max_points`` points are kept: beyond, every other
    point is dropped and the recording stride doubles (long runs stay small in the checkpoint).

    Args:
        output_dir: the run folder (figures go to ``output_dir/figures``).
        tracking_run: the :class:`~mlvicx_monai.tracking.TrackedRun` (disabled or None: files only).
        monitor: the trainer's ``TrainingMonitor`` (source of the std vectors).
        every_epochs: also write the figures every this many epochs (long runs); None: at COMPLETED only.
        keys: regular expression of the ``train_stats`` keys to record.
        max_points: the most points kept.
    """

    STATE_FORMAT = "mlvicx-pretrain-curves/1"
    DEFAULT_KEYS = r"^(train/.+|lr|n?std/(global|local)_(mean|min))$"
    NAMES = ("pretrain_curves", "embedding_std")

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tracking_run: Any = None,
        monitor: Any = None,
        every_epochs: int | None = None,
        keys: str = DEFAULT_KEYS,
        max_points: int = 4000,
    ) -> None:
        super().__init__(output_dir, tracking_run, every_epochs)
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        self.monitor = monitor
        self.keys = re.compile(keys)
        self.max_points = int(max_points)
        self.iterations: list[int] = []
        self.series: dict[str, list[float]] = {}
        self.epochs: list[int] = []
        self.epoch_iterations: list[int] = []
        self.epoch_loss: list[float] = []
        self.last_std: dict[str, np.ndarray] = {}
        self.stride = 1
        self._seen = 0
        self._last_stats: Any = None

    def _attach_recording(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _started(self, engine: Any) -> None:
        keep = [i for i, it in enumerate(self.iterations) if it <= engine.state.iteration]
        if len(keep) != len(self.iterations):
            self.iterations = [self.iterations[i] for i in keep]
            self.series = {k: [v[i] for i in keep] for k, v in self.series.items()}
        keep_e = [i for i, e in enumerate(self.epochs) if e <= engine.state.epoch]
        self.epochs = [self.epochs[i] for i in keep_e]
        self.epoch_iterations = [self.epoch_iterations[i] for i in keep_e]
        self.epoch_loss = [self.epoch_loss[i] for i in keep_e]
        self._last_stats = getattr(engine.state, "train_stats", None)

    def _iteration(self, engine: Any) -> None:
        stats = getattr(engine.state, "train_stats", None)
        if not stats or stats is self._last_stats:  # the monitor publishes a new dict every interval
            return
        self._last_stats = stats
        self._snapshot_std(engine)
        self._seen += 1
        if (self._seen - 1) % self.stride:
            return
        self.record(engine.state.iteration, stats)

    def record(self, iteration: int, stats: Mapping[str, float]) -> None:
        """Add one point (``train_stats`` at ``iteration``); keys outside ``keys`` are ignored."""
        n = len(self.iterations)
        self.iterations.append(int(iteration))
        for key in stats:
            if self.keys.match(key) and key not in self.series:
                self.series[key] = [math.nan] * n
        for key, values in self.series.items():
            values.append(_number(stats.get(key, math.nan)))
        if len(self.iterations) > self.max_points:
            self.iterations = self.iterations[::2]
            self.series = {k: v[::2] for k, v in self.series.items()}
            self.stride *= 2

    def _snapshot_std(self, engine: Any) -> None:
        source: Mapping[str, Any] = (getattr(self.monitor, "last_std", None)
                                     or getattr(engine.state, "embedding_std", None) or {})
        if not source:
            output = engine.state.output if isinstance(engine.state.output, Mapping) else {}
            source = {k: v for k, v in output.items() if k.startswith(("std/", "nstd/"))}
        for key, value in source.items():
            if hasattr(value, "detach"):
                value = value.detach().float().cpu().numpy()
            self.last_std[str(key)] = np.asarray(value, dtype=np.float32).ravel()

    def _epoch(self, engine: Any) -> None:
        stats = getattr(engine.state, "epoch_stats", None) or {}
        value = stats.get("epoch/loss", engine.state.metrics.get("epoch/loss", math.nan))
        epoch = int(engine.state.epoch)
        if epoch in self.epochs:  # replayed epoch: keep the newest value
            index = self.epochs.index(epoch)
            del self.epochs[index], self.epoch_iterations[index], self.epoch_loss[index]
        self.epochs.append(epoch)
        self.epoch_iterations.append(int(engine.state.iteration))
        self.epoch_loss.append(_number(value))

    def figures(self) -> dict[str, Figure]:
        figures: dict[str, Figure] = {}
        if self.iterations and any(k.startswith("train/") for k in self.series):
            figures["pretrain_curves"] = pretrain_curves_figure(
                self.iterations, self.series, self.epoch_iterations, self.epoch_loss
            )
        if self.last_std:
            figures["embedding_std"] = embedding_std_figure(self.last_std)
        return figures

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": self.STATE_FORMAT,
            "iterations": list(self.iterations),
            "series": {k: list(v) for k, v in self.series.items()},
            "epochs": list(self.epochs),
            "epoch_iterations": list(self.epoch_iterations),
            "epoch_loss": list(self.epoch_loss),
            "last_std": {k: v.tolist() for k, v in self.last_std.items()},
            "stride": self.stride,
            "seen": self._seen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"not a {type(self).__name__} state (format {state.get('format')!r})")
        self.iterations = [int(i) for i in state["iterations"]]
        self.series = {k: [float(x) for x in v] for k, v in state["series"].items()}
        if any(len(v) != len(self.iterations) for v in self.series.values()):
            raise ValueError(f"{type(self).__name__} state: series and iterations differ in length")
        self.epochs = [int(e) for e in state["epochs"]]
        self.epoch_iterations = [int(i) for i in state["epoch_iterations"]]
        self.epoch_loss = [float(x) for x in state["epoch_loss"]]
        self.last_std = {k: np.asarray(v, dtype=np.float32) for k, v in state["last_std"].items()}
        self.stride = int(state["stride"])
        self._seen = int(state["seen"])


class DownstreamCurves(_FigureHandler):
    """Trainer handler of ``classify.json`` / ``segment.json``: epoch loss and validation metrics per epoch.

    At every epoch end records ``engine.state.metrics[loss_key]`` and each of ``val_metrics`` (copied into the
    trainer's metrics by ``CopyMetrics`` after the validation; NaN when absent; with a validation interval above 1
    the epochs in between repeat the last validated value, as the trainer's metrics do), and writes
    ``training_curves.png`` (:func:`downstream_curves_figure`) at COMPLETED, the best epoch marked
    (``best.best_epoch`` when a ``BestCheckpoint`` is given, else the first epoch with the highest first metric).

    Attach after the ``ValidationHandler`` and the epoch-loss handler, before ``ResumableCheckpoint``, and put it in
    the checkpoint's ``objects``.

    Args:
        output_dir, tracking_run, every_epochs: as :class:`PretrainCurves`.
        val_metrics: the validation metric keys (the first is the early-stopping / best-checkpoint metric).
        loss_key: the epoch-loss key.
        best: the run's ``BestCheckpoint`` (anything with ``best_epoch``), or None.
        title: the figure's title (e.g. ``"classify demo, finetune, 100 %"``).
    """

    STATE_FORMAT = "mlvicx-downstream-curves/1"
    NAMES = ("training_curves",)

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tracking_run: Any = None,
        val_metrics: Sequence[str] = ("val_mean_auc",),
        loss_key: str = "train_loss",
        best: Any = None,
        every_epochs: int | None = None,
        title: str = "Downstream training",
    ) -> None:
        super().__init__(output_dir, tracking_run, every_epochs)
        if isinstance(val_metrics, str):
            val_metrics = [val_metrics]
        self.val_metrics = [str(k) for k in val_metrics]
        self.loss_key = str(loss_key)
        self.best = best
        self.title = title
        self.epochs: list[int] = []
        self.series: dict[str, list[float]] = {k: [] for k in [self.loss_key, *self.val_metrics]}

    def _attach_recording(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _started(self, engine: Any) -> None:
        keep = [i for i, e in enumerate(self.epochs) if e <= engine.state.epoch]
        self.epochs = [self.epochs[i] for i in keep]
        self.series = {k: [v[i] for i in keep] for k, v in self.series.items()}

    def _epoch(self, engine: Any) -> None:
        self.record(int(engine.state.epoch), engine.state.metrics)

    def record(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """Add the values of ``metrics`` at ``epoch`` (a replayed epoch replaces its earlier values)."""
        if epoch in self.epochs:
            index = self.epochs.index(epoch)
            del self.epochs[index]
            for values in self.series.values():
                del values[index]
        self.epochs.append(int(epoch))
        for key, values in self.series.items():
            values.append(_number(metrics.get(key, math.nan)))

    def figures(self) -> dict[str, Figure]:
        if not self.epochs:
            return {}
        best_epoch = getattr(self.best, "best_epoch", None) or None
        val = {k: self.series[k] for k in self.val_metrics}
        return {"training_curves": downstream_curves_figure(
            self.epochs, self.series[self.loss_key], val, self.val_metrics[0] if val else None,
            best_epoch=best_epoch, title=self.title,
        )}

    def state_dict(self) -> dict[str, Any]:
        return {"format": self.STATE_FORMAT, "epochs": list(self.epochs),
                "series": {k: list(v) for k, v in self.series.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("format") != self.STATE_FORMAT:
            raise ValueError(f"not a {type(self).__name__} state (format {state.get('format')!r})")
        epochs = [int(e) for e in state["epochs"]]
        series = {k: [float(x) for x in v] for k, v in state["series"].items()}
        for key in self.series:  # a metric added since the checkpoint: NaN for the old epochs
            series.setdefault(key, [math.nan] * len(epochs))
        if any(len(v) != len(epochs) for v in series.values()):
            raise ValueError(f"{type(self).__name__} state: series and epochs differ in length")
        self.epochs = epochs
        self.series = {k: series[k] for k in self.series}

