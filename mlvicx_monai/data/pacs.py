"""Hospital PACS exports: which files to keep, and the identifiers to pseudonymise.

A PACS export is an arbitrary tree of DICOM files (with or without extension, maybe a DICOMDIR) holding
every modality and body part. :class:`PacsFilter` states which objects count as chest radiographs for
this pipeline; :func:`check_header` applies it to a header and returns the rejection, if any, with a
reason a user can act on. Identifiers (patient, study, instance) are returned raw by
:func:`identifiers` and must be pseudonymised by the caller before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from mlvicx_monai.data.rejections import FileRejected

__all__ = ["FileRejected", "PacsFilter", "Rejection", "check_header", "identifiers", "is_dicomdir_name"]

#: SOP classes of projection radiographs whose pixels are meant for display.
_PRESENTATION_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
}
_FOR_PROCESSING_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

#: Words in study/series/protocol descriptions that identify a chest examination when
#: BodyPartExamined is absent (common in CR exports).
_CHEST_WORDS = re.compile(r"\b(CHEST|THORA\w*|TORAX|LUNG\w*|CXR|POUMON\w*|BRUST\w*)\b")


@dataclass(frozen=True)
class PacsFilter:
    """Which DICOM objects of a PACS export are ingested.

    Args:
        modalities: accepted Modality values.
        views: accepted ViewPosition values (frontal by default: PA and AP).
        body_parts: accepted BodyPartExamined values.
        allow_missing_body_part: keep images with no BodyPartExamined when their study, series or
            protocol description does not name a chest either. Off by default: a hand radiograph in
            a chest pretraining set is worse than a missed chest image.
        allow_missing_view: keep images with no ViewPosition.
        allow_for_processing: keep DX "For Processing" images (raw detector data, not display-ready).
    """

    modalities: tuple[str, ...] = ("CR", "DX")
    views: tuple[str, ...] = ("PA", "AP")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX")
    allow_missing_body_part: bool = False
    allow_missing_view: bool = False
    allow_for_processing: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {
            "modalities": list(self.modalities),
            "views": list(self.views),
            "body_parts": list(self.body_parts),
            "allow_missing_body_part": self.allow_missing_body_part,
            "allow_missing_view": self.allow_missing_view,
            "allow_for_processing": self.allow_for_processing,
        }


@dataclass(frozen=True)
class Rejection:
    """Why a file is not ingested: a short machine code, a sentence for the user, and the :class:`PacsFilter` setting
    that would keep it (each job names its own option for it: ``--views`` in ingestion, ``filter_headers`` in
    inference), or None."""

    code: str
    reason: str
    setting: str | None = None


def is_dicomdir_name(name: str) -> bool:
    """True for the DICOMDIR index file of a media export (by its standard file name)."""
    return name.upper() == "DICOMDIR"


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def check_header(ds: Dataset, policy: PacsFilter) -> Rejection | None:
    """Apply ``policy`` to a header; ``None`` means the object is a chest radiograph to ingest.

    Only technical attributes (SOP class, modality, body part, view, descriptions) are read, and no
    reason quotes an identifying value. The reason names no command-line option: the caller adds its own for
    :attr:`Rejection.setting`.
    """
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if media_class == _MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return Rejection("dicomdir", "DICOMDIR index file; the images it lists are read from their own files")
    sop_class = str(ds.get("SOPClassUID", "") or media_class)
    if sop_class in _FOR_PROCESSING_SOP_CLASSES and not policy.allow_for_processing:
        return Rejection(
            "for_processing",
            "DX 'For Processing' image (raw detector data, not display-ready); export the 'For Presentation' version",
            "allow_for_processing",
        )
    modality = _text(ds, "Modality")
    if modality not in policy.modalities:
        shown = modality or "missing"
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        return Rejection(
            "modality",
            f"Modality {shown} ({name}) is not one of {'/'.join(policy.modalities)}; only projection radiographs "
            "are used",
            "modalities",
        )
    body_part = _text(ds, "BodyPartExamined")
    if body_part:
        if body_part not in policy.body_parts:
            return Rejection(
                "body_part", f"BodyPartExamined {body_part} is not one of {'/'.join(policy.body_parts)}", "body_parts"
            )
    else:
        descriptions = " ".join(_text(ds, k) for k in ("StudyDescription", "SeriesDescription", "ProtocolName"))
        if not _CHEST_WORDS.search(descriptions) and not policy.allow_missing_body_part:
            return Rejection(
                "body_part",
                "BodyPartExamined is missing and no study/series/protocol description names a chest",
                "allow_missing_body_part",
            )
    view = _text(ds, "ViewPosition")
    if view:
        if view not in policy.views:
            return Rejection(
                "view", f"ViewPosition {view} is not one of {'/'.join(policy.views)} (frontal views are kept)", "views"
            )
    elif not policy.allow_missing_view:
        return Rejection("view", "ViewPosition is missing", "allow_missing_view")
    return None


def identifiers(ds: Dataset, fallback: str) -> tuple[str, str, str]:
    """Raw (patient, study, instance) identifiers of a header, to be pseudonymised immediately.

    Patient: IssuerOfPatientID + PatientID, else PatientName + PatientBirthDate, else the study.
    Study: StudyInstanceUID, else AccessionNumber, else ``fallback``. Instance: SOPInstanceUID,
    else ``fallback`` (e.g. a digest of the file), so a re-sent image maps to the same id.
    """
    study = str(ds.get("StudyInstanceUID", "") or ds.get("AccessionNumber", "") or "").strip() or fallback
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if patient_id:
        patient = f"{str(ds.get('IssuerOfPatientID', '') or '').strip()}|{patient_id}"
    else:
        name = str(ds.get("PatientName", "") or "").strip()
        birth = str(ds.get("PatientBirthDate", "") or "").strip()
        patient = f"name|{name}|{birth}" if name else f"study|{study}"
    instance = str(ds.get("SOPInstanceUID", "") or "").strip() or fallback
    return patient, study, instance
