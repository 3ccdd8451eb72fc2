"""PNG decoding on the DICOM contract, content-based dispatch, and the MONAI reader / loading transform.

Every loader returns ``(image, meta)``: ``image`` float32 in ``[0, 1]``, shape ``(rows, columns)`` (row 0 at the
top; never transposed, unlike MONAI's PILReader/PydicomReader), bone bright; ``meta`` a
:class:`~mlvicx_monai.data.dicom.CXRMeta`. Failures raise :class:`~mlvicx_monai.data.dicom.CXRDecodeError`.

MONAI: ``LoadImage(reader=CXRReader(), image_only=True, ensure_channel_first=True)`` gives a ``MetaTensor`` of
shape ``(1, rows, columns)``; :class:`LoadCXRd` does the same for dictionary pipelines.
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
from PIL import Image, UnidentifiedImageError

from mlvicx_monai.data.dicom import CXRDecodeError, CXRMeta, is_dicom, load_cxr

__all__ = ["CXRReader", "LoadCXRd", "load_image", "load_png", "sniff_format"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _as_path(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def sniff_format(path: str | os.PathLike) -> str:
    """``"png"``, ``"dicom"`` or ``"unknown"`` from the file's first bytes (never from its name)."""
    p = _as_path(path)
    try:
        with open(p, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
    except OSError:
        return "unknown"
    if head == PNG_SIGNATURE:
        return "png"
    return "dicom" if is_dicom(p) else "unknown"


def _gray_channels(arr: np.ndarray, path: str, mode: str) -> np.ndarray:
    """One channel of an RGB(A) array whose colour channels are identical; alpha is ignored."""
    colour = arr[..., :3]
    if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
        raise CXRDecodeError(
            path,
            "colour",
            f"a colour PNG (mode {mode}, the R, G and B channels differ): not a grayscale radiograph; exclude it",
        )
    return colour[..., 0]


def load_png(path: str | os.PathLike) -> tuple[np.ndarray, CXRMeta]:
    """Decode a radiograph PNG like a DICOM image.

    * 8-bit grayscale: ``value / 255`` (NIH ChestX-ray14 images are already display-windowed), ``voi="png8"``;
    * 16-bit grayscale: treated like a DICOM without VOI information: min-max to ``[0, 1]``, ``voi="minmax"``;
    * RGB/RGBA/LA/palette whose colour channels are equal: one channel (alpha ignored);
      a truly colour PNG raises ``CXRDecodeError(code="colour")``.

    Returns:
        ``(image, meta)``: float32 ``(rows, columns)`` in ``[0, 1]``; ``meta.photometric_interpretation`` is
        ``MONOCHROME2`` (PNG has no inversion flag).

    Raises:
        CXRDecodeError: ``io_error``, ``not_dicom`` (not a PNG), ``truncated``, ``decode_failed``, ``colour``,
            ``empty_image`` (constant image).
    """
    p = _as_path(path)
    try:
        with open(p, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
    except FileNotFoundError:
        raise CXRDecodeError(p, "io_error", "the file does not exist") from None
    except IsADirectoryError:
        raise CXRDecodeError(p, "io_error", "this is a folder, not a file") from None
    except OSError as err:
        raise CXRDecodeError(p, "io_error", f"the file cannot be read: {err.strerror or err}") from None
    if head != PNG_SIGNATURE:
        raise CXRDecodeError(p, "not_dicom", "the file does not start with the PNG signature; it is not a PNG image")
    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
            if mode == "P":  # palette: expand, then require a gray palette
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode == "1":
                img = img.convert("L")
            arr = np.asarray(img)
    except OSError as err:  # PIL reports cut files as "image file is truncated" / "unexpected end of file"
        message = str(err)
        if "truncated" in message or "end of file" in message.lower():
            raise CXRDecodeError(p, "truncated", f"the PNG data ends early ({message}); re-copy the file") from None
        raise CXRDecodeError(p, "decode_failed", f"Pillow cannot decode the PNG ({message})") from None
    except (UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise CXRDecodeError(p, "decode_failed", f"Pillow cannot decode the PNG ({err})") from None

    if arr.ndim == 3 and arr.shape[-1] == 2:  # LA: gray + alpha
        arr = arr[..., 0]
    elif arr.ndim == 3:
        arr = _gray_channels(arr, p, mode)
    if arr.ndim != 2:
        raise CXRDecodeError(p, "decode_failed", f"unexpected PNG array shape {arr.shape} (mode {mode})")

    if arr.dtype == np.uint8:
        bits, voi = 8, "png8"
        if arr.min() == arr.max():
            raise CXRDecodeError(
                p, "empty_image", f"every pixel has the value {int(arr.min())}: the image is blank; exclude it"
            )
        image = arr.astype(np.float32) / np.float32(255.0)
    else:  # 16-bit grayscale ("I;16*" or "I"): no display window in PNG, so min-max like a DICOM without VOI
        bits, voi = 16, "minmax"
        values = arr.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        if not high > low:
            raise CXRDecodeError(
                p, "empty_image", f"every pixel has the value {low:g}: the image is blank; exclude it"
            )
        image = ((values - low) / (high - low)).astype(np.float32)
    meta = CXRMeta(
        source_format="png",
        modality=None,
        view_position=None,
        body_part=None,
        photometric_interpretation="MONOCHROME2",
        pixel_spacing=None,
        pixel_spacing_source=None,
        transfer_syntax=None,
        original_size=(int(image.shape[0]), int(image.shape[1])),
        bits_stored=bits,
        sop_class_uid=None,
        voi=voi,
    )
    return image, meta


def load_image(path: str | os.PathLike) -> tuple[np.ndarray, CXRMeta]:
    """Load a radiograph from a PNG or DICOM file, chosen by the file's magic bytes (not its extension).

    Raises:
        CXRDecodeError: as :func:`load_png` / :func:`~mlvicx_monai.data.dicom.load_cxr`; ``not_dicom`` for any
            other content.
    """
    p = _as_path(path)
    kind = sniff_format(p)
    if kind == "png":
        return load_png(p)
    # DICOM and everything else go through read_dicom, which names what a foreign file looks like.
    return load_cxr(p)


# ---------------------------------------------------------------------------------------------------------
# MONAI
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
        handles = [_CXRFile(_as_path(name)) for name in names]
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
