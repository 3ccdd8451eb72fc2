"""One export file -> a decoded radiograph or a rejection: the file-level logic ingestion and inference share.

:func:`read_source` does, in order: DICOMDIR by name; content sniffing (PNG only where the job accepts pictures);
the header-first memory bound (:func:`~mlvicx_monai.data.dicom.read_dicom`, ``too_large``); the header filter
(:class:`~mlvicx_monai.data.pacs.PacsFilter`); ``BurnedInAnnotation = YES``; decoding; the burned-in text detector on
the decoded pixels; the pixel hash that tells a true re-send from a conflicting one. Every rejection is a
:class:`~mlvicx_monai.data.rejections.FileRejected` or :class:`~mlvicx_monai.data.dicom.CXRDecodeError` with a code of
:data:`~mlvicx_monai.data.rejections.REJECTION_CODES`. Warnings raised while reading the header are held back until the
header's PHI is known to the job's :class:`~mlvicx_monai.data.phi_guard.PHIGuard`, then re-emitted through it.

Burned-in PHI is quarantined, not masked: a mask can miss glyphs (the detector's recall is measured, not perfect) and
text drawn over anatomy cannot be removed without altering the image. ``allow_burned_in`` keeps both kinds.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from mlvicx_monai.data.burned_in import detect_burned_in_text
from mlvicx_monai.data.deid import phi_values
from mlvicx_monai.data.dicom import DEFAULT_MAX_PIXEL_BYTES, CXRDecodeError, CXRMeta, decode_cxr, read_dicom
from mlvicx_monai.data.pacs import PacsFilter, check_header, identifiers, is_dicomdir_name
from mlvicx_monai.data.phi_guard import PHIGuard
from mlvicx_monai.data.rejections import FileRejected
from mlvicx_monai.utils.hashing import sha256_file

__all__ = ["INGEST_HINTS", "SourceImage", "SourcePolicy", "read_source"]

#: How ingestion's command line changes each setting (appended to a rejection's reason).
INGEST_HINTS: dict[str, str] = {
    "modalities": "change with --modalities",
    "body_parts": "change with --body-parts",
    "views": "change with --views",
    "allow_missing_body_part": "pass --allow-missing-body-part to keep such images",
    "allow_missing_view": "pass --allow-missing-view to keep such images",
    "allow_for_processing": "or pass --allow-for-processing",
    "allow_burned_in": "pass --allow-burned-in only if the export's pixel text is known to carry no PHI",
    "detect_burned_in_text": "a false alarm? --no-text-detection turns the detector off, --allow-burned-in keeps "
                             "every image with pixel text",
}


@dataclass(frozen=True)
class SourcePolicy:
    """What a job accepts from a source file.

    Args:
        header_filter: the PACS filter of DICOM headers (None: every radiograph, any modality/view/body part).
        accept_png: PNG pictures are images too (inference); otherwise a PNG is ``not_dicom`` (PACS ingestion).
        allow_burned_in: keep images whose header says ``BurnedInAnnotation = YES`` or whose pixels show text.
        detect_burned_in_text: run :func:`~mlvicx_monai.data.burned_in.detect_burned_in_text` on the pixels.
        max_pixel_bytes: memory bound per file (see :func:`~mlvicx_monai.data.dicom.read_dicom`); None: none.
        hints: setting -> how this job changes it, appended to reasons (see :data:`INGEST_HINTS`).
    """

    header_filter: PacsFilter | None = field(default_factory=PacsFilter)
    accept_png: bool = False
    allow_burned_in: bool = False
    detect_burned_in_text: bool = True
    max_pixel_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES
    hints: dict[str, str] = field(default_factory=lambda: dict(INGEST_HINTS), compare=False)

    def to_dict(self) -> dict:
        """What changes the outcome of a file (for a resumable job's fingerprint)."""
        out = asdict(self)
        out.pop("hints")
        out["header_filter"] = self.header_filter.to_dict() if self.header_filter is not None else None
        return out

    def reject(self, code: str, reason: str, setting: str | None) -> FileRejected:
        hint = self.hints.get(setting) if setting else None
        return FileRejected(code, f"{reason} ({hint})" if hint else reason)


@dataclass
class SourceImage:
    """A usable radiograph: the decoded image and what identifies it.

    ``instance``, ``patient`` and ``study`` are raw identifiers (SOPInstanceUID, ...; for a PNG or a DICOM without
    SOPInstanceUID ``sha256:<file digest>``): pseudonymise them at once, never write them.
    """

    image: np.ndarray  # float32 (rows, cols) in [0, 1], bone bright
    meta: CXRMeta
    format: str  # "dicom" or "png"
    instance: str
    patient: str | None
    study: str | None
    pixel_sha256: str  # of the decoded image (shape + float32 bytes): equal for a lossless re-send in any syntax


def _pixel_sha256(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.shape}:{image.dtype}".encode())
    digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))  # the array's own buffer, no copy
    return digest.hexdigest()


def _check_png_size(path: str, max_pixel_bytes: int | None) -> None:
    """A PNG's declared size, from its IHDR chunk, before Pillow allocates it."""
    if max_pixel_bytes is None:
        return
    from PIL import Image

    try:
        with Image.open(path) as img:
            cols, rows = img.size
            planes = len(img.getbands())
            depth = 2 if img.mode in ("I;16", "I;16B", "I", "F") else 1
    except Exception:
        return  # load_png names what is wrong
    declared = rows * cols * planes * depth
    if declared > max_pixel_bytes:
        raise CXRDecodeError(
            path, "too_large",
            f"the PNG declares {cols} x {rows} pixels ({declared / 2**20:.0f} MiB), over the limit of "
            f"{max_pixel_bytes / 2**20:.0f} MiB per file; nothing was decoded",
        )


def read_source(path: str | os.PathLike, policy: SourcePolicy, guard: PHIGuard | None = None) -> SourceImage:
    """Read, check and decode one source file (see the module docstring).

    Args:
        path: the file.
        policy: what the job accepts.
        guard: the job's PHI guard; the header's PHI is registered with it before any warning is shown.

    Raises:
        FileRejected, CXRDecodeError: the file is not used; ``code`` says why.
    """
    from mlvicx_monai.data.images import load_png, sniff_format

    p = os.fspath(path)
    if is_dicomdir_name(os.path.basename(p)):
        raise FileRejected("dicomdir", "DICOMDIR index file; the images it lists are read from their own files")
    kind = sniff_format(p)
    if kind == "png" and policy.accept_png:
        _check_png_size(p, policy.max_pixel_bytes)
        image, meta = load_png(p)
        return _checked(image, meta, "png", f"sha256:{sha256_file(p)}", None, None, policy)
    if kind == "unknown" and policy.accept_png:
        raise FileRejected("not_dicom", "neither a DICOM nor a PNG file (judged by its content, not its name)")

    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        try:
            ds = read_dicom(p, max_pixel_bytes=policy.max_pixel_bytes)
        finally:
            pending = list(held)
    try:
        if guard is not None:
            guard.add_phi(phi_values(ds))
    finally:
        for item in pending:  # now shown through the guard, with this header's PHI known
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    if "PixelData" not in ds:  # SR, RT, presentation states, header-only exports: say what they are
        decode_cxr(ds, p)
    if policy.header_filter is not None:
        rejection = check_header(ds, policy.header_filter)
        if rejection is not None:
            raise policy.reject(rejection.code, rejection.reason, rejection.setting)
    if not policy.allow_burned_in and str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise policy.reject(
            "burned_in_annotation",
            "the header says BurnedInAnnotation = YES: patient data is drawn into the pixels, and no header "
            "de-identification removes it",
            "allow_burned_in",
        )
    image, meta = decode_cxr(ds, p)
    # the file digest stands in for a missing SOP instance / study identifier only: hashing every file cost ~5 ms of
    # the ~20 ms per 1955x1841 radiograph (pipelines.benchmarks.ingest_speed --stages)
    has_ids = all(str(ds.get(k, "") or "").strip() for k in ("SOPInstanceUID", "StudyInstanceUID"))
    patient, study, instance = identifiers(ds, fallback="" if has_ids else f"sha256:{sha256_file(p)}")
    return _checked(image, meta, "dicom", instance, patient, study, policy)


def _checked(image, meta, fmt, instance, patient, study, policy: SourcePolicy) -> SourceImage:
    if policy.detect_burned_in_text and not policy.allow_burned_in:
        found = detect_burned_in_text(image)
        if found is not None:
            rows, cols = image.shape
            where = ", ".join(
                f"{100 * x / cols:.0f}-{100 * (x + w) / cols:.0f} % across, "
                f"{100 * y / rows:.0f}-{100 * (y + h) / rows:.0f} % down"
                for x, y, w, h in found.boxes[:3]
            )
            raise policy.reject(
                "burned_in_text",
                f"{found.lines} line(s) of text ({'/'.join(map(str, found.glyphs[:3]))} glyphs) found in the pixels "
                f"({where}): burned-in patient data is likely",
                "detect_burned_in_text",
            )
    return SourceImage(image, meta, fmt, instance, patient, study, _pixel_sha256(image))
