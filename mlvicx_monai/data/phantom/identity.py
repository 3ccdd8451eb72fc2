"""Fake but realistic-looking identities for DICOM headers (names, IDs, places, dates, UIDs).

Every value is drawn from a seeded generator, so the same seed writes the same PHI. Values are
distinctive (long, mixed) so a test can search outputs for leaks without false alarms.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

__all__ = ["Person", "Site", "deterministic_uid", "dicom_date", "fake_uuid", "hex_id", "make_person", "make_site"]

_FAMILY = (
    "DOE",
    "SMITH",
    "JOHNSON",
    "WILLIAMS",
    "BROWN",
    "GARCIA",
    "MILLER",
    "DAVIS",
    "RODRIGUEZ",
    "MARTINEZ",
    "HERNANDEZ",
    "LOPEZ",
    "GONZALEZ",
    "WILSON",
    "ANDERSON",
    "THOMAS",
    "TAYLOR",
    "MOORE",
    "JACKSON",
    "MARTIN",
    "LEE",
    "PEREZ",
    "THOMPSON",
    "WHITE",
    "HARRIS",
    "SANCHEZ",
    "CLARK",
    "RAMIREZ",
    "LEWIS",
    "ROBINSON",
    "NGUYEN",
    "OKAFOR",
    "KOWALSKI",
    "MULLER",
    "ROSSI",
    "TANAKA",
    "IVANOV",
    "SILVA",
    "HANSEN",
    "DUBOIS",
)
_GIVEN_F = (
    "JANE",
    "MARY",
    "PATRICIA",
    "LINDA",
    "BARBARA",
    "ELIZABETH",
    "MARIA",
    "SUSAN",
    "MARGARET",
    "DOROTHY",
    "AMARA",
    "INGRID",
    "SOFIA",
    "YUKI",
    "FATIMA",
    "OLGA",
)
_GIVEN_M = (
    "JOHN",
    "ROBERT",
    "MICHAEL",
    "WILLIAM",
    "DAVID",
    "RICHARD",
    "JOSEPH",
    "THOMAS",
    "CHARLES",
    "DANIEL",
    "KWAME",
    "LARS",
    "MATTEO",
    "HIROSHI",
    "AHMED",
    "DMITRI",
)
_INSTITUTIONS = (
    ("ST. BARNABAS MERCY GENERAL HOSPITAL", "1400 HARBOR VIEW RD^^SPRINGFIELD^OR^97477"),
    ("NORTHGATE UNIVERSITY MEDICAL CENTER", "22 KELLERMAN AVE^^ASHFORD^CT^06278"),
    ("LAKESHORE COMMUNITY CLINIC RADIOLOGY", "9 PIER STREET^^DULUTH^MN^55802"),
)
_STATIONS = ("CRROOM2", "DXPORT07", "RAD-ER-1", "FCR5000-B", "DRX-EVO-3")
_DEPARTMENTS = ("DIAGNOSTIC IMAGING", "EMERGENCY RADIOLOGY", "THORACIC IMAGING")


@dataclass(frozen=True)
class Person:
    """A patient's identifying attributes as they appear in headers."""

    name: str  # DICOM PN, e.g. DOE^JANE^M
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str
    other_id: str


@dataclass(frozen=True)
class Site:
    """Where and by whom a study was acquired."""

    institution: str
    address: str
    department: str
    station: str
    device_serial: str
    referring: str
    operator: str
    reader: str


def _pn(rng: np.random.Generator, sex: str) -> str:
    family = str(rng.choice(_FAMILY))
    given = str(rng.choice(_GIVEN_F if sex == "F" else _GIVEN_M))
    middle = chr(ord("A") + int(rng.integers(0, 26)))
    return f"{family}^{given}^{middle}"


def make_person(rng: np.random.Generator, sex: str, age: int, study_year: int = 2021) -> Person:
    """A patient identity consistent with ``sex`` and ``age``."""
    if sex not in ("M", "F"):
        raise ValueError(f"sex must be 'M' or 'F', got {sex!r}")
    birth = _dt.date(study_year - age, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))
    return Person(
        name=_pn(rng, sex),
        patient_id=f"MRN{int(rng.integers(10_000_000, 99_999_999))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        other_id=f"HX-{int(rng.integers(100_000, 999_999))}-{chr(ord('A') + int(rng.integers(0, 26)))}",
    )


def make_site(rng: np.random.Generator) -> Site:
    """An acquiring site with its people."""
    inst, addr = _INSTITUTIONS[int(rng.integers(0, len(_INSTITUTIONS)))]
    return Site(
        institution=inst,
        address=addr,
        department=str(rng.choice(_DEPARTMENTS)),
        station=str(rng.choice(_STATIONS)),
        device_serial=f"SN{int(rng.integers(100_000, 999_999))}X",
        referring=_pn(rng, "M" if rng.random() < 0.5 else "F") + "^^DR",
        operator=_pn(rng, "M" if rng.random() < 0.5 else "F"),
        reader=_pn(rng, "M" if rng.random() < 0.5 else "F") + "^^DR",
    )


def deterministic_uid(*parts: object) -> str:
    """A valid DICOM UID derived from ``parts`` only (pydicom's root, SHA-512 of the parts)."""
    if not parts:
        raise ValueError("deterministic_uid needs at least one entropy part")
    return str(generate_uid(entropy_srcs=[repr(p) for p in parts]))


def fake_uuid(*parts: object) -> str:
    """A version-4-looking UUID string derived from ``parts`` (RSNA-style patient ids)."""
    digest = hashlib.sha256(("|".join(repr(p) for p in parts)).encode()).digest()[:16]
    return str(uuid.UUID(bytes=digest, version=4))


def hex_id(*parts: object) -> str:
    """A 32-hex-digit identifier derived from ``parts`` (VinDr-style image ids)."""
    return hashlib.md5(("|".join(repr(p) for p in parts)).encode()).hexdigest()


def dicom_date(rng: np.random.Generator, start_year: int = 2015, end_year: int = 2023) -> _dt.date:
    """A random calendar date."""
    start = _dt.date(start_year, 1, 1).toordinal()
    end = _dt.date(end_year, 12, 31).toordinal()
    return _dt.date.fromordinal(int(rng.integers(start, end + 1)))
