"""PNG decoding on the DICOM contract and content-based dispatch (no torch or MONAI import).

Every loader returns ``(image, meta)``: ``image`` float32 in ``[0, 1]``, shape ``(rows, columns)`` (row 0 at the
top; never transposed, unlike MONAI's PILReader/PydicomReader), bone bright; ``meta`` a
:class:`~mlvicx_monai.data.dicom.CXRMeta`. Failures raise :class:`~mlvicx_monai.data.dicom.CXRDecodeError`.

This module stays free of torch and MONAI so that ingestion worker processes start in a fraction of a second
(importing MONAI takes 6-12 s on a 2-core machine); the MONAI reader lives in :mod:`mlvicx_monai.data.readers`.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlvicx_monai.data.dicom import CXRDecodeError, CXRMeta, _gather, _stored_domain, is_dicom, load_cxr

__all__ = ["PNG_SIGNATURE", "as_path", "load_image", "load_png", "sniff_format"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def as_path(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def sniff_format(path: str | os.PathLike) -> str:
    """``"png"``, ``"dicom"`` or ``"unknown"`` from the file's first bytes (never from its name)."""
    p = as_path(path)
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
    p = as_path(path)
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
        low, high = float(arr.min()), float(arr.max())
        if not high > low:
            raise CXRDecodeError(
                p, "empty_image", f"every pixel has the value {low:g}: the image is blank; exclude it"
            )
        # as DICOM: the min-max computed in float64 once per possible value, then one float32 gather (the
        # values of a per-pixel float64 computation, without its 8-byte-per-pixel temporaries)
        domain = _stored_domain(arr)
        table = ((domain.values.astype(np.float64) - low) / (high - low)).astype(np.float32)
        image = _gather(domain.gather_table(table), domain.index)
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
    p = as_path(path)
    kind = sniff_format(p)
    if kind == "png":
        return load_png(p)
    # DICOM and everything else go through read_dicom, which names what a foreign file looks like.
    return load_cxr(p)


# ---------------------------------------------------------------------------------------------------------
# MONAI
