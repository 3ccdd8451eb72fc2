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
import logging
import os
import re
import secrets
from pathlib import Path

__all__ = [
    "PHI_KEYWORDS",
    "DeidSecretError",
    "Pseudonymizer",
    "default_secret_path",
    "file_pseudonym",
    "phi_values",
    "phi_tokens",
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

logger = logging.getLogger(__name__)


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
        cls,
        path: str | os.PathLike | None = None,
        *,
        create: bool = False,
        outputs: list[Path] | None = None,
    ) -> "Pseudonymizer":
        """Load the secret from ``path`` (default: :func:`default_secret_path`).

        A missing file named explicitly (``path``: ``--secret-file``, ``deid_secret``) is an error unless ``create``:
        a typo in the name would otherwise silently re-key every pseudonym. The default location
        (``$MLVICX_DEID_SECRET_FILE``, else ``~/.config/mlvicx-monai/deid.secret``) is generated on first use, with a
        warning naming it.

        Args:
            path: the secret file.
            create: generate a new random secret when the file does not exist (``--new-secret``).
            outputs: output folders the secret must not live in, nor be hard-linked into (it would be shipped
                with the data).

        Raises:
            DeidSecretError: missing without ``create``, too short, inside an output folder or hard-linked into one.
        """
        explicit = bool(path)
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
            if explicit and not create:
                raise DeidSecretError(
                    f"de-identification secret {secret_path} does not exist. If the name is mistyped, fix it: a new "
                    "secret gives every patient, study and image new pseudonyms. To start a new secret on purpose, "
                    "pass --new-secret (bundles: --new_secret True) and keep the file it creates"
                )
            secret_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            logger.warning(
                "created a NEW de-identification secret at %s: keep it (and back it up) to keep pseudonyms stable",
                secret_path,
            )
        for out in outputs or []:
            linked = _hard_links_inside(secret_path, Path(out))
            if linked:
                raise DeidSecretError(
                    f"the de-identification secret {secret_path} is hard-linked into the output folder {out} "
                    f"({linked}); remove that link (anyone with the outputs could otherwise re-identify patients)"
                )
        text = secret_path.read_text().strip()
        if len(text) < _MIN_SECRET_BYTES:
            raise DeidSecretError(
                f"de-identification secret {secret_path} holds {len(text)} characters; at least "
                f"{_MIN_SECRET_BYTES} are needed (delete it and pass --new-secret to have a new one generated)"
            )
        return cls(text.encode("utf-8"))

    def check_value(self) -> str:
        """A keyed digest that tells two secrets apart without revealing either (stored with resumable state)."""
        return self.pseudonym("secret-check", kind="check", length=16)

    def pseudonym(self, value: str | bytes, kind: str = "patient", length: int = 16) -> str:
        """Pseudonym of ``value`` in namespace ``kind``: ``kind[0] + hex`` of ``length`` characters.

        ``value`` may be bytes (e.g. a raw file path, ``os.fsencode``): any byte sequence works, and a ``str``
        gives the pseudonym of its UTF-8 bytes (lone surrogates from undecodable file names are encoded back to
        their original bytes, so ``pseudonym(name) == pseudonym(os.fsencode(name))``).
        """
        if not 8 <= length <= 64:
            raise ValueError(f"length must be in [8, 64], got {length}")
        data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        digest = hmac.new(self._secret, kind.encode("utf-8") + b":" + data, hashlib.sha256).hexdigest()
        return f"{kind[:1]}{digest[:length]}"


def file_pseudonym(pseudo: Pseudonymizer, rel: str | bytes) -> str:
    """The id of a source file in ``quarantine.csv``, ``errors.csv``, logs and resumable state: a keyed pseudonym
    (``f`` + 32 hex) of the raw bytes of its path relative to the input root (``os.fsencode``), so any name
    works, Latin-1, invalid UTF-8 or not."""
    return pseudo.pseudonym(os.fsencode(rel) if isinstance(rel, str) else rel, kind="file", length=32)


def _hard_links_inside(path: Path, folder: Path) -> str | None:
    """A file under ``folder`` that is the same inode as ``path`` (a hard link), or None; walks ``folder`` only
    when ``path`` has more than one link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_nlink < 2 or not folder.is_dir():
        return None
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                other = os.stat(os.path.join(root, name), follow_symlinks=True)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return os.path.relpath(os.path.join(root, name), folder)
    return None


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


_WORD = re.compile(r"[^\W_]+")  # Unicode letters and digits: Cyrillic, CJK and accented names split like ASCII ones
_UID_LIKE = re.compile(r"[0-9]+(?:\.[0-9]+)+")
_MIN_TOKEN = 3


def phi_tokens(values: set[str] | list[str]) -> set[str]:
    """Normalised tokens of PHI values, for matching them inside messages.

    Dotted numbers (UIDs) are kept whole; everything else is split into upper-cased runs of 3+ Unicode letters or
    digits (``ЩЪЮЯ^ЁЖИК`` -> ``ЩЪЮЯ``, ``ЁЖИК``; ``MÜLLER^JÜRGEN`` -> ``MÜLLER``, ``JÜRGEN``), so a name such as
    ``DOE^JANE`` is caught as ``DOE_JANE`` or ``Jane Doe`` too.
    """
    tokens: set[str] = set()
    for value in values:
        text = str(value).strip()
        if _UID_LIKE.fullmatch(text):
            tokens.add(text)
            continue
        tokens.update(t.upper() for t in _WORD.findall(text) if len(t) >= _MIN_TOKEN)
    return tokens
