"""NIH ChestX-ray14 (112,120 frontal PNGs of 30,805 patients, 14 findings).

Label file: ``Data_Entry_2017_v2020.csv`` (preferred) or ``Data_Entry_2017.csv``. Their header names two
bracketed columns whose names contain commas (``OriginalImage[Width,Height]``,
``OriginalImagePixelSpacing[x,y]``), each covering two data fields; the 2017 file also ends every row with
a trailing comma. The header is therefore parsed bracket-aware and the bracketed names expanded
(``OriginalImage[Width]``, ``OriginalImage[Height]``, ...).

``Finding Labels`` is pipe-separated, ``No Finding`` stands alone; any other string is an error naming the
file, line and value. ``patient_id`` is the published ``Patient ID`` (as a decimal string, e.g. ``"1"``).

Official split (column ``official_split``: ``train`` / ``val`` / ``test`` or None):

- ``train_val_list.txt`` / ``test_list.txt`` (the NIH release) when present;
- the commonly used partition of train_val into ``Xray14_train_official.txt`` (75,312) and
  ``Xray14_val_official.txt`` (11,212). Those lists carry 14 label columns in the ORIGINAL NIH order
  (``XRAY14_LIST_CLASS_ORDER``: Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia,
  Pneumothorax, Consolidation, Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia), not in the
  alphabetical order of ``CLASS_NAMES``; the order was determined by matching every list column against the
  Data_Entry labels (``infer_list_class_order``) and every row is cross-checked on reading;
- without ``test_list.txt`` the test split is every image in neither train nor val list.

Images: ``images/*.png`` (flat) or ``images_001/images/*.png`` ... (the release's archives unpacked).
"""

from __future__ import annotations

import logging
import re
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
    "LABEL_FILES",
    "XRAY14_LIST_CLASS_ORDER",
    "read_labels",
    "find_images",
    "infer_list_class_order",
    "read_label_list",
]

logger = logging.getLogger(__name__)

NAME = "nih"
#: The 14 findings in the order of the paper's Table I (alphabetical).
CLASS_NAMES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
NO_FINDING = "No Finding"
#: Column order of the 14 label columns in ``Xray14_{train,val}_official.txt`` (the original NIH order).
XRAY14_LIST_CLASS_ORDER: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
DATA_ENTRY_FILES: tuple[str, ...] = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
OFFICIAL_LIST_FILES: dict[str, str] = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
PARTITION_FILES: dict[str, str] = {"train": "Xray14_train_official.txt", "val": "Xray14_val_official.txt"}
LABEL_FILES: tuple[str, ...] = (
    *DATA_ENTRY_FILES, *OFFICIAL_LIST_FILES.values(), *PARTITION_FILES.values()
)
REQUIRED_COLUMNS: tuple[str, ...] = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "View Position")


def _header_names(path: Path) -> list[str]:
    """Column names of a Data_Entry file, bracketed multi-field names expanded (``A[x,y]`` -> ``A[x]``, ``A[y]``)."""
    import gzip
    import io
    import zipfile

    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8-sig") as handle:
            header = handle.readline()
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if not m.endswith("/")]
            if len(members) != 1:
                raise DatasetError(f"{path}: expected exactly one file in the zip archive, found {members}")
            with archive.open(members[0]) as raw:
                header = io.TextIOWrapper(raw, encoding="utf-8-sig").readline()
    else:
        with open(path, encoding="utf-8-sig") as handle:
            header = handle.readline()
    names: list[str] = []
    depth, current = 0, ""
    for char in header.strip():
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    expanded: list[str] = []
    for name in names:
        match = re.fullmatch(r"(.*)\[(.*)\]", name.strip())
        if match and "," in match.group(2):
            expanded.extend(f"{match.group(1)}[{part.strip()}]" for part in match.group(2).split(","))
        else:
            expanded.append(name.strip())
    # Unnamed columns (the 2017 file ends every line, header included, with a comma) keep a placeholder name.
    return [name or f"_unnamed_{i}" for i, name in enumerate(expanded)]


def _read_data_entry(path: Path) -> pd.DataFrame:
    names = _header_names(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DatasetError(
            f"{path}: header lacks the columns {missing} (found {names}); is this NIH's Data_Entry_2017 file?"
        )
    table = read_table(
        path, header=None, skiprows=1, names=names, index_col=False, dtype=str, keep_default_na=False,
        skip_blank_lines=True,
    )
    if table.empty:
        raise DatasetError(f"{path}: no data rows")
    return table


def _encode_labels(path: Path, findings: pd.Series) -> np.ndarray:
    """(n, 14) uint8 matrix in CLASS_NAMES order; every unknown or malformed label string is an error."""
    stripped = findings.str.strip()
    empty = np.flatnonzero((stripped == "").to_numpy())
    if empty.size:
        raise DatasetError(
            f"{path}: line {line_of(empty[0])}, column 'Finding Labels': empty label "
            f"({empty.size} rows); every image needs findings or 'No Finding'"
        )
    dummies = stripped.str.get_dummies(sep="|")
    dummies.columns = [c.strip() for c in dummies.columns]
    dummies = dummies.T.groupby(level=0).max().T  # ' Mass' and 'Mass' collapse
    unknown = sorted(set(dummies.columns) - set(CLASS_NAMES) - {NO_FINDING})
    if unknown:
        bad = unknown[0]
        row = int(np.flatnonzero(dummies[bad].to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}, column 'Finding Labels': unknown label {bad!r} in "
            f"{findings.iloc[row]!r}; expected '|'-separated names from {list(CLASS_NAMES)} or {NO_FINDING!r}"
            + (f" (other unknown labels: {unknown[1:]})" if len(unknown) > 1 else "")
        )
    matrix = dummies.reindex(columns=list(CLASS_NAMES), fill_value=0).to_numpy(dtype=np.uint8)
    if NO_FINDING in dummies.columns:
        clash = np.flatnonzero((dummies[NO_FINDING].to_numpy() > 0) & (matrix.sum(axis=1) > 0))
        if clash.size:
            raise DatasetError(
                f"{path}: line {line_of(clash[0])}, column 'Finding Labels': {NO_FINDING!r} combined with "
                f"findings in {findings.iloc[clash[0]]!r} ({clash.size} such rows); fix or remove the row"
            )
    return matrix


def read_label_list(path: Path) -> pd.DataFrame:
    """A whitespace-separated image list: ``image_id`` alone, or ``image_id`` + 14 label columns.

    Returns a frame with ``image_id`` and, for labelled lists, ``list_labels`` ((14,) uint8 arrays in the
    file's own column order).
    """
    raw = read_table(path, header=None, sep=r"\s+", dtype=str, keep_default_na=False)
    if raw.shape[1] not in (1, 15):
        raise DatasetError(
            f"{path}: {raw.shape[1]} columns; expected 1 (image names) or 15 (image name + 14 labels)"
        )
    out = pd.DataFrame({"image_id": raw[0].str.strip()})
    if raw.shape[1] == 15:
        values = raw.iloc[:, 1:]
        bad = ~values.isin(["0", "1"])
        if bad.to_numpy().any():
            row, col = map(int, np.argwhere(bad.to_numpy())[0])
            raise DatasetError(
                f"{path}: line {row + 1}, label column {col + 1}: {values.iat[row, col]!r} is not 0 or 1"
            )
        out["list_labels"] = list(values.to_numpy(dtype=np.uint8))
    duplicated = out["image_id"].duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DatasetError(f"{path}: line {row + 1}: image {out['image_id'].iloc[row]!r} listed twice")
    return out


def infer_list_class_order(list_labels: np.ndarray, entry_labels: np.ndarray,
                           class_names: tuple[str, ...] = CLASS_NAMES) -> tuple[str, ...]:
    """The class of each column of ``list_labels`` found by matching it against ``entry_labels`` columns.

    Raises:
        DatasetError: a column matches no class, or more than one, exactly.
    """
    order: list[str] = []
    for j in range(list_labels.shape[1]):
        hits = [class_names[k] for k in range(entry_labels.shape[1])
                if np.array_equal(list_labels[:, j], entry_labels[:, k])]
        if len(hits) != 1:
            raise DatasetError(f"list label column {j + 1} matches {len(hits)} Data_Entry classes ({hits}); expected 1")
        order.append(hits[0])
    return tuple(order)


def _member(values: pd.Series, allowed: set[str]) -> pd.Series:
    """Boolean mask ``values in allowed`` (a plain set lookup: much faster than Arrow-backed ``isin``)."""
    return pd.Series([v in allowed for v in values.to_numpy(dtype=object)], index=values.index, dtype=bool)


def _official_split(src: Path, labels: pd.DataFrame, partition_dir: Path | None) -> tuple[pd.Series, list[Path]]:
    """Per image ``train`` / ``val`` / ``test`` / None from whatever official lists exist."""
    ids = pd.Series(labels["image_id"].to_numpy(dtype=object), index=labels.index, dtype=object)
    split = pd.Series([None] * len(labels), index=labels.index, dtype=object)
    sources: list[Path] = []
    lists: dict[str, pd.DataFrame] = {}
    for key, name in OFFICIAL_LIST_FILES.items():
        path = find_label_file(src, [name], required=False)
        if path is not None:
            lists[key] = read_label_list(path)
            lists[key].attrs["path"] = path
            sources.append(path)
    partition: dict[str, pd.DataFrame] = {}
    for folder in [p for p in (partition_dir, src) if p is not None]:
        for key, name in PARTITION_FILES.items():
            if key in partition:
                continue
            path = find_label_file(folder, [name], required=False)
            if path is not None:
                partition[key] = read_label_list(path)
                partition[key].attrs["path"] = path
                sources.append(path)
    if partition and set(partition) != set(PARTITION_FILES):
        missing = sorted(set(PARTITION_FILES) - set(partition))
        raise DatasetError(
            f"{src}: found only part of the train/val partition; missing {[PARTITION_FILES[m] for m in missing]}"
        )

    known = set(ids)
    for key, table in [*lists.items(), *partition.items()]:
        unknown = table.loc[~_member(table["image_id"], known), "image_id"]
        if len(unknown):
            raise DatasetError(
                f"{table.attrs['path']}: {len(unknown)} images not in Data_Entry (first: {unknown.iloc[0]!r}); "
                "lists and Data_Entry must come from the same release"
            )

    entry_matrix = np.stack(labels["labels"].map(np.asarray).to_list()).astype(np.uint8)
    position = pd.Series(np.arange(len(labels)), index=ids)
    column_of = [CLASS_NAMES.index(name) for name in XRAY14_LIST_CLASS_ORDER]
    for key, table in partition.items():
        if "list_labels" not in table:
            continue
        listed = np.stack(table["list_labels"].to_list())
        expected = entry_matrix[position.loc[table["image_id"]].to_numpy()][:, column_of]
        rows, cols = np.nonzero(listed != expected)
        if rows.size:
            r, c = int(rows[0]), int(cols[0])
            raise DatasetError(
                f"{table.attrs['path']}: line {r + 1} ({table['image_id'].iloc[r]}), label column {c + 1} "
                f"({XRAY14_LIST_CLASS_ORDER[c]}) is {listed[r, c]} but Data_Entry says {expected[r, c]} "
                f"({rows.size} disagreements); the list's column order must be {list(XRAY14_LIST_CLASS_ORDER)}"
            )

    if "train_val" in lists:
        split[_member(ids, set(lists["train_val"]["image_id"]))] = "train_val"
    if "test" in lists:
        test_ids = set(lists["test"]["image_id"])
        both = _member(ids, test_ids) & (split == "train_val")
        if both.any():
            raise DatasetError(
                f"{lists['test'].attrs['path']}: {int(both.sum())} images also in train_val_list.txt "
                f"(first: {ids[both].iloc[0]!r})"
            )
        split[_member(ids, test_ids)] = "test"
    if partition:
        train_ids, val_ids = set(partition["train"]["image_id"]), set(partition["val"]["image_id"])
        overlap = sorted(train_ids & val_ids)
        if overlap:
            raise DatasetError(
                f"{PARTITION_FILES['train']} and {PARTITION_FILES['val']} share {len(overlap)} images "
                f"(first: {overlap[0]!r})"
            )
        in_partition = _member(ids, train_ids | val_ids)
        if "train_val" in lists:
            mismatch = in_partition != (split == "train_val")
            if mismatch.any():
                raise DatasetError(
                    f"{src}: the train/val partition differs from train_val_list.txt on {int(mismatch.sum())} images "
                    f"(first: {ids[mismatch].iloc[0]!r})"
                )
        if (in_partition & (split == "test")).any():
            raise DatasetError(f"{src}: images of the train/val partition are in test_list.txt")
        split[_member(ids, train_ids)] = "train"
        split[_member(ids, val_ids)] = "val"
        if "test" not in lists:
            split[~in_partition] = "test"
    return split, sources


def read_labels(src: Path | str, *, partition_dir: Path | str | None = None) -> pd.DataFrame:
    """Labels of NIH ChestX-ray14 from ``Data_Entry_2017*.csv`` (and the official split lists when present).

    Args:
        src: folder of the download (or of the reference label files), or the Data_Entry file itself.
        partition_dir: folder with ``Xray14_{train,val}_official.txt`` when not in ``src``.

    Returns:
        Columns ``image_id, patient_id, labels, view, follow_up, patient_age, patient_sex, official_split``.
    """
    src = Path(src)
    path = find_label_file(src, DATA_ENTRY_FILES, what="NIH Data_Entry file")
    table = _read_data_entry(path)
    ids = table["Image Index"].str.strip()
    if (ids == "").any():
        row = int(np.flatnonzero((ids == "").to_numpy())[0])
        raise DatasetError(f"{path}: line {line_of(row)}, column 'Image Index': empty image name")
    duplicated = ids.duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: image {ids.iloc[row]!r} listed twice; remove the duplicate row"
        )
    patient = table["Patient ID"].str.strip()
    bad_patient = ~patient.str.fullmatch(r"\d+")
    if bad_patient.any():
        row = int(np.flatnonzero(bad_patient.to_numpy())[0])
        raise DatasetError(f"{path}: line {line_of(row)}, column 'Patient ID': {patient.iloc[row]!r} is not a number")
    follow_up = table["Follow-up #"].str.strip()
    bad_follow = ~follow_up.str.fullmatch(r"\d+")
    if bad_follow.any():
        row = int(np.flatnonzero(bad_follow.to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}, column 'Follow-up #': {follow_up.iloc[row]!r} is not a number"
        )
    matrix = _encode_labels(path, table["Finding Labels"])
    view = table["View Position"].str.strip().replace("", None)
    out = pd.DataFrame({
        "image_id": ids.astype(str),
        "patient_id": patient.astype(int).astype(str),
        "labels": list(map(tuple, matrix.astype(int).tolist())),
        "view": view.astype(object).where(view.notna(), None),
        "follow_up": follow_up.astype(int),
        "patient_age": table["Patient Age"].str.strip() if "Patient Age" in table else None,
        "patient_sex": table["Patient Gender"].str.strip() if "Patient Gender" in table else None,
    })
    split, list_sources = _official_split(src if src.is_dir() else src.parent, out,
                                          Path(partition_dir) if partition_dir is not None else None)
    out["official_split"] = split
    out.attrs["sources"] = [path, *list_sources]
    out.attrs["report"] = {"rows": len(table), "images": len(out), "rows_merged": 0, "rows_dropped": 0}
    logger.info("NIH: %d rows read from %s, %d images, nothing merged or dropped", len(table), path, len(out))
    return out


def find_images(src: Path | str) -> dict[str, Path]:
    """``image_id`` (file name, e.g. ``00000001_000.png``) -> path, for ``images/`` or ``images_0xx/images/``."""
    src = Path(src)
    found: dict[str, Path] = {}
    for path in walk_files(src, [".png"]):
        if path.parent.name == "images":
            add_image(found, path.name, path)
    return dict(sorted(found.items()))
