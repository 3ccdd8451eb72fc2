"""The inference bundle (bundles/mlvicx_cxr/configs/inference.json) on a synthetic PACS export with PHI:
de-identified predictions, heat maps, errors listed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from mlvicx_monai.data.phantom import render_cxr, write_layout
from mlvicx_monai.engines.infer import CXRInference, resolve_model
from mlvicx_monai.networks import MLVICXUNet, build_classifier
from mlvicx_monai.networks.artifacts import ArtifactError, load_model, save_model
from mlvicx_monai.transforms import Preprocessing

pytestmark = pytest.mark.slow

CLASSES = ["Cardiomegaly", "Effusion", "Mass"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def export(work) -> tuple[Path, dict]:
    root = work / "pacs"
    write_layout("pacs", root, n=4, seed=1, size=96, overwrite=True)
    export = root / "export"
    image, _ = render_cxr(np.random.default_rng(0), 80, ["effusion"])
    (export / "png").mkdir()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(export / "png" / "frontal.png")
    data = (export / "png" / "frontal.png").read_bytes()
    (export / "png" / "broken.png").write_bytes(data[: len(data) // 2])
    return export, json.loads((root / "truth.json").read_text())


@pytest.fixture(scope="module")
def classifier_file(work) -> Path:
    torch.manual_seed(0)
    model = build_classifier({}, len(CLASSES))
    return save_model(model, work / "cls" / "model.pt", class_names=CLASSES, threshold=0.5,
                      preprocessing=Preprocessing(image_size=64, mean=0.5, std=0.25, source_size=64))


def test_infer_bundle_writes_deidentified_predictions_heatmaps_and_errors(export, classifier_file, run_bundle, work):
    folder, truth = export
    out = work / "infer"
    run_bundle("bundles/mlvicx_cxr/configs/inference.json", "--dataset_dir", folder, "--model", classifier_file,
               "--output_dir", out, "--min_probability", "0.0", "--top_k", "2", "--deid_secret", work / "infer.secret",
               "--new_secret", "True")
    predictions = _rows(out / "predictions.csv")
    errors = _rows(out / "errors.csv")
    # inference judges a file by its content: the PNG the ingestion rejects for being renamed .dcm is an image here
    png_as_dcm = [
        f for f in truth["files"] if f["outcome"] == "reject" and f.get("detail", "").startswith("PNG picture")
    ]
    rejects = [f for f in truth["files"] if f["outcome"] == "reject" and f not in png_as_dcm]
    keeps = [f for f in truth["files"] if f["outcome"] == "keep"]
    assert len(png_as_dcm) == 1
    assert len(predictions) == len(keeps) + 1 + 1  # + the good PNG + the PNG named .dcm
    assert len(errors) == len(rejects) + 1  # + the broken PNG
    assert sorted(r["format"] for r in predictions).count("png") == 2
    assert set(predictions[0]) == {"id", "format", *(f"prob:{c}" for c in CLASSES), "findings"}
    assert len({r["id"] for r in predictions}) == len(predictions)
    by_code = {r["code"] for r in errors}
    assert {"dicomdir", "truncated", "modality", "body_part", "duplicate"} <= by_code
    assert all(r["reason"] and len(r["file"]) == 33 and r["file"].startswith("f") for r in errors)  # pseudonyms
    filtered = [r for r in errors if r["code"] in ("view", "modality", "body_part")]
    assert filtered and all(r["reason"].endswith("(pass --filter_headers False to run the model on it anyway)")
                            and "--body-parts" not in r["reason"] and "--views" not in r["reason"]
                            for r in filtered)  # infer's option, not ingest's
    # two heat maps (top 2 findings) per image, named by pseudonym and class only
    heatmaps = sorted((out / "heatmaps").iterdir())
    assert len(heatmaps) == 2 * len(predictions)
    assert {p.name.split("_")[0] for p in heatmaps} == {r["id"] for r in predictions}
    assert Image.open(heatmaps[0]).mode == "RGB"
    # no PHI value, no source path component, in what we wrote (ids, file names, error paths and reasons)
    written = [r["id"] for r in predictions] + [r["file"] + " " + r["reason"] for r in errors] + \
              [p.name for p in out.rglob("*")]
    text = "\n".join(written).upper()
    phi = {v.upper() for v in truth["phi_values"] + truth["phi_in_paths"] if len(v) >= 4}
    leaked = sorted(v for v in phi if v in text)
    assert not leaked, f"PHI in the outputs: {leaked[:5]}"
    for keep in keeps:  # the raw relative path of an image never appears
        assert keep["path"].upper() not in text
    assert not any("/" in r["file"] for r in errors), "errors.csv names files by pseudonym, never by path"


def test_segmenter_writes_mask_png_and_nifti_per_image(tmp_path):
    torch.manual_seed(0)
    unet = MLVICXUNet(decoder_channels=(32, 16, 16, 8, 8))
    model = save_model(
        unet, tmp_path / "seg.pt", class_names=["Pneumothorax"], threshold=0.5, preprocessing=Preprocessing(64)
    )
    folder = tmp_path / "in"
    folder.mkdir()
    for i, size in enumerate((70, 90)):
        image, _ = render_cxr(np.random.default_rng(i), (size, size + 6), ["pneumothorax"])
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    job = CXRInference.from_paths(folder, model, tmp_path / "out", deid_secret=tmp_path / "s.secret", new_secret=True)
    summary = job.run()
    assert summary == {"files": 2, "images": 2, "errors": 0, "kind": "segmenter", "output_dir": str(tmp_path / "out")}
    shapes = []
    for row in _rows(tmp_path / "out" / "predictions.csv"):
        png = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{row['id']}_mask.png"))
        nii = np.asarray(nib.load(tmp_path / "out" / "masks" / f"{row['id']}_mask.nii.gz").dataobj)
        shapes.append(png.shape)
        assert set(np.unique(png)) <= {0, 255}
        assert nii.squeeze().shape == png.shape and np.array_equal(nii.squeeze() > 0, png > 0)
        assert int(row["mask_pixels"]) == int((png > 0).sum())
        assert (tmp_path / "out" / "masks" / f"{row['id']}_overlay.png").is_file()
    assert sorted(shapes) == [(70, 76), (90, 96)]  # masks at the original image size (rows, columns)


def test_model_resolution_from_path_and_registry_alias(tmp_path, classifier_file):
    import mlflow

    from mlvicx_monai.tracking.registry import RegistryError, log_and_register, set_alias

    with pytest.raises(ArtifactError, match=r"train the demo classifier first: `python -m monai.bundle run"):
        resolve_model(tmp_path / "classify" / "model.pt")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("t", artifact_location=str(tmp_path / "artifacts")))
    model, info = load_model(classifier_file)
    version = log_and_register(run.info.run_id, classifier_file, "cxr-classifier-test", tracking_uri=uri)
    set_alias("cxr-classifier-test", version.version, "champion", tracking_uri=uri)
    local = resolve_model("models:/cxr-classifier-test@champion", tracking_uri=uri)
    again, again_info = load_model(local, require_preprocessing=True)
    assert again_info.class_names == CLASSES and again_info.preprocessing == info.preprocessing
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    # an encoder is not deployable, and a file without its preprocessing record is refused by inference
    encoder_file = save_model(model.encoder, tmp_path / "encoder.pt")
    encoder_version = log_and_register(run.info.run_id, encoder_file, "enc-test", tracking_uri=uri)
    with pytest.raises(RegistryError, match="not a trained classifier or segmenter"):
        resolve_model(f"models:/enc-test/{encoder_version.version}", tracking_uri=uri)
    bare = save_model(model, tmp_path / "bare.pt")
    with pytest.raises(ArtifactError, match="no class names or preprocessing record"):
        CXRInference.from_paths(tmp_path, bare, tmp_path / "out", deid_secret=tmp_path / "s.secret")
