"""Adapters for the four public chest X-ray datasets (NIH ChestX-ray14, VinDr-CXR, RSNA Pneumonia, SIIM-ACR).

Every adapter module exposes the same small interface:

- ``NAME``: registry name (``"nih"``, ``"vindr"``, ``"rsna"``, ``"siim"``).
- ``CLASS_NAMES``: the classification label set, in the order of the ``labels`` tuples.
- ``LABEL_FILES``: the official label file names it looks for (each also found as ``name.gz`` / ``name.zip``).
- ``read_labels(src, **options) -> pandas.DataFrame`` with at least the columns ``image_id`` (str),
  ``patient_id`` (str), ``labels`` (tuple of 0/1 ints in ``CLASS_NAMES`` order) and ``view`` (str or None),
  plus dataset extras. ``df.attrs["sources"]`` lists the label files read, ``df.attrs["report"]`` the row
  accounting (rows read, images, rows merged; no row is ever dropped silently).
- ``find_images(src) -> dict[str, Path]``: image id -> image path in the official download layout.

``get_adapter(name)`` returns the module. The helpers below (label-file lookup with transparent gzip/zip,
precise errors) are shared by the adapters.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import pandas as pd

__all__ = [
    "ADAPTER_NAMES",
    "DatasetError",
    "get_adapter",
    "find_label_file",
    "read_table",
    "walk_files",
]

ADAPTER_NAMES: tuple[str, ...] = ("nih", "vindr", "rsna", "siim")
COMPRESSED_SUFFIXES: tuple[str, ...] = ("", ".gz", ".zip")


class DatasetError(ValueError):
    """A label file or image tree that does not match the documented official layout."""


def get_adapter(name: str) -> ModuleType:
    """The adapter module registered under ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    if key not in ADAPTER_NAMES:
        raise KeyError(f"unknown dataset {name!r}; valid names: {', '.join(ADAPTER_NAMES)}")
    return importlib.import_module(f"{__name__}.{key}")


def find_label_file(src: Path | str, names: Sequence[str], *, required: bool = True,
                    what: str = "label file") -> Path | None:
    """First of ``names`` (each tried as ``name``, ``name.gz``, ``name.zip``) found under ``src``.

    ``src`` may also be the file itself. Names may contain sub-folders (``annotations/x.csv``); a bare name
    is also looked up in ``src``'s immediate sub-folders.

    Raises:
        DatasetError: ``required`` and none of the names exists.
    """
    src = Path(src)
    if src.is_file():
        base = src.name
        for name in names:
            if any(base == Path(name).name + suffix for suffix in COMPRESSED_SUFFIXES):
                return src
        if required:
            raise DatasetError(f"{src}: not one of the expected {what}s {list(names)} (optionally .gz/.zip)")
        return None
    if not src.is_dir():
        raise DatasetError(f"{src}: no such directory; pass the folder of the official download")
    subdirs = sorted(p for p in src.iterdir() if p.is_dir())
    for name in names:
        for folder in [src, *([] if "/" in name else subdirs)]:
            for suffix in COMPRESSED_SUFFIXES:
                candidate = folder / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
    if required:
        raise DatasetError(
            f"{src}: none of the {what}s {list(names)} (nor their .gz/.zip) found; "
            "pass the folder that holds the official label files"
        )
    return None


def read_table(path: Path, **kwargs) -> pd.DataFrame:
    """``pandas.read_csv`` with compression inferred (``.gz``, single-member ``.zip``) and a precise error."""
    try:
        return pd.read_csv(path, compression="infer", **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: cannot be parsed as CSV ({err}); is it the official file, intact?") from None


def walk_files(root: Path, suffixes: Iterable[str]) -> Iterable[Path]:
    """Files under ``root`` (recursively, sorted walk, symlinked folders followed) whose suffix matches."""
    wanted = tuple(s.lower() for s in suffixes)
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(wanted):
                yield Path(folder) / name


def add_image(found: dict[str, Path], image_id: str, path: Path) -> None:
    """Record ``image_id -> path``; two files for one image id are an error (ambiguous download)."""
    previous = found.get(image_id)
    if previous is not None and previous != path:
        raise DatasetError(
            f"image id {image_id!r} found twice: {previous} and {path}; remove the duplicate copy"
        )
    found[image_id] = path


def line_of(row_index: int) -> int:
    """1-based line number in a CSV with one header line of the 0-based data row ``row_index``."""
    return int(row_index) + 2
