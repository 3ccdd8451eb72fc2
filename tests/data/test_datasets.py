"""Dataset adapters: real public label files, hand-written error cases, image layouts."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlvicx_monai.data.datasets import ADAPTER_NAMES, DatasetError, find_label_file, get_adapter, nih, rsna, siim, vindr
from mlvicx_monai.data.rle import rle_decode, rle_encode, rle_merge

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference-labels"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference label files not found at {REFERENCE} (shared/ beside the repo)"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# --------------------------------------------------------------------------------------------- registry


def test_registry_and_interface():
    for name in ADAPTER_NAMES:
        module = get_adapter(name)
        assert module.NAME == name
        assert isinstance(module.CLASS_NAMES, tuple) and module.CLASS_NAMES
        assert module.LABEL_FILES and callable(module.read_labels) and callable(module.find_images)
    assert get_adapter(" NIH ") is nih
    with pytest.raises(KeyError, match="valid names: nih, vindr, rsna, siim"):
        get_adapter("chexpert")


def test_nih_class_names_follow_paper_table_1():
    assert nih.CLASS_NAMES == (
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
        "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
    )
    assert sorted(nih.XRAY14_LIST_CLASS_ORDER) == sorted(nih.CLASS_NAMES)


def test_label_file_found_plain_gz_zip(tmp_path):
    write(tmp_path / "plain" / "train-rle.csv", "ImageId,EncodedPixels\na,-1\n")
    gz = tmp_path / "gz" / "train-rle.csv.gz"
    gz.parent.mkdir()
    with gzip.open(gz, "wt") as handle:
        handle.write("ImageId, EncodedPixels\na,-1\nb,1 2\n")
    zipped = tmp_path / "zip" / "train-rle.csv.zip"
    zipped.parent.mkdir()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("train-rle.csv", "ImageId,EncodedPixels\na,-1\nb,1 2\nc,-1\n")
    for folder, n in (("plain", 1), ("gz", 2), ("zip", 3)):
        assert len(siim.read_labels(tmp_path / folder)) == n
    with pytest.raises(DatasetError, match=r"none of the SIIM RLE files .*train-rle\.csv"):
        siim.read_labels((tmp_path / "empty").mkdir() or tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such directory"):
        find_label_file(tmp_path / "missing", ["x.csv"])


# --------------------------------------------------------------------------------------------- real files


@pytest.fixture(scope="module")
def nih_real() -> pd.DataFrame:
    return nih.read_labels(REFERENCE / "nih")


@needs_reference
def test_nih_real_counts_and_official_split(nih_real):
    df = nih_real
    assert len(df) == 112_120 and df["patient_id"].nunique() == 30_805
    assert df["image_id"].is_unique
    assert df["official_split"].value_counts().to_dict() == {"train": 75_312, "val": 11_212, "test": 25_596}
    assert set(df["view"]) == {"PA", "AP"}
    assert {len(t) for t in df["labels"]} == {14}
    # the official split is patient-disjoint
    per_patient = df.groupby("patient_id")["official_split"].nunique()
    assert (per_patient == 1).all()
    assert df.attrs["report"]["rows_dropped"] == 0
    first = df.set_index("image_id").loc["00000001_001.png"]
    assert first["labels"][nih.CLASS_NAMES.index("Cardiomegaly")] == 1
    assert first["labels"][nih.CLASS_NAMES.index("Emphysema")] == 1 and sum(first["labels"]) == 2


@needs_reference
def test_nih_partition_label_order_cross_check(nih_real):
    """The Xray14_*_official lists use the original NIH class order; determine it from the data."""
    entry = np.array(nih_real["labels"].tolist(), dtype=np.uint8)
    position = pd.Series(np.arange(len(nih_real)), index=nih_real["image_id"])
    for name in ("Xray14_train_official.txt", "Xray14_val_official.txt"):
        listed = nih.read_label_list(find_label_file(REFERENCE / "nih", [name]))
        matrix = np.stack(listed["list_labels"].to_list())
        rows = entry[position.loc[listed["image_id"]].to_numpy()]
        order = nih.infer_list_class_order(matrix, rows)
        assert order == nih.XRAY14_LIST_CLASS_ORDER
        assert order != nih.CLASS_NAMES
        reordered = matrix[:, [order.index(c) for c in nih.CLASS_NAMES]]
        assert np.array_equal(reordered, rows)  # both files agree on every image and class


@needs_reference
def test_vindr_real_counts_and_aggregation():
    df = vindr.read_labels(REFERENCE / "vindr")
    assert len(df) == 15_000 and df["image_id"].is_unique
    assert (df["patient_id"] == df["image_id"]).all()
    assert (df["n_readers"] == 3).all()
    assert df.attrs["aggregation"] == "majority" and df.attrs["report"]["rows"] == 67_914
    majority = np.array(df["labels"].tolist())
    votes = np.array(df["votes"].tolist())
    anyone = vindr.aggregate_votes(votes, df["n_readers"], "any")
    everyone = vindr.aggregate_votes(votes, df["n_readers"], "all")
    assert (everyone <= majority).all() and (majority <= anyone).all()
    assert majority[:, vindr.CLASS_NAMES.index("Atelectasis")].sum() == 62
    assert anyone[:, vindr.CLASS_NAMES.index("Atelectasis")].sum() == 186
    assert (anyone.sum(axis=1) == 0).sum() == 10_606  # images all three readers called "No finding"
    n_boxes = sum(len(b) for boxes in df["boxes"] for b in boxes.values())
    assert n_boxes == 67_914 - 31_818  # every finding row keeps its box; "No finding" rows have none


@needs_reference
def test_rsna_real_counts():
    df = rsna.read_labels(REFERENCE / "rsna")
    assert len(df) == 26_684 and (df["patient_id"] == df["image_id"]).all()
    labels = np.array(df["labels"].tolist())[:, 0]
    assert labels.sum() == 6_012
    assert df["n_boxes"].sum() == 9_555 and ((df["n_boxes"] > 0) == (labels == 1)).all()
    assert df.attrs["report"] == {"rows": 30_227, "images": 26_684, "rows_merged": 3_543, "rows_dropped": 0,
                                  "negative_rows_repeated": 0}
    assert df["view"].value_counts().to_dict() == {"PA": 14_511, "AP": 12_173}


@needs_reference
def test_siim_real_counts_and_multi_row_merge():
    df = siim.read_labels(REFERENCE / "siim")
    assert len(df) == 12_047 and df["image_id"].is_unique
    assert int(df["positive"].sum()) == 2_669
    report = df.attrs["report"]
    assert report["rows"] == 12_954 and report["rows_merged"] == 907 and report["conflicting_images"] == 0
    assert report["images_with_several_masks"] == 624 and (df["n_masks"] > 1).sum() == 624
    assert df["n_masks"].max() == 10
    several = df[df["n_masks"] == 3].iloc[0]
    merged = rle_merge(several["rles"])
    parts = [rle_decode(r) for r in several["rles"]]
    assert merged.sum() > max(p.sum() for p in parts)
    assert np.array_equal(merged, np.logical_or.reduce(parts))


# --------------------------------------------------------------------------------------------- NIH errors

NIH_HEADER_2020 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                   "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
NIH_HEADER_2017 = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                   "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")


def nih_rows(*rows: tuple[str, str, int, int], trailing: str = "") -> str:
    return "".join(f"{img},{lab},{fu},{pid},58,M,PA,2500,2048,0.168,0.168{trailing}\n" for img, lab, fu, pid in rows)


def test_nih_both_header_variants(tmp_path):
    rows = [("00000001_000.png", "Cardiomegaly|Emphysema", 0, 1), ("00000002_000.png", "No Finding", 0, 2)]
    write(tmp_path / "a" / "Data_Entry_2017_v2020.csv", NIH_HEADER_2020 + nih_rows(*rows))
    write(tmp_path / "b" / "Data_Entry_2017.csv", NIH_HEADER_2017 + nih_rows(*rows, trailing=","))
    for folder in ("a", "b"):
        df = nih.read_labels(tmp_path / folder)
        assert df["image_id"].tolist() == ["00000001_000.png", "00000002_000.png"]
        assert df["patient_id"].tolist() == ["1", "2"]
        assert df["labels"].iloc[1] == (0,) * 14
        assert sum(df["labels"].iloc[0]) == 2 and df["view"].tolist() == ["PA", "PA"]
        assert df["official_split"].isna().all()


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("Cardiomegaly|Pleural Thickening", r"line 3, column 'Finding Labels': unknown label 'Pleural Thickening'"),
        ("No Finding|Mass", r"line 3, column 'Finding Labels': 'No Finding' combined with findings"),
        ("", r"line 3, column 'Finding Labels': empty label"),
    ],
)
def test_nih_label_errors_name_file_line_value(tmp_path, label, message):
    path = write(tmp_path / "Data_Entry_2017_v2020.csv",
                 NIH_HEADER_2020 + nih_rows(("00000001_000.png", "Mass", 0, 1), ("00000001_001.png", label, 1, 1)))
    with pytest.raises(DatasetError, match=message) as err:
        nih.read_labels(tmp_path)
    assert str(path) in str(err.value)


def test_nih_structural_errors(tmp_path):
    write(tmp_path / "dup" / "Data_Entry_2017.csv",
          NIH_HEADER_2020 + nih_rows(("x.png", "Mass", 0, 1), ("x.png", "Mass", 1, 1)))
    with pytest.raises(DatasetError, match=r"line 3: image 'x.png' listed twice"):
        nih.read_labels(tmp_path / "dup")
    write(tmp_path / "pid" / "Data_Entry_2017.csv", NIH_HEADER_2020 + nih_rows(("x.png", "Mass", 0, "abc")))
    with pytest.raises(DatasetError, match=r"line 2, column 'Patient ID': 'abc' is not a number"):
        nih.read_labels(tmp_path / "pid")
    write(tmp_path / "hdr" / "Data_Entry_2017.csv", "Image,Labels\nx.png,Mass\n")
    with pytest.raises(DatasetError, match=r"header lacks the columns"):
        nih.read_labels(tmp_path / "hdr")


def _nih_with_lists(tmp_path: Path) -> Path:
    rows = [("00000001_000.png", "Mass", 0, 1), ("00000001_001.png", "Hernia|Effusion", 1, 1),
            ("00000002_000.png", "No Finding", 0, 2), ("00000003_000.png", "Pneumonia", 0, 3)]
    write(tmp_path / "Data_Entry_2017_v2020.csv", NIH_HEADER_2020 + nih_rows(*rows))
    return tmp_path


def list_line(image: str, positives: tuple[str, ...]) -> str:
    return image + " " + " ".join("1" if c in positives else "0" for c in nih.XRAY14_LIST_CLASS_ORDER) + "\n"


def test_nih_partition_lists_and_complement_test(tmp_path):
    src = _nih_with_lists(tmp_path)
    write(src / "Xray14_train_official.txt",
          list_line("00000001_000.png", ("Mass",)) + list_line("00000001_001.png", ("Hernia", "Effusion")))
    write(src / "Xray14_val_official.txt", list_line("00000002_000.png", ()))
    df = nih.read_labels(src)
    assert df["official_split"].tolist() == ["train", "train", "val", "test"]
    assert [p.name for p in df.attrs["sources"]][1:] == ["Xray14_train_official.txt", "Xray14_val_official.txt"]


def test_nih_partition_list_in_wrong_order_is_an_error(tmp_path):
    src = _nih_with_lists(tmp_path)
    alphabetical = "00000001_001.png " + " ".join("1" if c in ("Hernia", "Effusion") else "0" for c in nih.CLASS_NAMES)
    write(src / "Xray14_train_official.txt", list_line("00000001_000.png", ("Mass",)) + alphabetical + "\n")
    write(src / "Xray14_val_official.txt", list_line("00000002_000.png", ()))
    with pytest.raises(DatasetError, match=r"Xray14_train_official.txt: line 2 \(00000001_001.png\), label column"):
        nih.read_labels(src)


def test_nih_official_release_lists(tmp_path):
    src = _nih_with_lists(tmp_path)
    write(src / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    write(src / "test_list.txt", "00000003_000.png\n")
    assert nih.read_labels(src)["official_split"].tolist() == ["train_val"] * 3 + ["test"]
    write(src / "test_list.txt", "00000003_000.png\n00000002_000.png\n")
    with pytest.raises(DatasetError, match=r"1 images also in train_val_list.txt"):
        nih.read_labels(src)
    write(src / "test_list.txt", "00000009_000.png\n")
    with pytest.raises(DatasetError, match=r"test_list.txt: 1 images not in Data_Entry \(first: '00000009_000.png'\)"):
        nih.read_labels(src)


# --------------------------------------------------------------------------------------------- VinDr

VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


def test_vindr_aggregation_rules(tmp_path):
    write(tmp_path / "train.csv", VINDR_HEADER + (
        "a,Cardiomegaly,3,R1,1,2,30,40\n"
        "a,Cardiomegaly,3,R2,1,2,31,41\n"
        "a,Nodule/Mass,8,R2,5,5,9,9\n"
        "a,Nodule/Mass,8,R2,15,15,19,19\n"   # two boxes of one reader count as one vote
        "a,No finding,14,R3,,,,\n"
        "b,No finding,14,R1,,,,\n"
        "b,No finding,14,R2,,,,\n"
        "b,No finding,14,R3,,,,\n"
    ))
    cardio, nodule = vindr.CLASS_NAMES.index("Cardiomegaly"), vindr.CLASS_NAMES.index("Nodule/Mass")
    expected = {"majority": (1, 0), "any": (1, 1), "all": (0, 0)}
    for rule, (c, n) in expected.items():
        df = vindr.read_labels(tmp_path, aggregation=rule)
        a = df.set_index("image_id").loc["a"]
        assert (a["labels"][cardio], a["labels"][nodule]) == (c, n)
        assert df.set_index("image_id").loc["b", "labels"] == (0,) * 14
    a = vindr.read_labels(tmp_path).set_index("image_id").loc["a"]
    assert a["votes"][cardio] == 2 and a["votes"][nodule] == 1 and a["n_readers"] == 3
    assert a["boxes"]["Nodule/Mass"] == [("R2", 5.0, 5.0, 9.0, 9.0), ("R2", 15.0, 15.0, 19.0, 19.0)]
    assert a["patient_id"] == "a"
    with pytest.raises(ValueError, match="valid: majority, any, all"):
        vindr.read_labels(tmp_path, aggregation="mean")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a,Pneumonia,3,R1,1,2,3,4", r"line 3, column 'class_name': unknown class 'Pneumonia'"),
        ("a,Cardiomegaly,4,R1,1,2,3,4", r"line 3: class_id '4' does not match class_name 'Cardiomegaly'"),
        ("a,Cardiomegaly,3,R1,,,,", r"line 3: finding 'Cardiomegaly' without a complete box"),
        ("b,Cardiomegaly,3,R9,1,2,3,4", r"line 3: reader 'R9' marks 'Cardiomegaly' on image 'b' but also 'No finding'"),
        ("a,Cardiomegaly,3,,1,2,3,4", r"line 3, column 'rad_id': empty value"),
    ],
)
def test_vindr_errors(tmp_path, row, message):
    write(tmp_path / "train.csv", VINDR_HEADER + "b,No finding,14,R9,,,,\n" + row + "\n")
    with pytest.raises(DatasetError, match=message):
        vindr.read_labels(tmp_path)


def test_vindr_physionet_release_normalises_other_disease(tmp_path):
    names = list(vindr.PHYSIONET_CLASS_NAMES)
    train_cols = ["image_id", "rad_id", *names, "No finding"]
    test_cols = ["image_id", *[("Other disease" if n == "Other diseases" else n) for n in names], "No finding"]
    row = lambda *pos: [("1" if n in pos else "0") for n in names]  # noqa: E731
    train = pd.DataFrame([["a", "R1", *row("Cardiomegaly", "Other diseases"), "0"],
                          ["a", "R2", *row("Cardiomegaly"), "0"],
                          ["a", "R3", *row(), "1"]], columns=train_cols)
    test = pd.DataFrame([["t", *row("Other diseases"), "0"]], columns=test_cols)
    (tmp_path / "annotations").mkdir()
    train.to_csv(tmp_path / "annotations" / "image_labels_train.csv", index=False)
    test.to_csv(tmp_path / "annotations" / "image_labels_test.csv", index=False)
    df = vindr.read_labels(tmp_path, label_set="physionet28").set_index("image_id")
    other = names.index("Other diseases")
    assert df.loc["a", "labels"][names.index("Cardiomegaly")] == 1 and df.loc["a", "labels"][other] == 0
    assert df.loc["t", "labels"][other] == 1 and df.loc["t", "reader_ids"] == ("consensus",)
    assert df.loc["a", "official_split"] == "train" and df.loc["t", "official_split"] == "test"
    small = vindr.read_labels(tmp_path)  # findings14 from the PhysioNet files
    assert small.attrs["release"] == "physionet" and len(small["labels"].iloc[0]) == 14
    test.rename(columns={"Other disease": "Other things"}).to_csv(
        tmp_path / "annotations" / "image_labels_test.csv", index=False)
    with pytest.raises(DatasetError, match=r"unknown label columns \['Other things'\]"):
        vindr.read_labels(tmp_path)


# --------------------------------------------------------------------------------------------- RSNA

RSNA_HEADER = "patientId,x,y,width,height,Target\n"


def test_rsna_boxes_and_class_info(tmp_path):
    write(tmp_path / "stage_2_train_labels.csv", RSNA_HEADER + "p1,,,,,0\np2,10,20,30,40,1\np2,50,60,70,80,1\n")
    write(tmp_path / "stage_2_detailed_class_info.csv",
          "patientId,class\np1,No Lung Opacity / Not Normal\np2,Lung Opacity\np2,Lung Opacity\n")
    df = rsna.read_labels(tmp_path).set_index("image_id")
    assert df.loc["p1", "labels"] == (0,) and df.loc["p2", "labels"] == (1,)
    assert df.loc["p2", "boxes"] == [(10.0, 20.0, 30.0, 40.0), (50.0, 60.0, 70.0, 80.0)]
    assert df.loc["p2", "detailed_class"] == "Lung Opacity"
    write(tmp_path / "stage_2_detailed_class_info.csv", "patientId,class\np1,Lung Opacity\np2,Lung Opacity\n")
    with pytest.raises(DatasetError, match=r"class of 'p1' disagrees with Target"):
        rsna.read_labels(tmp_path)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("p1,,,,,0\np1,1,2,3,4,1\n", r"line 2: image 'p1' has rows with Target 0 and Target 1"),
        ("p1,,,,,1\n", r"line 2: Target 1 without a box"),
        ("p1,1,2,3,4,0\n", r"line 2: Target 0 with a box"),
        ("p1,1,2,,4,1\n", r"line 2: box with some of x, y, width, height missing"),
        ("p1,,,,,2\n", r"line 2: column 'Target' is not 0 or 1"),
    ],
)
def test_rsna_errors(tmp_path, rows, message):
    write(tmp_path / "stage_2_train_labels.csv", RSNA_HEADER + rows)
    with pytest.raises(DatasetError, match=message):
        rsna.read_labels(tmp_path)


# --------------------------------------------------------------------------------------------- SIIM


def test_siim_merge_headers_and_conflicts(tmp_path):
    square = np.zeros((1024, 1024), dtype=bool)
    square[10:20, 10:20] = True
    other = np.zeros((1024, 1024), dtype=bool)
    other[500:510, 600:640] = True
    a, b = rle_encode(square), rle_encode(other)
    for header in ("ImageId, EncodedPixels", "ImageId,EncodedPixels"):
        write(tmp_path / "train-rle.csv", f"{header}\nneg, -1\npos,{a}\npos, {b}\nneg,-1\n")
        df = siim.read_labels(tmp_path).set_index("image_id")
        assert df.loc["pos", "rles"] == (a, b) and df.loc["pos", "n_masks"] == 2
        assert df.loc["neg", "labels"] == (0,) and df.loc["pos", "labels"] == (1,)
        assert np.array_equal(rle_merge(df.loc["pos", "rles"]), square | other)
        assert df.attrs["report"]["repeated_negative_rows"] == 1 and df.attrs["report"]["rows_merged"] == 2
    write(tmp_path / "train-rle.csv", f"ImageId, EncodedPixels\nx,-1\nx,{a}\n")
    with pytest.raises(DatasetError, match=r"line 2: image 'x' is listed both as -1 .* and with a mask"):
        siim.read_labels(tmp_path)
    df = siim.read_labels(tmp_path, on_conflict="positive")
    assert df["rles"].iloc[0] == (a,) and df.attrs["report"]["conflicting_negative_rows_ignored"] == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 10 7", r"line 3 \(ImageId bad\), column 'EncodedPixels': bad RLE: RLE has an odd number"),
        ("1048570 100", r"line 3 \(ImageId bad\), column 'EncodedPixels': bad RLE: RLE run ends at pixel"),
        ("", r"line 3, column 'EncodedPixels': empty; write -1"),
    ],
)
def test_siim_bad_rle_names_file_and_row(tmp_path, value, message):
    path = write(tmp_path / "train-rle.csv", f"ImageId, EncodedPixels\nok,-1\nbad,{value}\n")
    with pytest.raises(DatasetError, match=message) as err:
        siim.read_labels(tmp_path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------------------------- image layouts


def test_find_images_nih_flat_and_nested(tmp_path):
    touch(tmp_path / "flat" / "images" / "00000001_000.png")
    touch(tmp_path / "nested" / "images_001" / "images" / "00000001_000.png")
    touch(tmp_path / "nested" / "images_012" / "images" / "00030805_000.png")
    touch(tmp_path / "nested" / "images_012" / "notes.txt")
    assert list(nih.find_images(tmp_path / "flat")) == ["00000001_000.png"]
    found = nih.find_images(tmp_path / "nested")
    assert found == {"00000001_000.png": tmp_path / "nested" / "images_001" / "images" / "00000001_000.png",
                     "00030805_000.png": tmp_path / "nested" / "images_012" / "images" / "00030805_000.png"}
    touch(tmp_path / "nested" / "images_002" / "images" / "00000001_000.png")
    with pytest.raises(DatasetError, match="found twice"):
        nih.find_images(tmp_path / "nested")


def test_find_images_dicom_layouts(tmp_path):
    touch(tmp_path / "vindr" / "train" / "abc.dicom")
    touch(tmp_path / "vindr" / "test" / "def.dicom")
    assert sorted(vindr.find_images(tmp_path / "vindr")) == ["abc", "def"]
    touch(tmp_path / "rsna" / "stage_2_train_images" / "p-1.dcm")
    assert rsna.find_images(tmp_path / "rsna") == {"p-1": tmp_path / "rsna" / "stage_2_train_images" / "p-1.dcm"}
    uid = "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"
    deep = touch(tmp_path / "siim" / "dicom-images-train" / "1.2.3" / "1.2.3.4" / f"{uid}.dcm")
    assert siim.find_images(tmp_path / "siim") == {uid: deep}
    assert siim.find_images(tmp_path / "empty-folder") == {}
