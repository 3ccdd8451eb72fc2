"""The one set of rejection codes of ingestion (``quarantine.csv``) and inference (``errors.csv``), and their writers.

Both jobs list every file they could not use as ``file, code, reason``: ``file`` is the file's pseudonym
(:func:`~mlvicx_monai.data.deid.file_pseudonym`: a keyed hash of the raw bytes of its path relative to the input
folder), never the path, since PACS folders are named after patients in any script and date format. An operator
who needs the paths asks for the local-only map (:func:`write_path_map`, ``--phi-path-map``), which is refused
inside the output folder.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from mlvicx_monai.data.dicom import ERROR_CODES
from mlvicx_monai.utils.atomic import atomic_write

__all__ = ["REJECTION_CODES", "FileRejected", "PathMapError", "check_path_map", "write_path_map", "write_rejections"]

#: Every code a rejected file can get, in ingestion and in inference, and what it means.
REJECTION_CODES: Mapping[str, str] = MappingProxyType(
    {
        **ERROR_CODES,
        # the walk
        "unreadable_folder": "a folder that cannot be listed (permission denied): the files in it were not read",
        "path_too_long": "the path is longer than the system's PATH_MAX or nested too deep to be opened",
        "not_a_regular_file": "a FIFO, socket, device, symbolic link to a folder (not followed) or broken link",
        # the header filter (mlvicx_monai.data.pacs.PacsFilter)
        "dicomdir": "a DICOMDIR index file; its images are read from their own files",
        "for_processing": "a DX 'For Processing' image (raw detector data)",
        "modality": "Modality is not one of the accepted projection radiography modalities",
        "body_part": "BodyPartExamined (or, without it, the descriptions) does not name an accepted body part",
        "view": "ViewPosition is not an accepted (frontal) view, or is missing",
        # pixel PHI
        "burned_in_annotation": "the header says BurnedInAnnotation = YES: patient data is drawn into the pixels",
        "burned_in_text": "text (a label, name, date) was detected in the pixels",
        # the job
        "duplicate": "the same image (SOP instance, same pixels) as another file, which is used instead",
        "conflicting_resend": "files with the same SOPInstanceUID but different pixels: none is used",
        "worker_died": "the process reading the file died (out-of-memory killer, a signal): not retried",
        "internal_error": "an unexpected error (a bug): the exception type and a scrubbed message",
        "no_label": "public dataset: the image has no row in the label file",
        "bad_mask": "SIIM: the image's RLE mask does not fit the image",
    }
)


class FileRejected(Exception):
    """A file that a job skips (ingestion: ``quarantine.csv``; inference: ``errors.csv``): a code from
    :data:`REJECTION_CODES` and a sentence for the user that quotes no identifying value.
    Decoding failures are :class:`~mlvicx_monai.data.dicom.CXRDecodeError`, which carries the same two fields."""

    def __init__(self, code: str, reason: str) -> None:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}; expected one of {sorted(REJECTION_CODES)}")
        super().__init__(reason)
        self.code, self.reason = code, reason

    def __reduce__(self):
        return type(self), (self.code, self.reason)


class PathMapError(ValueError):
    """The operator's path map would be written where it could be shipped with the outputs."""


def write_rejections(path: str | os.PathLike, rows: Iterable[tuple[str, str, str]]) -> None:
    """``file, code, reason`` rows (sorted) as a UTF-8 CSV, atomically."""
    rows = sorted(rows)
    for _, code, _ in rows:
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "code", "reason"])
            writer.writerows(rows)

    atomic_write(path, write)


def check_path_map(
    path: str | os.PathLike, outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike]
) -> Path:
    """The path map's location, refused inside an output folder (it holds the PHI of the paths) or an input one."""
    target = Path(path).expanduser().resolve()
    for folder, what in [*((o, "output") for o in outputs), *((i, "input") for i in inputs)]:
        folder = Path(folder).resolve()
        if target == folder or folder in target.parents:
            raise PathMapError(
                f"--phi-path-map {path} is inside the {what} folder {folder}; it holds the source paths (patient "
                "names, dates): write it to a local, access-controlled place outside the outputs and the export"
            )
    return target


def write_path_map(path: Path, entries: Iterable[tuple[str, str, str]]) -> None:
    """The operator's local map ``file, outcome, path, path_hex`` (pseudonym, what became of the file, relative
    source path), mode 0600.

    ``path`` is UTF-8 with undecodable bytes of the original name shown as ``\\xNN``; ``path_hex`` is the exact
    raw bytes. It identifies patients: never ship it with the outputs.
    """
    rows = sorted(
        (key, outcome, os.fsencode(rel).decode("utf-8", "backslashreplace"), os.fsencode(rel).hex())
        for key, outcome, rel in entries
    )

    def write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "outcome", "path", "path_hex"])
            writer.writerows(rows)

    atomic_write(path, write)
