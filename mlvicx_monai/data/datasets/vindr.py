"""VinDr-CXR (VinBigData chest X-ray abnormalities), DICOM images ``train/<image_id>.dicom`` (and ``test/``).

Two label releases are read:

- Competition ``train.csv`` (Kaggle "VinBigData Chest X-ray Abnormalities Detection"; the reference copy is
  named ``vinbigdata-train.csv``): one row per (image, reader, finding box), columns
  ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max``; 15,000 training images, each read
  by 3 of 17 radiologists; 14 findings (class ids 0-13) and ``No finding`` (14, no box).
- PhysioNet release ``annotations/image_labels_train.csv`` (one row per image and reader, 0/1 columns for
  22 local and 6 global labels) and ``annotations/image_labels_test.csv`` (one 5-reader consensus row per
  image). The train file says ``Other diseases``, the test file ``Other disease``: both are normalised to
  ``Other diseases``. Boxes come from ``annotations/annotations_{train,test}.csv`` when present.

Classification label set (``label_set``):

- ``"findings14"`` (default, ``CLASS_NAMES``): the 14 competition findings Aortic enlargement, Atelectasis,
  Calcification, Cardiomegaly, Consolidation, ILD, Infiltration, Lung Opacity, Nodule/Mass, Other lesion,
  Pleural effusion, Pleural thickening, Pneumothorax, Pulmonary fibrosis (class ids 0-13, in that order).
  ``No finding`` is not a class: it is the all-zero label vector. This is the label set of the Kaggle
  release ("Vinbig-CXR" in the paper), and the only one both releases share.
- ``"physionet28"`` (``PHYSIONET_CLASS_NAMES``, PhysioNet release only): the 22 local + 6 global labels,
  ``No finding`` excluded (27 classes).

Reader aggregation (``aggregation``), per image and class over the readers of that image:

- ``"majority"`` (default): positive when more than half of the readers mark it (2 of 3). Most single-reader
  marks in VinDr-CXR are not confirmed by a second reader (e.g. Atelectasis: 186 images by "any", 62 by
  "majority"); the majority vote suppresses that reader noise and is the closest rule to the
  consensus the dataset authors used as reference standard for their test labels.
- ``"any"``: positive when at least one reader marks it (most sensitive, noisiest).
- ``"all"``: positive only when every reader marks it.

The per-class reader vote counts are kept (``votes``, ``n_readers``), so any rule can be re-applied later;
``boxes`` keeps, per class, the list of every reader's boxes ``(rad_id, x_min, y_min, x_max, y_max)``.
The consensus rows of ``image_labels_test.csv`` count as one reader (``rad_id`` ``"consensus"``).

Patient id: VinDr-CXR publishes no patient identifier, so ``patient_id`` is the image id (patient := image).
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

__all__ = [
    "NAME",
    "CLASS_NAMES",
    "PHYSIONET_CLASS_NAMES",
    "LABEL_FILES",
    "AGGREGATIONS",
    "DEFAULT_AGGREGATION",
    "aggregate_votes",
    "class_names_for",
    "read_labels",
    "find_images",
]

logger = logging.getLogger(__name__)

NAME = "vindr"
CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening",
    "Pneumothorax", "Pulmonary fibrosis",
)
NO_FINDING = "No finding"
NO_FINDING_CLASS_ID = 14
PHYSIONET_CLASS_NAMES: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation",
    "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst",
    "Mediastinal shift", "Nodule/Mass", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis", "Rib fracture", "Other lesion",
    "COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases",
)
LABEL_NAME_ALIASES: dict[str, str] = {"Other disease": "Other diseases"}
COMPETITION_FILES: tuple[str, ...] = ("train.csv", "vinbigdata-train.csv")
PHYSIONET_FILES: dict[str, str] = {
    "train": "annotations/image_labels_train.csv",
    "test": "annotations/image_labels_test.csv",
}
PHYSIONET_BOX_FILES: dict[str, str] = {
    "train": "annotations/annotations_train.csv",
    "test": "annotations/annotations_test.csv",
}
LABEL_FILES: tuple[str, ...] = (*COMPETITION_FILES, *PHYSIONET_FILES.values(), *PHYSIONET_BOX_FILES.values())
AGGREGATIONS: tuple[str, ...] = ("majority", "any", "all")
DEFAULT_AGGREGATION = "majority"
LABEL_SETS: tuple[str, ...] = ("findings14", "physionet28")
BOX_COLUMNS: tuple[str, ...] = ("x_min", "y_min", "x_max", "y_max")
CONSENSUS_READER = "consensus"


def class_names_for(label_set: str = "findings14") -> tuple[str, ...]:
    """The class names of a label set (``findings14`` or ``physionet28``)."""
    if label_set == "findings14":
        return CLASS_NAMES
    if label_set == "physionet28":
        return PHYSIONET_CLASS_NAMES
    raise ValueError(f"unknown VinDr label_set {label_set!r}; valid: {', '.join(LABEL_SETS)}")


def aggregate_votes(votes: np.ndarray, n_readers: np.ndarray, aggregation: str = DEFAULT_AGGREGATION) -> np.ndarray:
    """0/1 labels from per-class reader votes ``(n, C)`` and reader counts ``(n,)`` under a stated rule."""
    votes = np.asarray(votes)
    readers = np.asarray(n_readers).reshape(-1, 1)
    if aggregation == "any":
        positive = votes >= 1
    elif aggregation == "majority":
        positive = 2 * votes > readers
    elif aggregation == "all":
        positive = (votes >= readers) & (readers > 0)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    return positive.astype(np.uint8)


def _check_columns(path: Path, table: pd.DataFrame, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing columns {missing} (found {list(table.columns)}); is this the official file?"
        )


def _boxes_by_image(rows: pd.DataFrame, path: Path) -> dict[str, dict[str, list[tuple]]]:
    """``image -> class -> [(rad_id, x_min, y_min, x_max, y_max), ...]`` for the finding rows of a box table."""
    coords = rows[list(BOX_COLUMNS)]
    missing = coords.isna().any(axis=1).to_numpy()
    if missing.any():
        row = int(rows.index[np.flatnonzero(missing)[0]])
        raise DatasetError(
            f"{path}: line {line_of(row)}: finding {rows.loc[row, 'class_name']!r} without a complete box "
            f"({int(missing.sum())} such rows); every finding row needs x_min, y_min, x_max, y_max"
        )
    inverted = ((coords["x_max"] < coords["x_min"]) | (coords["y_max"] < coords["y_min"])).to_numpy()
    if inverted.any():
        row = int(rows.index[np.flatnonzero(inverted)[0]])
        raise DatasetError(f"{path}: line {line_of(row)}: box with x_max < x_min or y_max < y_min")
    boxes: dict[str, dict[str, list[tuple]]] = {}
    records = zip(rows["image_id"].tolist(), rows["class_name"].tolist(), rows["rad_id"].tolist(),
                  *(coords[c].astype(float).tolist() for c in BOX_COLUMNS))
    for image, name, rad, x0, y0, x1, y1 in records:
        boxes.setdefault(image, {}).setdefault(name, []).append((rad, x0, y0, x1, y1))
    return boxes


def _read_competition(path: Path) -> tuple[pd.DataFrame, dict]:
    table = read_table(path, dtype={"image_id": str, "class_name": str, "rad_id": str})
    _check_columns(path, table, ("image_id", "class_name", "class_id", "rad_id", *BOX_COLUMNS))
    for column in ("image_id", "class_name", "rad_id"):
        empty = table[column].isna() | (table[column].astype(str).str.strip() == "")
        if empty.any():
            row = int(np.flatnonzero(empty.to_numpy())[0])
            raise DatasetError(f"{path}: line {line_of(row)}, column {column!r}: empty value")
        table[column] = table[column].astype(str).str.strip()
    expected = {name: i for i, name in enumerate(CLASS_NAMES)} | {NO_FINDING: NO_FINDING_CLASS_ID}
    unknown = ~table["class_name"].isin(list(expected))
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}, column 'class_name': unknown class {table['class_name'].iloc[row]!r}; "
            f"expected one of {[*CLASS_NAMES, NO_FINDING]}"
        )
    class_id = pd.to_numeric(table["class_id"], errors="coerce")
    wrong_id = (class_id != table["class_name"].map(expected)).to_numpy()
    if wrong_id.any():
        row = int(np.flatnonzero(wrong_id)[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: class_id {str(table['class_id'].iloc[row])!r} does not match class_name "
            f"{table['class_name'].iloc[row]!r} (expected {expected[table['class_name'].iloc[row]]})"
        )
    is_none = (table["class_name"] == NO_FINDING).to_numpy()
    # A reader who says "No finding" and marks a finding on the same image contradicts themself.
    reader_key = (table["image_id"] + "\x00" + table["rad_id"]).to_numpy(dtype=object)
    none_readers = set(reader_key[is_none])
    clash = (~is_none) & np.array([key in none_readers for key in reader_key], dtype=bool)
    if clash.any():
        row = int(np.flatnonzero(clash)[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: reader {table['rad_id'].iloc[row]!r} marks "
            f"{table['class_name'].iloc[row]!r} on image {table['image_id'].iloc[row]!r} but also 'No finding' "
            f"({int(clash.sum())} such rows); correct the reader's annotations"
        )
    findings = table[~is_none]
    boxes = _boxes_by_image(findings, path)
    votes = (
        findings.drop_duplicates(["image_id", "rad_id", "class_name"])
        .groupby(["image_id", "class_name"]).size().unstack(fill_value=0)
    )
    readers = table.groupby("image_id", sort=True)["rad_id"].agg(lambda s: tuple(sorted(set(s))))
    votes = votes.reindex(index=readers.index, columns=list(CLASS_NAMES), fill_value=0)
    frame = pd.DataFrame({
        "image_id": readers.index.astype(str),
        "reader_ids": readers.to_list(),
        "votes": list(map(tuple, votes.to_numpy(dtype=int).tolist())),
        "official_split": None,
        "boxes": [boxes.get(i, {}) for i in readers.index],
    })
    report = {"rows": len(table), "images": len(frame), "rows_merged": len(table) - len(frame), "rows_dropped": 0}
    return frame, report


def _read_physionet_file(path: Path, split: str, label_set: str) -> pd.DataFrame:
    table = read_table(path, dtype={"image_id": str})
    table.columns = [LABEL_NAME_ALIASES.get(str(c).strip(), str(c).strip()) for c in table.columns]
    rad_column = next((c for c in table.columns if c.lower() == "rad_id"), None)
    _check_columns(path, table, ("image_id",))
    label_columns = [c for c in table.columns if c not in ("image_id", rad_column)]
    known = set(PHYSIONET_CLASS_NAMES) | {NO_FINDING}
    unknown = [c for c in label_columns if c not in known]
    if unknown:
        raise DatasetError(f"{path}: unknown label columns {unknown}; expected {sorted(known)}")
    missing = [c for c in PHYSIONET_CLASS_NAMES if c not in label_columns]
    if missing:
        raise DatasetError(
            f"{path}: missing label columns {missing}; is this VinDr-CXR 1.0.0 image_labels_{split}.csv?"
        )
    values = table[list(PHYSIONET_CLASS_NAMES)].apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([0, 1]).to_numpy()
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}, column {PHYSIONET_CLASS_NAMES[col]!r}: "
            f"{table[PHYSIONET_CLASS_NAMES[col]].iloc[row]!r} is not 0 or 1"
        )
    if NO_FINDING in table.columns:
        none = pd.to_numeric(table[NO_FINDING], errors="coerce").to_numpy()
        clash = (none == 1) & (values.to_numpy().sum(axis=1) > 0)
        if clash.any():
            row = int(np.flatnonzero(clash)[0])
            raise DatasetError(f"{path}: line {line_of(row)}: 'No finding' together with positive labels")
    out = pd.DataFrame({"image_id": table["image_id"].astype(str).str.strip()})
    out["rad_id"] = table[rad_column].astype(str).str.strip() if rad_column else CONSENSUS_READER
    if out.duplicated(["image_id", "rad_id"]).any():
        row = int(np.flatnonzero(out.duplicated(["image_id", "rad_id"]).to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: image {out['image_id'].iloc[row]!r} rated twice by the same reader"
        )
    names = class_names_for(label_set)
    for name in names:
        out[name] = values[name].astype(int).to_numpy()
    out["split"] = split
    return out


def _read_physionet(src: Path, label_set: str) -> tuple[pd.DataFrame, dict, list[Path]]:
    parts, sources = [], []
    for split, name in PHYSIONET_FILES.items():
        path = find_label_file(src, [name, Path(name).name], required=False)
        if path is not None:
            parts.append(_read_physionet_file(path, split, label_set))
            sources.append(path)
    rows = pd.concat(parts, ignore_index=True)
    twice = rows.groupby("image_id")["split"].nunique()
    if (twice > 1).any():
        raise DatasetError(f"{src}: {int((twice > 1).sum())} images in both the train and the test label file "
                           f"(first: {twice[twice > 1].index[0]!r})")
    names = class_names_for(label_set)
    grouped = rows.groupby("image_id", sort=True)
    votes = grouped[list(names)].sum()
    boxes: dict[str, dict[str, list[tuple]]] = {}
    for split, name in PHYSIONET_BOX_FILES.items():
        path = find_label_file(src, [name, Path(name).name], required=False)
        if path is None:
            continue
        table = read_table(path, dtype={"image_id": str, "rad_id": str, "class_name": str})
        table.columns = [str(c).strip() for c in table.columns]
        _check_columns(path, table, ("image_id", "rad_id", "class_name", *BOX_COLUMNS))
        table["class_name"] = table["class_name"].str.strip().replace(LABEL_NAME_ALIASES)
        findings = table[table["class_name"] != NO_FINDING]
        for image, per_class in _boxes_by_image(findings, path).items():
            boxes.setdefault(image, {}).update(per_class)
        sources.append(path)
    frame = pd.DataFrame({
        "image_id": votes.index.astype(str),
        "reader_ids": grouped["rad_id"].agg(lambda s: tuple(sorted(set(s)))).to_list(),
        "votes": list(map(tuple, votes.to_numpy(dtype=int).tolist())),
        "official_split": grouped["split"].first().to_list(),
        "boxes": [boxes.get(i, {}) for i in votes.index],
    })
    report = {"rows": len(rows), "images": len(frame), "rows_merged": len(rows) - len(frame), "rows_dropped": 0}
    return frame, report, sources


def read_labels(src: Path | str, *, aggregation: str = DEFAULT_AGGREGATION, label_set: str = "findings14",
                release: str = "auto") -> pd.DataFrame:
    """Image-level VinDr-CXR labels, readers aggregated by ``aggregation`` (see the module docstring).

    Args:
        src: folder of the download (or the competition ``train.csv`` itself).
        aggregation: ``majority`` (default), ``any`` or ``all``.
        label_set: ``findings14`` (default) or ``physionet28`` (PhysioNet release only).
        release: ``auto`` (competition file if present, else PhysioNet), ``competition`` or ``physionet``.

    Returns:
        Columns ``image_id, patient_id, labels, view, n_readers, reader_ids, votes, boxes, official_split``;
        ``df.attrs`` holds ``class_names``, ``aggregation``, ``release``, ``sources`` and ``report``.
    """
    src = Path(src)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
    names = class_names_for(label_set)
    if release not in ("auto", "competition", "physionet"):
        raise ValueError(f"unknown VinDr release {release!r}; valid: auto, competition, physionet")
    competition = None if release == "physionet" else find_label_file(src, COMPETITION_FILES, required=False)
    if competition is not None:
        if label_set != "findings14":
            raise ValueError("the competition train.csv carries only the 14 findings: use label_set='findings14'")
        frame, report = _read_competition(competition)
        sources = [competition]
        used = "competition"
    elif release == "competition":
        raise DatasetError(f"{src}: no competition label file {list(COMPETITION_FILES)} (or .gz/.zip) found")
    else:
        candidates = [*PHYSIONET_FILES.values(), *(Path(n).name for n in PHYSIONET_FILES.values())]
        if src.is_file() or find_label_file(src, candidates, required=False) is None:
            raise DatasetError(
                f"{src}: no VinDr label file found; expected the competition {list(COMPETITION_FILES)} or the "
                f"PhysioNet {list(PHYSIONET_FILES.values())} (optionally .gz/.zip)"
            )
        frame, report, sources = _read_physionet(src, label_set)
        used = "physionet"
    n_readers = frame["reader_ids"].map(len).to_numpy()
    votes = np.array(frame["votes"].to_list(), dtype=int).reshape(len(frame), len(names))
    labels = aggregate_votes(votes, n_readers, aggregation)
    out = pd.DataFrame({
        "image_id": frame["image_id"],
        "patient_id": frame["image_id"],
        "labels": list(map(tuple, labels.astype(int).tolist())),
        "view": None,
        "n_readers": n_readers.astype(int),
        "reader_ids": frame["reader_ids"],
        "votes": frame["votes"],
        "boxes": frame["boxes"],
        "official_split": frame["official_split"],
    })
    out.attrs.update(class_names=names, aggregation=aggregation, release=used, label_set=label_set,
                     sources=sources, report=report)
    logger.info("VinDr (%s): %d rows -> %d images (%d rows merged across readers/boxes), aggregation=%s",
                used, report["rows"], report["images"], report["rows_merged"], aggregation)
    return out


def find_images(src: Path | str) -> dict[str, Path]:
    """``image_id`` (file stem) -> path for ``train/*.dicom`` and ``test/*.dicom`` (``.dcm`` accepted)."""
    src = Path(src)
    found: dict[str, Path] = {}
    for folder in ("train", "test"):
        if (src / folder).is_dir():
            for path in walk_files(src / folder, [".dicom", ".dcm"]):
                add_image(found, path.stem, path)
    return dict(sorted(found.items()))
