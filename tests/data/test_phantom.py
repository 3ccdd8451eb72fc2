"""Synthetic chest X-ray generator: rendering truth, dataset layouts, DICOM validity, determinism."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.errors import InvalidDicomError

from mlvicx_monai.data.phantom import (
    FINDING_NAMES,
    NIH_CLASSES,
    TRANSFER_SYNTAXES,
    VINDR_CLASSES,
    collect_phi,
    dcmtk_jpeg_available,
    render_cxr,
    write_layout,
)
from mlvicx_monai.data.phantom.layouts import (
    NIH_BBOX_HEADER,
    NIH_HEADER,
    RSNA_LABELS_HEADER,
    SIIM_HEADER,
    VINDR_HEADER,
)
from mlvicx_monai.data.rle import rle_decode, rle_encode

REFERENCE = Path("/work/shared/reference-labels")
SIZE = 128
N = {"nih": 24, "vindr": 24, "rsna": 24, "siim": 40, "pacs": 16}
SEED = 7


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _reference_header(rel: str) -> str:
    path = REFERENCE / rel
    if not path.exists():
        pytest.skip(f"reference label file {path} is absent (the shared reference-labels folder is not mounted)")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as fh:
            return fh.readline().decode("utf-8").rstrip("\r\n")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\n")


def _csv(path: Path, header: bool = True) -> list:
    """Rows of a CSV file: dicts when ``header``, else lists (header row included)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh)) if header else list(csv.reader(fh))


def _words(path: Path) -> set[str]:
    return set(path.read_text(encoding="utf-8").split())


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("phantom")
    return {name: write_layout(name, base / name, n, seed=SEED, size=SIZE) for name, n in N.items()}


def _truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


# ---- rendering ------------------------------------------------------------------------------------
def test_render_is_deterministic_and_valid():
    a, ann_a = render_cxr(_rng(1), (160, 128), ["nodule", "effusion"])
    b, ann_b = render_cxr(_rng(1), (160, 128), ["nodule", "effusion"])
    c, _ = render_cxr(_rng(2), (160, 128), ["nodule", "effusion"])
    assert a.shape == (160, 128) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b) and ann_a.findings == ann_b.findings == ("effusion", "nodule")
    assert [r.bbox for r in ann_a.regions] == [r.bbox for r in ann_b.regions]
    assert not np.array_equal(a, c)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown finding"):
        render_cxr(_rng(0), 128, ["tuberculosis"])
    with pytest.raises(TypeError):
        render_cxr(_rng(0), 128, "nodule")
    with pytest.raises(ValueError, match="between 32 and 8192"):
        render_cxr(_rng(0), 8, [])
    with pytest.raises(ValueError, match="unknown layout"):
        write_layout("mimic", "/tmp/never", 1)


@pytest.mark.parametrize("name", FINDING_NAMES)
def test_every_finding_leaves_exact_truth(name):
    """A finding yields regions (with non-empty masks inside their boxes) iff it was requested."""
    for seed in range(3):
        img, ann = render_cxr(_rng(100 + seed), 192, [name])
        assert ann.findings == (name,)
        regions = ann.regions_of(name)
        assert regions, f"{name} left no region (seed {seed})"
        for r in regions:
            assert r.mask.shape == img.shape and r.mask.any()
            x0, y0, x1, y1 = r.bbox
            assert r.mask[y0:y1, x0:x1].sum() == r.mask.sum()
        _, ann0 = render_cxr(_rng(100 + seed), 192, [])
        assert not ann0.regions


def _image_heart_ratio(img: np.ndarray, lung: np.ndarray, heart: np.ndarray) -> float:
    """Cardiothoracic ratio measured on the pixels: the widest bright run through the mediastinum, in rows
    where both lungs are present, over the widest lung-to-lung extent."""
    from scipy.ndimage import uniform_filter

    smooth = uniform_filter(img, size=(img.shape[0] // 16, 5))  # wash out the rib stripes
    thr = 0.5 * (np.median(smooth[lung]) + np.median(smooth[heart]))
    cols = np.flatnonzero(lung.any(axis=0))
    width = cols[-1] - cols[0]
    best = 0
    rows = np.flatnonzero(lung.any(axis=1))
    for r in rows[int(0.5 * rows.size) : int(0.78 * rows.size)]:  # cardiac level, above the domes
        lc = np.flatnonzero(lung[r])
        centre = (cols[0] + cols[-1]) // 2
        if (lc < centre).sum() < 0.08 * width or (lc > centre).sum() < 0.08 * width:
            continue
        row = smooth[r] > thr
        left = right = centre
        while left > 0 and row[left - 1]:
            left -= 1
        while right < row.size - 1 and row[right + 1]:
            right += 1
        best = max(best, right - left + 1)
    return best / width


def test_cardiomegaly_enlarges_the_measured_heart():
    from mlvicx_monai.data.phantom import Exposure, Pose, sample_anatomy

    for seed in range(5):
        anatomy = sample_anatomy(_rng(seed))
        pose, exposure = Pose(rotation=1.0), Exposure(noise=0.005)
        ratio, masks = {}, {}
        for cm in (True, False):
            img, ann = render_cxr(
                _rng(seed), 256, ["cardiomegaly"] if cm else [], anatomy=anatomy, pose=pose, exposure=exposure
            )
            assert (ann.ctr > 0.5) == cm, f"seed {seed}: CTR {ann.ctr:.3f} with cardiomegaly={cm}"
            ratio[cm] = _image_heart_ratio(img, ann.lung_mask, ann.heart_mask)
            masks[cm] = (img, ann)
        assert ratio[True] > ratio[False] + 0.04, f"seed {seed}: image CTR {ratio[True]:.3f} vs {ratio[False]:.3f}"
        # where the normal film shows lung, the enlarged heart shows soft tissue
        (big, ann_big), (small, ann_small) = masks[True], masks[False]
        grown = ann_big.heart_mask & ~ann_small.heart_mask & ann_small.lung_mask
        assert grown.sum() > 50 and big[grown].mean() > small[grown].mean() + 0.1


def test_findings_have_the_expected_contrast():
    for seed in range(4):
        img, ann = render_cxr(_rng(40 + seed), 256, ["pneumothorax", "effusion", "mass"])
        ptx, eff, mass = ann.mask("pneumothorax"), ann.mask("effusion"), ann.mask("mass")
        lung = ann.lung_mask & ~ptx & ~eff & ~mass
        assert img[ptx].mean() < img[lung].mean(), "pneumothorax must be darker than aerated lung"
        assert img[eff].mean() > img[lung].mean() + 0.1, "pleural fluid must be denser than lung"
        assert img[mass].mean() > img[lung].mean(), "a mass must be denser than lung"


def test_images_look_like_chest_radiographs():
    for seed in range(6):
        img, ann = render_cxr(_rng(200 + seed), 192, [])
        lung, heart = ann.lung_mask, ann.heart_mask
        rows = np.flatnonzero(lung.any(axis=1))
        below = np.zeros_like(lung)
        below[rows[-1] + 3 :, img.shape[1] // 4 : 3 * img.shape[1] // 4] = True
        assert 0.15 < lung.mean() < 0.5, "lungs should cover a good part of the film"
        assert img[lung].mean() + 0.15 < img[heart].mean(), "lungs darker than the cardiac silhouette"
        assert img[lung].mean() + 0.15 < img[below].mean(), "lungs darker than the upper abdomen"
        left, right = lung[:, : img.shape[1] // 2].sum(), lung[:, img.shape[1] // 2 :].sum()
        assert 0.6 < left / right < 1.8, "two lungs of similar size"


def test_pneumothorax_masks_round_trip_through_rle():
    seen_multi = False
    for seed in range(12):
        _, ann = render_cxr(_rng(500 + seed), (150, 140), ["pneumothorax"])
        masks = ann.masks("pneumothorax")
        assert masks and all(m.any() for m in masks)
        seen_multi |= len(masks) > 1
        for m in masks:
            assert np.array_equal(rle_decode(rle_encode(m), *m.shape), m)
    assert seen_multi, "some pneumothoraces should come in several regions"


# ---- NIH ------------------------------------------------------------------------------------------
def test_nih_layout(layouts):
    root = layouts["nih"]
    assert _first_line(root / "Data_Entry_2017_v2020.csv") == NIH_HEADER
    assert _first_line(root / "BBox_List_2017.csv") == NIH_BBOX_HEADER
    rows = _csv(root / "Data_Entry_2017_v2020.csv", header=False)[1:]
    assert len(rows) == N["nih"] and all(len(r) == 11 for r in rows)
    patients = defaultdict(list)
    for name, labels, follow, pid, age, sex, view, w, h, sx, sy in rows:
        assert name == f"{int(pid):08d}_{int(follow):03d}.png" and int(pid) >= 90001
        parts = labels.split("|")
        assert labels == "No Finding" or ("No Finding" not in parts and set(parts) <= set(NIH_CLASSES))
        assert parts == sorted(parts) and sex in ("M", "F") and view in ("PA", "AP") and float(sx) > 0
        img = Image.open(root / "images_001" / "images" / name)
        assert img.mode == "L" and img.size == (SIZE, SIZE)
        patients[pid].append(name)
    assert any(len(v) > 1 for v in patients.values()), "some patients need follow-up images"
    train = _words(root / "train_val_list.txt")
    test = _words(root / "test_list.txt")
    assert train and test and not train & test and train | test == {r[0] for r in rows}
    pid_of = {r[0]: r[3] for r in rows}
    assert not {pid_of[n] for n in train} & {pid_of[n] for n in test}, "split must be patient-disjoint"
    for line in (root / "BBox_List_2017.csv").read_text().splitlines()[1:]:
        name, label, x, _, w, h = line.split(",")
        assert name in test and label in (
            "Atelectasis",
            "Cardiomegaly",
            "Effusion",
            "Infiltrate",
            "Mass",
            "Nodule",
            "Pneumonia",
            "Pneumothorax",
        )
        assert 0 <= float(x) and float(x) + float(w) <= SIZE and float(w) > 0 and float(h) > 0
    truth = {t["image"]: t for t in _truth(root)["images"]}
    for name, labels, *_ in rows:
        assert sorted(truth[name]["labels"]) == ([] if labels == "No Finding" else labels.split("|"))


def test_nih_headers_match_the_real_files(layouts):
    assert _first_line(layouts["nih"] / "Data_Entry_2017_v2020.csv") == _reference_header(
        "nih/Data_Entry_2017_v2020.csv.gz"
    )
    assert _first_line(layouts["nih"] / "BBox_List_2017.csv") == _reference_header("nih/BBox_List_2017.csv.gz")


def test_nih_flat_option(tmp_path):
    root = write_layout("nih", tmp_path / "flat", 3, seed=1, size=64, flat=True)
    assert len(list((root / "images").glob("*.png"))) == 3 and not (root / "images_001").exists()


# ---- VinDr ----------------------------------------------------------------------------------------
def test_vindr_layout(layouts):
    root = layouts["vindr"]
    assert _first_line(root / "train.csv") == VINDR_HEADER
    rows = _csv(root / "train.csv")
    truth = {t["image_id"]: t for t in _truth(root)["images"]}
    readers = defaultdict(set)
    marks = defaultdict(lambda: defaultdict(set))
    for r in rows:
        assert len(r["image_id"]) == 32 and int(r["image_id"], 16) >= 0
        assert VINDR_CLASSES[int(r["class_id"])] == r["class_name"] and r["rad_id"].startswith("R")
        readers[r["image_id"]].add(r["rad_id"])
        t = truth[r["image_id"]]
        if r["class_id"] == "14":
            assert r["x_min"] == r["y_min"] == r["x_max"] == r["y_max"] == ""
        else:
            x0, y0, x1, y1 = (float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            assert 0 <= x0 < x1 < t["cols"] and 0 <= y0 < y1 < t["rows"]
            marks[r["image_id"]][r["class_name"]].add(r["rad_id"])
    assert set(readers) == set(truth) and all(len(v) == 3 for v in readers.values())
    for image_id, t in truth.items():
        # every rendered finding is seen by a majority of readers, and readers never invent one
        assert set(marks[image_id]) == set(t["labels"])
        assert all(len(v) >= 2 for v in marks[image_id].values())
    anomalies = {t["anomaly"] for t in truth.values()}
    assert {"no_file_meta", "no_transfer_syntax", "no_pixel_data"} <= anomalies
    photometrics, bits = set(), set()
    for t in truth.values():
        path = root / t["file"]
        if t["anomaly"] == "no_file_meta":
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
            ds = pydicom.dcmread(path, force=True)
            assert "TransferSyntaxUID" not in ds.file_meta and "PixelData" in ds
            continue
        ds = pydicom.dcmread(path)
        if t["anomaly"] == "no_transfer_syntax":
            assert "TransferSyntaxUID" not in ds.file_meta and "PixelData" in ds
            continue
        if t["anomaly"] == "no_pixel_data":
            assert "PixelData" not in ds and ds.Rows == t["rows"]
            continue
        assert ds.file_meta.TransferSyntaxUID == t["transfer_syntax"]
        assert ds.pixel_array.shape == (t["rows"], t["cols"]) and ds.BitsStored == t["bits_stored"]
        assert "WindowCenter" in ds and 12 <= ds.BitsStored <= 16
        photometrics.add(ds.PhotometricInterpretation)
        bits.add(ds.BitsStored)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"} and len(bits) >= 2


def test_vindr_header_matches_the_real_file(layouts):
    assert _first_line(layouts["vindr"] / "train.csv") == _reference_header("vindr/vinbigdata-train.csv.gz")


# ---- RSNA -----------------------------------------------------------------------------------------
def test_rsna_layout(layouts):
    root = layouts["rsna"]
    assert _first_line(root / "stage_2_train_labels.csv") == RSNA_LABELS_HEADER
    assert _first_line(root / "stage_2_detailed_class_info.csv") == "patientId,class"
    labels = _csv(root / "stage_2_train_labels.csv")
    classes = _csv(root / "stage_2_detailed_class_info.csv")
    assert [r["patientId"] for r in labels] == [r["patientId"] for r in classes]
    truth = {t["patientId"]: t for t in _truth(root)["images"]}
    assert {r["class"] for r in classes} == {"Lung Opacity", "Normal", "No Lung Opacity / Not Normal"}
    for lab, cls in zip(labels, classes):
        t = truth[lab["patientId"]]
        opacity = bool({"pneumonia", "consolidation"} & set(t["findings"]))
        assert lab["Target"] == str(int(opacity)) and (cls["class"] == "Lung Opacity") == opacity
        if not opacity:
            assert lab["x"] == lab["width"] == "" and cls["class"] == (
                "No Lung Opacity / Not Normal" if t["findings"] else "Normal"
            )
        else:
            assert float(lab["x"]) >= 0 and float(lab["x"]) + float(lab["width"]) <= SIZE
    for pid, t in truth.items():
        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{pid}.dcm")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        assert (ds.Modality, ds.BodyPartExamined, ds.PatientID, ds.BitsStored) == ("CR", "CHEST", pid, 8)
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.ViewPosition in ("PA", "AP")
        assert ds.pixel_array.shape == (SIZE, SIZE) and ds.pixel_array.dtype == np.uint8


def test_rsna_header_matches_the_real_file(layouts):
    got = _first_line(layouts["rsna"] / "stage_2_train_labels.csv")
    assert got == _reference_header("rsna/kaggle_stage_2_train_labels.csv.zip")


# ---- SIIM -----------------------------------------------------------------------------------------
def test_siim_layout_and_rle(layouts):
    root = layouts["siim"]
    assert _first_line(root / "train-rle.csv") == SIIM_HEADER
    rows = _csv(root / "train-rle.csv", header=False)[1:]
    by_image = defaultdict(list)
    for image_id, rle in rows:
        by_image[image_id].append(rle)
    truth = {t["ImageId"]: t for t in _truth(root)["images"]}
    assert set(by_image) == set(truth)
    assert any(len(v) > 1 for v in by_image.values()), "images with several pneumothorax regions need several rows"
    for image_id, rles in by_image.items():
        t = truth[image_id]
        ds = pydicom.dcmread(root / t["file"])
        study, series, name = Path(t["file"]).parts[1:]
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            study,
            series,
            image_id,
        ) and name == f"{image_id}.dcm"
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) == (SIZE, SIZE)
        if rles == ["-1"]:
            assert "pneumothorax" not in t["findings"] and t["pneumothorax_regions"] == 0
            continue
        assert "-1" not in rles and "pneumothorax" in t["findings"] and len(rles) == t["pneumothorax_regions"]
        masks = [rle_decode(r, ds.Rows, ds.Columns) for r in rles]
        assert all(m.any() for m in masks) and all(rle_encode(m) == r for m, r in zip(masks, rles))
        union = np.logical_or.reduce(masks)
        assert union.sum() == t["pneumothorax_pixels"]
        boxes = sorted(tuple(r["bbox"]) for r in t["regions"] if r["finding"] == "pneumothorax")
        got = []
        for m in masks:
            ys, xs = np.nonzero(m)
            got.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        assert sorted(got) == boxes


def test_siim_header_matches_the_real_file(layouts):
    assert _first_line(layouts["siim"] / "train-rle.csv") == _reference_header(
        "siim/siim-pneumothorax-train-rle.csv.gz"
    )


# ---- PACS -----------------------------------------------------------------------------------------
def test_pacs_truth_covers_the_export(layouts):
    root = layouts["pacs"]
    truth = _truth(root)
    export = root / "export"
    on_disk = {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()}
    assert on_disk == {f["path"] for f in truth["files"]}
    assert not (export / "truth.json").exists()
    cats = {f["category"] for f in truth["files"] if f["outcome"] == "reject"}
    assert cats == set(truth["categories"]), f"missing reject categories: {set(truth['categories']) - cats}"
    keeps = [f for f in truth["files"] if f["outcome"] == "keep"]
    assert len(keeps) == N["pacs"]
    exts = {Path(f["path"]).suffix for f in truth["files"]}
    assert {".dcm", ".DCM", ".ima", ""} <= exts
    assert len({f["patient_key"] for f in keeps}) < len({f["study_key"] for f in keeps}) < len(keeps)


def test_pacs_keep_images_decode(layouts):
    root = layouts["pacs"]
    keeps = [f for f in _truth(root)["files"] if f["outcome"] == "keep"]
    syntaxes, photometric, bits, signed, voi = set(), set(), set(), set(), set()
    for f in keeps:
        ds = pydicom.dcmread(root / "export" / f["path"])
        assert ds.file_meta.TransferSyntaxUID == f["transfer_syntax"]
        arr = ds.pixel_array
        assert arr.shape == (f["rows"], f["cols"]) and arr.std() > 0
        assert (ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation) == (
            f["photometric"],
            f["bits_stored"],
            int(f["signed"]),
        )
        assert ds.Modality in ("CR", "DX") and ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        lo, hi = (
            (-(1 << (ds.BitsStored - 1)), (1 << (ds.BitsStored - 1)) - 1)
            if f["signed"]
            else (0, (1 << ds.BitsStored) - 1)
        )
        assert lo <= arr.min() and arr.max() <= hi
        syntaxes.add(f["transfer_syntax"])
        photometric.add(f["photometric"])
        bits.add(f["bits_stored"])
        signed.add(f["signed"])
        voi.add(f["voi"].split(":")[0])
    expected = {
        uid for name, uid in TRANSFER_SYNTAXES.items() if dcmtk_jpeg_available() or not name.startswith("jpeg_lossless")
    }
    assert syntaxes == expected
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and {10, 12, 14, 15, 16} <= bits and signed == {True, False}
    assert voi == {"window", "windows", "lut", "none"}


@pytest.mark.filterwarnings("ignore:Applying a VOI LUT on a float input array")
def test_pacs_lossless_pixels_display_like_the_image(layouts):
    """The display pipeline (modality LUT, VOI, MONOCHROME1 inversion) gives one consistent picture."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    root = layouts["pacs"]
    shown = []
    for f in _truth(root)["files"]:
        if f["outcome"] != "keep" or f["voi"] == "none":
            continue
        ds = pydicom.dcmread(root / "export" / f["path"])
        img = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        img = (img - img.min()) / (img.max() - img.min())
        if ds.PhotometricInterpretation == "MONOCHROME1":
            img = 1.0 - img
        rows, cols = img.shape
        centre = img[rows // 3 : 2 * rows // 3, cols // 2 - cols // 20 : cols // 2 + cols // 20].mean()
        lungs = np.r_[
            img[rows // 3 : rows // 2, cols // 5 : cols // 3].ravel(),
            img[rows // 3 : rows // 2, 2 * cols // 3 : 4 * cols // 5].ravel(),
        ]
        shown.append(centre - np.median(lungs))
    assert np.mean(np.array(shown) > 0.1) > 0.9, "mediastinum must show brighter than the lungs after display"


def test_pacs_rejects_are_broken_as_declared(layouts):
    root = layouts["pacs"]
    files = _truth(root)["files"]
    by_path = {f["path"]: f for f in files}
    for f in files:
        if f["outcome"] != "reject":
            continue
        path = root / "export" / f["path"]
        cat = f["category"]
        if cat == "empty":
            assert path.stat().st_size == 0
        elif cat == "not_dicom":
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
        elif cat == "truncated":
            assert path.stat().st_size == f["written_size"] < f["full_size"]
            with pytest.raises(ValueError):
                _ = pydicom.dcmread(path).pixel_array
        elif cat == "duplicate":
            src = root / "export" / f["duplicate_of"]
            assert path.read_bytes() == src.read_bytes() and by_path[f["duplicate_of"]]["outcome"] == "keep"
            assert f["path"] > f["duplicate_of"]
        elif cat == "dicomdir":
            ds = pydicom.dcmread(path)
            assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.MediaStorageDirectoryStorage
            for rec in ds.DirectoryRecordSequence:
                if rec.DirectoryRecordType == "IMAGE":
                    assert by_path["/".join(rec.ReferencedFileID)]["outcome"] == "keep"
        else:
            ds = pydicom.dcmread(path)
            if cat == "no_pixel_data":
                assert "PixelData" not in ds and ds.Modality == "CR" and ds.BodyPartExamined == "CHEST"
            elif cat == "non_image":
                assert "PixelData" not in ds and ds.Modality in ("SR", "RTSTRUCT", "PR")
            elif cat == "modality":
                assert ds.Modality in ("CT", "MR") and ds.pixel_array.ndim == 2
            elif cat == "body_part":
                assert ds.BodyPartExamined not in ("CHEST", "") and ds.Modality == "CR" and ds.pixel_array.ndim == 2
            elif cat == "view":
                assert ds.ViewPosition == "LL" and ds.BodyPartExamined == "CHEST" and f["labels"] is not None
                assert ds.pixel_array.shape == (f["rows"], f["cols"])
            elif cat == "multiframe":
                assert int(ds.NumberOfFrames) > 1 and ds.pixel_array.ndim == 3
            elif cat == "color":
                assert ds.SamplesPerPixel == 3 and ds.PhotometricInterpretation == "RGB"
            else:
                raise AssertionError(f"unexpected category {cat}")


def test_pacs_phi_listed_in_truth_is_in_the_headers(layouts):
    root = layouts["pacs"]
    truth = _truth(root)
    union = set()
    for f in truth["files"]:
        phi = set(f.get("phi", []))
        union |= phi
        path = root / "export" / f["path"]
        if not phi:
            continue
        if f.get("category") == "truncated":
            raw = path.read_bytes()  # explicit VR little endian: the header is plain bytes
            assert all(v.encode() in raw for v in phi)
            continue
        found = collect_phi(pydicom.dcmread(path, stop_before_pixels=True))
        assert phi <= found, f"{f['path']}: {sorted(phi - found)[:3]} not in the header"
    assert union == set(truth["phi_values"])
    keep = next(f for f in truth["files"] if f["outcome"] == "keep")
    ds = pydicom.dcmread(root / "export" / keep["path"], stop_before_pixels=True)
    for attr in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "AccessionNumber",
        "InstitutionName",
        "ReferringPhysicianName",
        "StudyID",
        "OperatorsName",
        "StationName",
    ):
        assert str(ds.data_element(attr).value) in keep["phi"], attr
    assert truth["phi_in_paths"] and all(len(v) >= 3 for v in truth["phi_in_paths"])


# ---- determinism and the command line ------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nih", "vindr", "rsna", "siim", "pacs"])
def test_layouts_are_deterministic(layout, tmp_path):
    n = 8 if layout != "pacs" else 4
    a = write_layout(layout, tmp_path / "a", n, seed=3, size=96)
    b = write_layout(layout, tmp_path / "b", n, seed=3, size=96)
    c = write_layout(layout, tmp_path / "c", n, seed=4, size=96)
    ha, hb, hc = _hash_tree(a), _hash_tree(b), _hash_tree(c)
    assert ha == hb
    assert ha != hc


def test_cli(tmp_path, capsys):
    from pipelines.phantom import main

    out = tmp_path / "cli"
    assert main(["--layout", "siim", "--out", str(out), "--n", "3", "--seed", "1", "--size", "64"]) == 0
    assert "siim: 3 images" in capsys.readouterr().out
    assert main(["--layout", "siim", "--out", str(out), "--n", "3", "--seed", "1", "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["--layout", "siim", "--out", str(out), "--n", "2", "--seed", "1", "--size", "64", "--overwrite"]) == 0
    assert len(_csv(out / "train-rle.csv", header=False)) >= 3
    assert main(["--layout", "rsna", "--out", str(tmp_path / "x"), "--n", "0"]) == 2
