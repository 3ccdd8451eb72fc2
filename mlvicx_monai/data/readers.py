"""The MONAI reader and loading transform for radiographs (DICOM and PNG).

``LoadImage(reader=CXRReader(), image_only=True, ensure_channel_first=True)`` gives a ``MetaTensor`` of shape
``(1, rows, columns)`` (never transposed, unlike MONAI's PILReader/PydicomReader), float32 in ``[0, 1]``, bone
bright; :class:`LoadCXRd` does the same for dictionary pipelines. Decoding is
:func:`~mlvicx_monai.data.images.load_image`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import DtypeLike, KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import ensure_tuple
from monai.utils.enums import MetaKeys, TraceKeys

from mlvicx_monai.data.dicom import CXRMeta
from mlvicx_monai.data.images import as_path, load_image, load_png, sniff_format

__all__ = ["CXRReader", "LoadCXRd", "load_image", "load_png", "sniff_format"]

# ---------------------------------------------------------------------------------------------------------

_SUFFIXES = (".dcm", ".dicom", ".dic", ".png")


class _CXRFile:
    """What :meth:`CXRReader.read` returns: the path only; decoding happens in :meth:`CXRReader.get_data`."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"_CXRFile({self.path!r})"


def _affine(meta: CXRMeta) -> np.ndarray:
    """3x3 affine of the (row, column) grid: diagonal spacing in mm when known, else identity. There is no
    patient orientation for a projection radiograph, so no axis flip (unlike MONAI's LPS->RAS readers)."""
    affine = np.eye(3, dtype=np.float64)
    if meta.pixel_spacing is not None:
        affine[0, 0], affine[1, 1] = meta.pixel_spacing
    return affine


def _monai_meta(meta: CXRMeta) -> dict[str, Any]:
    """MONAI meta dict: MONAI's keys + the CXRMeta fields, collatable by a DataLoader (None -> "none" as in
    MONAI's own readers, pixel_spacing NaN-filled when unknown, sizes as arrays)."""
    out: dict[str, Any] = {}
    for key, value in meta.to_dict().items():
        out[key] = str(TraceKeys.NONE) if value is None else value
    out["pixel_spacing"] = np.asarray(meta.pixel_spacing if meta.pixel_spacing is not None else (np.nan, np.nan))
    out["original_size"] = np.asarray(meta.original_size, dtype=np.int64)
    affine = _affine(meta)
    out[MetaKeys.AFFINE] = affine
    out[MetaKeys.ORIGINAL_AFFINE] = affine.copy()
    out[MetaKeys.SPATIAL_SHAPE] = np.asarray(meta.original_size, dtype=np.int64)
    out[MetaKeys.ORIGINAL_CHANNEL_DIM] = "no_channel"
    return out


class CXRReader(ImageReader):
    """MONAI image reader for radiograph DICOM and PNG files, through :func:`load_image`.

    Arrays keep DICOM order ``(rows, columns)`` (MONAI's PILReader/PydicomReader transpose to ``(x, y)``), are
    float32 in ``[0, 1]``, bone bright. Metadata: ``spatial_shape``, ``original_channel_dim="no_channel"``, a 3x3
    ``affine`` with the pixel spacing in mm on the diagonal (identity when unknown) and every
    :class:`~mlvicx_monai.data.dicom.CXRMeta` field.

    Decoding happens in :meth:`get_data`, so a rejected file raises
    :class:`~mlvicx_monai.data.dicom.CXRDecodeError` to the caller instead of making ``LoadImage`` silently fall
    back to another registered reader (which would return a transposed or un-windowed image).
    Several files are stacked on a new first (channel) axis; they must have the same shape.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every file is PNG or DICOM by content; files that cannot be opened are judged by name
        (``.dcm``, ``.dicom``, ``.dic``, ``.png``)."""
        names = ensure_tuple(filename)
        if not names:
            return False
        for name in names:
            if not isinstance(name, (str, os.PathLike)):
                return False
            p = os.fspath(name)
            if os.path.isfile(p):
                if sniff_format(p) == "unknown":
                    return False
            elif not p.lower().endswith(_SUFFIXES):
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> _CXRFile | list[_CXRFile]:
        """Return lightweight handles; ``kwargs`` are not supported (the decoding is fixed by the contract)."""
        if kwargs:
            raise TypeError(f"CXRReader.read takes no options, got {sorted(kwargs)}")
        names = ensure_tuple(data)
        if not names:
            raise ValueError("CXRReader.read needs at least one file name")
        handles = [_CXRFile(as_path(name)) for name in names]
        return handles if len(handles) > 1 else handles[0]

    def get_data(self, img: _CXRFile | Sequence[_CXRFile]) -> tuple[np.ndarray, dict]:
        """Decode: array ``(rows, columns)`` for one file, ``(n, rows, columns)`` for n files; the meta dict
        of the first file."""
        handles = list(img) if isinstance(img, (list, tuple)) else [img]
        if not handles or not all(isinstance(h, _CXRFile) for h in handles):
            raise TypeError("CXRReader.get_data expects the object(s) returned by CXRReader.read")
        arrays, metas = [], []
        for handle in handles:
            array, meta = load_image(handle.path)
            arrays.append(array)
            metas.append(meta)
        header = _monai_meta(metas[0])
        if len(arrays) == 1:
            return arrays[0], header
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack images of different shapes {sorted(shapes)} as channels")
        header[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        return np.stack(arrays, axis=0), header


class LoadCXRd(MapTransform):
    """Dictionary transform: load ``keys`` (file paths) through :class:`CXRReader`, channel first.

    Each key becomes a ``MetaTensor`` of shape ``(1, rows, columns)`` (float32 in [0, 1], bone bright) with the
    reader's metadata. A rejected file raises :class:`~mlvicx_monai.data.dicom.CXRDecodeError`.

    Args:
        keys: keys of the items holding file paths.
        dtype: output dtype (default float32).
        allow_missing_keys: do not raise when a key is absent.
    """

    def __init__(self, keys: KeysCollection, dtype: DtypeLike = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = CXRReader()
        self._loader = LoadImage(reader=self.reader, image_only=True, ensure_channel_first=True, dtype=dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            # The reader is passed at call time: LoadImage then uses it alone, with no fallback to others.
            d[key] = self._loader(d[key], reader=self.reader)
        return d
