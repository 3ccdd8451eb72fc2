"""Radiograph DICOM decoding: one single-frame grayscale image, displayed as a viewer displays it.

:func:`load_cxr` = :func:`read_dicom` + :func:`decode_cxr`. The image comes back as ``float32`` in
``[0, 1]``, shape ``(Rows, Columns)`` in DICOM order (row 0 is the top row, never transposed), bone bright.
The grayscale pipeline is the one of DICOM PS3.4 N.2 that viewers use:

1. stored values: ``BitsStored`` respected (unused high bits masked or sign-extended), ``PixelRepresentation``;
2. Modality LUT: ``RescaleSlope``/``RescaleIntercept``, or the Modality LUT Sequence;
3. VOI LUT: the VOI LUT Sequence (first item), else the first ``WindowCenter``/``WindowWidth`` pair with
   ``VOILUTFunction`` ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``; without any VOI information the
   min-max of the Modality LUT output;
4. the VOI output range scaled to ``[0, 1]``;
5. ``MONOCHROME1`` inverted (``1 - x``) so that bone is bright.

Steps 2-5 are computed once per possible stored value (a lookup table of at most 65,536 entries for 8/16-bit
data, in float64 so that the values are those of the per-pixel float64 computation this replaced), then applied
to the pixels in one float32 gather: no per-pixel float64 array is ever made.

Every file that cannot be used as a single-frame grayscale radiograph raises :class:`CXRDecodeError` with a
``code`` from :data:`ERROR_CODES` and a reason that names the attribute, its value and what to do.
Nothing in :class:`CXRMeta` or in an error reason is read from a PHI attribute.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_windowing, get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "DEFAULT_MAX_PIXEL_BYTES",
    "ERROR_CODES",
    "VOI_METHODS",
    "CXRDecodeError",
    "CXRMeta",
    "decode_cxr",
    "is_dicom",
    "load_cxr",
    "read_dicom",
]

logger = logging.getLogger(__name__)

#: The closed set of :attr:`CXRDecodeError.code` values and what each means.
ERROR_CODES: Mapping[str, str] = MappingProxyType(
    {
        "io_error": "the path cannot be opened or read (missing, a folder, no permission)",
        "not_dicom": "the file is not DICOM (empty, text, PNG/JPEG renamed .dcm, unknown content)",
        "truncated": "the file or its pixel data ends before the declared/expected length",
        "no_pixel_data": "an image object whose Pixel Data (7FE0,0010) is absent or empty",
        "non_image": "not an image: SR, RT, presentation state, SEG, waveform, DICOMDIR, ... (SOP class, no pixels)",
        "multi_frame": "NumberOfFrames > 1",
        "colour": "SamplesPerPixel != 1 or PhotometricInterpretation not MONOCHROME1/MONOCHROME2 (or a colour PNG)",
        "unsupported_transfer_syntax": "no installed decoder for the transfer syntax (the reason names the package)",
        "decode_failed": "the header or the compressed pixel data could not be decoded",
        "bad_geometry": "Rows/Columns/BitsAllocated/BitsStored/HighBit invalid or inconsistent with the pixel data",
        "empty_image": "no contrast at all: every pixel has the same value",
        "too_large": "the header declares more pixel data than the memory limit per file (max_pixel_bytes)",
    }
)

#: Default memory limit per file: the stored pixel data its header declares (Rows x Columns x SamplesPerPixel x
#: NumberOfFrames x BitsAllocated / 8), checked before any pixel data is read, inflated or decoded. 48 MiB (4900 x 4900
#: x 16 bit) holds any real chest radiograph (a 43 x 43 cm detector at 100 um is 4300 x 4300 x 16 bit = 35 MiB) and
#: keeps a worker under 1 GiB: reading a 4900 x 4900 file end to end peaks at 362 MiB, ~8x the stored bytes
#: (``python -m pipelines.benchmarks.ingest_memory``, measured 2026-12-03).
DEFAULT_MAX_PIXEL_BYTES: int = 48 * 2**20

#: How the display range was chosen (:attr:`CXRMeta.voi`).
VOI_METHODS: tuple[str, ...] = ("window", "window:LINEAR_EXACT", "window:SIGMOID", "lut", "minmax", "png8")


class CXRDecodeError(Exception):
    """A file that cannot be used as a single-frame grayscale radiograph.

    Args:
        path: the file (or a label for an in-memory dataset).
        code: one of :data:`ERROR_CODES`.
        reason: specific and actionable: which attribute, what value, what to do.

    ``str(err) == f"{path}: {reason}"``. Instances pickle (DataLoader workers send them across processes).
    """

    CODES: ClassVar[Mapping[str, str]] = ERROR_CODES

    def __init__(self, path: str | os.PathLike, code: str, reason: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown CXRDecodeError code {code!r}; expected one of {sorted(ERROR_CODES)}")
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
        self.code = code
        self.reason = str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):
        return type(self), (self.path, self.code, self.reason)


@dataclass(frozen=True)
class CXRMeta:
    """What is known about a decoded image; never PHI (no names, ids, dates, instance/study/series UIDs).

    Attributes:
        source_format: ``"dicom"`` or ``"png"``.
        modality, view_position, body_part: DICOM Modality, ViewPosition, BodyPartExamined (None if absent).
        photometric_interpretation: ``MONOCHROME1``/``MONOCHROME2`` as stored (PNG: ``MONOCHROME2``).
        pixel_spacing: (row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; values that
            are missing, zero, negative or not numbers are ignored (None when neither is usable).
        pixel_spacing_source: ``"PixelSpacing"``, ``"ImagerPixelSpacing"`` or None.
        transfer_syntax: the file's TransferSyntaxUID (None if the file does not declare one, or PNG).
        original_size: (rows, columns) of the decoded image.
        bits_stored: BitsStored (PNG: the bit depth, 8 or 16).
        sop_class_uid: the SOP *class* UID (not PHI), None if absent or PNG.
        voi: how the display range was chosen, one of :data:`VOI_METHODS`.
    """

    source_format: str
    modality: str | None
    view_position: str | None
    body_part: str | None
    photometric_interpretation: str
    pixel_spacing: tuple[float, float] | None
    pixel_spacing_source: str | None
    transfer_syntax: str | None
    original_size: tuple[int, int]
    bits_stored: int
    sop_class_uid: str | None
    voi: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy (tuples become lists)."""
        out = asdict(self)
        for key in ("pixel_spacing", "original_size"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------

_PREAMBLE = 128
_SNIFF_BYTES = 264
# Explicit VRs (PS3.5 table 6.2-1); used to recognise a data set stored without preamble/File Meta.
_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
}
_TRUNCATION_WARNINGS = ("End of file reached", "Unexpected end of file")


def _as_path(path: str | os.PathLike) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM data set written without preamble and File Meta (ACR-NEMA style, some old PACS exports).

    Accepts a first element in group 0x0002 or 0x0008, little or big endian, with an explicit VR or a
    plausible implicit 32-bit length.
    """
    if len(head) < 8:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        element = int.from_bytes(head[2:4], order)
        if group not in (0x0002, 0x0008) or element > 0x0100:
            continue
        if head[4:6] in _VRS:
            return True
        if order == "little" and int.from_bytes(head[4:8], "little") < 0x10000:
            return True
    return False


def _describe_foreign(head: bytes) -> str:
    """What a non-DICOM file looks like (never quoting its content: it could hold PHI)."""
    signatures = (
        (b"\x89PNG\r\n\x1a\n", "a PNG image (renamed .dcm?); load it with mlvicx_monai.data.readers.load_image"),
        (b"\xff\xd8\xff", "a JPEG image, not DICOM; convert it or load it as a picture, not as a radiograph"),
        (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 (JP2) image, not DICOM"),
        (b"\xffO\xffQ", "a raw JPEG 2000 codestream, not DICOM"),
        (b"II*\x00", "a TIFF image, not DICOM"),
        (b"MM\x00*", "a TIFF image, not DICOM"),
        (b"%PDF", "a PDF document, not DICOM"),
        (b"PK\x03\x04", "a ZIP archive; extract it and read the files inside"),
        (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    )
    for magic, what in signatures:
        if head.startswith(magic):
            return f"the file is {what}"
    sample = head[:_PREAMBLE]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "the file is text, not DICOM (no 'DICM' marker at byte 128 and no DICOM element at byte 0)"
    return (
        "not a DICOM file: no 'DICM' marker at byte 128 and no DICOM data element at byte 0; "
        "check the export or the file type"
    )


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether the file starts like DICOM (Part 10 ``DICM`` marker, or a bare data set); reads 264 bytes.

    Decides by content, not by name: PACS exports often have no file extension.
    """
    try:
        with open(_as_path(path), "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return head[_PREAMBLE : _PREAMBLE + 4] == b"DICM" or _looks_like_raw_dataset(head)


def _check_complete(ds: Dataset, size: int, path: str) -> None:
    """pydicom silently returns a short value when a file ends early: compare the last element's declared
    length with the file size (offsets are file offsets except for deflated data sets)."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax == DeflatedExplicitVRLittleEndian:
        return
    last = None
    for elem in ds.elements():  # raw (unconverted) top-level elements keep their declared length
        if last is None or elem.tag > last.tag:
            last = elem
    if last is None or not hasattr(last, "value_tell"):
        return
    if last.length == 0xFFFFFFFF:  # undefined length: checked through pydicom's delimiter warnings
        return
    end = last.value_tell + last.length
    if end > size:
        where = "Pixel Data" if last.tag == 0x7FE00010 else f"element {last.tag}"
        raise CXRDecodeError(
            path,
            "truncated",
            f"the file ends inside {where}: it declares {last.length} bytes at offset {last.value_tell} but the "
            f"file has only {size} bytes; the copy is incomplete, re-export or re-download it",
        )
    if 0 < size - end < 8 and last.tag < 0x7FE00010:  # stopped inside a header before the Pixel Data
        raise CXRDecodeError(
            path,
            "truncated",
            f"the file ends {size - end} bytes into a data element header after offset {end}; "
            "the copy is incomplete, re-export or re-download it",
        )


_HEADER_PROBE_BYTES = 16 * 2**20  # a deflated data set is inflated up to this much to read its header


def _declared_pixel_bytes(ds: Dataset) -> tuple[int, str] | None:
    """(bytes of stored pixel data the header declares, how) or None when Rows/Columns are absent or not numbers."""
    def number(keyword: str, default: int | None) -> int | None:
        value = ds.get(keyword, None)
        if value in (None, ""):
            return default
        try:
            return int(_first_value(value))
        except (TypeError, ValueError):
            return None

    rows, columns = number("Rows", None), number("Columns", None)
    if rows is None or columns is None:
        return None
    frames = max(number("NumberOfFrames", 1) or 1, 1)
    samples = max(number("SamplesPerPixel", 1) or 1, 1)
    bits = max(number("BitsAllocated", 16) or 16, 1)
    total = abs(rows) * abs(columns) * frames * samples * bits // 8
    how = f"Rows x Columns = {rows} x {columns}"
    if frames > 1:
        how += f" x {frames} frames"
    if samples > 1:
        how += f" x {samples} samples"
    return total, f"{how} at {bits} bits allocated"


def _read_header(p: str, force: bool, inflate_limit: int) -> tuple[Dataset | None, int | None]:
    """(the data set up to, not including, Pixel Data, without reading large values; None if it cannot be parsed
    this way: the full read then reports what is wrong) and, for a deflated data set, its inflated size (counted up
    to just over ``inflate_limit``; None for other transfer syntaxes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the full read reports them
        try:
            meta = pydicom.filereader.read_file_meta_info(p) if not force else None
        except Exception:
            meta = None
        try:
            if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return _read_deflated_header(p, meta, inflate_limit)
            return pydicom.dcmread(p, force=force, stop_before_pixels=True, defer_size=1 << 16), None
        except Exception:
            return None, None


def _read_deflated_header(p: str, meta: Dataset, inflate_limit: int) -> tuple[Dataset | None, int | None]:
    """Header of a deflated data set from its first :data:`_HEADER_PROBE_BYTES` inflated bytes, and the size of the
    whole inflated data set, counted in 1 MiB steps and given up above ``inflate_limit``. pydicom inflates the whole
    data set in memory, so a 64 KB file can hold gigabytes (a deflate bomb): this bounds it first."""
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    group_length = int(meta.get("FileMetaInformationGroupLength", 0) or 0)
    if not group_length:
        return None, 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    head, total = bytearray(), 0
    with open(p, "rb") as handle:
        handle.seek(_PREAMBLE + 4 + 12 + group_length)
        pending = b""
        while total <= inflate_limit:
            if not pending:
                pending = handle.read(1 << 16)
                if not pending:
                    break
            out = inflater.decompress(pending, 1 << 20)
            pending = inflater.unconsumed_tail
            total += len(out)
            if len(head) < _HEADER_PROBE_BYTES:
                head += out[: _HEADER_PROBE_BYTES - len(head)]
            if inflater.eof:
                break
    try:
        header = read_dataset(
            DicomBytesIO(bytes(head)), False, True, stop_when=lambda tag, vr, length: tag >= 0x7FE00010,
            defer_size=1 << 16,
        )
    except Exception:
        header = None
    return header, total


def _never_decoded(header: Dataset) -> bool:
    """A colour or multi-frame header: :func:`decode_cxr` rejects it before decoding, whatever its size."""
    def number(keyword: str) -> int:
        try:
            return int(_first_value(header.get(keyword, 1) or 1))
        except (TypeError, ValueError):
            return 1

    photometric = str(header.get("PhotometricInterpretation", "") or "").strip().upper()
    return number("SamplesPerPixel") > 1 or number("NumberOfFrames") > 1 or photometric not in (
        "", "MONOCHROME1", "MONOCHROME2")


def _check_declared_size(p: str, force: bool, max_pixel_bytes: int) -> None:
    inflate_limit = max_pixel_bytes + _HEADER_PROBE_BYTES
    header, inflated = _read_header(p, force, inflate_limit)
    declared = _declared_pixel_bytes(header) if header is not None else None
    # reading a file costs at most its size (bounded above) unless it is deflated; decoding happens only for
    # single-frame grayscale headers: a large colour/multi-frame file gets its own, more useful, code
    harmless = inflated is None and header is not None and _never_decoded(header)
    if declared is not None and declared[0] > max_pixel_bytes and not harmless:
        raise CXRDecodeError(
            p, "too_large",
            f"the header declares {declared[0] / 2**20:.0f} MiB of pixel data ({declared[1]}), over the limit of "
            f"{max_pixel_bytes / 2**20:.0f} MiB per file; nothing was decoded. Raise the limit (--max-pixel-mb, "
            "infer.json --max_pixel_mb) if such images are real radiographs",
        )
    if inflated is not None and inflated > inflate_limit:
        raise CXRDecodeError(
            p, "too_large",
            f"the deflated data set inflates to more than {inflate_limit / 2**20:.0f} MiB (pixel data limit "
            f"{max_pixel_bytes / 2**20:.0f} MiB per file + header), whatever its Rows/Columns say (a deflate bomb?); "
            "nothing was decoded. Raise the limit (--max-pixel-mb, infer.json --max_pixel_mb) if such images are "
            "real radiographs",
        )


def read_dicom(path: str | os.PathLike, max_pixel_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES) -> Dataset:
    """Read a whole DICOM file (header and pixel data) with pydicom, after checking its declared size.

    Part 10 files are read strictly; a bare data set without preamble/File Meta is read when it starts with a
    plausible DICOM element. A missing TransferSyntaxUID is not an error: pydicom infers implicit/explicit
    little/big endian and :func:`decode_cxr` uses that encoding.

    Memory is bounded before anything large is read: the header alone is parsed first (``stop_before_pixels``,
    large values deferred; a deflated data set is inflated only up to :data:`_HEADER_PROBE_BYTES`), and a file whose
    header declares more than ``max_pixel_bytes`` of pixel data, or that is larger than 4 x ``max_pixel_bytes`` on
    disk, is rejected (``too_large``) without reading, inflating or decoding its pixels.

    Args:
        path: the file.
        max_pixel_bytes: limit of Rows x Columns x SamplesPerPixel x NumberOfFrames x BitsAllocated / 8 (None: none).

    Raises:
        TypeError: ``path`` is not a path.
        CXRDecodeError: ``io_error``, ``not_dicom``, ``truncated``, ``too_large`` or ``decode_failed``
            (unparseable header).
    """
    p = _as_path(path)
    try:
        with open(p, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(_SNIFF_BYTES)
    except FileNotFoundError:
        raise CXRDecodeError(p, "io_error", "the file does not exist") from None
    except IsADirectoryError:
        raise CXRDecodeError(
            p, "io_error", "this is a folder, not a file; pass the DICOM files inside it one by one"
        ) from None
    except OSError as err:
        raise CXRDecodeError(p, "io_error", f"the file cannot be read: {err.strerror or err}") from None
    if size == 0:
        raise CXRDecodeError(p, "not_dicom", "the file is empty (0 bytes)")
    if head[_PREAMBLE : _PREAMBLE + 4] == b"DICM":
        force = False
    elif _looks_like_raw_dataset(head):
        force = True
    else:
        raise CXRDecodeError(p, "not_dicom", _describe_foreign(head))
    if max_pixel_bytes is not None:
        if size > 4 * max_pixel_bytes:
            raise CXRDecodeError(
                p, "too_large",
                f"the file is {size / 2**20:.0f} MiB, over 4 x the limit of {max_pixel_bytes / 2**20:.0f} MiB of pixel "
                "data per file; raise the limit (--max-pixel-mb, infer.json --max_pixel_mb) if such files are real",
            )
        _check_declared_size(p, force, max_pixel_bytes)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(p, force=force)
        except InvalidDicomError as err:
            raise CXRDecodeError(p, "not_dicom", f"pydicom rejects the file as DICOM: {err}") from None
        except EOFError as err:
            raise CXRDecodeError(p, "truncated", f"the file ends in the middle of the header ({err})") from None
        except OSError as err:
            if "No tag to read" in str(err):
                raise CXRDecodeError(
                    p, "truncated", f"the file ends in the middle of a data element ({err}); re-export it"
                ) from None
            raise CXRDecodeError(p, "io_error", f"the file cannot be read: {err}") from None
        except Exception as err:  # pydicom raises many types on corrupt headers
            raise CXRDecodeError(
                p, "decode_failed", f"pydicom cannot parse the header ({type(err).__name__}: {err})"
            ) from None
    truncated = False
    for item in caught:
        message = str(item.message)
        if any(marker in message for marker in _TRUNCATION_WARNINGS):
            truncated = True
            logger.debug("%s: %s", p, message)
        else:  # not ours to swallow
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    if truncated:
        raise CXRDecodeError(
            p,
            "truncated",
            "the file ends before the end of an undefined-length element (encapsulated Pixel Data or a "
            "sequence lacks its delimiter); the copy is incomplete, re-export or re-download it",
        )
    if len(ds) == 0 and not force:
        raise CXRDecodeError(
            p,
            "truncated",
            "the file ends inside or right after its File Meta header: no data set follows; re-export it",
        )
    if len(ds) == 0:
        raise CXRDecodeError(p, "not_dicom", "no DICOM data element could be read from the file")
    _check_complete(ds, size, p)
    return ds


# ---------------------------------------------------------------------------------------------------------
# Object checks
# ---------------------------------------------------------------------------------------------------------

_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
# SOP class UID prefixes of objects that are not radiographs (PS3.4 annex B / PS3.6 annex A).
_NON_IMAGE_SOP_PREFIXES: tuple[tuple[str, str], ...] = (
    ("1.2.840.10008.5.1.4.1.1.481.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.34.", "radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report or key object selection"),
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data, registration, segmentation or fiducials object"),
    ("1.2.840.10008.5.1.4.1.1.67", "real world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68.", "surface object"),
    ("1.2.840.10008.5.1.4.1.1.90.", "content assessment result"),
    ("1.2.840.10008.5.1.4.1.1.91.", "annotation object"),
    ("1.2.840.10008.5.1.4.1.1.200.", "protocol"),
    ("1.2.840.10008.5.1.4.38.", "hanging protocol"),
    ("1.2.840.10008.5.1.4.39.", "color palette"),
)


def _sop_class(ds: Dataset) -> UID | None:
    value = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return UID(str(value).strip()) if value else None


def _uid_label(uid: UID) -> str:
    name = uid.name
    return f"{uid} ({name})" if name and name != str(uid) else str(uid)


def _check_object(ds: Dataset, path: str, sop: UID | None) -> None:
    if sop == _DICOMDIR_SOP or "DirectoryRecordSequence" in ds:
        raise CXRDecodeError(
            path,
            "non_image",
            "this is a DICOMDIR (media directory index), not an image; read the image files it references "
            "(e.g. with pydicom.fileset.FileSet) instead",
        )
    if sop is not None:
        for prefix, kind in _NON_IMAGE_SOP_PREFIXES:
            if sop.startswith(prefix) or sop == prefix.rstrip("."):
                raise CXRDecodeError(
                    path, "non_image", f"SOP Class {_uid_label(sop)} is a {kind}, not a radiograph; skip this file"
                )
    pixel = ds.get("PixelData")
    if pixel is None or len(pixel) == 0:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise CXRDecodeError(
                path, "non_image", "the pixels are floating point (a parametric map), not a radiograph"
            )
        if pixel is not None:
            raise CXRDecodeError(
                path, "no_pixel_data", "Pixel Data (7FE0,0010) is present but empty (0 bytes); re-export the image"
            )
        is_image_class = sop is not None and sop.name.endswith("Image Storage")
        if is_image_class or "Rows" in ds or "Columns" in ds:
            what = f"SOP Class {_uid_label(sop)}" if sop is not None else "an image header (Rows/Columns)"
            raise CXRDecodeError(
                path,
                "no_pixel_data",
                f"the file has {what} but no Pixel Data (7FE0,0010): only the header was exported; "
                "re-export the image with its pixels or exclude it",
            )
        label = f"SOP Class {_uid_label(sop)}" if sop is not None else "no SOP Class UID"
        raise CXRDecodeError(
            path,
            "non_image",
            f"not an image object: {label}, no Image Pixel module (Rows/Columns) and no Pixel Data",
        )


# ---------------------------------------------------------------------------------------------------------
# Image Pixel module
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pixels:
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    photometric_assumed: bool


def _int_attr(ds: Dataset, keyword: str, path: str, default: int | None = None) -> int | None:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return default
    value = ds[keyword].value
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CXRDecodeError(path, "bad_geometry", f"{keyword} = {value!r} is not an integer") from None


def _pixel_module(ds: Dataset, path: str) -> _Pixels:
    samples = _int_attr(ds, "SamplesPerPixel", path, default=1)
    photometric_raw = ds.get("PhotometricInterpretation")
    photometric = str(photometric_raw).strip().upper() if photometric_raw else ""
    if samples != 1:
        raise CXRDecodeError(
            path,
            "colour",
            f"SamplesPerPixel = {samples} (PhotometricInterpretation {photometric or 'absent'}): a colour image, "
            "not a grayscale radiograph; exclude it",
        )
    assumed = False
    if not photometric:
        # ACR-NEMA files and some old exports omit it; single-sample data is then MONOCHROME2 (as dcmtk +Ma).
        photometric, assumed = "MONOCHROME2", True
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise CXRDecodeError(
            path,
            "colour",
            f"PhotometricInterpretation = {photometric}: only MONOCHROME1/MONOCHROME2 radiographs are supported; "
            "exclude this colour/palette image",
        )
    frames_value = ds.get("NumberOfFrames")
    if frames_value not in (None, ""):
        try:
            frames = int(frames_value)
        except (TypeError, ValueError):
            raise CXRDecodeError(
                path, "bad_geometry", f"NumberOfFrames = {frames_value!r} is not an integer"
            ) from None
        if frames > 1:
            raise CXRDecodeError(
                path,
                "multi_frame",
                f"NumberOfFrames = {frames}: a multi-frame object (cine/tomosynthesis/enhanced series), not a "
                "single radiograph; split it into single frames first or exclude it",
            )
    rows = _int_attr(ds, "Rows", path)
    columns = _int_attr(ds, "Columns", path)
    if rows is None or columns is None or rows <= 0 or columns <= 0:
        raise CXRDecodeError(
            path, "bad_geometry", f"Rows = {rows}, Columns = {columns}: both must be present and positive"
        )
    allocated = _int_attr(ds, "BitsAllocated", path)
    if allocated not in (1, 8, 16, 32):
        raise CXRDecodeError(
            path, "bad_geometry", f"BitsAllocated = {allocated}: expected 1, 8, 16 or 32 for integer pixel data"
        )
    stored = _int_attr(ds, "BitsStored", path)
    if stored is None or not 1 <= stored <= allocated:
        raise CXRDecodeError(
            path, "bad_geometry", f"BitsStored = {stored} must be between 1 and BitsAllocated = {allocated}"
        )
    high_bit = _int_attr(ds, "HighBit", path, default=stored - 1)
    if high_bit != stored - 1:
        raise CXRDecodeError(
            path,
            "bad_geometry",
            f"HighBit = {high_bit} with BitsStored = {stored}: only low-aligned pixel cells (HighBit = BitsStored"
            " - 1) are supported; fix the header (e.g. dcmodify) if the values are in fact low-aligned",
        )
    representation = _int_attr(ds, "PixelRepresentation", path, default=0)
    if representation not in (0, 1):
        raise CXRDecodeError(path, "bad_geometry", f"PixelRepresentation = {representation}: expected 0 or 1")
    return _Pixels(rows, columns, allocated, stored, representation, photometric, assumed)


# ---------------------------------------------------------------------------------------------------------
# Transfer syntax and stored values
# ---------------------------------------------------------------------------------------------------------


def _first_fragment(data: bytes) -> bytes:
    """First fragment of encapsulated pixel data (PS3.5 A.4): skip the Basic Offset Table item."""
    position, found = 0, []
    while position + 8 <= len(data) and len(found) < 2:
        tag = data[position : position + 4]
        length = int.from_bytes(data[position + 4 : position + 8], "little")
        if tag != b"\xfe\xff\x00\xe0":
            break
        found.append(data[position + 8 : position + 8 + length])
        position += 8 + length
    return found[1] if len(found) > 1 else b""


def _infer_encapsulated_syntax(fragment: bytes) -> UID | None:
    """Transfer syntax of a codestream whose file does not declare one (decoders read the stream's own header)."""
    if fragment.startswith(b"\xffO\xffQ") or fragment[4:8] == b"jP  ":
        return JPEG2000
    if fragment.startswith(b"\xff\xd8"):
        position = 2
        while position + 4 <= len(fragment):
            if fragment[position] != 0xFF:
                break
            marker = fragment[position + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xF7):
                return {
                    0xC0: JPEGBaseline8Bit,
                    0xC1: JPEGExtended12Bit,
                    0xC2: JPEGExtended12Bit,
                    0xC3: JPEGLossless,
                    0xF7: JPEGLSNearLossless,
                }[marker]
            position += 2 + int.from_bytes(fragment[position + 2 : position + 4], "big")
        return None
    if len(fragment) >= 64:
        segments = int.from_bytes(fragment[0:4], "little")
        if 1 <= segments <= 15 and int.from_bytes(fragment[4:8], "little") == 64:
            return RLELossless
    return None


def _transfer_syntax(ds: Dataset, path: str) -> tuple[UID, UID | None]:
    """(syntax to decode with, syntax declared by the file or None)."""
    declared = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    declared = UID(str(declared).strip()) if declared else None
    if declared is not None:
        if not declared.is_transfer_syntax:
            raise CXRDecodeError(
                path,
                "unsupported_transfer_syntax",
                f"TransferSyntaxUID {declared} is not a standard DICOM transfer syntax (private or corrupt); "
                "convert the file to Explicit VR Little Endian with the vendor's tool, or dcmtk's dcmconv/dcmdjpeg",
            )
        return declared, declared
    elem = ds["PixelData"]
    if elem.is_undefined_length:
        inferred = _infer_encapsulated_syntax(_first_fragment(elem.value))
        if inferred is None:
            raise CXRDecodeError(
                path,
                "unsupported_transfer_syntax",
                "TransferSyntaxUID is missing and the encapsulated Pixel Data is not a recognisable JPEG, JPEG-LS, "
                "JPEG 2000 or RLE stream; add the right TransferSyntaxUID (dcmodify) and retry",
            )
    else:
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if little is False:
            inferred = ExplicitVRBigEndian
        elif implicit:
            inferred = ImplicitVRLittleEndian
        else:
            inferred = ExplicitVRLittleEndian
    logger.info("%s: no TransferSyntaxUID in the file; decoding as %s", path, inferred.name)
    return inferred, None


def _expected_bytes(px: _Pixels) -> int:
    count = px.rows * px.columns
    return (count + 7) // 8 if px.bits_allocated == 1 else count * px.bits_allocated // 8


def _in_stored_range(arr: np.ndarray, px: _Pixels) -> bool:
    """Whether every value already is a ``BitsStored``-bit value (unused high bits zero, or a sign extension)."""
    if px.pixel_representation == 0:
        return int(arr.max()) < 2**px.bits_stored
    half = 2 ** (px.bits_stored - 1)
    return -half <= int(arr.min()) and int(arr.max()) < half


def _stored_values(ds: Dataset, px: _Pixels, tsyntax: UID, path: str) -> np.ndarray:
    """Stored values, shape (rows, columns), integer dtype; unused high bits masked / sign-extended."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise CXRDecodeError(
            path,
            "unsupported_transfer_syntax",
            f"transfer syntax {_uid_label(tsyntax)} has no pixel decoder in pydicom {pydicom.__version__} "
            "(e.g. video); transcode the file to an image transfer syntax first",
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise CXRDecodeError(
            path,
            "unsupported_transfer_syntax",
            f"transfer syntax {_uid_label(tsyntax)} needs a decoding plugin that is not installed: {missing}",
        )
    if not decoder.is_encapsulated:
        actual, expected = len(ds.PixelData), _expected_bytes(px)
        if actual < expected:
            raise CXRDecodeError(
                path,
                "truncated",
                f"Pixel Data has {actual} bytes but Rows x Columns x BitsAllocated = {px.rows} x {px.columns} x "
                f"{px.bits_allocated} needs {expected}: the pixel data is cut short (or Rows/Columns/BitsAllocated "
                "are wrong); re-export the file",
            )
        if actual >= 2 * expected:
            raise CXRDecodeError(
                path,
                "bad_geometry",
                f"Pixel Data has {actual} bytes, {actual / expected:.2f} times the {expected} bytes of one "
                f"{px.rows} x {px.columns} x {px.bits_allocated}-bit frame: NumberOfFrames or Rows/Columns/"
                "BitsAllocated are wrong",
            )
    overrides: dict[str, Any] = {}
    if px.photometric_assumed:
        overrides["photometric_interpretation"] = px.photometric
    # Uncompressed little-endian data: a read-only view on the Pixel Data bytes instead of pydicom's copy with
    # the unused high bits corrected (RG1_UNCR: 0.3 instead of 1.1 ms); corrected below only when they are not
    # clean, which two reductions tell. Nothing downstream writes to the stored values.
    view = not decoder.is_encapsulated and tsyntax.is_little_endian and px.bits_allocated in (8, 16, 32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pydicom's "excess frames" notes; checked above
            if view:
                arr, _ = decoder.as_array(
                    ds, index=0, raw=True, view_only=True, correct_unused_bits=False, **overrides
                )
                if px.bits_stored < px.bits_allocated and not _in_stored_range(arr, px):
                    arr, _ = decoder.as_array(ds, index=0, raw=True, **overrides)
            else:
                arr, _ = decoder.as_array(ds, index=0, raw=True, **overrides)
    except Exception as err:
        raise CXRDecodeError(
            path,
            "decode_failed",
            f"decoding {_uid_label(tsyntax)} pixel data failed ({type(err).__name__}: {err}); "
            "the stream is corrupt or its header disagrees with Rows/Columns/BitsStored",
        ) from None
    if arr.shape != (px.rows, px.columns):
        raise CXRDecodeError(
            path,
            "bad_geometry",
            f"decoded pixel array has shape {arr.shape}, Rows x Columns say ({px.rows}, {px.columns})",
        )
    return arr


# ---------------------------------------------------------------------------------------------------------
# Grayscale transforms
# ---------------------------------------------------------------------------------------------------------

_GRAYSCALE_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "PixelSpacing",
)
_FUNCTIONAL_GROUPS = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
    ("PixelMeasuresSequence", ("PixelSpacing",)),
)


def _grayscale_attributes(ds: Dataset) -> Dataset:
    """The Modality/VOI LUT and spacing attributes, top level first, else from the (shared, then first
    per-frame) functional groups of an enhanced single-frame object. Elements are shared, not copied."""
    out = Dataset()
    for keyword in _GRAYSCALE_KEYWORDS:
        if keyword in ds:
            out[keyword] = ds[keyword]
    groups = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(keyword)
        if sequence:
            groups.append(sequence[0])
    for sequence_keyword, keywords in _FUNCTIONAL_GROUPS:
        if any(k in out for k in keywords):
            continue
        for group in groups:
            items = group.get(sequence_keyword)
            if items:
                for keyword in keywords:
                    if keyword in items[0]:
                        out[keyword] = items[0][keyword]
                break
    return out


def _lut_table(item: Dataset, little_endian: bool, what: str, path: str) -> tuple[np.ndarray, int, int]:
    """(table, first mapped input value, bits per entry) of one LUT item (LUTDescriptor + LUTData)."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except (AttributeError, TypeError, ValueError):
        raise CXRDecodeError(
            path, "decode_failed", f"{what} item lacks a 3-value LUTDescriptor or its LUTData"
        ) from None
    entries = entries or 65536  # PS3.3 C.11.1.1: 0 means 2^16
    if isinstance(raw, (bytes, bytearray)):
        table = np.frombuffer(raw, dtype="<u2" if little_endian else ">u2").astype(np.int64)
        if bits == 8 and table.size * 2 == entries:  # old writers pack two 8-bit entries per 16-bit word
            table = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    else:
        table = np.atleast_1d(np.asarray(raw, dtype=np.int64))
    if table.size < entries:
        raise CXRDecodeError(
            path,
            "decode_failed",
            f"{what} LUTDescriptor declares {entries} entries but LUTData has {table.size}",
        )
    table = table[:entries]
    if int(table.max()) > 2**bits - 1:
        # Descriptors that understate the entry size exist in the wild; use the bits the data need (as dcmtk).
        bits = int(table.max()).bit_length()
    return table, first, bits


def _apply_lut(values: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    """PS3.3 C.11.1.1 / C.11.2.1.1: inputs below ``first`` map to entry 0, beyond the table to the last."""
    index = np.rint(values).astype(np.int64) - first
    np.clip(index, 0, table.size - 1, out=index)
    return table[index]


def _little_endian(ds: Dataset) -> bool:
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax:
        return UID(tsyntax) != ExplicitVRBigEndian
    little = getattr(ds, "original_encoding", (None, None))[1]
    return little is not False


def _modality_lut(stored: np.ndarray, gray: Dataset, ds: Dataset, path: str) -> np.ndarray:
    """Stored values (the lookup table's domain, :attr:`_Domain.values`) -> modality values (float64)."""
    sequence = gray.get("ModalityLUTSequence")
    if sequence:
        # pydicom 3.0.2's apply_modality_lut builds the table as f"uint{bits}" and raises TypeError for the
        # common 12-bit descriptor ("data type 'uint12' not understood"): table lookup done here instead.
        table, first, _ = _lut_table(sequence[0], _little_endian(ds), "ModalityLUTSequence", path)
        return _apply_lut(stored, table, first).astype(np.float64)
    if "RescaleSlope" in gray and "RescaleIntercept" in gray:
        slope, intercept = gray.RescaleSlope, gray.RescaleIntercept
        if slope is None or intercept is None or not (math.isfinite(slope) and math.isfinite(intercept)):
            raise CXRDecodeError(
                path,
                "bad_geometry",
                f"RescaleSlope = {slope!r}, RescaleIntercept = {intercept!r}: both must be finite numbers",
            )
        if float(slope) == 0.0:
            raise CXRDecodeError(
                path, "empty_image", "RescaleSlope = 0 maps every pixel to the same value; fix the Modality LUT"
            )
        return apply_modality_lut(stored, gray).astype(np.float64, copy=False)
    return stored.astype(np.float64)


def _first_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def _linear_window(values: np.ndarray, center: float, width: float, exact: bool) -> np.ndarray:
    """PS3.3 C.11.2.1.2 LINEAR (``exact=False``, ``width >= 1``) and C.11.2.1.3.2 LINEAR_EXACT windows onto [0, 1].

    The same values as pydicom's ``apply_windowing`` (tested to 1e-12), in four in-place NumPy passes: pydicom's
    boolean-mask indexing cost 58 ms of the 132 ms per file of ingesting the 1955 x 1841 RG1_UNCR.dcm
    (``python -m pipelines.benchmarks.ingest_speed``)."""
    out = np.array(values, dtype=np.float64, copy=True)
    if not exact and width == 1.0:  # the ramp degenerates to a step: x <= c - 0.5 -> 0, above -> 1
        return (out > center - 0.5).astype(np.float64)
    offset, scale = (center, width) if exact else (center - 0.5, width - 1.0)
    out -= offset
    out /= scale
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _window(values: np.ndarray, gray: Dataset, path: str) -> tuple[np.ndarray, str] | None:
    """First WindowCenter/WindowWidth pair through pydicom's apply_windowing, output in [0, 1]; None when the
    window is absent or unusable (the caller falls back to min-max)."""
    if "WindowCenter" not in gray or "WindowWidth" not in gray:
        return None
    try:
        center = float(_first_value(gray.WindowCenter))
        width = float(_first_value(gray.WindowWidth))
    except (TypeError, ValueError):
        logger.warning("%s: WindowCenter/WindowWidth are not numbers; using min-max", path)
        return None
    function = str(gray.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        logger.warning("%s: VOILUTFunction %r is not defined by DICOM; using LINEAR", path, function)
        function = "LINEAR"
    minimum_width = 1.0 if function == "LINEAR" else 0.0  # PS3.3 C.11.2.1.2: LINEAR needs w >= 1, others w > 0
    if not (math.isfinite(center) and math.isfinite(width)) or width < minimum_width or (
        function != "LINEAR" and width <= 0.0
    ):
        logger.warning(
            "%s: degenerate window (center %s, width %s, %s); using min-max", path, center, width, function
        )
        return None
    if function != "SIGMOID":
        return _linear_window(values, center, width, exact=function == "LINEAR_EXACT"), (
            "window" if function == "LINEAR" else f"window:{function}"
        )
    # pydicom scales its output to the range implied by BitsStored/PixelRepresentation/Rescale of the dataset
    # it is given; a minimal VOI LUT module with BitsStored = 1, unsigned, gives exactly [0, 1] and keeps the
    # caller's dataset unmodified (apply_windowing writes back BitsStored/Rescale* as Python numbers).
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 1
    voi.PixelRepresentation = 0
    voi["WindowCenter"] = pydicom.DataElement(0x00281050, "FD", center)
    voi["WindowWidth"] = pydicom.DataElement(0x00281051, "FD", width)
    voi.VOILUTFunction = function
    out = apply_windowing(values, voi)
    return out, "window" if function == "LINEAR" else f"window:{function}"


def _minmax(values: np.ndarray, path: str, domain: _Domain) -> np.ndarray:
    """Modality table -> [0, 1] by the min and max of the values that occur in the image."""
    low, high = domain.occurring_range(values)
    if not high > low:
        raise CXRDecodeError(
            path,
            "empty_image",
            f"every pixel has the same value ({low:g} after the Modality LUT): the image has no contrast "
            "(blank or placeholder); exclude it",
        )
    return (values - low) / (high - low)


def _voi(values: np.ndarray, gray: Dataset, ds: Dataset, path: str, domain: _Domain) -> tuple[np.ndarray, str]:
    """Modality table -> display table in [0, 1] (before MONOCHROME1 inversion); the fallback to min-max is decided
    on the values that occur in the image (``domain``)."""
    out: np.ndarray | None = None
    sequence = gray.get("VOILUTSequence")
    if sequence:
        table, first, bits = _lut_table(sequence[0], _little_endian(ds), "VOILUTSequence", path)
        # Not pydicom's apply_voi: in 3.0.2 it indexes the table with an array of the *output* dtype, so an
        # 8-bit LUT with more than 256 entries wraps its indices (input 256 -> entry 0). Measured in tests.
        out, method = _apply_lut(values, table, first) / float(2**bits - 1), "lut"
    else:
        windowed = _window(values, gray, path)
        if windowed is not None:
            out, method = windowed
    if out is not None:
        low, high = domain.occurring_range(out)
        if high > low:
            return out, method
        logger.warning("%s: the VOI transform maps the whole image to one value; using min-max instead", path)
    return _minmax(values, path, domain), "minmax"


@dataclass(frozen=True)
class _Domain:
    """The stored values a display lookup table is computed over, and how each pixel indexes the table.

    Attributes:
        values: the table's inputs, ascending: the whole range of the pixel array's integer type for 8/16-bit
            data (so building the domain needs no pass over the pixels but one min/max), else the image's range
            (or its distinct values when that range is wider than 2^16).
        index: per pixel, its entry in the *gather* table, shape (rows, columns), uint8/uint16 for 8/16-bit data
            (for signed data the two's complement bit pattern, a free view of the pixels).
        order: gather table = table (in ``values`` order) ``[order]``; None when the orders are the same.
        first, last: positions in ``values`` of the image's smallest and largest stored value.
    """

    values: np.ndarray
    index: np.ndarray
    order: np.ndarray | None
    first: int
    last: int

    def gather_table(self, table: np.ndarray) -> np.ndarray:
        return table if self.order is None else table[self.order]

    def occurring_range(self, table: np.ndarray) -> tuple[float, float]:
        """(min, max) of ``table`` (one entry per ``values``) over the stored values that occur in the image."""
        segment = table[self.first : self.last + 1]
        steps = np.diff(segment)
        if bool((steps >= 0).all()) or bool((steps <= 0).all()):
            # monotone between the image's extreme values, which occur: the usual case (rescale, windows)
            ends = (float(segment[0]), float(segment[-1]))
            return min(ends), max(ends)
        # a LUT Sequence that goes up and down: exactly the entries that occur (one counting pass, 5 ms on RG1)
        occurs_gathered = np.bincount(self.index.ravel(), minlength=self.values.size)[: self.values.size] > 0
        occurs = occurs_gathered
        if self.order is not None:
            occurs = np.empty_like(occurs_gathered)
            occurs[self.order] = occurs_gathered
        present = table[occurs]
        return float(present.min()), float(present.max())


def _stored_domain(stored: np.ndarray) -> _Domain:
    """The lookup-table domain of an integer stored-value array (see :class:`_Domain`)."""
    if not stored.dtype.isnative:
        stored = stored.astype(stored.dtype.newbyteorder("="))
    low, high = int(stored.min()), int(stored.max())
    kind, size = stored.dtype.kind, stored.dtype.itemsize
    if kind in "ub" and size <= 2:
        values = np.arange(2 ** (8 * size), dtype=stored.dtype if kind == "u" else np.uint8)
        return _Domain(values, stored.view(np.uint8) if kind == "b" else stored, None, low, high)
    if kind == "i" and size <= 2:
        half = 2 ** (8 * size - 1)
        values = np.arange(-half, half, dtype=stored.dtype)
        # the bit pattern g of a value v is v mod 2^bits; its position in ``values`` is v + half = g XOR half
        order = np.arange(2 * half) ^ half
        return _Domain(values, stored.view(f"u{size}"), order, low + half, high + half)
    if high - low < 2**16:  # 32-bit cells holding a 16-bit range
        index = np.subtract(stored, low, dtype=np.int64).astype(np.uint16)
        return _Domain(np.arange(low, high + 1, dtype=np.int64), index, None, 0, high - low)
    values, inverse = np.unique(stored, return_inverse=True)  # wide 32-bit data: rare, a sort
    return _Domain(values, inverse.reshape(stored.shape), None, 0, values.size - 1)


def _display(stored: np.ndarray, gray: Dataset, ds: Dataset, px: _Pixels, path: str) -> tuple[np.ndarray, str]:
    """Stored values -> (float32 display image in [0, 1], bone bright; VOI method).

    The Modality LUT, VOI, inversion and clipping are applied to the table of every possible stored value
    (float64, at most 65,536 entries: < 1 ms), then the pixels are mapped by one float32 gather. On the
    1955 x 1841 RG1_UNCR.dcm this takes 7 ms instead of the 18 ms of the same steps as float64 passes over the
    pixels (``python -m pipelines.benchmarks.ingest_speed --stages``), with identical values: every step is a
    function of the stored value alone except the min-max range and the "VOI maps everything to one value"
    check, which are taken over the values that occur in the image.
    """
    domain = _stored_domain(stored)
    modality = _modality_lut(domain.values, gray, ds, path)
    table, voi = _voi(modality, gray, ds, path, domain)
    if px.photometric == "MONOCHROME1":
        table = 1.0 - table
    table = np.clip(table, 0.0, 1.0).astype(np.float32)
    return _gather(domain.gather_table(table), domain.index), voi


_GATHER_PIXELS = 2**17


def _gather(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` by blocks of rows: ``np.take`` converts its indices to intp first, and in blocks of ~2^17
    pixels that copy stays in cache (RG1_UNCR: 5.0 instead of 6.9 ms, measured in alternating rounds)."""
    out = np.empty(index.shape, dtype=table.dtype)
    if index.ndim != 2:
        return np.take(table, index, out=out)
    step = max(1, _GATHER_PIXELS // max(index.shape[1], 1))
    for row in range(0, index.shape[0], step):
        np.take(table, index[row : row + step], out=out[row : row + step], mode="clip")  # indices are in range
    return out


def _spacing(ds: Dataset, gray: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    for keyword, source in (("PixelSpacing", gray), ("ImagerPixelSpacing", ds)):
        value = source.get(keyword)
        if value is None:
            continue
        try:
            pair = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if len(pair) == 2 and all(math.isfinite(v) and v > 0 for v in pair):
            return (pair[0], pair[1]), keyword
    return None, None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(_first_value(value) or "").strip()
    return text or None


def decode_cxr(ds: Dataset, path: str | os.PathLike | None = None) -> tuple[np.ndarray, CXRMeta]:
    """Decode one single-frame grayscale DICOM image as a viewer displays it.

    Args:
        ds: a dataset read with its pixel data (:func:`read_dicom`); it is not modified.
        path: the file, used in error messages (default: ``ds.filename`` or ``"<dataset>"``).

    Returns:
        ``(image, meta)``: ``image`` float32, shape ``(Rows, Columns)`` (not transposed), values in ``[0, 1]``,
        bone bright; the display range is the first VOI LUT / window of the file, or, when the file has no VOI
        information (or only a degenerate one), the min-max of the Modality LUT output.

    Raises:
        TypeError: ``ds`` is not a pydicom Dataset.
        CXRDecodeError: see :data:`ERROR_CODES`.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, got {type(ds).__name__}")
    if path is None:
        filename = getattr(ds, "filename", None)
        path = filename if isinstance(filename, (str, os.PathLike)) else "<dataset>"
    p = os.fspath(path) if isinstance(path, os.PathLike) else str(path)

    sop = _sop_class(ds)
    _check_object(ds, p, sop)
    px = _pixel_module(ds, p)
    tsyntax, declared = _transfer_syntax(ds, p)
    stored = _stored_values(ds, px, tsyntax, p)
    gray = _grayscale_attributes(ds)
    image, voi = _display(stored, gray, ds, px, p)

    spacing, spacing_source = _spacing(ds, gray)
    meta = CXRMeta(
        source_format="dicom",
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        body_part=_text(ds, "BodyPartExamined"),
        photometric_interpretation=px.photometric,
        pixel_spacing=spacing,
        pixel_spacing_source=spacing_source,
        transfer_syntax=str(declared) if declared is not None else None,
        original_size=(px.rows, px.columns),
        bits_stored=px.bits_stored,
        sop_class_uid=str(sop) if sop is not None else None,
        voi=voi,
    )
    return image, meta


def load_cxr(path: str | os.PathLike) -> tuple[np.ndarray, CXRMeta]:
    """``decode_cxr(read_dicom(path), path)``: image float32 ``(Rows, Columns)`` in [0, 1], bone bright."""
    return decode_cxr(read_dicom(path), path)
