"""SIIM-ACR Pneumothorax Segmentation (12,047 training DICOMs with RLE masks).

Label file: ``train-rle.csv`` (the reference copy is ``siim-pneumothorax-train-rle.csv``), header
``ImageId, EncodedPixels`` (with or without the leading space). ``-1`` marks an image without
pneumothorax. An image with several pneumothorax regions has several rows: all are kept (``rles``, a tuple
of the RLE strings in file order) and their union is the mask (``mlvicx_monai.data.rle.rle_merge``). Every
RLE string is validated with ``rle_decode`` (a bad one is reported with file, line and reason).

An image listed both as ``-1`` and with a mask is contradictory: by default an error (``on_conflict=
"error"``); ``on_conflict="positive"`` keeps the masks and ignores the ``-1`` rows (counted in the report).
Repeated ``-1`` rows of one image are merged and counted.

``CLASS_NAMES = ("Pneumothorax",)``; ``positive`` is the image-level flag.

Patient id: ``train-rle.csv`` carries no patient id, so ``patient_id`` is the image id (patient := image).

Images: ``dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm`` (and ``dicom-images-test``), found by
walking; the file stem is the ``ImageId``.
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
from mlvicx_monai.data.rle import RLEError, is_empty_rle, rle_decode

__all__ = ["NAME", "CLASS_NAMES", "LABEL_FILES", "read_labels", "find_images"]

logger = logging.getLogger(__name__)

NAME = "siim"
CLASS_NAMES: tuple[str, ...] = ("Pneumothorax",)
LABEL_FILES: tuple[str, ...] = ("train-rle.csv", "siim-pneumothorax-train-rle.csv")
CONFLICT_RULES: tuple[str, ...] = ("error", "positive")


def read_labels(src: Path | str, *, on_conflict: str = "error", validate_rle: bool = True,
                height: int = 1024, width: int = 1024) -> pd.DataFrame:
    """Image-level SIIM-ACR labels, all mask rows of an image kept together.

    Args:
        src: folder of the download, or ``train-rle.csv`` itself.
        on_conflict: what to do with an image listed both as ``-1`` and with a mask (``error`` / ``positive``).
        validate_rle: decode every RLE string at ``height`` x ``width`` to check it (about 1 ms per mask).

    Returns:
        Columns ``image_id, patient_id, labels, view, positive, n_masks, rles``; ``df.attrs`` holds
        ``sources`` and ``report`` (rows, images, rows merged, conflicts resolved).
    """
    if on_conflict not in CONFLICT_RULES:
        raise ValueError(f"unknown on_conflict {on_conflict!r}; valid: {', '.join(CONFLICT_RULES)}")
    src = Path(src)
    path = find_label_file(src, LABEL_FILES, what="SIIM RLE file")
    table = read_table(path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    if list(table.columns[:2]) != ["ImageId", "EncodedPixels"] or table.shape[1] != 2:
        raise DatasetError(f"{path}: header {list(table.columns)}; expected 'ImageId, EncodedPixels'")
    ids = table["ImageId"].str.strip()
    rles = table["EncodedPixels"].str.strip()
    empty_id = (ids == "").to_numpy()
    if empty_id.any():
        row = int(np.flatnonzero(empty_id)[0])
        raise DatasetError(f"{path}: line {line_of(row)}, column 'ImageId': empty image id")
    blank = (rles == "").to_numpy()
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}, column 'EncodedPixels': empty; write -1 for an image without pneumothorax"
        )
    negative = np.array([is_empty_rle(v) for v in rles.tolist()], dtype=bool)
    if validate_rle:
        for row in np.flatnonzero(~negative).tolist():
            try:
                rle_decode(rles.iloc[row], height, width)
            except RLEError as err:
                raise DatasetError(
                    f"{path}: line {line_of(row)} (ImageId {ids.iloc[row]}), column 'EncodedPixels': bad RLE: {err}"
                ) from None

    rows = pd.DataFrame({"image_id": ids, "negative": negative, "rle": rles})
    per_image = rows.groupby("image_id", sort=True)["negative"].agg(["size", "sum"])
    conflicts = per_image.index[(per_image["sum"] > 0) & (per_image["sum"] < per_image["size"])]
    if len(conflicts) and on_conflict == "error":
        row = int(np.flatnonzero(ids.isin(list(conflicts[:1])).to_numpy())[0])
        raise DatasetError(
            f"{path}: line {line_of(row)}: image {conflicts[0]!r} is listed both as -1 (no pneumothorax) and with "
            f"a mask ({len(conflicts)} such images); fix the file or pass on_conflict='positive' to keep the masks"
        )
    masks = rows[~rows["negative"]].groupby("image_id", sort=True)["rle"].agg(tuple)
    index = per_image.index
    out = pd.DataFrame({"image_id": index.astype(str), "patient_id": index.astype(str)})
    out["rles"] = [masks.get(i, ()) for i in index]
    out["n_masks"] = out["rles"].map(len).astype(int)
    out["positive"] = out["n_masks"] > 0
    out["labels"] = [(int(p),) for p in out["positive"].to_numpy()]
    out["view"] = None
    out = out[["image_id", "patient_id", "labels", "view", "positive", "n_masks", "rles"]]
    multi = int((out["n_masks"] > 1).sum())
    report = {
        "rows": len(table), "images": len(out), "rows_merged": len(table) - len(out), "rows_dropped": 0,
        "images_with_several_masks": multi,
        "repeated_negative_rows": int(
            (per_image["sum"] - 1).clip(lower=0)[per_image["sum"] == per_image["size"]].sum()
        ),
        "conflicting_images": len(conflicts),
        "conflicting_negative_rows_ignored": int(per_image.loc[conflicts, "sum"].sum()) if len(conflicts) else 0,
    }
    out.attrs.update(sources=[path], report=report)
    logger.info("SIIM: %d rows -> %d images (%d with several masks merged, %d conflicts)",
                len(table), len(out), multi, len(conflicts))
    return out


def find_images(src: Path | str) -> dict[str, Path]:
    """``ImageId`` (file stem = SOPInstanceUID) -> path, walking ``dicom-images-train`` / ``dicom-images-test``."""
    src = Path(src)
    found: dict[str, Path] = {}
    for folder in ("dicom-images-train", "dicom-images-test"):
        if (src / folder).is_dir():
            for path in walk_files(src / folder, [".dcm"]):
                add_image(found, path.stem, path)
    return dict(sorted(found.items()))
