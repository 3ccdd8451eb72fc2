"""A hostile hand-made PACS export, written by the tests themselves with pydicom (not the project's phantom).

:func:`write_hostile_export` writes a few dozen files covering every case of issue 9 and returns what ingestion and
inference must make of each: file names that are not UTF-8, Cyrillic / CJK / accented patient names in headers and
folder names, dates in other formats, a patient-named folder whose only file has no readable header, a pydicom
warning that quotes a UID, a dicom.py warning that would name the path, a conflicting re-send, a true re-send,
``BurnedInAnnotation = YES``, text rendered into the pixels, a path over PATH_MAX, an unreadable folder, a FIFO, a
symbolic link to a folder, a deflated 8000 x 8000 bomb, a header claiming 40000 x 40000, and a file that makes the
ingesting worker die (``IMG_WORKER_KILL``, with the ``worker_kill_hook`` on PYTHONPATH).

Every PHI attribute of every file holds a canary: ASCII ones all contain ``ZQX``, UIDs start with
:data:`UID_ROOT`, plus the non-ASCII names and the dates in :data:`CANARIES`. None may appear in any output.
"""

from __future__ import annotations

import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless

CR = "1.2.840.10008.5.1.4.1.1.1"
UID_ROOT = "1.2.826.0.1.3680043.9.7777"
#: Canaries that do not contain ZQX (non-ASCII names, dates, times, the UID root).
CANARIES = (
    "ЩЪЮЯФЫВА", "ЁЖИКЭ", "MÜLLER", "JÜRGEN", "山田", "太郎", "19610304", "1961-03-04", "04.03.1961", "20190417",
    "142233", "101112", UID_ROOT, "3680043.9.7777",
)
#: Long canaries searched as raw bytes in binary outputs (PNG, NIfTI), where a 3-letter "ZQX" would match by chance.
BINARY_CANARIES = (
    "ZQX CANARY HOSPITAL", "ZQX 9 CANARY STREET", "ZQX 1 HOSPITAL ROAD", "ZQXRADIOLOGY", "ZQXSTATION", "ZQXREFDOC",
    "ZQXPERFDOC", "ZQXOPERATOR", "ZQXMOTHER", "ZQX555123456", "ZQXDOE^ZQXJOHN", "ZQXSOLO8899", "ZQXPID000",
    "ЩЪЮЯФЫВА", "MÜLLER^JÜRGEN", "山田^太郎", "19610304", "20190417", UID_ROOT,
)
KILL_NAME = "IMG_WORKER_KILL"


@dataclass
class Expect:
    """What must become of one entry: ``ingest`` / ``infer`` are a rejection code, or None for "used"."""

    rel: str
    ingest: str | None
    infer: str | None
    good: bool = False  # a distinct radiograph whose pixels must be the ones cached
    needs_unprivileged: bool = False  # only with CAP_DAC_OVERRIDE dropped (root reads chmod 000 folders)
    pixels: np.ndarray | None = None  # the stored values of a good image
    uid: str | None = None  # its SOPInstanceUID


@dataclass
class Corpus:
    root: Path
    entries: list[Expect] = field(default_factory=list)

    def add(self, rel: str, ingest: str | None, infer: str | None = "same", **kw) -> Expect:
        self.entries.append(Expect(rel, ingest, ingest if infer == "same" else infer, **kw))
        return self.entries[-1]


def _pixels(seed: int, rows: int = 96, cols: int = 80) -> np.ndarray:
    """A smooth, distinct 12-bit 'radiograph' (a body-like ellipse with blobs; no edges that look like glyphs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    body = np.exp(-(((x - 0.5) / 0.38) ** 2 + ((y - 0.5) / 0.45) ** 2) * 2)
    for _ in range(3):
        cy, cx, s = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        body += rng.uniform(0.3, 0.8) * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s)))
    body = body / body.max()
    return np.round(200 + body * 3500 + rng.normal(0, 8, body.shape)).clip(0, 4095).astype(np.uint16)


#: The canary of each PHI attribute ({n}: the file's number); with the name and the UIDs, every keyword of
#: mlvicx_monai.data.deid.PHI_KEYWORDS (checked by the tests).
CANARY_VALUES = {
    "PatientID": "ZQXPID{n:05d}", "OtherPatientIDs": "ZQXOPID{n}", "OtherPatientNames": "ZQXOTHER^ZQXNAME",
    "PatientBirthDate": "19610304", "PatientBirthTime": "142233", "PatientAddress": "ZQX 9 CANARY STREET",
    "PatientTelephoneNumbers": "ZQX555123456", "PatientMotherBirthName": "ZQXMOTHER^ZQXMAIDEN",
    "MilitaryRank": "ZQXMAJOR", "MedicalRecordLocator": "ZQXMRL77", "AccessionNumber": "ZQXACC{n}",
    "StudyID": "ZQXST{n}", "InstitutionName": "ZQX CANARY HOSPITAL", "InstitutionAddress": "ZQX 1 HOSPITAL ROAD",
    "InstitutionalDepartmentName": "ZQXRADIOLOGY", "ReferringPhysicianName": "ZQXREFDOC^ZQXANNA",
    "PerformingPhysicianName": "ZQXPERFDOC^ZQXBOB", "OperatorsName": "ZQXOPERATOR^ZQXCARL",
    "NameOfPhysiciansReadingStudy": "ZQXREADER^ZQXDORA", "RequestingPhysician": "ZQXREQ^ZQXEVE",
    "StationName": "ZQXSTATION", "DeviceSerialNumber": "ZQXSN4242", "StudyDate": "20190417",
    "SeriesDate": "20190417", "AcquisitionDate": "20190417", "ContentDate": "20190417", "StudyTime": "101112",
    "StudyInstanceUID": UID_ROOT + ".1.{n}", "SeriesInstanceUID": UID_ROOT + ".2.{n}",
    "FrameOfReferenceUID": UID_ROOT + ".4.{n}",
}


def _phi(ds: Dataset, n: int, name: str, charset: str = "ISO_IR 192") -> None:
    """Every PHI attribute of the basic profile, filled with canaries."""
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    for keyword, value in CANARY_VALUES.items():
        setattr(ds, keyword, value.format(n=n))


def _dataset(n: int, name: str, pixels: np.ndarray | None, *, uid: str | None = None, charset: str = "ISO_IR 192",
             **attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = uid or f"{UID_ROOT}.3.{n}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _phi(ds, n, name, charset)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid UID of the pydicom-warning case is invalid on purpose
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    return ds


def _save(root: Path, rel: str | bytes, ds: Dataset) -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        ds.save_as(handle, enforce_file_format=True)


def _with_text(pixels: np.ndarray, text: str, height: int) -> np.ndarray:
    """``pixels`` with a white label burned into the top-left corner, as a modality draws it."""
    font_path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    font = ImageFont.truetype(str(font_path), height) if font_path.is_file() else ImageFont.load_default(size=height)
    mask = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
    ImageDraw.Draw(mask).text((height // 2, height // 2), text, fill=255, font=font)
    alpha = np.asarray(mask, dtype=np.float64) / 255.0
    return np.round(pixels * (1 - alpha) + 4095 * alpha).astype(np.uint16)


def _deflate_bomb(path: Path, n: int, rows: int, cols: int, header_shape: tuple[int, int] | None = None,
                  ramp: bool = False) -> None:
    """A deflated file whose data set inflates to rows x cols x 16 bit, streamed (cheap to write): zeros (8000 x 8000
    in ~125 KB), or with ``ramp`` a horizontal ramp (an image that decodes to something, ~6x larger); its header
    says ``header_shape`` (default: the true shape)."""
    ds = _dataset(n, "ZQXBOMB^ZQXDEFLATE", None)
    ds.Rows, ds.Columns = header_shape or (rows, cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = rows * cols * 2
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = bytearray(deflater.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")))
    row = (np.arange(cols) % 4096).astype("<u2").tobytes() if ramp else bytes(2 * cols)
    rows_per_chunk = max(1, (1 << 20) // len(row))
    for start in range(0, rows, rows_per_chunk):
        out += deflater.compress(row * min(rows_per_chunk, rows - start))
    out += deflater.flush()
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CR, ds.SOPInstanceUID
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head.getvalue() + bytes(out))


def _claimed_bomb(path: Path, n: int) -> None:
    """1.5 MB of RLE-encapsulated data under a header claiming 40000 x 40000 x 16 bit (3 GiB decoded)."""
    ds = _dataset(n, "ZQXBOMB^ZQXCLAIM", None)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows, ds.Columns = 40000, 40000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + 750_000).to_bytes(4, "little") + bytes(52)
    fragment = header + bytes([0x81, 0]) * 750_000  # replicate runs
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    _save(path.parent, path.name, ds)


def write_hostile_export(root: Path) -> Corpus:
    """Write the export under ``root`` (created); returns the expected outcome of every entry."""
    root.mkdir(parents=True, exist_ok=True)
    c = Corpus(root)
    n = iter(range(1, 1000))

    def good(rel: str | bytes, name: str, charset: str = "ISO_IR 192", **attributes) -> Dataset:
        k = next(n)
        ds = _dataset(k, name, _pixels(k), charset=charset, **attributes)
        _save(root, rel, ds)
        c.add(os.fsdecode(rel), None, good=True, pixels=_pixels(k), uid=ds.SOPInstanceUID)
        return ds

    # 1, 3: non-Latin and accented patient names, in headers (right character sets) and in folder names
    first = good("ЩЪЮЯФЫВА^ЁЖИКЭ_ZQX12345/CR/IMG1", "ЩЪЮЯФЫВА^ЁЖИКЭ")
    good("MÜLLER^JÜRGEN_ZQX/DX/IMG1", "MÜLLER^JÜRGEN", charset="ISO_IR 100")
    good("山田^太郎/IMG1", "山田^太郎")
    # 1: a file name that is not UTF-8 (Latin-1 bytes)
    good(b"M\xdcLLER_ZQXLATIN.dcm", "ZQXLATIN^ZQXONE", charset="ISO_IR 100")
    # 3: dates in another format in folder names
    good("1961-03-04/04.03.1961/IMG1", "ZQXDATE^ZQXFOLDER")
    # 2: a dicom.py warning that would print the path (degenerate window) in a patient-named folder
    good("ZQXDOE^ZQXJOHN_55555/CR/IMG0005", "ZQXDOE^ZQXJOHN", WindowCenter=2000, WindowWidth=0)
    # 2: a pydicom warning quoting a UID (invalid characters in a UI value) and a long name
    good("ZQXWARN^ZQXUID/IMG1", "ZQXWARN^ZQXUID", StudyInstanceUID=f"{UID_ROOT}.ZQX.99")
    # 2: an INFO line about a missing transfer syntax (logged with the path)
    k = next(n)
    ds = _dataset(k, "ZQXNOTS^ZQXSYNTAX", _pixels(k))
    path = root / "ZQXNOTS^ZQXSYNTAX" / "IMG1"
    path.parent.mkdir(parents=True)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=False)
    c.add("ZQXNOTS^ZQXSYNTAX/IMG1", None, good=True, pixels=_pixels(k), uid=ds.SOPInstanceUID)
    # a good PNG (ingestion of a PACS export takes DICOM only; inference takes pictures too)
    png = (_pixels(next(n)) / 16).astype(np.uint8)
    (root / "ZQXPICTURE").mkdir()
    Image.fromarray(png).save(root / "ZQXPICTURE" / "frontal.png")
    c.add("ZQXPICTURE/frontal.png", "not_dicom", None)
    # a lateral and a CT: the header filter (and infer's own option in the reason, item 9)
    k = next(n)
    _save(root, "ZQXSIDE^ZQXVIEW/IMG1", _dataset(k, "ZQXSIDE^ZQXVIEW", _pixels(k), ViewPosition="LL"))
    c.add("ZQXSIDE^ZQXVIEW/IMG1", "view")
    k = next(n)
    _save(root, "ZQXCT^ZQXSCAN/IMG1", _dataset(k, "ZQXCT^ZQXSCAN", _pixels(k), Modality="CT"))
    c.add("ZQXCT^ZQXSCAN/IMG1", "modality")

    # 3: a patient-named folder whose only file has no readable header
    (root / "ZQXSOLO8899^ZQXONLY8899").mkdir()
    (root / "ZQXSOLO8899^ZQXONLY8899" / "IMG1").write_bytes(b"\x00\x01garbage " * 40)
    c.add("ZQXSOLO8899^ZQXONLY8899/IMG1", "not_dicom")

    # 4: a true re-send (same SOP instance, same pixels) and a conflicting one (same SOP instance, other pixels)
    _save(root, "ЩЪЮЯФЫВА^ЁЖИКЭ_ZQX12345/CR/IMG2", first)  # sorts after the first copy, which is kept
    c.add("ЩЪЮЯФЫВА^ЁЖИКЭ_ZQX12345/CR/IMG2", "duplicate")
    k = next(n)
    uid = f"{UID_ROOT}.3.{k}"
    _save(root, "ZQXCONFLICT^ZQXA/IMG1", _dataset(k, "ZQXCONFLICT^ZQXA", _pixels(k), uid=uid))
    _save(root, "ZQXCONFLICT^ZQXB/IMG1", _dataset(k, "ZQXCONFLICT^ZQXA", _pixels(k + 500), uid=uid))
    c.add("ZQXCONFLICT^ZQXA/IMG1", "conflicting_resend", uid=uid)
    c.add("ZQXCONFLICT^ZQXB/IMG1", "conflicting_resend", uid=uid)

    # 5: burned-in PHI, declared and not
    k = next(n)
    _save(root, "ZQXBURNED^ZQXFLAG/IMG1", _dataset(k, "ZQXBURNED^ZQXFLAG", _pixels(k), BurnedInAnnotation="YES"))
    c.add("ZQXBURNED^ZQXFLAG/IMG1", "burned_in_annotation", uid=f"{UID_ROOT}.3.{k}")
    k = next(n)
    text = _with_text(_pixels(k, 512, 512), "ZQXDOE^ZQXJOHN 04.03.1961", 18)
    _save(root, "ZQXBURNED^ZQXTEXT/IMG1", _dataset(k, "ZQXBURNED^ZQXTEXT", text, BurnedInAnnotation="NO"))
    c.add("ZQXBURNED^ZQXTEXT/IMG1", "burned_in_text", uid=f"{UID_ROOT}.3.{k}")

    # 6: a path over PATH_MAX, an unreadable folder, a FIFO, a symbolic link to a folder
    fd = os.open(root, os.O_RDONLY)
    deep = ["ZQXDEEP" + "d" * 200] * 22
    for part in deep:
        os.mkdir(part, dir_fd=fd)
        child = os.open(part, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    k = next(n)
    data = DicomBytesIO()
    _dataset(k, "ZQXDEEP^ZQXPATH", _pixels(k)).save_as(data, enforce_file_format=True)
    out = os.open("IMG1", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, data.getvalue())
    os.close(out)
    os.close(fd)
    c.add("/".join(deep) + "/IMG1", "path_too_long")
    k = next(n)
    _save(root, "ZQXLOCKED^ZQXPATIENT/IMG1", _dataset(k, "ZQXLOCKED^ZQXPATIENT", _pixels(k)))
    os.chmod(root / "ZQXLOCKED^ZQXPATIENT", 0)
    c.add("ZQXLOCKED^ZQXPATIENT", "unreadable_folder", needs_unprivileged=True, pixels=_pixels(k),
          uid=f"{UID_ROOT}.3.{k}")
    os.mkfifo(root / "ZQXPIPE")
    c.add("ZQXPIPE", "not_a_regular_file")
    os.symlink("ZQXPICTURE", root / "ZQXLINK")
    c.add("ZQXLINK", "not_a_regular_file")

    # 7: memory bombs, and a file that kills the worker reading it
    _deflate_bomb(root / "ZQXBOMB" / "DEFLATED8000", next(n), 8000, 8000)
    c.add("ZQXBOMB/DEFLATED8000", "too_large")
    _claimed_bomb(root / "ZQXBOMB" / "CLAIM40000", next(n))
    c.add("ZQXBOMB/CLAIM40000", "too_large")
    k = next(n)
    _save(root, f"ZQXKILL^ZQXWORKER/{KILL_NAME}", _dataset(k, "ZQXKILL^ZQXWORKER", _pixels(k)))
    c.add(f"ZQXKILL^ZQXWORKER/{KILL_NAME}", "worker_died", None, uid=f"{UID_ROOT}.3.{k}")
    return c


def unlock(root: Path) -> None:
    """Make the corpus removable again (pytest cleans its temporary folders)."""
    locked = root / "ZQXLOCKED^ZQXPATIENT"
    if locked.exists():
        os.chmod(locked, 0o755)
