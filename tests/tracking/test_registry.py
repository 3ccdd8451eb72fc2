"""Model registry on the embedded SQLite store: round trips in a fresh process, metadata, lineage, errors,
MLflow's default ``pt2`` format on our models (pinned), and the PHI audit."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from mlvicx_monai.networks import ArtifactError, MLVICXEncoder, load_model, save_model
from mlvicx_monai.networks.artifacts import read_artifact
from mlvicx_monai.tracking import registry as R
from mlvicx_monai.tracking.audit import audit_phi
from mlvicx_monai.tracking.registry import RegistryFormatError
from mlvicx_monai.tracking.runs import open_run, provenance_tags

from .conftest import INPUT_SHAPE, TEST_NAMES, reference_output

pytestmark = pytest.mark.slow  # registers the three models in a SQLite store (about 10 s) and loads them

DATALIST_ID = "demo@0123456789ab (splits demo-v1)"
DATALIST_SHA = "0" * 63 + "1"


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_files):
    """Embedded SQLite store with the three models registered (encoder first; the downstream models name it as
    their pretrained encoder), each version promoted to ``champion``."""
    root = tmp_path_factory.mktemp("embedded-store")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:  # open_run exports MLFLOW_TRACKING_URI: keep it out of the tests
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        return _register_all(uri, root, model_files)


def _register_all(uri, root, model_files):
    _, run_id = open_run("registry-tests", "register-all", uri, tags={**provenance_tags(), "mlvicx.job": "test"})
    versions = {}
    for kind in ("encoder", "classifier", "segmenter"):
        versions[kind] = R.log_and_register(
            run_id, model_files[kind], TEST_NAMES[kind], tracking_uri=uri,
            metrics={"auc": 0.75} if kind == "classifier" else {"dice": 0.5} if kind == "segmenter" else None,
            config={"lr": 0.1, "kind": kind, "image_size": 64}, datalist_id=DATALIST_ID, datalist_checksum=DATALIST_SHA,
            encoder_source=None if kind == "encoder" else f"models:/{TEST_NAMES['encoder']}@champion",
            tags={"mlvicx.dataset": "demo"}, alias="champion",
        )
    return {"uri": uri, "root": root, "run_id": run_id, "versions": versions}


def test_round_trip_in_fresh_process(store, model_zoo, fresh_process):
    x = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    kinds = ("segmenter", "encoder", "classifier")  # the first is also loaded through mlflow.pyfunc
    items = [(f"models:/{TEST_NAMES[k]}@champion", k, x, reference_output(model_zoo[k], k, x)) for k in kinds]
    report = fresh_process(store["uri"], items, encoder_uri=f"models:/{TEST_NAMES['encoder']}@champion",
                           encoder_state=model_zoo["encoder"].state_dict())
    for (uri, kind, _, _), cls in zip(items, ("MLVICXUNet", "MLVICXEncoder", "CXRClassifier")):
        assert report[uri]["class"] == cls and report[uri]["training"] is False
        assert report[uri]["max_abs_diff"] < 1e-5, report[uri]
    assert report[items[0][0]]["pyfunc_max_abs_diff"] < 1e-5
    assert report["download_encoder"]["class"] == "MLVICXEncoder" and report["download_encoder"]["same_state"]


def test_loaded_model_keeps_its_semantics_and_other_shapes(store, model_zoo):
    classifier = R.load_model(f"models:/{TEST_NAMES['classifier']}@champion", tracking_uri=store["uri"])
    assert classifier.freeze_encoder and classifier.gradcam_target_layer == "encoder.context.layer4"
    classifier.train()
    assert not classifier.encoder.training  # frozen encoder stays in eval mode
    unet = R.load_model(f"models:/{TEST_NAMES['segmenter']}/1", tracking_uri=store["uri"])
    x = torch.randn(3, 1, 96, 128)  # not the input example's shape
    with torch.no_grad():
        assert torch.allclose(unet(x), model_zoo["segmenter"](x), atol=1e-5)


def test_download_encoder_is_a_strict_encoder_file_and_cached(store, model_zoo, tmp_path, monkeypatch):
    uri = f"models:/{TEST_NAMES['encoder']}@champion"
    path = R.download_encoder(uri, tracking_uri=store["uri"], cache_dir=tmp_path)
    encoder, info = load_model(path, expect="encoder")  # strict
    reference = model_zoo["encoder"].state_dict()
    assert set(encoder.state_dict()) == set(reference)
    assert all(torch.equal(v, reference[k]) for k, v in encoder.state_dict().items())
    assert info.config["levels"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    lineage = json.loads((path.parent / "lineage.json").read_text())
    assert lineage["mlvicx.encoder.version"] == "1" and lineage["mlvicx.encoder.run_id"] == store["run_id"]

    calls = []
    real = R._download
    monkeypatch.setattr(R, "_download", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert R.download_encoder(uri, tracking_uri=store["uri"], cache_dir=tmp_path) == path and not calls  # cached
    path.write_bytes(b"corrupted")
    assert R.download_encoder(uri, tracking_uri=store["uri"], cache_dir=tmp_path) == path and len(calls) == 1
    load_model(path, expect="encoder")  # re-downloaded: checksum matches the version's tag again
    local = R.download_encoder(path)  # a local encoder.pt is returned as is
    assert local == path.resolve()


def test_version_metadata(store, model_zoo):
    client = mlflow.MlflowClient(store["uri"], registry_uri=store["uri"])
    enc, clf = store["versions"]["encoder"], store["versions"]["classifier"]
    assert clf.run_id == store["run_id"] and clf.aliases == ["champion"]
    tags = clf.tags
    assert tags["mlvicx.kind"] == "classifier" and tags["mlvicx.dataset"] == "demo"
    assert tags["mlvicx.datalist_id"] == DATALIST_ID and tags["mlvicx.datalist_checksum"] == DATALIST_SHA
    assert float(tags["mlvicx.metric.auc"]) == 0.75
    assert tags["mlvicx.encoder.model_name"] == TEST_NAMES["encoder"]
    assert tags["mlvicx.encoder.version"] == str(enc.version)
    assert tags["mlvicx.encoder.run_id"] == store["run_id"] and tags["mlvicx.encoder.uri"] == "models:/mlvicx-encoder/1"
    assert tags["mlvicx.git_commit"] and tags["mlvicx.input_shape"] == "1x1x64x64"
    assert len(tags["mlvicx.weights_sha256"]) == 64

    mlflow.set_tracking_uri(store["uri"])  # restored after the test (conftest)
    mlflow.set_registry_uri(store["uri"])
    info = mlflow.models.get_model_info(f"models:/{TEST_NAMES['classifier']}@champion")
    spec = info.signature.inputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "float32" and list(spec["shape"]) == [-1, 1, -1, -1]
    assert list(info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3]
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{TEST_NAMES['classifier']}/1"))
    example = np.asarray(json.loads((folder / "input_example.json").read_text()))
    assert example.shape == (1, *INPUT_SHAPE) and not example.any()  # zeros, never patient pixels
    assert json.loads((folder / "artifacts" / "training_config.json").read_text())["kind"] == "classifier"
    assert not list(folder.rglob("*.pkl"))  # model logged as code: no pickle in the registry
    winfo, _ = read_artifact(folder / "artifacts" / "model.pt")
    assert winfo.kind.value == "classifier" and winfo.config["num_classes"] == 3
    assert winfo.class_names == ["a", "b", "c"]
    assert R.load_model(folder).__class__.__name__ == "CXRClassifier"  # a local MLflow model folder loads too
    assert (folder / "code" / "mlvicx_monai" / "networks" / "artifacts.py").is_file()  # the package ships (code_paths)
    assert not any(line.startswith("mlvicx-monai") for line in (folder / "requirements.txt").read_text().splitlines())
    logged = client.get_logged_model(R.resolve_model(f"models:/{TEST_NAMES['classifier']}/1", store["uri"]).model_id)
    assert {(m.key, m.value) for m in logged.metrics or []} == {("auc", 0.75)}  # test metrics on the LoggedModel
    card = client.get_model_version(TEST_NAMES["classifier"], "1").description
    assert card.startswith(f"# {TEST_NAMES['classifier']}\n")
    assert "| auc | 0.7500 |" in card and "## Intended use" in card
    run_files = [f.path for f in client.list_artifacts(store["run_id"])]
    assert not [f for f in run_files if f.endswith(".pt")], "weights are stored once, in the logged model"

    record = R.describe_version(TEST_NAMES["classifier"], alias="champion", tracking_uri=store["uri"])
    assert record["metrics"] == {"auc": 0.75} and record["lineage"]["version"] == "1"
    assert record["run"]["run_name"] == "register-all"
    listing = {m["name"]: m for m in R.list_models(tracking_uri=store["uri"])}
    assert set(TEST_NAMES.values()) <= set(listing)
    assert listing[TEST_NAMES["encoder"]]["aliases"] == {"champion": "1"}
    assert client.get_registered_model(TEST_NAMES["encoder"]).description.startswith("MLVICX pretrained encoder")


def test_encoder_lineage_of_a_downloaded_file_and_of_encoder_pt(store, tmp_path):
    path = R.download_encoder(f"models:/{TEST_NAMES['encoder']}@champion", tracking_uri=store["uri"])
    lineage = R.encoder_lineage(path)
    assert lineage["mlvicx.encoder.version"] == "1" and lineage["mlvicx.encoder.model_name"] == TEST_NAMES["encoder"]
    plain = save_model(MLVICXEncoder(levels=()), tmp_path / "encoder.pt", provenance={"mlflow_run_id": "abc123"})
    assert R.encoder_lineage(plain)["mlvicx.encoder.run_id"] == "abc123"
    assert R.encoder_lineage("none") == {"mlvicx.encoder.uri": "none (randomly initialised)"}


def test_promote_and_versions(store, model_zoo, model_files, tmp_path):
    uri = store["uri"]
    again = R.log_and_register(store["run_id"], model_files["encoder"], TEST_NAMES["encoder"], tracking_uri=uri)
    assert str(again.version) == "1", "the same run registering the same weights (e.g. a rerun job) adds no version"
    changed = copy.deepcopy(model_zoo["encoder"])
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    changed_file = save_model(changed, tmp_path / "encoder.pt")
    second = R.log_and_register(store["run_id"], changed_file, TEST_NAMES["encoder"], tracking_uri=uri)
    assert str(second.version) == "2" and second.aliases == []
    assert R.resolve_model(f"models:/{TEST_NAMES['encoder']}@champion", uri).version == "1"
    R.set_alias(TEST_NAMES["encoder"], 2, "challenger", tracking_uri=uri)
    assert R.resolve_model(f"models:/{TEST_NAMES['encoder']}@challenger", uri).version == "2"
    assert R.resolve_model(f"models:/{TEST_NAMES['encoder']}/latest", uri).version == "2"
    R.delete_alias(TEST_NAMES["encoder"], "challenger", tracking_uri=uri)
    with pytest.raises(R.ModelNotFoundError, match="no alias @challenger"):
        R.resolve_model(f"models:/{TEST_NAMES['encoder']}@challenger", uri)


def test_errors(store, model_files, tmp_path):
    uri = store["uri"]
    mlflow.set_tracking_uri(uri)  # restored after the test (conftest)
    mlflow.set_registry_uri(uri)
    with pytest.raises(R.ModelNotFoundError, match=r"has no alias @nope; its aliases: @champion -> v1"):
        R.load_model(f"models:/{TEST_NAMES['encoder']}@nope", tracking_uri=uri)
    with pytest.raises(R.ModelNotFoundError, match=r"no registered model 'no-such-model'.*registered models: \["):
        R.load_model("models:/no-such-model@champion", tracking_uri=uri)
    with pytest.raises(R.ModelNotFoundError, match=r"has no version 99; versions: \["):
        R.set_alias(TEST_NAMES["encoder"], 99, "champion", tracking_uri=uri)
    with pytest.raises(R.RegistryError, match="is a classifier, not a pretrained encoder"):
        R.download_encoder(f"models:/{TEST_NAMES['classifier']}@champion", tracking_uri=uri)
    weights = R.download_encoder(f"models:/{TEST_NAMES['encoder']}@champion", tracking_uri=uri)
    clf_uri = f"models:/{TEST_NAMES['classifier']}/1"
    folder = mlflow.artifacts.download_artifacts(clf_uri, dst_path=str(tmp_path / "clf"))
    clf_file = Path(folder) / "artifacts" / "model.pt"
    with pytest.raises(R.RegistryError, match="holds a classifier|is a classifier"):
        R.download_encoder(clf_file)
    with pytest.raises(ArtifactError, match="holds a classifier, not a"):
        load_model(clf_file, expect="encoder")  # a classifier file is never mistaken for an encoder
    assert weights.is_file()
    with pytest.raises(ValueError, match="names no version"):
        R.resolve_model(f"models:/{TEST_NAMES['encoder']}", uri)
    with pytest.raises(ValueError, match="invalid alias"):
        R.set_alias(TEST_NAMES["encoder"], 1, "v2", tracking_uri=uri)
    not_a_model = tmp_path / "state.pt"
    torch.save({"weights": torch.zeros(2)}, not_a_model)
    with pytest.raises(RegistryFormatError, match="is not a model file of this project"):
        R.log_and_register(store["run_id"], not_a_model, "x", tracking_uri=uri)
    with pytest.raises(ValueError, match="invalid registered model name"):
        R.log_and_register(store["run_id"], model_files["encoder"], "../x", tracking_uri=uri)
    with pytest.raises(R.ModelNotFoundError, match="no run deadbeef"):
        R.log_and_register("deadbeef", model_files["encoder"], "x", tracking_uri=uri)
    with pytest.raises(R.ModelNotFoundError, match="does not exist"):
        R.load_model(tmp_path / "missing.pt")


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the GPU round trip is checked on GPU machines only"
)
def test_round_trip_on_gpu(store, model_zoo):
    x = torch.randn(2, *INPUT_SHAPE)
    for kind in ("encoder", "classifier", "segmenter"):
        model = R.load_model(f"models:/{TEST_NAMES[kind]}@champion", device="cuda", tracking_uri=store["uri"])
        assert next(model.parameters()).is_cuda
        got = reference_output(model, kind, x.cuda()).cpu()
        assert torch.allclose(got, reference_output(model_zoo[kind], kind, x), rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------ MLflow's own PyTorch flavour


def test_pt2_default_format_on_our_models(tmp_path, model_zoo, monkeypatch):
    """Pins what MLflow 3.17's default ``pt2`` (torch.export) format does with our models, the evidence for the
    registry format (:mod:`mlvicx_monai.tracking.pyfunc`). If this starts failing, MLflow/torch changed: revisit.

    - our U-Net: logs and loads, but as a ``torch.fx.GraphModule`` (not ``MLVICXUNet``) whose input shape is
      fixed to the input example's H x W;
    - the encoder: exports, but what comes back is a graph, not an ``MLVICXEncoder`` (no ``forward_features``: it could
      not start a downstream model);
    - MONAI's stock FlexibleUNet (resnet18 backbone): torch.export fails.
    """
    from monai.networks.nets import FlexibleUNet

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # restored after the test (conftest)
    experiment = mlflow.create_experiment("pt2", artifact_location=(tmp_path / "artifacts").as_uri())
    unet = model_zoo["segmenter"]
    x = torch.randn(2, *INPUT_SHAPE)
    with mlflow.start_run(experiment_id=experiment):
        # default serialization_format; explicit requirements only skip MLflow's slow requirement inference
        info = mlflow.pytorch.log_model(unet, name="unet", input_example=x.numpy(), pip_requirements=["torch"])
    assert mlflow.models.Model.load(info.model_uri).flavors["pytorch"].get("serialization_format", "pt2") == "pt2"
    loaded = mlflow.pytorch.load_model(info.model_uri)
    assert isinstance(loaded, torch.fx.GraphModule) and not hasattr(loaded, "freeze_encoder")
    with torch.no_grad():
        assert torch.allclose(loaded(x), unet(x), atol=1e-5)
        with pytest.raises(Exception, match="Guard failed|shape|size"):
            loaded(torch.randn(2, 1, 96, 96))

    exported = torch.export.export(model_zoo["encoder"], (x,)).module()  # exports (pooled tensor out), but as a graph
    assert not isinstance(exported, MLVICXEncoder) and not hasattr(exported, "forward_features")
    stock = FlexibleUNet(in_channels=1, out_channels=1, backbone="resnet18", spatial_dims=2).eval()
    with pytest.raises(Exception, match="fake tensor"):
        torch.export.export(stock, (x,))


# ------------------------------------------------------------------------------------------------ PHI audit


def test_phi_audit_finds_planted_values(store, tmp_path):
    uri = store["uri"]  # the registry tests' store (a fresh SQLite store costs seconds of migrations)
    db = store["root"] / "mlruns" / "mlflow.db"
    client, run_id = open_run("audit", "run-for-DOE^JANE", uri)
    client.log_param(run_id, "note", "patient id PAT-0042 seen")
    client.set_tag(run_id, "clean", "nothing to see")
    client.log_metric(run_id, "loss_MRN777", 0.5)
    client.create_registered_model("audit-m", description="contains Accession ACC99 here")
    artifacts = tmp_path / "artifacts"
    (artifacts / "1").mkdir(parents=True)
    (artifacts / "1" / "report.txt").write_text("Name: doe^jane\nOther: Annabelle\n")
    torch.save({"provenance": {"who": "Smith^Anna"}}, artifacts / "1" / "weights.pt")
    (artifacts / "1" / "PAT-0042.json").write_text("{}")

    hits = audit_phi(["DOE^JANE", "PAT-0042", "MRN777", "ACC99", "Smith^Anna", "Anna", "1985-02-03"],
                     backend_store=db, artifact_root=artifacts)
    found = {(h.where, h.value) for h in hits}
    assert ("database", "DOE^JANE") in found  # run name (and its tag)
    assert ("database", "PAT-0042") in found  # param value
    assert ("database", "MRN777") in found  # metric name ("_" is a separator)
    assert ("database", "ACC99") in found  # registered model description
    assert ("artifact", "DOE^JANE") in found  # case-insensitive text
    assert ("artifact-path", "PAT-0042") in found  # file name
    assert ("artifact", "Smith^Anna") in found or ("artifact-member", "Smith^Anna") in found  # torch file bytes
    assert not any(h.value == "1985-02-03" for h in hits)
    # whole words only: "Anna" is inside "Annabelle" (no hit) but is a word of "Smith^Anna" in the binary file
    assert not any(h.value == "Anna" and h.location.endswith("report.txt") for h in hits)
    assert audit_phi(["nobody-here"], backend_store=db, artifact_root=artifacts) == []
    assert audit_phi(["DOE^JANE"], backend_store=f"sqlite:///{db}")  # a SQLAlchemy URL works too
    with pytest.raises(ValueError):
        audit_phi([""], backend_store=db)
