"""Ingestion: PACS exports (truth, PHI, kill-and-resume) and the official layouts of the public datasets."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from mlvicx_monai.data.datalist import load_datalist, read_datalist
from mlvicx_monai.data.deid import Pseudonymizer, file_pseudonym
from mlvicx_monai.data.ingest import IngestConfig, IngestError, ingest
from mlvicx_monai.data.phantom import write_layout
from mlvicx_monai.data.rle import rle_merge

REPO = Path(__file__).resolve().parents[2]

# phantom truth category -> ingestion code
EXPECTED_CODE = {
    "dicomdir": {"dicomdir"},
    "not_dicom": {"not_dicom"},
    "empty": {"not_dicom"},
    "truncated": {"truncated"},
    "no_pixel_data": {"no_pixel_data"},
    "non_image": {"non_image", "no_pixel_data"},
    "modality": {"modality"},
    "body_part": {"body_part"},
    "view": {"view"},
    "multiframe": {"multi_frame"},
    "color": {"colour"},
    "duplicate": {"duplicate"},
}


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "deid.secret"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return path


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pacs")
    write_layout("pacs", root, n=24, seed=3, size=160)
    return root


@pytest.fixture(scope="module")
def pacs_ingested(pacs, secret, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pacs_out") / "out"
    ingest(IngestConfig("pacs", pacs / "export", out, size=64, workers=2, secret_file=secret, progress=False))
    return out


def _truth(root: Path) -> dict:
    return json.loads((root / "truth.json").read_text())


def test_pacs_keeps_every_good_image_once_and_quarantines_the_rest(pacs, pacs_ingested, secret):
    truth = _truth(pacs)
    pseudo = Pseudonymizer.from_file(secret, create=False)
    document = read_datalist(pacs_ingested)
    entries = [e for key in ("training", "validation", "test") for e in document[key]]
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)), "an image is in the manifest twice"

    keeps = [f for f in truth["files"] if f["outcome"] == "keep"]
    expected_ids = set()
    for item in keeps:
        ds = pydicom.dcmread(pacs / "export" / item["path"], stop_before_pixels=True)
        expected_ids.add(pseudo.pseudonym(str(ds.SOPInstanceUID), kind="image", length=20))
    assert set(ids) == expected_ids
    for entry in entries:  # every cached image exists, is 8-bit and square
        image = Image.open(pacs_ingested / entry["image"])
        assert image.mode == "L" and image.size == (64, 64)
        assert entry["patient"].startswith("p") and entry["study"].startswith("s")
    assert len(list((pacs_ingested / "images").rglob("*.png"))) == len(entries)

    with open(pacs_ingested / "quarantine.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_file = {row["file"]: row for row in rows}
    rejects = [f for f in truth["files"] if f["outcome"] == "reject"]
    assert len(rows) == len(rejects)
    for item in rejects:  # quarantine.csv names files by the keyed pseudonym of their path, never by the path
        shown = file_pseudonym(pseudo, item["path"])
        assert shown in by_file, f"{item['path']} ({item['category']}) is not in quarantine.csv"
        row = by_file[shown]
        assert row["code"] in EXPECTED_CODE[item["category"]], (item, row)
        assert len(row["reason"]) > 20


def _phi_hits(root: Path, values: set[str]) -> list[tuple[str, str]]:
    """PHI values found in the files (and file names) under ``root``.

    Text outputs and names: every value, and every part of a person name, as a whole word, case-insensitive.
    Binary outputs (PNG): the exact bytes of values of 6+ characters (shorter ones would match by chance).
    """
    words = {v for v in values if len(v) >= 3} | {p for v in values if "^" in v for p in v.split("^") if len(p) >= 3}
    patterns = [(w, re.compile(rf"(?<![0-9A-Za-z]){re.escape(w)}(?![0-9A-Za-z])", re.IGNORECASE)) for w in words]
    hits = []
    for path in root.rglob("*"):
        rel = str(path.relative_to(root))
        hits += [(rel, w) for w, pattern in patterns if pattern.search(rel)]
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix in (".json", ".csv", ".txt", ".log", ".yaml"):
            text = data.decode("utf-8")
            hits += [(rel, w) for w, pattern in patterns if pattern.search(text)]
        else:
            hits += [(rel, v) for v in values if len(v) >= 6 and v.encode() in data]
    return hits


def test_pacs_outputs_hold_no_phi(pacs, pacs_ingested):
    truth = _truth(pacs)
    values = set(truth["phi_values"]) | set(truth.get("phi_in_paths", []))
    assert len(values) > 20
    hits = _phi_hits(pacs_ingested, values)
    assert not hits, f"PHI found in outputs: {hits[:10]}"


def _images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "images").rglob("*.png"))}


@pytest.mark.slow  # kills and reruns the ingestion job in subprocesses
def test_pacs_ingest_survives_sigkill_and_resumes_to_the_same_outputs(pacs, pacs_ingested, secret, tmp_path):
    """SIGKILL of the whole run (main process and workers) twice, at two points, then a rerun: the same outputs,
    byte for byte, as the uninterrupted run; a killed run is never mistaken for a dead worker (worker_died)."""
    out = tmp_path / "killed"
    command = [
        sys.executable, "-m", "pipelines.ingest", "--dataset", "pacs", "--src", str(pacs / "export"),
        "--out", str(out), "--size", "64", "--workers", "2", "--secret-file", str(secret), "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    records = out / ".ingest" / "records"
    done = []
    for threshold in (6, 16):
        process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if records.exists() and sum(1 for _ in records.rglob("*.json")) >= threshold:
                break
            time.sleep(0.02)
        killed = process.poll() is None
        if killed:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert killed, "the ingestion finished before it could be killed; grow the phantom"
        assert not (out / "manifest.json").exists()
        done.append(sum(1 for _ in records.rglob("*.json")))

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("manifest.json", "quarantine.csv", "ingest_summary.json"):
        assert (out / name).read_bytes() == (pacs_ingested / name).read_bytes(), name
    assert _images(out) == _images(pacs_ingested)
    assert "worker_died" not in (out / "quarantine.csv").read_text()
    assert not list(out.rglob("*.partial"))
    assert done[0] < done[1] < len(_truth(pacs)["files"])
    document = read_datalist(out)
    n_entries = sum(len(document[k]) for k in ("training", "validation", "test"))
    assert len(_images(out)) == n_entries


def test_rerun_with_other_settings_is_refused(pacs, pacs_ingested, secret):
    with pytest.raises(IngestError, match="different settings"):
        ingest(IngestConfig("pacs", pacs / "export", pacs_ingested, size=128, workers=1, secret_file=secret,
                            progress=False))


def test_bad_arguments_are_explained(pacs, secret, tmp_path):
    with pytest.raises(IngestError, match="inside --src"):
        ingest(IngestConfig("pacs", pacs / "export", pacs / "export" / "out", secret_file=secret, progress=False))
    with pytest.raises(IngestError, match="not a folder"):
        ingest(IngestConfig("pacs", tmp_path / "missing", tmp_path / "out", secret_file=secret, progress=False))
    with pytest.raises(IngestError, match="unknown dataset"):
        ingest(IngestConfig("chexpert", pacs, tmp_path / "out", secret_file=secret, progress=False))


def test_nih_layout_labels_and_official_split(tmp_path, secret):
    src = tmp_path / "nih"
    write_layout("nih", src, n=40, seed=5, size=128)
    out = tmp_path / "out"
    summary = ingest(IngestConfig("nih", src, out, size=64, workers=1, secret_file=secret, progress=False))
    assert summary["ingested"] == 40 and summary["quarantined"] == 0
    document = read_datalist(out)
    assert document["splits"]["source"] == "computed"
    test_ids = set((src / "test_list.txt").read_text().split())
    entries = {e["id"]: e for key in ("training", "validation", "test") for e in document[key]}
    assert {e["id"] for e in document["test"]} == set(entries) & test_ids
    assert all(Path(e["image"]).name == e["id"] for e in document["training"])  # 00000001_000.png, no double suffix
    with open(src / "Data_Entry_2017_v2020.csv") as handle:
        table = {row["Image Index"]: row["Finding Labels"] for row in csv.DictReader(handle)}
    names = document["class_names"]
    for image_id, entry in entries.items():
        expected = {n for n in table[image_id].split("|") if n != "No Finding"}
        assert {names[i] for i, v in enumerate(entry["label"]) if v} == expected
    train = load_datalist(out, "train", fraction=0.1)
    assert train and all(Path(e["image"]).is_file() for e in train)


def test_siim_masks_are_the_merged_rle(tmp_path, secret):
    src = tmp_path / "siim"
    write_layout("siim", src, n=16, seed=2, size=256)
    out = tmp_path / "out"
    ingest(IngestConfig("siim", src, out, size=64, workers=1, secret_file=secret, progress=False))
    rows: dict[str, list[str]] = {}
    with open(src / "train-rle.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for image_id, rle in reader:
            rows.setdefault(image_id, []).append(rle)
    document = read_datalist(out)
    entries = [e for key in ("training", "validation", "test", "excluded") for e in document[key]]
    assert len(entries) == 16
    assert any(len(r) > 1 for r in rows.values()), "the phantom should have an image with several masks"
    for entry in entries:
        full = rle_merge(rows[entry["id"]], 256, 256)
        assert entry["mask_pixels"] == int(full.sum())
        mask = np.asarray(Image.open(out / entry["mask"]))
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert (mask.sum() > 0) == (entry["mask_pixels_cached"] > 0)
        assert entry["label"] == [int(full.any())]


def test_vindr_quarantines_files_without_pixels_and_keeps_boxes(tmp_path, secret):
    src = tmp_path / "vindr"
    write_layout("vindr", src, n=22, seed=4, size=160)
    out = tmp_path / "out"
    summary = ingest(IngestConfig("vindr", src, out, size=64, workers=1, secret_file=secret, progress=False))
    anomalies = [i["anomaly"] for i in _truth(src)["images"] if i["anomaly"]]
    assert "no_pixel_data" in anomalies and {"no_file_meta", "no_transfer_syntax"} & set(anomalies)
    # header-less files are read (the encoding is inferred); only the file without pixels is rejected
    assert summary["quarantine_by_code"] == {"no_pixel_data": anomalies.count("no_pixel_data")}
    assert summary["ingested"] + summary["quarantined"] == 22
    document = read_datalist(out)
    boxed = [e for key in ("training", "validation", "test") for e in document[key] if e.get("boxes")]
    assert boxed, "findings with boxes should keep their (rescaled) boxes"
    for entry in boxed:
        for item in entry["boxes"]:
            x, y, w, h = item["box"]
            assert item["label"] in document["class_names"] and item["reader"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 64.01 and y + h <= 64.01
