"""A messy hospital PACS export, with the ground truth a correct ingest must reproduce.

``OUT/export/`` holds an arbitrary tree: a DICOMDIR with its ``PT*/ST*/SE*/IM*`` subtree, folders named
after patients (PHI in paths), folders named by UIDs, a flat dump; files with ``.dcm``, ``.DCM``,
``.ima`` or no extension. The keepable images are frontal chest CR and DX radiographs in every
transfer syntax, photometric interpretation, bit depth, signedness, rescale and VOI convention this
generator knows, several images per study and several studies per patient, with realistic PHI in
their headers. Around them lie the files an ingest must reject (see :data:`CATEGORIES`).

``OUT/truth.json`` (outside the export, so an ingest of ``OUT/export`` never sees it) lists every file
under ``export/`` with its expected outcome, the ground truth of each keepable image, and every PHI
value written into any header (and those written into folder names).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as _uid
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from ..deid import phi_values
from .anatomy import sample_anatomy
from .dicom_writer import (
    LOSSY_SYNTAXES,
    PixelEncoding,
    dcmtk_jpeg_available,
    new_dataset,
    set_pixels,
    write_dicom,
)
from .findings import sample_finding_set
from .identity import (
    Person,
    Site,
    deterministic_uid,
    dicom_date,
    make_person,
    make_site,
)
from .lateral import render_lateral_cxr
from .layouts import (
    TRUTH_FILE,
    LayoutSummary,
    _regions_json,
    _tree_stats,
    _write_json,
    _write_lines,
    image_rng,
)
from .nonchest import render_ct_slice, render_extremity, render_mr_slice
from .render import render_cxr
from .vocab import NIH_LABEL, PREVALENCE

__all__ = ["CATEGORIES", "collect_phi", "write_pacs"]

#: Why a file must be rejected (the ``category`` of a ``reject`` entry in truth.json).
CATEGORIES: dict[str, str] = {
    "dicomdir": "a DICOMDIR media directory: an index, not an image",
    "not_dicom": "not a DICOM file (text, or a JPEG/PNG picture), whatever its extension",
    "empty": "a zero-byte file",
    "truncated": "a DICOM file cut short inside its Pixel Data",
    "no_pixel_data": "a radiograph header without Pixel Data",
    "non_image": (
        "a DICOM object that has no pixels by nature (structured report, RT structure set, presentation state)"
    ),
    "modality": "an image of another modality (CT, MR)",
    "body_part": "a radiograph of another body part",
    "view": "a lateral chest view: valid, rejected only because the default filter keeps frontal views",
    "multiframe": "a multi-frame image",
    "color": "a colour (RGB) image",
    "duplicate": "a byte-identical copy (same SOPInstanceUID) of another file: exactly one of the two is kept",
}

_PRIVATE_CREATOR = "ACME PACS EXPORT 2.1"
_TS_CYCLE = (
    "explicit_le",
    "jpeg_lossless_sv1",
    "implicit_le",
    "jpegls_lossless",
    "explicit_be",
    "j2k_lossless",
    "deflated",
    "rle",
    "jpeg_baseline",
    "j2k",
    "jpegls_near",
    "jpeg_lossless",
)
_DICOMDIR_SAFE = ("explicit_le", "implicit_le", "jpegls_lossless", "rle", "j2k_lossless")
_VOI_CYCLE = ("window:LINEAR", "lut", "window:LINEAR_EXACT", "windows:LINEAR", "window:SIGMOID", "none")
_BITS_CYCLE = (12, 10, 14, 15, 16)
_SIGNED_CYCLE = (False, False, True)
_RESCALE_CYCLE = ((1.0, 0.0, True), (1.0, 0.0, False), (0.5, -1024.0, True), (2.0, 0.0, True), (1.0, 100.0, True))
_EXTENSIONS = (".dcm", "", ".DCM", ".ima")


def collect_phi(ds: Dataset) -> set[str]:
    """PHI strings of a dataset and of every nested sequence item, plus our private PHI tags."""
    found: set[str] = set(phi_values(ds))
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                found |= collect_phi(item)
        elif (
            elem.tag.is_private
            and elem.tag.element & 0xFF00  # not a private creator element
            and elem.VR in ("LO", "PN", "SH", "LT")
            and isinstance(elem.value, str)
            and elem.value.strip()
        ):
            found.add(elem.value.strip())
            if "^" in elem.value:
                found.update(p for p in elem.value.split("^") if len(p) >= 3)
    return {v for v in found if len(v) >= 3}


@dataclass
class _Study:
    patient: int
    study: int
    person: Person
    site: Site
    date: str
    time: str
    accession: str
    study_id: str
    uid: str
    frontal: int
    lateral: bool
    age: int


@dataclass
class _Writer:
    """Accumulates files and their truth entries for one export."""

    export: Path
    staging: Path
    entries: list[dict] = field(default_factory=list)
    dicomdir_files: list[tuple[Path, dict]] = field(default_factory=list)
    path_phi: set[str] = field(default_factory=set)

    def add(self, rel: str, entry: dict) -> None:
        entry = {"path": rel, **entry}
        self.entries.append(entry)


def _plan(n: int, seed: int) -> list[_Study]:
    rng = image_rng(seed, "pacs", 1)
    studies: list[_Study] = []
    total, p = 0, 0
    while total < n:
        prng = image_rng(seed, "pacs", 2, p)
        sex = "F" if prng.random() < 0.5 else "M"
        age = int(np.clip(prng.normal(58, 16), 20, 95))
        person = make_person(prng, sex, age)
        for s in range(int(rng.integers(1, 4))):
            if total >= n:
                break
            k = int(min(rng.integers(1, 4), n - total))
            date = dicom_date(prng, 2016 + 2 * s, 2017 + 2 * s)
            studies.append(
                _Study(
                    patient=p,
                    study=s,
                    person=person,
                    site=make_site(prng),
                    date=date.strftime("%Y%m%d"),
                    time=(
                        f"{int(prng.integers(7, 20)):02d}{int(prng.integers(0, 60)):02d}"
                        f"{int(prng.integers(0, 60)):02d}"
                    ),
                    accession=f"A{int(prng.integers(10**8, 10**9))}",
                    study_id=f"CXR{int(prng.integers(10**5, 10**6))}",
                    uid=deterministic_uid("pacs", seed, p, s, "study"),
                    frontal=k,
                    lateral=bool(rng.random() < 0.25),
                    age=age + 2 * s,
                )
            )
            total += k
        p += 1
    return studies


def _header(
    ds: Dataset, st: _Study, *, modality: str, series: int, instance: int, series_uid: str, rng, private: bool
) -> None:
    """Patient, study, series and equipment modules, full of (fake) PHI."""
    person, site = st.person, st.site
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = st.date
    ds.StudyTime = st.time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = f"{st.time[:4]}{(int(st.time[4:]) + instance) % 60:02d}"
    ds.AccessionNumber = st.accession
    ds.Modality = modality
    ds.Manufacturer = "ACME MEDICAL SYSTEMS"
    ds.InstitutionName = site.institution
    ds.InstitutionAddress = site.address
    ds.ReferringPhysicianName = site.referring
    ds.StationName = site.station
    ds.StudyDescription = "XR CHEST" if modality in ("CR", "DX") else f"{modality} STUDY"
    ds.InstitutionalDepartmentName = site.department
    ds.PerformingPhysicianName = site.reader
    ds.NameOfPhysiciansReadingStudy = site.reader
    ds.OperatorsName = site.operator
    ds.ManufacturerModelName = "RADIANT CR-9000" if modality == "CR" else "RADIANT DR-7"
    ds.PatientName = person.name
    ds.PatientID = person.patient_id
    ds.PatientBirthDate = person.birth_date
    ds.PatientSex = person.sex
    ds.OtherPatientIDs = person.other_id
    ds.PatientAge = f"{st.age:03d}Y"
    ds.DeviceSerialNumber = site.device_serial
    ds.SoftwareVersions = "4.2.1"
    ds.StudyInstanceUID = st.uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = st.study_id
    ds.SeriesNumber = series
    ds.InstanceNumber = instance
    req = Dataset()
    req.AccessionNumber = st.accession
    req.RequestedProcedureID = f"RP{st.accession[1:]}"
    req.ScheduledProcedureStepID = f"SPS{st.accession[-6:]}"
    ds.RequestAttributesSequence = [req]
    if private:
        block = ds.private_block(0x0009, _PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", person.name)
        block.add_new(0x02, "LO", person.patient_id)


def _encoding_for(k: int, ts: str, modality: str, rng) -> tuple[PixelEncoding, str]:
    """The k-th keep image's pixel encoding (cycles cover every combination class)."""
    # different strides decorrelate the cycles, so combinations vary across images
    voi = _VOI_CYCLE[k % len(_VOI_CYCLE)]
    bits = _BITS_CYCLE[(k + k // 5) % len(_BITS_CYCLE)]
    signed = _SIGNED_CYCLE[(k + k // 3) % len(_SIGNED_CYCLE)]
    slope, intercept, rescale = _RESCALE_CYCLE[(k + 2 * (k // 4)) % len(_RESCALE_CYCLE)]
    photometric = "MONOCHROME1" if (k // 3) % 2 == 0 else "MONOCHROME2"
    if modality == "DX":
        rescale = True
    if ts == "jpeg_baseline":
        bits, signed, photometric, slope, intercept = 8, False, "MONOCHROME2", 1.0, 0.0
    if ts in ("jpeg_lossless", "jpeg_lossless_sv1"):
        signed = False
    if voi == "lut" and (signed or bits > 14 or slope != 1.0 or intercept < 0):
        slope, intercept = 1.0, 0.0
        signed = False
        bits = min(bits, 14)
    kind, _, func = voi.partition(":")
    enc = PixelEncoding(
        bits_stored=bits,
        signed=signed,
        photometric=photometric,
        slope=slope,
        intercept=intercept,
        rescale=rescale,
        voi=kind,
        voi_function=func or "LINEAR",
        data_range=(float(rng.uniform(0.03, 0.12)), float(rng.uniform(0.85, 0.97))),
        window_fill=float(rng.uniform(0.88, 1.0)),
    )
    return enc, voi


def _spacing(ds: Dataset, k: int, modality: str) -> str:
    value = ["0.148", "0.148"]
    if modality == "DX":
        ds.ImagerPixelSpacing = value
        if k % 3 == 0:
            ds.PixelSpacing = value
            return "both"
        return "ImagerPixelSpacing"
    if k % 3 == 1:
        ds.ImagerPixelSpacing = value
        return "ImagerPixelSpacing"
    ds.PixelSpacing = value
    if k % 3 == 2:
        ds.ImagerPixelSpacing = value
        return "both"
    return "PixelSpacing"


def _radiograph_dataset(
    st: _Study, modality: str, sop: str, series: int, inst: int, series_uid: str, rng, private: bool
):
    sop_class = (
        _uid.DigitalXRayImageStorageForPresentation if modality == "DX" else _uid.ComputedRadiographyImageStorage
    )
    ds = new_dataset(sop_class, sop)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _header(ds, st, modality=modality, series=series, instance=inst, series_uid=series_uid, rng=rng, private=private)
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
    return ds


def _path_for(w: _Writer, st: _Study, style: int, series: int, inst: int, ext: str, series_uid: str, sop: str) -> str:
    family, given = st.person.name.split("^")[:2]
    if style == 0:
        w.path_phi.update({family, given, st.person.patient_id})
        return (
            f"PACS_EXPORT_{st.date[:6]}/{family}_{given}_{st.person.patient_id}/{st.date}_{st.accession}/"
            f"SER{series:03d}/IMG{inst:05d}{ext}"
        )
    if style == 1:
        return f"incoming/{st.uid}/{series_uid}/{sop}{ext}"
    return f"dump/export {st.patient:03d}-{st.study:02d}-{series:02d}-{inst:02d}{ext}"


def write_pacs(out: Path, n: int, seed: int, size: int) -> LayoutSummary:
    """Write the export of ``n`` keepable frontal chest images (plus rejects) and ``truth.json``."""
    t0 = time.perf_counter()
    export = (out / "export").resolve()
    export.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    have_dcmtk = dcmtk_jpeg_available()
    if not have_dcmtk:
        notes.append(
            "dcmcjpeg (dcmtk) not found: JPEG lossless (process 14) variants written as explicit VR LE instead"
        )
    studies = _plan(n, seed)
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        w = _Writer(export, Path(tmp))
        k = 0  # keep-image counter (drives the variant cycles)
        lateral_k = 0
        for st in studies:
            rng = image_rng(seed, "pacs", 3, st.patient, st.study)
            anatomy = sample_anatomy(rng, sex=st.person.sex, age=st.age)
            views = ["PA" if rng.random() < 0.6 else "AP" for _ in range(st.frontal)] + (["LL"] if st.lateral else [])
            for inst, view in enumerate(views, start=1):
                irng = image_rng(seed, "pacs", 4, st.patient, st.study, inst)
                modality = "DX" if irng.random() < 0.5 else "CR"
                series = inst
                series_uid = deterministic_uid("pacs", seed, st.patient, st.study, inst, "series")
                sop = deterministic_uid("pacs", seed, st.patient, st.study, inst, "sop")
                rows = int(round(size * irng.uniform(1.0, 1.2) / 2) * 2)
                cols = int(round(size * irng.uniform(0.85, 1.0) / 2) * 2)
                ds = _radiograph_dataset(st, modality, sop, series, inst, series_uid, irng, private=inst % 3 == 1)
                ds.BodyPartExamined = "CHEST"
                ds.ViewPosition = view
                ds.SeriesDescription = f"CHEST {view}"
                idx = k if view != "LL" else 1000 + lateral_k
                ts = _TS_CYCLE[idx % len(_TS_CYCLE)]
                if ts.startswith("jpeg_lossless") and not have_dcmtk:
                    ts = "explicit_le"
                enc, voi = _encoding_for(idx, ts, modality, irng)
                spacing_attr = _spacing(ds, idx, modality)
                if view == "LL":
                    findings = tuple(f for f in ("cardiomegaly", "effusion") if irng.random() < 0.15)
                    img, _ = render_lateral_cxr(irng, (rows, cols), findings, anatomy=anatomy)
                    regions, ctr = [], None
                else:
                    findings = sample_finding_set(irng, PREVALENCE["pacs"])
                    img, ann = render_cxr(irng, (rows, cols), findings, anatomy=anatomy, view=view)
                    regions, ctr = _regions_json(ann), round(ann.ctr, 4)
                stored = set_pixels(ds, img, enc)
                ext = _EXTENSIONS[(3 * idx + idx // 4) % len(_EXTENSIONS)]
                style = idx % 4
                use_dicomdir = style == 3 and ts in _DICOMDIR_SAFE and view != "LL"
                phi = sorted(collect_phi(ds))
                truth = {
                    "patient_key": f"P{st.patient:03d}",
                    "study_key": f"P{st.patient:03d}-S{st.study:02d}",
                    "image_key": f"P{st.patient:03d}-S{st.study:02d}-I{inst:02d}",
                    "modality": modality,
                    "view": view,
                    "body_part": "CHEST",
                    "photometric": enc.photometric,
                    "bits_stored": enc.bits_stored,
                    "signed": enc.signed,
                    "rescale": [enc.slope, enc.intercept] if enc.rescale else None,
                    "voi": voi,
                    "spacing_attribute": spacing_attr,
                    "rows": rows,
                    "cols": cols,
                    "findings": list(findings),
                    "labels": sorted(NIH_LABEL[f] for f in findings),
                    "regions": regions,
                    "ctr": ctr,
                    "sex": st.person.sex,
                    "phi": phi,
                }
                if view == "LL":
                    truth = {"outcome": "reject", "category": "view", "also": [], **truth}
                else:
                    truth = {"outcome": "keep", **truth}
                truth["lossy"] = ts in LOSSY_SYNTAXES
                if use_dicomdir:
                    staged = w.staging / f"{len(w.dicomdir_files):05d}.dcm"
                    truth["transfer_syntax"] = write_dicom(ds, staged, ts, stored=stored)
                    truth["transfer_syntax_name"] = _uid.UID(truth["transfer_syntax"]).name
                    w.dicomdir_files.append((staged, truth))
                else:
                    rel = _path_for(w, st, style if style < 3 else 1, series, inst, ext, series_uid, sop)
                    truth["transfer_syntax"] = write_dicom(ds, export / rel, ts, stored=stored)
                    truth["transfer_syntax_name"] = _uid.UID(truth["transfer_syntax"]).name
                    w.add(rel, truth)
                if view == "LL":
                    lateral_k += 1
                    counts["reject:view"] += 1
                else:
                    k += 1
                    counts.update(truth["labels"] or ["No Finding"])
        _write_rejects(w, studies, seed, size, counts)
        _write_dicomdir(w, seed)
        _check_complete(w)
        entries = sorted(w.entries, key=lambda e: e["path"])
    all_phi: set[str] = set()
    for e in entries:
        all_phi.update(e.get("phi", []))
    written = sorted({e["transfer_syntax"] for e in entries if e.get("transfer_syntax")})
    _write_json(
        out / TRUTH_FILE,
        {
            "layout": "pacs",
            "seed": seed,
            "n": n,
            "size": size,
            "export_root": "export",
            "categories": CATEGORIES,
            "transfer_syntaxes": {t: _uid.UID(t).name for t in written},
            "notes": notes,
            "phi_values": sorted(all_phi),
            "phi_in_paths": sorted(w.path_phi),
            "files": entries,
        },
    )
    files, nbytes = _tree_stats(export)
    summary = LayoutSummary("pacs", out, n, files, nbytes, time.perf_counter() - t0, dict(counts), notes)
    return summary


# ---- files to reject -----------------------------------------------------------------------------
def _first_keep(w: _Writer) -> dict:
    for e in w.entries:
        if e["outcome"] == "keep" and not e["lossy"]:
            return e
    return next(e for e in w.entries if e["outcome"] == "keep")


def _simple_image_ds(
    st: _Study, sop_class: str, sop: str, modality: str, seed: int, tag: str, rng, series: int = 90
) -> Dataset:
    ds = new_dataset(sop_class, sop)
    _header(
        ds,
        st,
        modality=modality,
        series=series,
        instance=1,
        series_uid=deterministic_uid("pacs", seed, tag, "series"),
        rng=rng,
        private=False,
    )
    return ds


def _write_rejects(w: _Writer, studies: list[_Study], seed: int, size: int, counts: Counter) -> None:
    rng = image_rng(seed, "pacs", 5)
    export = w.export

    def reject(rel: str, category: str, detail: str, ds: Dataset | None = None, also: list[str] | None = None, **extra):
        entry = {"outcome": "reject", "category": category, "also": also or [], "detail": detail}
        entry["phi"] = sorted(collect_phi(ds)) if ds is not None else []
        entry.update(extra)
        w.add(rel, entry)
        counts[f"reject:{category}"] += 1

    st0, st_last = studies[0], studies[-1]
    small = max(64, size // 2)

    # other modalities: a chest CT slice and a brain MR slice
    hu = render_ct_slice(rng, 128)
    ds = _simple_image_ds(st0, _uid.CTImageStorage, deterministic_uid("pacs", seed, "ct"), "CT", seed, "ct", rng)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = deterministic_uid("pacs", seed, "ct", "for")
    ds.SliceThickness = "1.25"
    ds.ImagePositionPatient = ["-200", "-200", "-120.5"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["3.125", "3.125"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "-600", "1500"
    ds.PixelData = (hu.astype(np.int32) + 1024).astype(np.uint16).tobytes()
    rel = f"incoming/{st0.uid}/{ds.SeriesInstanceUID}/CT000001.dcm"
    write_dicom(ds, export / rel, "explicit_le")
    reject(rel, "modality", "axial chest CT slice", ds)

    mr = render_mr_slice(rng, 128)
    ds = _simple_image_ds(st_last, _uid.MRImageStorage, deterministic_uid("pacs", seed, "mr"), "MR", seed, "mr", rng)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.BodyPartExamined = "HEAD"
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
    ds.EchoTime, ds.RepetitionTime = "12", "500"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = mr.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = mr.tobytes()
    rel = f"dump/MR{st_last.patient:03d}"
    write_dicom(ds, export / rel, "implicit_le")
    reject(rel, "modality", "axial brain MR slice", ds)

    # radiographs of other body parts
    for part, ts in (("HAND", "explicit_le"), ("KNEE", "jpegls_lossless")):
        img = render_extremity(rng, (small, small), part)
        ds = _simple_image_ds(
            st0, _uid.ComputedRadiographyImageStorage, deterministic_uid("pacs", seed, part), "CR", seed, part, rng
        )
        ds.BodyPartExamined = part
        ds.ViewPosition = "PA" if part == "HAND" else "AP"
        ds.SeriesDescription = f"{part} {ds.ViewPosition}"
        ds.PixelSpacing = ["0.1", "0.1"]
        enc = PixelEncoding(bits_stored=12, photometric="MONOCHROME1" if part == "HAND" else "MONOCHROME2")
        stored = set_pixels(ds, img, enc)
        rel = f"PACS_EXPORT_{st0.date[:6]}/OTHER/{part.lower()}_{st0.accession}.dcm"
        write_dicom(ds, export / rel, ts, stored=stored)
        reject(rel, "body_part", f"CR radiograph of the {part.lower()}", ds)

    # objects without pixels: structured report, RT structure set, presentation state
    keep = _first_keep(w)
    ds = _simple_image_ds(st0, _uid.BasicTextSRStorage, deterministic_uid("pacs", seed, "sr"), "SR", seed, "sr", rng)
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic Imaging Report",
    )
    ds.ConceptNameCodeSequence = [concept]
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.TextValue = "PA chest: no acute cardiopulmonary process."
    ds.ContentSequence = [text]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    rel = f"incoming/{st0.uid}/SR/REPORT.dcm"
    write_dicom(ds, export / rel, "explicit_le")
    reject(rel, "non_image", "basic text structured report", ds, also=["modality"])

    ds = _simple_image_ds(
        st0, _uid.RTStructureSetStorage, deterministic_uid("pacs", seed, "rt"), "RTSTRUCT", seed, "rt", rng
    )
    ds.StructureSetLabel = "CHEST_ROI"
    ds.StructureSetDate, ds.StructureSetTime = st0.date, st0.time
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ROIGenerationAlgorithm = 1, "LUNG_R", "MANUAL"
    roi.ReferencedFrameOfReferenceUID = deterministic_uid("pacs", seed, "ct", "for")
    ds.StructureSetROISequence = [roi]
    rel = f"dump/rtss_{st0.patient:03d}.DCM"
    write_dicom(ds, export / rel, "implicit_le")
    reject(rel, "non_image", "RT structure set", ds, also=["modality"])

    ds = _simple_image_ds(
        st_last,
        _uid.GrayscaleSoftcopyPresentationStateStorage,
        deterministic_uid("pacs", seed, "pr"),
        "PR",
        seed,
        "pr",
        rng,
    )
    ds.ContentLabel = "KEY_IMAGE"
    ds.ContentDescription = "Key image with window preset"
    ds.PresentationCreationDate, ds.PresentationCreationTime = st_last.date, st_last.time
    ref = Dataset()
    ref.SeriesInstanceUID = deterministic_uid("pacs", seed, "ref", "series")
    ds.ReferencedSeriesSequence = [ref]
    rel = f"dump/PS{st_last.patient:03d}.ima"
    write_dicom(ds, export / rel, "explicit_le")
    reject(rel, "non_image", "grayscale softcopy presentation state", ds, also=["modality"])

    # a multi-frame chest image
    frames = [render_cxr(image_rng(seed, "pacs", 6, f), (small, small))[0] for f in range(3)]
    ds = _simple_image_ds(
        st_last,
        _uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
        deterministic_uid("pacs", seed, "mf"),
        "CR",
        seed,
        "mf",
        rng,
    )
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.ConversionType = "WSD"
    ds.NumberOfFrames = 3
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = "100"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = small, small
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.stack([np.rint(f * 4095).astype(np.uint16) for f in frames]).tobytes()
    rel = f"incoming/{st_last.uid}/MF/{ds.SOPInstanceUID}"
    write_dicom(ds, export / rel, "explicit_le")
    reject(rel, "multiframe", "three-frame grayscale secondary capture of a chest", ds)

    # an RGB screen capture of a chest image
    base = (frames[0] * 255).astype(np.uint8)
    rgb = np.stack([base, base, np.clip(base.astype(int) + 30, 0, 255).astype(np.uint8)], axis=-1)
    rgb[5:12, 5 : small // 2] = (255, 255, 0)
    ds = _simple_image_ds(
        st0, _uid.SecondaryCaptureImageStorage, deterministic_uid("pacs", seed, "rgb"), "CR", seed, "rgb", rng
    )
    ds.BodyPartExamined, ds.ViewPosition, ds.ConversionType = "CHEST", "PA", "WSD"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.Rows, ds.Columns = small, small
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    rel = f"dump/screenshot_{st0.accession}.dcm"
    write_dicom(ds, export / rel, "explicit_le")
    reject(rel, "color", "RGB secondary capture of a chest image (screenshot)", ds)

    # a radiograph header without pixel data, and a truncated file
    for kind in ("no_pixel_data", "truncated"):
        img = render_cxr(image_rng(seed, "pacs", 7, int(kind == "truncated")), (size, size))[0]
        sop = deterministic_uid("pacs", seed, kind)
        ds = _radiograph_dataset(
            st_last, "CR", sop, 80, 1, deterministic_uid("pacs", seed, kind, "series"), rng, private=False
        )
        ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
        ds.PixelSpacing = ["0.15", "0.15"]
        stored = set_pixels(ds, img, PixelEncoding(bits_stored=12, photometric="MONOCHROME1"))
        if kind == "no_pixel_data":
            del ds.PixelData
            rel = f"incoming/{st_last.uid}/HDR/{sop}.dcm"
            write_dicom(ds, export / rel, "explicit_le")
            reject(rel, kind, "CR chest header whose Pixel Data was never sent", ds)
        else:
            rel = f"dump/partial_{st_last.patient:03d}.dcm"
            write_dicom(ds, export / rel, "explicit_le", stored=stored)
            data = (export / rel).read_bytes()
            cut = len(data) - stored.nbytes // 2  # half of the pixel data is missing
            (export / rel).write_bytes(data[:cut])
            reject(
                rel,
                kind,
                "CR chest file cut in the middle of its Pixel Data",
                ds,
                full_size=len(data),
                written_size=cut,
            )

    # non-DICOM files: a log, pictures renamed .dcm, an empty file
    _write_lines(
        export / "export_log.txt", ["PACS export job 4711", "objects: see DICOMDIR", "status: completed with warnings"]
    )
    reject("export_log.txt", "not_dicom", "plain text export log")
    u8 = (frames[1] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=85)
    (export / "dump" / "IMG_0001.dcm").write_bytes(buf.getvalue())
    reject("dump/IMG_0001.dcm", "not_dicom", "JPEG picture renamed .dcm")
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")
    (export / "dump" / "IMG_0002.dcm").write_bytes(buf.getvalue())
    reject("dump/IMG_0002.dcm", "not_dicom", "PNG picture renamed .dcm")
    (export / "dump" / "IM000099.dcm").write_bytes(b"")
    reject("dump/IM000099.dcm", "empty", "zero-byte file")

    # an exact duplicate of a keepable image at another path (sorts after the original)
    src = keep["path"]
    dup = f"resend/{Path(src).name or 'copy'}"
    if dup in {e["path"] for e in w.entries}:
        dup = f"resend/copy_{Path(src).name}"
    (export / dup).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export / src, export / dup)
    fields = {key: keep[key] for key in ("patient_key", "study_key", "image_key", "transfer_syntax")}
    reject(
        dup,
        "duplicate",
        "byte-identical copy of another export file",
        also=[],
        duplicate_of=src,
        phi=keep["phi"],
        **fields,
    )


def _write_dicomdir(w: _Writer, seed: int) -> None:
    """Put the staged images under a DICOMDIR at the export root (PT*/ST*/SE*/IM* file ids)."""
    fs = FileSet()
    fs.ID = "CHESTEXPORT"
    fs.UID = deterministic_uid("pacs", seed, "fileset")
    by_sop: dict[str, dict] = {}
    for staged, truth in w.dicomdir_files:
        inst = fs.add(staged)
        by_sop[inst.SOPInstanceUID] = truth
    if not by_sop:
        return
    fs.write(w.export)
    for inst in fs:
        rel = Path(inst.path).relative_to(w.export.resolve()).as_posix()
        truth = by_sop[inst.SOPInstanceUID]
        written = pydicom.dcmread(w.export / rel, stop_before_pixels=True)
        truth["transfer_syntax"] = str(written.file_meta.TransferSyntaxUID)
        truth["transfer_syntax_name"] = written.file_meta.TransferSyntaxUID.name
        w.add(rel, truth)
    dicomdir = pydicom.dcmread(w.export / "DICOMDIR")
    phi: set[str] = set()
    for record in dicomdir.DirectoryRecordSequence:
        phi |= collect_phi(record)
    w.add(
        "DICOMDIR",
        {
            "outcome": "reject",
            "category": "dicomdir",
            "also": [],
            "detail": "media directory index",
            "phi": sorted(phi),
        },
    )


def _check_complete(w: _Writer) -> None:
    on_disk = {p.relative_to(w.export).as_posix() for p in w.export.rglob("*") if p.is_file()}
    listed = {e["path"] for e in w.entries}
    if on_disk != listed:
        raise RuntimeError(
            f"pacs truth is out of sync with the export: unlisted {sorted(on_disk - listed)[:5]}, "
            f"missing {sorted(listed - on_disk)[:5]}"
        )
