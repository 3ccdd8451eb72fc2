"""RSNA Pneumonia Detection (Kaggle stage 2 training set, 26,684 frontal DICOMs), binary pneumonia.

Label file: ``stage_2_train_labels.csv`` (the reference copy is ``kaggle_stage_2_train_labels.csv``): one row
per opacity box (``patientId, x, y, width, height, Target``), one row with an empty box for negatives. The
image label is ``Target`` = max over the image's rows; all rows of an image must agree on ``Target``, boxes
are kept as a list ``(x, y, width, height)``. ``CLASS_NAMES = ("Pneumonia",)``: the paper reports accuracy
and AUC on this binary task.

Optional files: ``stage_2_detailed_class_info.csv`` (``class``: Normal / No Lung Opacity / Not Normal /
Lung Opacity; must agree with ``Target``) and a table of the DICOM headers
(``stage_2_train_images_dicom_headers.csv``, e.g. the public Kaggle extraction
``kaggle_stage_2_train_images_dicom_headers.csv``) that supplies ``view`` (AP/PA), sex and age.

Patient id: the Kaggle ``patientId`` is one id per image (each id has exactly one DICOM); it is used as
both ``image_id`` and ``patient_id``. The images were drawn from NIH ChestX-ray14, whose patient ids are not
published for this subset: patient-disjointness against NIH cannot be checked from the public labels.

Images: ``stage_2_train_images/<patientId>.dcm``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mlvicx_monai.data.datasets import (
    DatasetError,
    add_image,
    find_label_file,
    line_of,
    read_table,
    walk_files,
)

__all__ = ["NAME", "CLASS_NAMES", "LABEL_FILES", "read_labels", "find_images"]

logger = logging.getLogger(__name__)

NAME = "rsna"
CLASS_NAMES: tuple[str, ...] = ("Pneumonia",)
TRAIN_LABEL_FILES: tuple[str, ...] = ("stage_2_train_labels.csv", "kaggle_stage_2_train_labels.csv")
CLASS_INFO_FILES: tuple[str, ...] = ("stage_2_detailed_class_info.csv", "kaggle_stage_2_detailed_class_info.csv")
HEADER_FILES: tuple[str, ...] = (
    "stage_2_train_images_dicom_headers.csv", "kaggle_stage_2_train_images_dicom_headers.csv",
)
LABEL_FILES: tuple[str, ...] = (*TRAIN_LABEL_FILES, *CLASS_INFO_FILES, *HEADER_FILES)
DETAILED_CLASSES: dict[str, int] = {"Normal": 0, "No Lung Opacity / Not Normal": 0, "Lung Opacity": 1}
BOX_COLUMNS: tuple[str, ...] = ("x", "y", "width", "height")


def _first_bad(path: Path, mask: np.ndarray, message: str) -> None:
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        raise DatasetError(f"{path}: line {line_of(row)}: {message} ({int(mask.sum())} such rows)")


def read_labels(src: Path | str) -> pd.DataFrame:
    """Image-level RSNA labels (one row per ``patientId``).

    Returns:
        Columns ``image_id, patient_id, labels, view, boxes, n_boxes, detailed_class, patient_sex,
        patient_age``; ``df.attrs`` holds ``sources`` and ``report`` (rows read, merged).
    """
    src = Path(src)
    path = find_label_file(src, TRAIN_LABEL_FILES, what="RSNA label file")
    table = read_table(path, dtype={"patientId": str})
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ("patientId", *BOX_COLUMNS, "Target") if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing columns {missing} (found {list(table.columns)}); is this stage_2_train_labels.csv?"
        )
    ids = table["patientId"].astype(str).str.strip()
    _first_bad(path, (table["patientId"].isna() | (ids == "")).to_numpy(), "empty patientId")
    target = pd.to_numeric(table["Target"], errors="coerce")
    _first_bad(path, ~target.isin([0, 1]).to_numpy(), "column 'Target' is not 0 or 1")
    coords = table[list(BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    has_box = coords.notna().all(axis=1).to_numpy()
    partial = coords.notna().any(axis=1).to_numpy() & ~has_box
    _first_bad(path, partial, "box with some of x, y, width, height missing or not numeric")
    positive = (target == 1).to_numpy()
    _first_bad(path, positive & ~has_box, "Target 1 without a box")
    _first_bad(path, ~positive & has_box, "Target 0 with a box")
    non_positive = has_box & ((coords["width"] <= 0) | (coords["height"] <= 0)).to_numpy()
    _first_bad(path, non_positive, "box with width or height <= 0")

    rows = pd.DataFrame({"image_id": ids, "target": target.astype(int)})
    per_image = rows.groupby("image_id", sort=True)["target"].agg(["min", "max"])
    mixed = per_image.index[per_image["min"] != per_image["max"]]
    if len(mixed):
        row = int(np.flatnonzero(ids.isin(list(mixed[:1])).to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: image {mixed[0]!r} has rows with Target 0 and Target 1 "
            f"({len(mixed)} such images); a negative image has exactly one empty-box row"
        )
    negative_rows = rows[~positive].groupby("image_id").size()
    repeated = negative_rows[negative_rows > 1]
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    box_columns = (coords.loc[positive, c].astype(float).tolist() for c in BOX_COLUMNS)
    for image, *box in zip(ids[positive].tolist(), *box_columns):
        boxes.setdefault(image, []).append(tuple(box))
    index = per_image.index
    out = pd.DataFrame({
        "image_id": index.astype(str),
        "patient_id": index.astype(str),
        "labels": [(int(v),) for v in per_image["max"].to_numpy()],
        "view": None,
        "boxes": [boxes.get(i, []) for i in index],
    })
    out["n_boxes"] = out["boxes"].map(len).astype(int)
    sources = [path]

    folder = src if src.is_dir() else src.parent
    info_path = find_label_file(folder, CLASS_INFO_FILES, required=False)
    out["detailed_class"] = None
    if info_path is not None:
        info = read_table(info_path, dtype={"patientId": str, "class": str})
        info.columns = [str(c).strip() for c in info.columns]
        if not {"patientId", "class"} <= set(info.columns):
            raise DatasetError(f"{info_path}: expected columns patientId, class (found {list(info.columns)})")
        info["patientId"] = info["patientId"].str.strip()
        info["class"] = info["class"].str.strip()
        _first_bad(info_path, ~info["class"].isin(list(DETAILED_CLASSES)).to_numpy(),
                   f"column 'class' not one of {list(DETAILED_CLASSES)}")
        conflict = info.groupby("patientId")["class"].nunique()
        if (conflict > 1).any():
            raise DatasetError(f"{info_path}: patient {conflict[conflict > 1].index[0]!r} has several classes")
        detailed = info.drop_duplicates("patientId").set_index("patientId")["class"]
        out["detailed_class"] = out["image_id"].map(detailed).astype(object)
        disagree = out["detailed_class"].notna() & (
            out["detailed_class"].map(DETAILED_CLASSES) != out["labels"].map(lambda t: t[0])
        )
        if disagree.any():
            first = out.loc[disagree, "image_id"].iloc[0]
            raise DatasetError(
                f"{info_path}: class of {first!r} disagrees with Target in {path.name} ({int(disagree.sum())} images)"
            )
        sources.append(info_path)

    header_path = find_label_file(folder, HEADER_FILES, required=False)
    out["patient_sex"] = None
    out["patient_age"] = None
    if header_path is not None:
        headers = read_table(header_path, dtype={"PatientID": str, "ViewPosition": str, "PatientSex": str})
        if "PatientID" not in headers.columns or "ViewPosition" not in headers.columns:
            raise DatasetError(
                f"{header_path}: expected columns PatientID, ViewPosition (found {list(headers.columns)})"
            )
        headers = headers.drop_duplicates("PatientID").set_index("PatientID")
        out["view"] = out["image_id"].map(headers["ViewPosition"].str.strip()).astype(object)
        if "PatientSex" in headers:
            out["patient_sex"] = out["image_id"].map(headers["PatientSex"]).astype(object)
        if "PatientAge" in headers:
            out["patient_age"] = out["image_id"].map(headers["PatientAge"].astype(str)).astype(object)
        sources.append(header_path)
    out["view"] = out["view"].where(out["view"].notna(), None)

    report = {"rows": len(table), "images": len(out), "rows_merged": len(table) - len(out), "rows_dropped": 0,
              "negative_rows_repeated": int(repeated.sum() - len(repeated))}
    out.attrs.update(sources=sources, report=report)
    logger.info(
        "RSNA: %d rows -> %d images (%d box rows merged per image)", len(table), len(out), report["rows_merged"]
    )
    return out


def find_images(src: Path | str) -> dict[str, Path]:
    """``patientId`` -> path for ``stage_2_train_images/<patientId>.dcm`` (and ``stage_2_test_images/``)."""
    src = Path(src)
    found: dict[str, Path] = {}
    for folder in ("stage_2_train_images", "stage_2_test_images"):
        if (src / folder).is_dir():
            for path in walk_files(src / folder, [".dcm"]):
                add_image(found, path.stem, path)
    return dict(sorted(found.items()))
