"""Classification transfer (``bundles/classify.json``): data items, the frozen-protocol feature cache, and the
final test report (``results.json``, ``test_predictions.csv``, ``model.pt``, MLflow metrics).

Protocols (SPEC section 3):

- ``finetune``: the whole :class:`~mlvicx_monai.networks.CXRClassifier` trains on images.
- ``frozen`` (linear probe): the encoder is frozen (eval mode, no gradients). Without augmentation the pooled
  512-d feature of an image is a fixed function of the image, so :func:`encode_features` computes it once per
  image and the linear head trains on the cached features. This is exact -- the head sees the very values it
  would see through ``classifier(x)`` in eval mode -- and turns each epoch into a few milliseconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.utils import convert_to_tensor

from mlvicx_monai.data import splits
from mlvicx_monai.data.datalist import DatalistError, load_datalist, read_datalist
from mlvicx_monai.engines.downstream import DownstreamReport, check_protocol
from mlvicx_monai.engines.evaluation import predict
from mlvicx_monai.metrics import classification_report
from mlvicx_monai.networks.classifier import CXRClassifier
from mlvicx_monai.networks.encoder import MLVICXEncoder
from mlvicx_monai.utils.atomic import atomic_write_csv

__all__ = [
    "CLASSIFY_DATASETS",
    "ClassificationReport",
    "EncodedFeatures",
    "encode_features_once",
    "class_names_of",
    "classification_items",
    "encode_features",
    "patients_by_id",
    "protocol_data",
    "select_classes",
    "split_entries",
    "training_subset",
]

logger = logging.getLogger(__name__)

#: ``demo``: the synthetic NIH-layout data (generated on first use).
CLASSIFY_DATASETS = ("demo", "nih", "vindr", "rsna")


def class_names_of(classes: str | Sequence[str], datalist_path: str | os.PathLike) -> list[str]:
    """The class names a classifier is built for: ``classes`` itself when it is a list (no file is read, so a bundle's
    ``network_def`` resolves before the data exist; :func:`select_classes` checks them against the datalist), every
    class of the datalist for ``"all"``."""
    if isinstance(classes, str):
        return select_classes(datalist_path, classes)
    return [str(c) for c in classes]


def select_classes(datalist_path: str | os.PathLike, classes: str | Sequence[str] = "all") -> list[str]:
    """The class names to train on: every class of the datalist (``"all"``) or the given subset, in the order given.

    Raises:
        DatalistError: a requested class is not in the datalist (the message lists those that are).
    """
    available = list(read_datalist(datalist_path).get("class_names") or [])
    if not available:
        raise DatalistError(f"{datalist_path} declares no class_names: it is not a labelled classification datalist")
    if isinstance(classes, str):
        if classes != "all":
            raise ValueError(f"classes must be 'all' or a list of class names, got {classes!r}")
        return available
    chosen = [str(c) for c in classes]
    unknown = [c for c in chosen if c not in available]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise DatalistError(
            f"classes {chosen} are not distinct names of {datalist_path}'s classes"
            + (f" (unknown: {unknown})" if unknown else "")
            + f"; choose from {available}"
        )
    return chosen


def split_entries(
    datalist_path: str | os.PathLike,
    split: str,
    fraction: float | None = None,
    fraction_seed: int | None = None,
    labels_of: Callable[[Mapping[str, Any]], Sequence[int]] | None = None,
    require_labels: bool = False,
) -> list[dict[str, Any]]:
    """Datalist entries of one split; for ``train``, the label-``fraction`` subset.

    The subset is the datalist's fraction column (fixed when the data were ingested) when ``fraction_seed`` is
    ``None``, else drawn with ``fraction_seed`` by :func:`~mlvicx_monai.data.splits.seeded_fraction` over the
    training patients (patient-level, nested across fractions for one seed, covering every training class of
    ``labels_of(entry)``; the training split stays patient-disjoint from val/test).

    Raises:
        DatalistError: a seeded subset of a datalist whose training entries have no ``patient``.
    """
    seeded = split == "train" and fraction is not None and fraction_seed is not None
    fixed = fraction if split == "train" and not seeded else None
    entries = load_datalist(datalist_path, split, fraction=fixed, require_labels=require_labels)
    if seeded:
        unknown = [e["id"] for e in entries if not e.get("patient")]
        if unknown:
            raise DatalistError(
                f"{datalist_path}: {len(unknown)} training entries have no patient (e.g. {unknown[:3]}), so a seeded "
                "patient-level subset cannot be drawn; use fraction_seed null (the datalist's fixed subset)"
            )
        labels = [tuple(labels_of(e)) if labels_of else (0,) for e in entries]
        keep = splits.seeded_fraction([str(e["patient"]) for e in entries], labels, fraction, fraction_seed)
        entries = [e for e, k in zip(entries, keep) if k]
    return entries


def classification_items(
    datalist_path: str | os.PathLike,
    split: str,
    class_names: Sequence[str],
    fraction: float | None = None,
    check_defined: bool = False,
    fraction_seed: int | None = None,
) -> list[dict[str, Any]]:
    """Items ``{"image": path, "label": float32 [C], "id": str, "patient": str}`` of one split, labels restricted
    to ``class_names`` (``patient`` only where the datalist has it).

    Args:
        datalist_path: the ingestion's ``manifest.json``.
        split: ``train``, ``val`` or ``test``.
        class_names: the classes to keep (a subset of the datalist's, see :func:`select_classes`).
        fraction: label fraction of the training split (0.01, 0.1, 0.3, 1.0), ``None`` for all.
        check_defined: require at least one class with a positive and a negative image (the validation
            split of early stopping; otherwise its mean AUC would be undefined).
        fraction_seed: ``None``: the datalist's fixed fraction subset; an integer: a subset drawn with this seed
            (see :func:`split_entries`; stratified on all the datalist's classes).
    """
    names = list(read_datalist(datalist_path)["class_names"])
    index = [names.index(c) for c in class_names]
    entries = split_entries(datalist_path, split, fraction, fraction_seed, labels_of=lambda e: e["label"],
                            require_labels=True)
    items = []
    for entry in entries:
        label = np.asarray(entry["label"], dtype=np.float32)
        if label.shape != (len(names),):
            raise DatalistError(
                f"{datalist_path}: entry {entry['id']} has {label.size} labels for {len(names)} classes"
            )
        item = {"image": entry["image"], "label": label[index], "id": str(entry["id"])}
        if entry.get("patient"):
            item["patient"] = str(entry["patient"])
        items.append(item)
    if check_defined:
        labels = np.stack([i["label"] for i in items])
        positives = labels.sum(axis=0)
        if not ((positives > 0) & (positives < len(items))).any():
            raise DatalistError(
                f"{datalist_path}: the {split} split ({len(items)} images) has no class with both a positive and a "
                f"negative image among {list(class_names)}, so its mean AUC (the early-stopping criterion) is undefined"
            )
    return items


def patients_by_id(items: Sequence[Mapping[str, Any]]) -> dict[str, str] | None:
    """``{item id: patient}`` of items that all have a ``patient``; ``None`` (no patient-level bootstrap) when
    any item lacks one."""
    if not items or any(not item.get("patient") for item in items):
        return None
    return {str(item["id"]): str(item["patient"]) for item in items}


def training_subset(
    items: Sequence[Mapping[str, Any]], fraction: float | None, fraction_seed: int | None
) -> dict[str, Any]:
    """Provenance of the training items: :func:`~mlvicx_monai.data.splits.subset_record` (seed, sizes, checksum)."""
    patients = patients_by_id(items)
    return splits.subset_record([i["id"] for i in items], None if patients is None else list(patients.values()),
                                fraction, fraction_seed)


@torch.no_grad()
def encode_features(
    encoder: MLVICXEncoder,
    dataset: Dataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """The pooled encoder feature of every item, computed once with the encoder in eval mode.

    Args:
        encoder: the (frozen) encoder; its train/eval mode is restored afterwards, its weights and buffers
            are not touched (eval mode: BatchNorm uses and keeps its running statistics).
        dataset: items with ``image`` ``[1, S, S]`` (preprocessed as for the classifier), ``label`` and ``id``.

    Returns:
        Items ``{"image": feature float32 [512], "label", "id"}``: for the linear head, ``image`` is the feature.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    out: list[dict[str, Any]] = []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for batch in loader:
            x = convert_to_tensor(batch["image"], device=device, track_meta=False)
            features = encoder(x).float().cpu()
            for k in range(features.shape[0]):
                label = batch["label"][k]
                out.append({"image": features[k].clone(), "label": convert_to_tensor(label, track_meta=False),
                            "id": batch["id"][k]})
    finally:
        encoder.train(was_training)
    return out


class EncodedFeatures(Dataset):
    """The frozen protocol's training data: the pooled encoder feature of every image of ``images`` (see
    :func:`encode_features`), computed by :meth:`compute` once the pretrained weights are in the encoder (the bundles
    call :func:`encode_features_once` in ``initialize``), not when the config is resolved."""

    def __init__(
        self,
        images: Dataset,
        encoder: MLVICXEncoder,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        num_workers: int = 0,
    ) -> None:
        super().__init__(data=[])
        self.images, self.encoder = images, encoder
        self.batch_size, self.device, self.num_workers = batch_size, device, num_workers
        self.computed = False

    def compute(self) -> "EncodedFeatures":
        logger.info("frozen protocol: caching the encoder features of %d images", len(self.images))
        self.data = encode_features(self.encoder, self.images, self.batch_size, self.device, self.num_workers)
        self.computed = True
        return self

    def __len__(self) -> int:
        if not self.computed:
            raise RuntimeError(
                "the encoder features are not computed yet: call compute() (the bundle's initialize does)"
            )
        return super().__len__()


def encode_features_once(datasets: Sequence[Dataset]) -> None:
    """:meth:`EncodedFeatures.compute` for every not yet computed :class:`EncodedFeatures` among ``datasets``."""
    for dataset in datasets:
        if isinstance(dataset, EncodedFeatures) and not dataset.computed:
            dataset.compute()


def protocol_data(
    protocol: str,
    dataset: Dataset,
    classifier: CXRClassifier,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    augment: bool = False,
) -> Dataset:
    """What the trained network consumes: ``dataset`` itself (finetune) or its encoder features (frozen: an
    :class:`EncodedFeatures`, computed later by :func:`encode_features_once`).

    Raises:
        ValueError: ``augment`` with the frozen protocol (cached features cannot be augmented).
    """
    check_protocol(protocol)
    if protocol == "finetune":
        return dataset
    if augment:
        raise ValueError(
            "the frozen protocol caches one encoder feature per image, so training augmentation cannot apply; "
            "use --augment False (or auto) with --protocol frozen"
        )
    if not classifier.freeze_encoder:
        raise ValueError("the frozen protocol needs a classifier built with freeze_encoder=True")
    return EncodedFeatures(dataset, classifier.encoder, batch_size, device, num_workers)


def _write_predictions(path: Path, ids: list[str], class_names: Sequence[str], y: np.ndarray, p: np.ndarray) -> None:
    header = ["id", *[f"label:{c}" for c in class_names], *[f"prob:{c}" for c in class_names]]
    rows = [[ident, *[int(v) for v in y[i]], *[f"{v:.8g}" for v in p[i]]] for i, ident in enumerate(ids)]
    atomic_write_csv(path, rows, header=header)


def patients_of(ids: Sequence[str], test_patients: Mapping[str, str] | None) -> list[str] | None:
    """The patient of every evaluated id, or ``None`` (image-level bootstrap) without a mapping.

    Raises:
        ValueError: an evaluated id is not in ``test_patients`` (the mapping is not of the test items).
    """
    if test_patients is None:
        return None
    missing = [i for i in ids if i not in test_patients]
    if missing:
        raise ValueError(f"{len(missing)} test ids have no patient in test_patients (e.g. {missing[:3]}): pass "
                         "patients_by_id(<the test items>)")
    return [test_patients[i] for i in ids]


class ClassificationReport(DownstreamReport):
    """:class:`~mlvicx_monai.engines.downstream.DownstreamReport` of classification: the test evaluation writes

    - ``output_dir/test_predictions.csv``: ``id``, ``label:<class>``, ``prob:<class>`` (sigmoid) per test image;
    - ``results.json["test"]`` = :func:`~mlvicx_monai.metrics.classification_report` (per-class AUC, mean AUC with
      bootstrap 95% CI, n positive/negative per class, excluded classes, accuracy for a single binary class);
    - MLflow metrics ``test/mean_auc``, ``test/mean_auc_ci_low``/``_high``, ``test/auc/<class>``, ``test/accuracy``.

    Args (besides the base class's; ``network`` is the full classifier, saved to model.pt):
        test_network: the module that maps a test batch to logits and that the best checkpoint holds (the
            classifier, or its head for the frozen protocol's cached features).
        n_boot: bootstrap resamples of the confidence interval of the mean AUC.
        test_patients: ``{test item id: patient}`` (:func:`patients_by_id`): the bootstrap resamples patients
            (``results.json["test"]["ci_unit"] == "patient"``); ``None``: images.
    """

    task = "classification"

    def __init__(
        self,
        *args: Any,
        test_network: torch.nn.Module,
        n_boot: int = 1000,
        gradcam_items: Any = None,
        test_patients: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, trained_network=test_network, **kwargs)
        self.test_network = test_network
        self.n_boot = int(n_boot)
        self.test_patients = dict(test_patients) if test_patients is not None else None
        self.gradcam_items = gradcam_items
        self._last: tuple[np.ndarray, np.ndarray, dict[str, Any]] | None = None

    def evaluate(self) -> tuple[dict[str, Any], dict[str, float]]:
        ids, y, p = predict(self.test_network, self.test_loader, self.device, transform=torch.sigmoid)
        seed = int(self.provenance.get("seed", 0) or 0)
        patients = patients_of(ids, self.test_patients)
        report = classification_report(y, p, self.class_names, n_boot=self.n_boot, seed=seed, threshold=self.threshold,
                                       patient_ids=patients)
        self._last = (y, p, report)
        _write_predictions(self.output_dir / "test_predictions.csv", ids, self.class_names, y, p)
        metrics: dict[str, float] = {"test/mean_auc": report["mean_auc"]}
        if report.get("auc_ci"):
            metrics["test/mean_auc_ci_low"], metrics["test/mean_auc_ci_high"] = report["auc_ci"]
        for name, value in report["per_class_auc"].items():
            metrics[f"test/auc/{name}"] = value
        if "accuracy" in report:
            metrics["test/accuracy"] = report["accuracy"]
        if self.run is not None:
            self.run.set_tags({"mlvicx.excluded_classes": ",".join(report["excluded_classes"]) or "none"})
        logger.info(
            "test: mean AUC %s (95%% CI %s, resampling %d %ss) over %d classes; excluded (undefined AUC): %s; "
            "details in %s", report["mean_auc"], report["auc_ci"], report["n_clusters"], report["ci_unit"],
            len(self.class_names) - len(report["excluded_classes"]),
            report["excluded_classes"] or "none", self.output_dir,
        )
        return report, {k: v for k, v in metrics.items() if v is not None}

    def test_figures(self) -> dict[str, Any]:
        """Test AUC bars and ROC curves; Grad-CAM examples of test images when the data are synthetic (or the user
        allowed figures of patient images)."""
        from mlvicx_monai.tracking.figures import classification_figures, gradcam_examples

        if self._last is None:
            return {}
        y, p, report = self._last
        figures = classification_figures(y, p, self.class_names, report)
        if self.gradcam_items is not None and (self.synthetic or self.allow_patient_pixels):
            normalization = {"mean": self.preprocessing.mean, "std": self.preprocessing.std}
            figures["gradcam_examples"] = gradcam_examples(
                self.network, self.gradcam_items, self.class_names, normalization, synthetic=self.synthetic,
                allow_patient_pixels=self.allow_patient_pixels, device=self.device,
            )
        return figures
