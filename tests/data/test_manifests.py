"""The committed manifests (the acceptance check) and the manifest build/load/check machinery."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlvicx_monai.data import manifests
from mlvicx_monai.data.manifests import (
    ManifestError,
    build_manifest,
    check_manifest,
    load_manifest,
    manifest_id,
    select,
    write_manifest,
)
from mlvicx_monai.data.splits import FRACTIONS, LeakageError, check_patient_disjoint
from pipelines.manifests import main as cli

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "data_manifests"
REFERENCE = REPO.parent / "shared" / "reference-labels"
DATASETS = ("nih", "vindr", "rsna", "siim")
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference label files not found at {REFERENCE} (shared/ beside the repo)"
)


@pytest.fixture(scope="module")
def committed() -> dict[str, tuple[dict, pd.DataFrame]]:
    return {name: load_manifest(name, root=ROOT) for name in DATASETS}


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_manifest_verifies(dataset):
    """Checksums, patient-disjoint splits, nesting, class coverage and recorded counts."""
    result = check_manifest(dataset, root=ROOT)
    assert result["id"].startswith(f"{dataset}/v1@")


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_manifest_no_patient_in_two_splits(committed, dataset):
    meta, entries = committed[dataset]
    check_patient_disjoint(entries["patient_id"], entries["split"])
    assert meta["patient_key"] and meta["seed"] == 0 and meta["version"] == "v1"
    assert meta["created_by"].startswith("python -m pipelines.manifests build --dataset " + dataset)
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in meta["sources"])
    assert (REPO / "data_manifests" / dataset / "v1" / "entries.csv.gz").stat().st_size < 1_000_000


def test_committed_nih_counts(committed):
    meta, entries = committed["nih"]
    assert entries["split"].value_counts().to_dict() == {"train": 75_312, "test": 25_596, "val": 11_212}
    assert len(entries) == 112_120 and entries["patient_id"].nunique() == 30_805
    assert meta["class_names"][11] == "Pleural_Thickening"
    assert {k: v["images"] for k, v in meta["counts"]["fractions"].items()} == {
        "1": 753, "10": 7_531, "30": 22_594, "100": 75_312}


def test_committed_other_counts(committed):
    sizes = {name: committed[name][0]["counts"]["images"] for name in DATASETS}
    assert sizes == {"nih": 112_120, "vindr": 15_000, "rsna": 26_684, "siim": 12_047}
    siim_meta, siim = committed["siim"]
    balanced = siim[siim["split"] != "excluded"]
    assert balanced["positive"].sum() == 2_669 == (~balanced["positive"]).sum()
    assert (siim.loc[siim["split"] == "excluded", "positive"] == 0).all()
    test_share = (balanced["split"] == "test").mean()
    assert abs(test_share - 0.2) < 0.001
    vindr_meta, _ = committed["vindr"]
    assert vindr_meta["aggregation_rule"].startswith("majority")


@pytest.mark.parametrize("dataset", DATASETS)
def test_committed_fractions_nested(committed, dataset):
    _, entries = committed[dataset]
    train = select(entries, "train")
    previous = set()
    for f in FRACTIONS:
        subset = select(entries, "train", f)
        ids = set(subset["image_id"])
        assert previous <= ids
        previous = ids
        assert abs(len(ids) - round(f / 100 * len(train))) <= 1
        positives = np.array(subset["labels"].tolist()).sum(axis=0)
        assert (positives > 0).all()
    assert entries.loc[entries["split"] != "train", "fraction"].isna().all()


def test_manifest_api(committed):
    meta, entries = committed["rsna"]
    assert manifest_id(meta) == f"rsna/v1@{meta['entries']['sha256'][:12]}"
    assert list(entries.columns[:6]) == ["image_id", "patient_id", "split", "fraction", "labels", "view"]
    assert isinstance(entries["labels"].iloc[0], tuple) and str(entries["fraction"].dtype) == "Int64"
    same_meta, _ = load_manifest(ROOT / "rsna" / "v1" / "manifest.json")
    assert manifest_id(same_meta) == manifest_id(meta)
    with pytest.raises(ManifestError, match=r"no manifest rsna/v9 .* \(available: \['v1'\]\)"):
        load_manifest("rsna", "v9", root=ROOT)
    with pytest.raises(ManifestError, match="build one with"):
        load_manifest("chexpert", root=ROOT)
    with pytest.raises(ValueError, match="training split only"):
        select(entries, "val", 10)


@needs_reference
@pytest.mark.parametrize("dataset", DATASETS)
def test_rebuild_reproduces_committed_manifest(tmp_path, dataset):
    folder = build_manifest(dataset, REFERENCE / dataset, seed=0, version="v1", out=tmp_path)
    rebuilt = json.loads((folder / "manifest.json").read_text())
    committed = json.loads((ROOT / dataset / "v1" / "manifest.json").read_text())
    assert rebuilt["entries"]["content_sha256"] == committed["entries"]["content_sha256"]
    assert rebuilt["sources"] == committed["sources"] and rebuilt["counts"] == committed["counts"]


def test_official_test_split_kept_and_val_carved_from_training():
    """NIH release lists without the train/val partition, or VinDr's PhysioNet train/test: val is carved."""
    n = 400
    labels = pd.DataFrame({
        "image_id": [f"{i:08d}_000.png" for i in range(n)],
        "patient_id": [str(i // 2) for i in range(n)],
        "labels": [(int(i % 7 == 0), int(i % 3 == 0)) for i in range(n)],
        "view": "PA",
        "follow_up": 0,
        "official_split": ["test" if i >= 300 else "train_val" for i in range(n)],
    })
    entries, rules = manifests.build_entries("nih", labels, seed=0)
    assert (entries["split"].iloc[300:] == "test").all()
    counts = entries["split"].value_counts().to_dict()
    assert counts["test"] == 100 and counts["val"] == 38 and counts["train"] == 262  # 1/8 of 150 patients
    check_patient_disjoint(entries["patient_id"], entries["split"])
    assert rules["split_rule"].startswith("official test split; val = seeded")


def _copy(tmp_path: Path, dataset: str = "siim") -> Path:
    target = tmp_path / dataset / "v1"
    shutil.copytree(ROOT / dataset / "v1", target)
    return target


def test_check_detects_edited_entries(tmp_path):
    folder = _copy(tmp_path)
    path = folder / "entries.csv.gz"
    text = gzip.decompress(path.read_bytes()).replace(b",excluded,", b",train,", 1)
    path.write_bytes(gzip.compress(text, mtime=0))
    with pytest.raises(ManifestError, match="SHA-256 .* differs from manifest.json"):
        check_manifest(folder)
    assert cli(["check", "--root", str(tmp_path)]) == 1


def test_check_detects_leakage_and_bad_counts(tmp_path):
    meta, entries = load_manifest("vindr", root=ROOT)
    meta = {k: v for k, v in meta.items() if k not in ("entries", "counts", "path")}
    leaked = entries.copy()
    leaked["labels"] = ["".join(map(str, t)) for t in leaked["labels"]]
    leaked["votes"] = ["".join(map(str, t)) for t in leaked["votes"]]
    leaked["view"] = ""
    first_test = leaked.index[leaked["split"] == "test"][0]
    first_train = leaked.index[leaked["split"] == "train"][0]
    leaked.loc[first_test, "patient_id"] = leaked.loc[first_train, "patient_id"]
    folder = write_manifest(tmp_path / "vindr" / "v1", meta, leaked)
    with pytest.raises(
        LeakageError, match=r"^1 patients \(2 images\) occur in more than one split \[test & train: 1\]"
    ):
        check_manifest(folder)
    ok = leaked.copy()
    ok.loc[first_test, "patient_id"] = ok.loc[first_test, "image_id"]
    folder = write_manifest(tmp_path / "vindr" / "v2", meta | {"version": "v2"}, ok)
    check_manifest(folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["counts"]["splits"]["train"]["images"] += 1
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="counts recomputed from the entries differ"):
        check_manifest(folder)


def test_versions_are_immutable_and_latest_is_highest(tmp_path):
    meta, entries = load_manifest("siim", root=ROOT)
    meta = {k: v for k, v in meta.items() if k not in ("entries", "counts", "path")}
    plain = entries.assign(labels=["".join(map(str, t)) for t in entries["labels"]],
                           positive=entries["positive"].astype(int), view="")
    write_manifest(tmp_path / "siim" / "v2", meta | {"version": "v2"}, plain)
    write_manifest(tmp_path / "siim" / "v10", meta | {"version": "v10"}, plain)
    write_manifest(tmp_path / "siim" / "v10", meta | {"version": "v10"}, plain)  # identical: allowed
    changed = plain.copy()
    changed.loc[changed.index[0], "split"] = "test"
    with pytest.raises(ManifestError, match="a different manifest of this version exists"):
        write_manifest(tmp_path / "siim" / "v10", meta, changed)
    assert load_manifest("siim", root=tmp_path)[0]["version"] == "v10"


@needs_reference
def test_cli_build_show_check(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli(["build", "--dataset", "siim", "--src", str(REFERENCE / "siim"), "--out", str(out),
                "--version", "v3", "--seed", "5"]) == 0
    meta = json.loads((out / "siim" / "v3" / "manifest.json").read_text())
    assert meta["seed"] == 5 and "--seed 5" in meta["created_by"]
    assert cli(["show", "--dataset", "siim", "--root", str(out)]) == 0
    assert cli(["check", "--root", str(out)]) == 0
    assert "1 manifests OK, 0 failed" in capsys.readouterr().out
    assert cli(["build", "--dataset", "rsna", "--src", str(REFERENCE / "rsna"), "--aggregation", "any"]) == 1
