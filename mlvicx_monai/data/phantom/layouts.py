"""Write synthetic datasets in the exact on-disk layout of the public chest X-ray releases.

Layouts (see ``SPEC.md`` section 4): ``nih`` (ChestX-ray14 PNGs and CSVs), ``vindr`` (VinDr-CXR DICOMs
and the competition ``train.csv``), ``rsna`` (RSNA Pneumonia DICOMs and CSVs), ``siim`` (SIIM-ACR nested
DICOMs and ``train-rle.csv``) and ``pacs`` (a messy hospital export, :mod:`.pacs`).

Every layout also writes ``truth.json`` at the output root: the generator's ground truth per file
(findings, regions, deliberate anomalies), outside the dataset's own files. Everything is a pure
function of ``(layout, n, seed, size, options)``: the same arguments write byte-identical files.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import config as pydicom_config
from pydicom import uid as _uid
from pydicom.dataelem import DataElement

from ..rle import rle_encode
from .anatomy import sample_anatomy
from .dicom_writer import PixelEncoding, new_dataset, set_pixels, write_dicom
from .findings import sample_finding_set
from .identity import deterministic_uid, fake_uuid, hex_id
from .render import Annotations, render_cxr
from .vocab import (
    CHRONIC,
    NIH_BBOX_LABEL,
    NIH_LABEL,
    PREVALENCE,
    RSNA_OPACITY,
    VINDR_CLASS_ID,
    VINDR_CLASSES,
)

__all__ = ["DEFAULT_SIZE", "LAYOUTS", "NIH_HEADER", "LayoutSummary", "image_rng", "write_layout"]

LAYOUTS: tuple[str, ...] = ("nih", "vindr", "rsna", "siim", "pacs")
DEFAULT_SIZE: dict[str, int] = {"nih": 1024, "vindr": 768, "rsna": 1024, "siim": 1024, "pacs": 224}
_LAYOUT_KEY = {name: i + 1 for i, name in enumerate(LAYOUTS)}
TRUTH_FILE = "truth.json"

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
RSNA_LABELS_HEADER = "patientId,x,y,width,height,Target"
RSNA_CLASS_HEADER = "patientId,class"
SIIM_HEADER = "ImageId, EncodedPixels"
NIH_FIRST_PATIENT = 90001  # real ChestX-ray14 ids end at 30805: synthetic names never collide

# (width, height, pixel spacing text) of real ChestX-ray14 originals, as the v2020 file writes them
_NIH_ORIGINALS = (
    (2500, 2048, "0.168"),
    (2992, 2991, "0.14300000000000002"),
    (3056, 2544, "0.139"),
    (2500, 2048, "0.171"),
    (2048, 2500, "0.168"),
    (2021, 2021, "0.19431099999999998"),
)
# real RSNA / SIIM pixel spacings (1024 x 1024 conversions; DS strings, at most 16 characters)
_WSD_SPACINGS = ("0.168", "0.143", "0.139", "0.171", "0.194311")


@dataclass
class LayoutSummary:
    """What a layout writer produced (also printed by the CLI)."""

    layout: str
    root: Path
    images: int
    files: int
    bytes: int
    seconds: float
    label_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        mb = self.bytes / 1e6
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        labels = ", ".join(f"{k} {v}" for k, v in sorted(self.label_counts.items(), key=lambda kv: (-kv[1], kv[0])))
        head = f"{self.layout}: {self.images} images, {self.files} files, {mb:.1f} MB in {self.root}"
        lines = [f"{head} ({self.seconds:.1f} s, {rate:.1f} images/s)", f"  labels: {labels or '(none)'}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def image_rng(seed: int, layout: str, *keys: int) -> np.random.Generator:
    """The generator of one image (or patient): a pure function of seed, layout and integer keys."""
    return np.random.default_rng([int(seed), _LAYOUT_KEY[layout], *[int(k) for k in keys]])


def _check_args(layout: str, n: int, seed: int, size: int | None) -> int:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    size = DEFAULT_SIZE[layout] if size is None else size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 4096:
        raise ValueError(f"size must be an integer in [64, 4096], got {size!r}")
    return int(size)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output directory {out} is not empty; pass overwrite=True (--overwrite) to replace it"
            )
        if not (out / TRUTH_FILE).is_file():
            raise FileExistsError(
                f"refusing to overwrite {out}: it holds no {TRUTH_FILE}, so it was not written by the phantom generator"
            )
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _regions_json(ann: Annotations) -> list[dict]:
    return [{"finding": r.finding, "bbox": list(r.bbox), "side": r.side} for r in ann.regions]


def _tree_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ------------------------------------------------------------------------------------------------
def _nih_patients(n: int, seed: int) -> list[tuple[int, int]]:
    """(patient id, number of images) until ``n`` images: 1-8 follow-ups, mean about 2.3."""
    rng = image_rng(seed, "nih", 0)
    out, total, pid = [], 0, NIH_FIRST_PATIENT
    while total < n:
        k = int(min(1 + rng.geometric(0.45) - 1, 8))
        k = min(k, n - total)
        out.append((pid, k))
        total += k
        pid += 1
    return out


def write_nih(
    out: Path, n: int, seed: int, size: int, *, flat: bool = False, test_fraction: float = 0.2
) -> LayoutSummary:
    """ChestX-ray14: 8-bit PNGs, ``Data_Entry_2017_v2020.csv``, patient-disjoint split lists, boxes."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    t0 = time.perf_counter()
    img_dir = out / "images" if flat else out / "images_001" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    prev = PREVALENCE["nih"]
    acute_prev = {k: v for k, v in prev.items() if k not in CHRONIC}
    patients = _nih_patients(n, seed)
    # patient-level split
    split_rng = image_rng(seed, "nih", 1)
    order = split_rng.permutation(len(patients))
    n_test = round(len(patients) * test_fraction)
    n_test = min(max(n_test, 1 if len(patients) > 1 else 0), len(patients) - 1) if len(patients) > 1 else 0
    test_patients = {patients[i][0] for i in order[:n_test]}
    rows, train_val, test, bbox_rows, truth, counts = [], [], [], [], [], Counter()
    for pid, n_images in patients:
        prng = image_rng(seed, "nih", 2, pid)
        anatomy = sample_anatomy(prng)
        chronic = [f for f in sample_finding_set(prng, prev) if f in CHRONIC]
        w, h, spacing = _NIH_ORIGINALS[int(prng.integers(0, len(_NIH_ORIGINALS)))]
        for fu in range(n_images):
            irng = image_rng(seed, "nih", 3, pid, fu)
            keep = [f for f, u in zip(chronic, irng.random(len(chronic))) if u < 0.9]
            findings = tuple(sorted(set(keep) | set(sample_finding_set(irng, acute_prev))))
            view = "AP" if irng.random() < 0.4 else "PA"
            img, ann = render_cxr(irng, size, findings, anatomy=anatomy, view=view)
            name = f"{pid:08d}_{fu:03d}.png"
            Image.fromarray(_to_u8(img)).save(img_dir / name, format="PNG", compress_level=1)
            labels = sorted(NIH_LABEL[f] for f in findings)
            counts.update(labels or ["No Finding"])
            age = anatomy.age + fu // 2
            rows.append(
                f"{name},{'|'.join(labels) or 'No Finding'},{fu},{pid},{age},{anatomy.sex},{view},"
                f"{w},{h},{spacing},{spacing}"
            )
            split = "test" if pid in test_patients else "train_val"
            (test if split == "test" else train_val).append(name)
            if split == "test":
                for r in ann.regions:
                    if r.finding in NIH_BBOX_LABEL:
                        x0, y0, x1, y1 = r.bbox
                        bbox_rows.append(
                            f"{name},{NIH_BBOX_LABEL[r.finding]},{float(x0)},{float(y0)},"
                            f"{float(x1 - x0)},{float(y1 - y0)}"
                        )
            truth.append(
                {
                    "file": str((img_dir / name).relative_to(out)),
                    "image": name,
                    "patient_id": pid,
                    "follow_up": fu,
                    "split": split,
                    "view": view,
                    "sex": anatomy.sex,
                    "age": age,
                    "findings": list(findings),
                    "labels": labels,
                    "ctr": round(ann.ctr, 4),
                    "regions": _regions_json(ann),
                }
            )
    _write_lines(out / "Data_Entry_2017_v2020.csv", [NIH_HEADER] + sorted(rows))
    _write_lines(out / "train_val_list.txt", sorted(train_val))
    _write_lines(out / "test_list.txt", sorted(test))
    _write_lines(out / "BBox_List_2017.csv", [NIH_BBOX_HEADER] + bbox_rows)
    _write_json(out / TRUTH_FILE, {"layout": "nih", "seed": seed, "n": n, "size": size, "flat": flat, "images": truth})
    files, nbytes = _tree_stats(out)
    return LayoutSummary("nih", out, n, files, nbytes, time.perf_counter() - t0, dict(counts))


# ------------------------------------------------------------------------------------------------
# shared DICOM header pieces for the public releases
# ------------------------------------------------------------------------------------------------
def _wsd_header(ds, patient: str, ann: Annotations, spacing: str, study: str, series: str) -> None:
    """The minimal de-identified Secondary Capture header of the RSNA / SIIM conversions."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {ann.view}"
    ds.PatientName = patient
    ds.PatientID = patient
    ds.PatientBirthDate = ""
    ds.PatientSex = ann.sex
    # a bare number, as in the real conversions (not a valid AS value: written without validation)
    ds.add(DataElement(0x00101010, "AS", str(ann.age), validation_mode=pydicom_config.IGNORE))
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ann.view
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.PixelSpacing = [spacing, spacing]


def _jpeg8_dataset(sop: str) -> tuple:
    ds = new_dataset(_uid.SecondaryCaptureImageStorage, sop)
    enc = PixelEncoding(bits_stored=8, photometric="MONOCHROME2", rescale=False, voi="none", data_range=(0.0, 1.0))
    return ds, enc


# ------------------------------------------------------------------------------------------------
# VinDr-CXR
# ------------------------------------------------------------------------------------------------
_VINDR_READERS = tuple(f"R{i}" for i in range(1, 18))
_VINDR_READER_P = np.array([0.4 / 14] * 7 + [0.2, 0.2, 0.2] + [0.4 / 14] * 7)


def _vindr_anomalies(n: int, seed: int) -> dict[int, str]:
    rng = image_rng(seed, "vindr", 1)
    kinds = []
    if n >= 10:
        kinds += ["no_file_meta"] * max(1, n // 40)
    if n >= 20:
        kinds += ["no_transfer_syntax", "no_pixel_data"]
    if n >= 60:
        kinds += ["no_pixel_data"]
    picks = rng.choice(n, size=len(kinds), replace=False) if kinds else []
    return {int(i): k for i, k in zip(picks, kinds)}


def _jitter_box(rng: np.random.Generator, bbox, rows: int, cols: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    jx = rng.normal(0.0, 0.04 * w + 1.0, 2)
    jy = rng.normal(0.0, 0.04 * h + 1.0, 2)
    nx0 = float(np.clip(round(x0 + jx[0]), 0, cols - 2))
    ny0 = float(np.clip(round(y0 + jy[0]), 0, rows - 2))
    nx1 = float(np.clip(round(x1 + jx[1]), nx0 + 1, cols - 1))
    ny1 = float(np.clip(round(y1 + jy[1]), ny0 + 1, rows - 1))
    return nx0, ny0, nx1, ny1


def write_vindr(out: Path, n: int, seed: int, size: int) -> LayoutSummary:
    """VinDr-CXR: ``train/<image_id>.dicom`` and the competition ``train.csv`` with 3 readers per image."""
    t0 = time.perf_counter()
    (out / "train").mkdir(parents=True, exist_ok=True)
    anomalies = _vindr_anomalies(n, seed)
    csv_rows, truth, counts = [], [], Counter()
    for i in range(n):
        rng = image_rng(seed, "vindr", 2, i)
        image_id = hex_id("vindr", seed, i)
        findings = sample_finding_set(rng, PREVALENCE["vindr"])
        cols = round((size * rng.uniform(0.8, 1.0) / 2) * 2)
        view = "PA" if rng.random() < 0.85 else "AP"
        img, ann = render_cxr(rng, (size, cols), findings, view=view)
        # readers: each rendered region is marked by at least two of the three
        readers = [_VINDR_READERS[k] for k in rng.choice(17, size=3, replace=False, p=_VINDR_READER_P)]
        marks: dict[str, list] = {r: [] for r in readers}
        for reg in ann.regions:
            cid = VINDR_CLASS_ID[reg.finding]
            seen = rng.random(3) < 0.8
            while seen.sum() < 2:
                seen[int(rng.integers(0, 3))] = True
            for r, s in zip(readers, seen):
                if s:
                    marks[r].append((cid, _jitter_box(rng, reg.bbox, size, cols)))
        for r in readers:
            if not marks[r]:
                csv_rows.append(f"{image_id},No finding,14,{r},,,,")
            for cid, (x0, y0, x1, y1) in marks[r]:
                csv_rows.append(f"{image_id},{VINDR_CLASSES[cid]},{cid},{r},{x0},{y0},{x1},{y1}")
        classes = sorted({VINDR_CLASSES[VINDR_CLASS_ID[f]] for f in findings})
        counts.update(classes or ["No finding"])
        # DICOM: DX or CR, MONOCHROME1/2, 12-16 bits stored, windowed
        bits = int(rng.choice([12, 14, 15, 16], p=[0.35, 0.35, 0.1, 0.2]))
        photometric = "MONOCHROME1" if rng.random() < 0.45 else "MONOCHROME2"
        modality = "DX" if rng.random() < 0.75 else "CR"
        sop_class = (
            _uid.DigitalXRayImageStorageForPresentation if modality == "DX" else _uid.ComputedRadiographyImageStorage
        )
        sop = deterministic_uid("vindr", seed, i, "sop")
        ds = new_dataset(sop_class, sop)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Modality = modality
        ds.PatientSex = ann.sex
        ds.PatientAge = f"{ann.age:03d}Y"
        ds.StudyInstanceUID = deterministic_uid("vindr", seed, i, "study")
        ds.SeriesInstanceUID = deterministic_uid("vindr", seed, i, "series")
        ds.InstanceNumber = 1
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = view
        if modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
            ds.ImagerPixelSpacing = ["0.139", "0.139"]
        else:
            ds.PixelSpacing = ["0.15", "0.15"]
        enc = PixelEncoding(
            bits_stored=bits,
            photometric=photometric,
            data_range=(float(rng.uniform(0.02, 0.15)), float(rng.uniform(0.8, 0.98))),
            window_fill=float(rng.uniform(0.85, 1.0)),
        )
        stored = set_pixels(ds, img, enc)
        anomaly = anomalies.get(i)
        meta = "full"
        if anomaly == "no_pixel_data":
            del ds.PixelData
        elif anomaly == "no_file_meta":
            meta = "none"
        elif anomaly == "no_transfer_syntax":
            meta = "no_transfer_syntax"
        ts = write_dicom(
            ds,
            out / "train" / f"{image_id}.dicom",
            "explicit_le" if meta != "none" else "implicit_le",
            stored=stored,
            meta=meta,
        )
        truth.append(
            {
                "file": f"train/{image_id}.dicom",
                "image_id": image_id,
                "findings": list(findings),
                "labels": classes,
                "readers": readers,
                "view": view,
                "modality": modality,
                "photometric": photometric,
                "bits_stored": bits,
                "transfer_syntax": ts,
                "rows": size,
                "cols": cols,
                "anomaly": anomaly,
                "ctr": round(ann.ctr, 4),
                "regions": _regions_json(ann),
            }
        )
    _write_lines(out / "train.csv", [VINDR_HEADER] + csv_rows)
    _write_json(out / TRUTH_FILE, {"layout": "vindr", "seed": seed, "n": n, "size": size, "images": truth})
    files, nbytes = _tree_stats(out)
    notes = [f"{sum(1 for a in anomalies.values() if a == k)} file(s) {k}" for k in sorted(set(anomalies.values()))]
    return LayoutSummary("vindr", out, n, files, nbytes, time.perf_counter() - t0, dict(counts), notes)


# ------------------------------------------------------------------------------------------------
# RSNA Pneumonia Detection
# ------------------------------------------------------------------------------------------------
def _merge_boxes(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Union overlapping boxes (an opacity region is one box, as readers drew them)."""
    boxes = [tuple(b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)  # type: ignore[return-value]


def write_rsna(out: Path, n: int, seed: int, size: int) -> LayoutSummary:
    """RSNA Pneumonia: ``stage_2_train_images/<patientId>.dcm`` and the two label CSVs."""
    t0 = time.perf_counter()
    img_dir = out / "stage_2_train_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    label_rows, class_rows, truth, counts = [], [], [], Counter()
    for i in range(n):
        rng = image_rng(seed, "rsna", 2, i)
        pid = fake_uuid("rsna", seed, i)
        findings = sample_finding_set(rng, PREVALENCE["rsna"])
        view = "AP" if rng.random() < 0.45 else "PA"
        img, ann = render_cxr(rng, size, findings, view=view)
        boxes = _merge_boxes([r.bbox for r in ann.regions if r.finding in RSNA_OPACITY])
        if boxes:
            cls = "Lung Opacity"
            for x0, y0, x1, y1 in boxes:
                pad_x, pad_y = round(0.03 * (x1 - x0)), round(0.03 * (y1 - y0))
                bx, by = max(x0 - pad_x, 0), max(y0 - pad_y, 0)
                bw, bh = min(x1 + pad_x, size) - bx, min(y1 + pad_y, size) - by
                label_rows.append((pid, f"{pid},{float(bx)},{float(by)},{float(bw)},{float(bh)},1"))
                class_rows.append((pid, f"{pid},{cls}"))
        else:
            cls = "No Lung Opacity / Not Normal" if findings else "Normal"
            label_rows.append((pid, f"{pid},,,,,0"))
            class_rows.append((pid, f"{pid},{cls}"))
        counts[cls] += 1
        ds, enc = _jpeg8_dataset(deterministic_uid("rsna", seed, i, "sop"))
        _wsd_header(
            ds,
            pid,
            ann,
            _WSD_SPACINGS[int(rng.integers(0, len(_WSD_SPACINGS)))],
            deterministic_uid("rsna", seed, i, "study"),
            deterministic_uid("rsna", seed, i, "series"),
        )
        stored = set_pixels(ds, img, enc)
        ts = write_dicom(ds, img_dir / f"{pid}.dcm", "jpeg_baseline", stored=stored)
        truth.append(
            {
                "file": f"stage_2_train_images/{pid}.dcm",
                "patientId": pid,
                "findings": list(findings),
                "class": cls,
                "target": int(bool(boxes)),
                "boxes": [list(b) for b in boxes],
                "view": view,
                "transfer_syntax": ts,
                "ctr": round(ann.ctr, 4),
                "regions": _regions_json(ann),
            }
        )
    label_rows.sort(key=lambda t: t[0])
    class_rows.sort(key=lambda t: t[0])
    _write_lines(out / "stage_2_train_labels.csv", [RSNA_LABELS_HEADER] + [r for _, r in label_rows])
    _write_lines(out / "stage_2_detailed_class_info.csv", [RSNA_CLASS_HEADER] + [r for _, r in class_rows])
    _write_json(out / TRUTH_FILE, {"layout": "rsna", "seed": seed, "n": n, "size": size, "images": truth})
    files, nbytes = _tree_stats(out)
    return LayoutSummary("rsna", out, n, files, nbytes, time.perf_counter() - t0, dict(counts))


# ------------------------------------------------------------------------------------------------
# SIIM-ACR Pneumothorax Segmentation
# ------------------------------------------------------------------------------------------------
def write_siim(out: Path, n: int, seed: int, size: int) -> LayoutSummary:
    """SIIM-ACR: nested ``dicom-images-train/<study>/<series>/<sop>.dcm`` and ``train-rle.csv``."""
    t0 = time.perf_counter()
    root = out / "dicom-images-train"
    root.mkdir(parents=True, exist_ok=True)
    rows, truth, counts = [], [], Counter()
    for i in range(n):
        rng = image_rng(seed, "siim", 2, i)
        findings = sample_finding_set(rng, PREVALENCE["siim"])
        view = "PA" if rng.random() < 0.6 else "AP"
        img, ann = render_cxr(rng, size, findings, view=view)
        study = deterministic_uid("siim", seed, i, "study")
        series = deterministic_uid("siim", seed, i, "series")
        sop = deterministic_uid("siim", seed, i, "sop")
        masks = ann.masks("pneumothorax")
        if masks:
            for m in masks:
                rows.append(f"{sop},{rle_encode(m)}")
            counts["pneumothorax"] += 1
        else:
            rows.append(f"{sop},-1")
            counts["no pneumothorax"] += 1
        ds, enc = _jpeg8_dataset(sop)
        pid = fake_uuid("siim", seed, i)
        _wsd_header(ds, pid, ann, _WSD_SPACINGS[int(rng.integers(0, len(_WSD_SPACINGS)))], study, series)
        stored = set_pixels(ds, img, enc)
        rel = f"dicom-images-train/{study}/{series}/{sop}.dcm"
        ts = write_dicom(ds, out / rel, "jpeg_baseline", stored=stored)
        truth.append(
            {
                "file": rel,
                "ImageId": sop,
                "findings": list(findings),
                "pneumothorax_regions": len(masks),
                "pneumothorax_pixels": int(sum(int(m.sum()) for m in masks)),
                "view": view,
                "transfer_syntax": ts,
                "ctr": round(ann.ctr, 4),
                "regions": _regions_json(ann),
            }
        )
    _write_lines(out / "train-rle.csv", [SIIM_HEADER] + rows)
    _write_json(out / TRUTH_FILE, {"layout": "siim", "seed": seed, "n": n, "size": size, "images": truth})
    files, nbytes = _tree_stats(out)
    return LayoutSummary("siim", out, n, files, nbytes, time.perf_counter() - t0, dict(counts))


# ------------------------------------------------------------------------------------------------
def write_layout(
    layout: str,
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int | None = None,
    *,
    overwrite: bool = False,
    flat: bool = False,
    return_summary: bool = False,
) -> Path | LayoutSummary:
    """Write ``n`` synthetic images in the official layout of ``layout`` under ``out``.

    Args:
        layout: one of :data:`LAYOUTS`.
        out: output directory (created; must be empty unless ``overwrite``).
        n: number of images (``pacs``: number of keepable frontal chest images; rejects are added).
        seed: non-negative integer; the output is a pure function of the arguments.
        size: image side in pixels (default :data:`DEFAULT_SIZE`); ``vindr``: rows (columns vary).
        overwrite: replace ``out`` if it holds an earlier phantom output (it must contain truth.json).
        flat: ``nih`` only: images in ``images/`` instead of ``images_001/images/``.
        return_summary: return the :class:`LayoutSummary` instead of the root path.

    Returns:
        The dataset root (``out``), or the summary.
    """
    size = _check_args(layout, n, seed, size)
    if flat and layout != "nih":
        raise ValueError("flat=True only applies to the nih layout")
    out = Path(out)
    _prepare_out(out, overwrite)
    if layout == "nih":
        summary = write_nih(out, int(n), int(seed), size, flat=flat)
    elif layout == "vindr":
        summary = write_vindr(out, int(n), int(seed), size)
    elif layout == "rsna":
        summary = write_rsna(out, int(n), int(seed), size)
    elif layout == "siim":
        summary = write_siim(out, int(n), int(seed), size)
    else:
        from .pacs import write_pacs

        summary = write_pacs(out, int(n), int(seed), size)
    return summary if return_summary else out
