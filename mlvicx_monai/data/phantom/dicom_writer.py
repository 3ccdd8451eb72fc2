"""Write rendered radiographs as DICOM Part-10 files, in any transfer syntax a PACS hands out.

:class:`PixelEncoding` describes how display values become stored values (bits stored, signedness,
photometric interpretation, rescale, VOI window or LUT); :func:`set_pixels` fills the Image Pixel,
Modality LUT and VOI LUT modules; :func:`write_dicom` encodes the Pixel Data in the requested transfer
syntax and writes the file (optionally without File Meta Information, or without its Transfer Syntax
UID, as some real releases are).

The stored values are built so that a correct viewer pipeline (stored -> rescale -> VOI -> invert
MONOCHROME1) gives back the rendered image, bone bright, up to the VOI function's curve.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as _uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

__all__ = [
    "LOSSY_SYNTAXES",
    "TRANSFER_SYNTAXES",
    "PixelEncoding",
    "dcmtk_jpeg_available",
    "new_dataset",
    "set_pixels",
    "write_dicom",
]

#: Short names of the transfer syntaxes this writer can produce.
TRANSFER_SYNTAXES: dict[str, str] = {
    "implicit_le": _uid.ImplicitVRLittleEndian,
    "explicit_le": _uid.ExplicitVRLittleEndian,
    "explicit_be": _uid.ExplicitVRBigEndian,
    "deflated": _uid.DeflatedExplicitVRLittleEndian,
    "rle": _uid.RLELossless,
    "jpeg_baseline": _uid.JPEGBaseline8Bit,
    "jpeg_lossless": _uid.JPEGLossless,
    "jpeg_lossless_sv1": _uid.JPEGLosslessSV1,
    "jpegls_lossless": _uid.JPEGLSLossless,
    "jpegls_near": _uid.JPEGLSNearLossless,
    "j2k_lossless": _uid.JPEG2000Lossless,
    "j2k": _uid.JPEG2000,
}
LOSSY_SYNTAXES = frozenset({"jpeg_baseline", "jpegls_near", "j2k"})
_LOSSY_METHOD = {"jpeg_baseline": "ISO_10918_1", "jpegls_near": "ISO_14495_1", "j2k": "ISO_15444_1"}
_VOI_KINDS = ("window", "windows", "lut", "none")
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class PixelEncoding:
    """How a ``[0, 1]`` bone-bright image is stored.

    Args:
        bits_stored: 8..16 (BitsAllocated is 8 for 8 bits, else 16).
        signed: PixelRepresentation 1 (two's complement).
        photometric: MONOCHROME1 (high values dark) or MONOCHROME2.
        slope, intercept: Modality LUT (RescaleSlope / RescaleIntercept); ``rescale`` writes them.
        voi: "window" (one WindowCenter/Width), "windows" (three), "lut" (VOI LUT Sequence) or "none".
        voi_function: VOILUTFunction for windows (LINEAR, LINEAR_EXACT, SIGMOID).
        data_range: the fractions of the representable stored range that image values 0 and 1 map to.
        window_fill: window width relative to the data range (< 1 clips the extremes).
    """

    bits_stored: int = 12
    signed: bool = False
    photometric: str = "MONOCHROME2"
    slope: float = 1.0
    intercept: float = 0.0
    rescale: bool = True
    voi: str = "window"
    voi_function: str = "LINEAR"
    data_range: tuple[float, float] = (0.05, 0.95)
    window_fill: float = 1.0

    def __post_init__(self) -> None:
        if not 8 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be in [8, 16], got {self.bits_stored}")
        if self.photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {self.photometric!r}")
        if self.voi not in _VOI_KINDS:
            raise ValueError(f"voi must be one of {_VOI_KINDS}, got {self.voi!r}")
        if self.voi_function not in _VOI_FUNCTIONS:
            raise ValueError(f"voi_function must be one of {_VOI_FUNCTIONS}, got {self.voi_function!r}")
        lo, hi = self.data_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"data_range must satisfy 0 <= lo < hi <= 1, got {self.data_range}")
        if self.slope <= 0:
            raise ValueError(f"slope must be positive, got {self.slope}")
        if self.voi == "lut" and (
            self.slope != 1.0
            or self.intercept != int(self.intercept)
            or self.intercept < 0
            or self.signed
            or self.bits_stored > 14
        ):
            raise ValueError(
                "a VOI LUT needs unsigned pixels, slope 1, a non-negative integer intercept and at most 14 bits stored"
            )
        if not 0.3 <= self.window_fill <= 1.5:
            raise ValueError(f"window_fill must be in [0.3, 1.5], got {self.window_fill}")

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored == 8 else 16

    def stored_limits(self) -> tuple[int, int]:
        """Representable stored values."""
        b = self.bits_stored
        return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if self.signed else (0, (1 << b) - 1)

    def data_limits(self) -> tuple[int, int]:
        """Stored values that image values 0 and 1 (before MONOCHROME1 inversion) map to."""
        smin, smax = self.stored_limits()
        span = smax - smin
        return round(smin + self.data_range[0] * span), round(smin + self.data_range[1] * span)

    @property
    def dtype(self) -> np.dtype:
        if self.bits_allocated == 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        return np.dtype(np.int16 if self.signed else np.uint16)


def _ds(value: float) -> str:
    """A DS string of at most 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.6g}"


def stored_values(image: np.ndarray, enc: PixelEncoding) -> np.ndarray:
    """Stored pixel values of a ``[0, 1]`` bone-bright image under ``enc``."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img.shape}")
    d = 1.0 - img if enc.photometric == "MONOCHROME1" else img
    lo, hi = enc.data_limits()
    smin, smax = enc.stored_limits()
    stored = np.rint(lo + np.clip(d, 0.0, 1.0) * (hi - lo))
    return np.clip(stored, smin, smax).astype(enc.dtype)


def set_pixels(ds: Dataset, image: np.ndarray, enc: PixelEncoding) -> np.ndarray:
    """Fill the Image Pixel, Modality LUT and VOI LUT modules of ``ds``; returns the stored array."""
    stored = stored_values(image, enc)
    rows, cols = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = enc.bits_allocated
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = int(enc.signed)
    if enc.rescale:
        ds.RescaleIntercept = _ds(enc.intercept)
        ds.RescaleSlope = _ds(enc.slope)
        ds.RescaleType = "US"
    lo, hi = enc.data_limits()
    m_lo, m_hi = enc.slope * lo + enc.intercept, enc.slope * hi + enc.intercept
    span = (m_hi - m_lo) * enc.window_fill
    mid = 0.5 * (m_lo + m_hi)
    if enc.voi in ("window", "windows"):
        if enc.voi_function == "LINEAR":
            centre, width = mid + 0.5, span + 1.0
        elif enc.voi_function == "LINEAR_EXACT":
            centre, width = mid, span
        else:  # SIGMOID: the curve reaches ~0.05 / 0.95 at the data limits
            centre, width = mid, span * 0.55
        if enc.voi == "window":
            ds.WindowCenter, ds.WindowWidth = _ds(centre), _ds(width)
        else:
            ds.WindowCenter = [_ds(centre), _ds(centre + 0.06 * span), _ds(centre)]
            ds.WindowWidth = [_ds(width), _ds(0.6 * width), _ds(1.4 * width)]
            ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER", "SOFTER"]
        if enc.voi_function != "LINEAR" or enc.voi == "windows":
            ds.VOILUTFunction = enc.voi_function
    elif enc.voi == "lut":
        n = int(hi - lo + 1)
        t = np.linspace(0.0, 1.0, n)
        curve = 0.5 * (t**0.85) + 0.5 * (t * t * (3 - 2 * t))  # gentle S with a lifted toe
        item = Dataset()
        item.LUTDescriptor = [n if n < 65536 else 0, int(m_lo), 16]
        item.add_new(0x00283006, "US", [int(v) for v in np.rint(curve * 65535)])
        item.LUTExplanation = "DEFAULT CHEST"
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
    return stored


def new_dataset(sop_class: str, sop_instance: str) -> Dataset:
    """An empty dataset with its File Meta Information (the transfer syntax is set when writing)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def dcmtk_jpeg_available() -> bool:
    """True when dcmtk's ``dcmcjpeg`` (JPEG lossless process 14 encoder) is on the PATH."""
    return shutil.which("dcmcjpeg") is not None


def _jpeg_baseline(stored: np.ndarray, quality: int) -> bytes:
    if stored.dtype != np.uint8:
        raise ValueError("JPEG baseline needs 8-bit unsigned pixels (bits_stored=8, signed=False)")
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=quality, optimize=False, subsampling=0)
    return buf.getvalue()


def _dcmtk_lossless(ds: Dataset, sv1: bool) -> bytes:
    if not dcmtk_jpeg_available():
        raise RuntimeError("dcmcjpeg (dcmtk) is not installed: JPEG lossless process 14 cannot be written")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        ds.file_meta.TransferSyntaxUID = _uid.ExplicitVRLittleEndian
        ds.save_as(src, enforce_file_format=True, implicit_vr=False, little_endian=True)
        flag = "+e1" if sv1 else "+el"
        proc = subprocess.run(["dcmcjpeg", flag, "+un", src, dst], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"dcmcjpeg failed ({proc.returncode}): {proc.stderr.strip()}")
        return Path(dst).read_bytes()


def write_dicom(
    ds: Dataset,
    path: str | os.PathLike,
    transfer_syntax: str = "explicit_le",
    *,
    stored: np.ndarray | None = None,
    meta: str = "full",
    jpeg_quality: int = 90,
    j2k_ratio: float = 12.0,
) -> str:
    """Encode ``ds`` (with native little-endian Pixel Data from :func:`set_pixels`) and write it.

    Args:
        ds: the dataset, with ``file_meta`` from :func:`new_dataset`.
        path: output file (parents are created).
        transfer_syntax: a key of :data:`TRANSFER_SYNTAXES`.
        stored: the stored array returned by :func:`set_pixels` (needed for compressed syntaxes).
        meta: "full" (Part-10), "no_transfer_syntax" (preamble and meta group without (0002,0010)) or
            "none" (bare dataset, implicit VR little endian, no preamble: readers need ``force``).
        jpeg_quality, j2k_ratio: lossy settings.

    Returns:
        The transfer syntax UID of the Pixel Data encoding.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; known: {', '.join(TRANSFER_SYNTAXES)}")
    if meta not in ("full", "no_transfer_syntax", "none"):
        raise ValueError(f"meta must be 'full', 'no_transfer_syntax' or 'none', got {meta!r}")
    if meta != "full" and transfer_syntax not in ("implicit_le", "explicit_le"):
        raise ValueError("files without a transfer syntax must use a native little-endian encoding")
    ts = TRANSFER_SYNTAXES[transfer_syntax]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_pixels = "PixelData" in ds
    if transfer_syntax in LOSSY_SYNTAXES and has_pixels:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = _LOSSY_METHOD[transfer_syntax]
    if transfer_syntax in ("jpeg_lossless", "jpeg_lossless_sv1") and has_pixels:
        path.write_bytes(_dcmtk_lossless(ds, transfer_syntax.endswith("sv1")))
        return ts
    if has_pixels and transfer_syntax not in ("implicit_le", "explicit_le", "explicit_be", "deflated"):
        if stored is None:
            raise ValueError(f"{transfer_syntax} needs the stored array returned by set_pixels")
        if transfer_syntax == "jpeg_baseline":
            frame = _jpeg_baseline(stored, jpeg_quality)
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = ts
            ratio = stored.nbytes / max(len(frame), 1)
            ds.LossyImageCompressionRatio = _ds(ratio)
        else:
            kwargs: dict = {}
            if transfer_syntax == "j2k":
                kwargs["j2k_cr"] = [j2k_ratio]
                ds.LossyImageCompressionRatio = _ds(j2k_ratio)
            elif transfer_syntax == "jpegls_near":
                kwargs["jls_error"] = 2
            ds.compress(ts, stored, generate_instance_uid=False, **kwargs)
    elif transfer_syntax == "explicit_be" and has_pixels and ds.BitsAllocated == 16:
        arr = np.frombuffer(ds.PixelData, dtype="<u2")
        ds.PixelData = arr.astype(">u2").tobytes()
    if meta == "none":
        bare = Dataset()
        bare.update(ds)
        pydicom.dcmwrite(path, bare, implicit_vr=True, little_endian=True)
        return ts
    if meta == "no_transfer_syntax":
        ds.preamble = b"\0" * 128
        if "TransferSyntaxUID" in ds.file_meta:
            del ds.file_meta.TransferSyntaxUID
        implicit = transfer_syntax == "implicit_le"
        pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True)
        return ts
    ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(
        path,
        enforce_file_format=True,
        implicit_vr=ts == _uid.ImplicitVRLittleEndian,
        little_endian=ts != _uid.ExplicitVRBigEndian,
    )
    return ts
