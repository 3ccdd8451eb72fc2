"""De-identification: keyed pseudonyms and the list of DICOM attributes treated as PHI.

Pseudonyms are ``HMAC-SHA256(secret, kind + ":" + value)``, truncated. Without the secret they cannot be
reversed or recomputed from a guessed identifier (unlike a plain hash of a PatientID), yet the same
input always maps to the same pseudonym, which keeps re-runs and incremental ingests stable. The secret
lives outside every output folder: a user-given file, ``$MLVICX_DEID_SECRET_FILE``, or one generated
once at ``~/.config/mlvicx-monai/deid.secret`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

__all__ = [
    "PHI_KEYWORDS",
    "DeidSecretError",
    "Pseudonymizer",
    "default_secret_path",
    "phi_values",
    "phi_tokens",
    "redact",
]

#: DICOM keywords whose values identify a patient, a visit or a place (DICOM PS3.15 Annex E basic
#: profile, restricted to what radiograph exports carry). Nothing read from these reaches any output.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MilitaryRank",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "StationName",
    "DeviceSerialNumber",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
)

_MIN_SECRET_BYTES = 16


class DeidSecretError(RuntimeError):
    """The pseudonymisation secret is missing, too short, or would be written into an output folder."""


def default_secret_path() -> Path:
    """Where the secret is kept when the user names none: ``$MLVICX_DEID_SECRET_FILE`` or the user config."""
    env = os.environ.get("MLVICX_DEID_SECRET_FILE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".config" / "mlvicx-monai" / "deid.secret"


class Pseudonymizer:
    """Stable keyed pseudonyms for identifiers read from headers or label files.

    Args:
        secret: at least 16 bytes of key material.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < _MIN_SECRET_BYTES:
            raise DeidSecretError(f"the de-identification secret must be at least {_MIN_SECRET_BYTES} bytes")
        self._secret = bytes(secret)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike | None = None, *, create: bool = True, outputs: list[Path] | None = None
    ) -> "Pseudonymizer":
        """Load the secret from ``path`` (default: :func:`default_secret_path`), creating it if allowed.

        Args:
            path: the secret file.
            create: generate a new random secret when the file does not exist.
            outputs: output folders the secret must not live in (it would be shipped with the data).
        """
        secret_path = Path(path).expanduser() if path else default_secret_path()
        resolved = secret_path.resolve()
        for out in outputs or []:
            out_resolved = Path(out).resolve()
            if resolved == out_resolved or out_resolved in resolved.parents:
                raise DeidSecretError(
                    f"the de-identification secret {secret_path} is inside the output folder {out}; "
                    "keep it elsewhere (anyone with the outputs could otherwise re-identify patients)"
                )
        if not secret_path.exists():
            if not create:
                raise DeidSecretError(f"de-identification secret {secret_path} does not exist")
            secret_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        text = secret_path.read_text().strip()
        if len(text) < _MIN_SECRET_BYTES:
            raise DeidSecretError(
                f"de-identification secret {secret_path} holds {len(text)} characters; at least "
                f"{_MIN_SECRET_BYTES} are needed (delete it to have a new one generated)"
            )
        return cls(text.encode("utf-8"))

    def pseudonym(self, value: str, kind: str = "patient", length: int = 16) -> str:
        """Pseudonym of ``value`` in namespace ``kind``: ``kind[0] + hex`` of ``length`` characters."""
        if not 8 <= length <= 64:
            raise ValueError(f"length must be in [8, 64], got {length}")
        digest = hmac.new(self._secret, f"{kind}:{value}".encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{kind[:1]}{digest[:length]}"


def phi_values(dataset) -> set[str]:
    """Every non-trivial PHI string in a pydicom dataset (for audits and tests that search outputs).

    Person names are split into their components as well, since a name can leak in parts.
    """
    values: set[str] = set()
    for keyword in PHI_KEYWORDS:
        element = dataset.get(keyword)
        if element is None:
            continue
        raw = element if not hasattr(element, "value") else element.value
        items = raw if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            values.add(text)
            if "^" in text:
                values.update(part for part in text.split("^") if len(part) >= 3)
    return {v for v in values if len(v) >= 3}


_TOKEN_SPLIT = re.compile(r"[^0-9A-Za-z]+")
_UID_LIKE = re.compile(r"[0-9]+(?:\.[0-9]+)+")
_MIN_TOKEN = 3


def phi_tokens(values: set[str] | list[str]) -> set[str]:
    """Normalised tokens of PHI values, for matching them inside paths and messages.

    Dotted numbers (UIDs) are kept whole; everything else is split into upper-cased alphanumeric runs of
    3+ characters, so a name such as ``DOE^JANE`` is caught as ``DOE_JANE`` or ``Jane Doe`` too.
    """
    tokens: set[str] = set()
    for value in values:
        text = str(value).strip()
        if _UID_LIKE.fullmatch(text):
            tokens.add(text)
            continue
        tokens.update(t.upper() for t in _TOKEN_SPLIT.split(text) if len(t) >= _MIN_TOKEN)
    return tokens


def redact(text: str, is_phi_token) -> str:
    """Replace every PHI token of ``text`` (see :func:`phi_tokens`) by ``[PHI]``.

    Args:
        text: a path or message.
        is_phi_token: predicate on a normalised token (e.g. a digest lookup, so that the PHI itself
            never needs to be stored).
    """

    def words(segment: str) -> str:
        parts = re.split(r"([^0-9A-Za-z]+)", segment)
        return "".join(
            "[PHI]" if len(p) >= _MIN_TOKEN and p.isalnum() and is_phi_token(p.upper()) else p for p in parts
        )

    out, last = [], 0
    for match in _UID_LIKE.finditer(text):
        out.append(words(text[last : match.start()]))
        uid = match.group(0)
        out.append("[PHI]" if is_phi_token(uid) else words(uid))
        last = match.end()
    out.append(words(text[last:]))
    return "".join(out)
