"""Unit tests of the pieces behind issue 9: file pseudonyms of raw bytes, the tree walk, the PHI guard, the
header-first memory bound, the burned-in text detector, secrets, re-sends, and supervised workers."""

from __future__ import annotations

import csv
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlvicx_monai.data.burned_in import detect_burned_in_text
from mlvicx_monai.data.datalist import read_datalist
from mlvicx_monai.data.deid import DeidSecretError, Pseudonymizer, file_pseudonym
from mlvicx_monai.data.dicom import CXRDecodeError, load_cxr, read_dicom
from mlvicx_monai.data.ingest import IngestConfig, IngestError, ingest
from mlvicx_monai.data.phi_guard import PHIGuard
from mlvicx_monai.data.rejections import REJECTION_CODES, FileRejected, write_rejections
from mlvicx_monai.data.walk import walk_tree
from tests.data.hostile_corpus import _claimed_bomb, _dataset, _deflate_bomb, _pixels, _save, _with_text

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def secret_file(tmp_path) -> Path:
    path = tmp_path / "secret" / "deid.secret"
    path.parent.mkdir()
    path.write_bytes(SECRET + b"\n")
    return path


def test_file_pseudonyms_take_any_bytes():
    pseudo = Pseudonymizer(SECRET)
    latin = b"M\xdcLLER/IMG1.dcm"  # not UTF-8: os.walk gives it as a str with a lone surrogate
    assert file_pseudonym(pseudo, os.fsdecode(latin)) == file_pseudonym(pseudo, latin)
    assert file_pseudonym(pseudo, "ЩЪЮЯ/IMG1") == file_pseudonym(pseudo, "ЩЪЮЯ/IMG1".encode())
    assert file_pseudonym(pseudo, "a/b") == pseudo.pseudonym("a/b", kind="file", length=32)  # stable for UTF-8 names
    assert len({file_pseudonym(pseudo, p) for p in (latin, b"M\xc3\x9cLLER/IMG1.dcm", b"a/b")}) == 3


def test_walk_reports_every_entry_it_cannot_read(tmp_path, monkeypatch):
    root = tmp_path / "export"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "IMG1").write_bytes(b"x")
    (root / "locked").mkdir()
    (root / "locked" / "IMG1").write_bytes(b"x")
    os.mkfifo(root / "pipe")
    os.symlink(root / "ok", root / "folder_link")
    os.symlink(root / "missing", root / "broken_link")
    os.symlink(root / "ok" / "IMG1", root / "file_link")
    (root / os.fsdecode(b"M\xdcLLER.dcm")).write_bytes(b"x")
    fd = os.open(root, os.O_RDONLY)
    for _ in range(22):  # 22 x 201 bytes: deeper than PATH_MAX (4096)
        os.mkdir("d" * 200, dir_fd=fd)
        fd, old = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    os.close(os.open("deep.dcm", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    listdir = os.listdir

    def refusing(target):  # root reads chmod 000 folders: refuse this one the way the kernel would
        if isinstance(target, int) and os.readlink(f"/proc/self/fd/{target}").endswith("/locked"):
            raise PermissionError(13, "Permission denied")
        return listdir(target)

    monkeypatch.setattr(os, "listdir", refusing)
    result = walk_tree(root)
    assert result.files == sorted(["file_link", os.fsdecode(b"M\xdcLLER.dcm"), "ok/IMG1"])
    codes = {p.rel.split("/")[0] if p.rel.startswith("d") else p.rel: p.code for p in result.problems}
    assert codes == {"locked": "unreadable_folder", "pipe": "not_a_regular_file", "folder_link": "not_a_regular_file",
                     "broken_link": "not_a_regular_file", "d" * 200: "path_too_long"}
    assert all("locked" not in p.reason and "d" * 20 not in p.reason for p in result.problems)


def test_phi_guard_scrubs_paths_values_and_header_phi(tmp_path, caplog):
    root = tmp_path / "export"
    guard = PHIGuard([root])
    path = root / "ЩЪЮЯФЫВА^ЁЖИКЭ_12345" / "CR" / "IMG0005"
    logger = logging.getLogger("phi-guard-test")
    with caplog.at_level(logging.INFO), guard.installed():
        with guard.file(path, "ЩЪЮЯФЫВА^ЁЖИКЭ_12345/CR/IMG0005", "fabc"):
            guard.add_phi({"ДОЕ^ИВАН", "MRN77123"})
            logger.warning("%s: degenerate window", path)
            warnings.warn("Invalid value for VR UI: '1.2.826.0.1.3680043.9.7777.1'. in file " + str(path))
            logger.warning("patient ДОЕ ИВАН born 1961-03-04, id MRN77123, study 19610304")
            with pytest.raises(ValueError) as err:
                with guard.installed():
                    raise ValueError(f"cannot read {path}")
    text = caplog.text + str(err.value)
    for leaked in ("ЩЪЮЯ", "ЁЖИКЭ", "12345", "1.2.826", "ДОЕ", "ИВАН", "1961", "MRN77123", "19610304", str(root)):
        assert leaked not in text, leaked
    assert "<file fabc>: degenerate window" in caplog.text and "[PHI]" in caplog.text


def test_read_dicom_refuses_bombs_from_their_header(tmp_path):
    _deflate_bomb(tmp_path / "deflated", 1, 8000, 8000)
    _claimed_bomb(tmp_path / "claimed", 2)
    assert (tmp_path / "deflated").stat().st_size < 200_000
    for name, shown in (("deflated", "8000 x 8000"), ("claimed", "40000 x 40000")):
        with pytest.raises(CXRDecodeError) as err:
            read_dicom(tmp_path / name)
        assert err.value.code == "too_large" and shown in err.value.reason and "--max-pixel-mb" in err.value.reason
    # a deflated data set that inflates to more than its header says (a big Pixel Data under small Rows/Columns)
    _deflate_bomb(tmp_path / "liar", 3, 4200, 4200, header_shape=(100, 100))
    with pytest.raises(CXRDecodeError, match="inflates to more than"):
        read_dicom(tmp_path / "liar", max_pixel_bytes=8 * 2**20)
    ds = read_dicom(tmp_path / "claimed", max_pixel_bytes=None)  # no bound: the header is read, nothing decoded
    assert ds.Rows == 40000


def test_burned_in_text_detector_finds_labels_not_anatomy_or_lead_markers(testdata):
    clean = _pixels(7, 512, 512).astype(np.float64) / 4095
    assert detect_burned_in_text(clean) is None
    label = _with_text(_pixels(7, 512, 512), "DOE^JOHN 04.03.1961", 16).astype(np.float64) / 4095
    found = detect_burned_in_text(label)
    assert found is not None and found.lines == 1 and found.boxes[0][1] < 40
    marker, _ = load_cxr(testdata("RG3_UNCR.dcm"))  # a lead "R" marker: one glyph, not text
    assert detect_burned_in_text(marker) is None


def test_opencv_top_hats_equal_scipys_on_the_detector_input(testdata):
    import cv2
    from scipy import ndimage

    from mlvicx_monai.data.burned_in import _work_image

    image, _ = load_cxr(testdata("RG1_UNCR.dcm"))
    noisy = np.random.default_rng(0).integers(0, 256, (301, 257), dtype=np.uint8)  # odd sizes: every border case
    for work in (_work_image(np.asarray(image, dtype=np.float32).squeeze())[0], noisy):
        for cell in (5, 9, 11):
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (cell, cell))
            white = cv2.morphologyEx(work, cv2.MORPH_TOPHAT, kernel, borderType=cv2.BORDER_REFLECT)
            black = cv2.morphologyEx(work, cv2.MORPH_BLACKHAT, kernel, borderType=cv2.BORDER_REFLECT)
            assert np.array_equal(white, ndimage.white_tophat(work, size=(cell, cell)))
            assert np.array_equal(black, ndimage.black_tophat(work, size=(cell, cell)))


def test_secret_must_exist_unless_new_and_must_not_be_linked_into_out(tmp_path, secret_file):
    missing = tmp_path / "typo.secret"
    with pytest.raises(DeidSecretError, match="--new-secret"):
        Pseudonymizer.from_file(missing)
    assert not missing.exists()
    created = Pseudonymizer.from_file(missing, create=True)
    assert oct(missing.stat().st_mode & 0o777) == "0o600"
    assert Pseudonymizer.from_file(missing).check_value() == created.check_value()
    out = tmp_path / "out"
    out.mkdir()
    os.link(secret_file, out / "innocent.txt")
    with pytest.raises(DeidSecretError, match="hard-linked into the output folder"):
        Pseudonymizer.from_file(secret_file, outputs=[out])


def _tiny_export(root: Path) -> None:
    uid = "1.2.826.0.1.3680043.9.7777.3.77"
    _save(root, "A/IMG1", _dataset(70, "A^A", _pixels(70), uid=uid))
    _save(root, "B/IMG1", _dataset(70, "A^A", _pixels(71), uid=uid))  # same SOP instance, other pixels
    _save(root, "C/IMG1", _dataset(72, "C^C", _pixels(72)))
    _save(root, "D/IMG1", _dataset(72, "C^C", _pixels(72)))  # a true re-send of C


def test_conflicting_resend_is_quarantined_and_true_resend_ingested_once(tmp_path, secret_file):
    _tiny_export(tmp_path / "src")
    out = tmp_path / "out"
    summary = ingest(IngestConfig("pacs", tmp_path / "src", out, size=32, workers=0, secret_file=secret_file,
                                  progress=False))
    assert summary["ingested"] == 1
    assert summary["quarantine_by_code"] == {"conflicting_resend": 2, "duplicate": 1}
    assert len(list((out / "images").rglob("*.png"))) == 1  # the conflicting copies' cache files are gone
    pseudo = Pseudonymizer(SECRET)
    with open(out / "quarantine.csv", newline="") as handle:
        rows = {r["file"]: r["code"] for r in csv.DictReader(handle)}
    assert rows == {file_pseudonym(pseudo, "A/IMG1"): "conflicting_resend",
                    file_pseudonym(pseudo, "B/IMG1"): "conflicting_resend",
                    file_pseudonym(pseudo, "D/IMG1"): "duplicate"}
    entry = next(e for k in ("training", "validation", "test") for e in read_datalist(out)[k])
    cached = np.asarray(Image.open(out / entry["image"]), dtype=np.float64)
    own = np.asarray(Image.fromarray(_pixels(72).astype(np.float32)).resize((32, 32), Image.Resampling.BOX))
    assert np.corrcoef(cached.ravel(), own.ravel())[0, 1] > 0.9
    # resuming with another secret would mix two pseudonym spaces: refused
    other = tmp_path / "other.secret"
    other.write_text("fedcba9876543210fedcba9876543210\n")
    with pytest.raises(IngestError, match="another de-identification secret"):
        ingest(IngestConfig("pacs", tmp_path / "src", out, size=32, workers=0, secret_file=other, progress=False))


def test_cli_refuses_a_missing_secret_and_a_path_map_inside_out(tmp_path, secret_file, capsys):
    from pipelines.ingest import main

    _tiny_export(tmp_path / "src")
    base = ["--dataset", "pacs", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--workers", "0",
            "--no-progress", "--size", "32"]
    assert main([*base, "--secret-file", str(tmp_path / "typo.secret")]) == 2
    assert "--new-secret" in capsys.readouterr().err and not (tmp_path / "typo.secret").exists()
    assert main([*base, "--secret-file", str(secret_file), "--phi-path-map", str(tmp_path / "out" / "map.csv")]) == 2
    assert "inside the output folder" in capsys.readouterr().err


def test_the_hostile_corpus_plants_a_canary_in_every_phi_attribute():
    from mlvicx_monai.data.deid import PHI_KEYWORDS
    from tests.data.hostile_corpus import CANARY_VALUES

    assert set(PHI_KEYWORDS) == {*CANARY_VALUES, "PatientName", "SOPInstanceUID"}


def test_rejection_codes_are_one_closed_set():
    with pytest.raises(ValueError, match="unknown rejection code"):
        FileRejected("not_an_image", "x")
    assert {"not_dicom", "too_large", "worker_died", "burned_in_text", "conflicting_resend", "path_too_long"} <= set(
        REJECTION_CODES)
    with pytest.raises(ValueError):
        write_rejections(Path("/nonexistent/x.csv"), [("f1", "made_up", "x")])


@pytest.mark.slow
def test_a_dead_worker_costs_its_task_only():
    from mlvicx_monai.data.workers import run_supervised
    from tests.data.worker_tasks import square_or_die

    results, failures = {}, {}
    stats = run_supervised(list(range(6)), square_or_die, workers=2, on_result=results.__setitem__,
                           on_failure=failures.__setitem__)
    assert results == {t: t * 10 for t in range(6) if t != 2}
    assert list(failures) == [2] and "SIGKILL" in failures[2]
    assert stats.died == 1 and len(stats.peak_rss_mib) >= 2 and all(v > 0 for v in stats.peak_rss_mib[:1])
