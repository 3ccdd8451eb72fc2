"""The classify bundle (bundles/mlvicx_cxr/configs/classify.json) end to end on tiny synthetic data, plus the pieces
it is built from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from sklearn.metrics import roc_auc_score

from mlvicx_monai.engines.classify import protocol_data
from mlvicx_monai.engines.downstream import DOWNSTREAM_DEFAULTS, dataset_default, resolve_pretrained
from mlvicx_monai.networks import MLVICXEncoder, build_classifier
from mlvicx_monai.networks.artifacts import ArtifactError, load_model, read_artifact, save_model

from .conftest import REPO, TINY_CLASSIFY

pytestmark = pytest.mark.slow
CONFIG = "bundles/mlvicx_cxr/configs/classify.json"


def tiny(**overrides: object) -> list[str]:
    """TINY_CLASSIFY with some values replaced (``max_epochs=1``)."""
    args = dict(zip(TINY_CLASSIFY[::2], TINY_CLASSIFY[1::2]))
    args.update({f"--{k}": str(v) for k, v in overrides.items()})
    return [x for kv in args.items() for x in kv]


def _predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    classes = [c[len("label:"):] for c in rows[0] if c.startswith("label:")]
    y = np.array([[float(r[f"label:{c}"]) for c in classes] for r in rows])
    p = np.array([[float(r[f"prob:{c}"]) for c in classes] for r in rows])
    return [r["id"] for r in rows], classes, y, p


def _state_equal(a: dict, b: dict) -> list[str]:
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def frozen_run(nih_demo, encoder_file, run_bundle, work) -> Path:
    out = work / "classify-frozen"
    uri = f"sqlite:///{work}/mlflow.db"
    run_bundle(CONFIG, "--dataset_dir", nih_demo, "--output_dir", out, "--tracking_uri", uri,
               "--pretrained", encoder_file, "--protocol", "frozen", "--fraction", "1.0", "--seed", "3",
               "--classes", "all", "--run_name", "t-frozen", *TINY_CLASSIFY)
    return out


def test_results_json_and_auc_agree_with_sklearn(frozen_run, encoder_file):
    results = json.loads((frozen_run / "results.json").read_text())
    assert results["protocol"] == "frozen" and results["fraction"] == 1.0 and results["seed"] == 3
    assert results["pretrained"]["kind"] == "file" and results["pretrained"]["path"] == str(encoder_file)
    assert len(results["pretrained"]["sha256"]) == 64
    assert results["settings"]["batch_size"] == 16 and results["settings"]["lr"] == 1e-3  # demo frozen default lr
    test = results["test"]
    ids, classes, y, p = _predictions(frozen_run / "test_predictions.csv")
    assert classes == test["classes"] == results["class_names"] and len(classes) == 14
    assert test["n_images"] == len(ids) == results["n_images"]["test"]
    for c, name in enumerate(classes):
        n_pos = int(y[:, c].sum())
        assert test["n_positive"][name] == n_pos and test["n_negative"][name] == len(ids) - n_pos
        if 0 < n_pos < len(ids):
            assert test["per_class_auc"][name] == pytest.approx(roc_auc_score(y[:, c], p[:, c]), abs=1e-9)
        else:  # undefined on this split: reported as such, not silently 0.5
            assert test["per_class_auc"][name] is None and name in test["excluded_classes"]
    defined = [v for v in test["per_class_auc"].values() if v is not None]
    assert test["mean_auc"] == pytest.approx(np.mean(defined))
    assert test["excluded_classes"], "the tiny test split should leave some class undefined"
    low, high = test["auc_ci"]
    assert low <= high and test["ci_level"] == 0.95
    assert test["ci_unit"] == "patient" and 0 < test["n_clusters"] <= test["n_images"]
    subset = results["training_subset"]
    assert (results["fraction_seed"], subset["fraction_seed"], subset["fraction"]) == (None, None, 1.0)
    assert subset["n_images"] == results["n_images"]["train"] and 0 < subset["n_patients"] <= subset["n_images"]
    assert results["training"]["best_epoch"] in (1, 2)


def test_frozen_protocol_leaves_encoder_bit_identical_and_model_pt_is_self_contained(
    frozen_run, encoder_file, nih_demo, work
):
    model, info = load_model(frozen_run / "model.pt", require_preprocessing=True)  # needs nothing but the file
    assert info.kind.value == "classifier" and info.preprocessing.image_size == 64
    assert (info.preprocessing.mean, info.preprocessing.std, info.preprocessing.source_size) == (0.5, 0.25, 64)
    results = json.loads((frozen_run / "results.json").read_text())
    assert info.provenance["pretrained"]["sha256"] == results["pretrained"]["sha256"]
    assert info.provenance["datalist"].startswith("nih@")
    pretrained, _ = load_model(encoder_file, expect="encoder")
    before, after = pretrained.state_dict(), model.encoder.state_dict()
    assert set(before) == set(after)
    assert not _state_equal(before, after), "every encoder parameter and buffer (BN statistics too) must be unchanged"
    # the cached-feature linear probe is exactly the full classifier: model.pt on the test images reproduces the CSV
    parser = ConfigParser()
    parser.read_config(str(REPO / CONFIG))
    args = dict(zip(TINY_CLASSIFY[::2], TINY_CLASSIFY[1::2]))
    parser.update({k.lstrip("-"): json.loads(v) for k, v in args.items()})
    parser.update(
        {"dataset_dir": str(nih_demo), "protocol": "frozen", "classes": "all", "pretrained": str(encoder_file)}
    )
    dataset = parser.get_parsed_content("test#images")
    x = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        probs = torch.sigmoid(model(x)).numpy()
    _, _, _, p = _predictions(frozen_run / "test_predictions.csv")
    np.testing.assert_allclose(probs, p, atol=1e-5)


def test_mlflow_run_has_params_and_test_metrics(frozen_run, work):
    results = json.loads((frozen_run / "results.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work}/mlflow.db")
    run = client.get_run(results["mlflow_run_id"])
    assert run.info.run_name == "t-frozen" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["protocol"] == "frozen" and params["fraction"] == "1.0" and params["dataset"] == "demo"
    assert params["seed"] == "3" and params["pretrained"] == results["pretrained"]["path"]
    assert params["resolved.lr"] == "0.001" and params["lr"] == "auto" and params["batch_size"] == "16"
    metrics = run.data.metrics
    assert metrics["test/mean_auc"] == pytest.approx(results["test"]["mean_auc"])
    assert metrics["test/mean_auc_ci_low"] == pytest.approx(results["test"]["auc_ci"][0])
    assert "val_mean_auc" in metrics and "train_loss" in metrics
    assert {"results.json", "test_predictions.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # registered as cxr-classifier-demo with its metrics, data and encoder lineage; deployable from the registry
    (version,) = client.search_model_versions(f"name='cxr-classifier-demo' and run_id='{run.info.run_id}'")
    tags = version.tags
    assert tags["mlvicx.kind"] == "classifier" and tags["mlvicx.datalist_id"] == results["datalist"]
    assert float(tags["mlvicx.metric.test/mean_auc"]) == pytest.approx(results["test"]["mean_auc"])
    assert tags["mlvicx.encoder.path"] == results["pretrained"]["path"] and tags["mlvicx.protocol"] == "frozen"
    from mlvicx_monai.tracking.registry import download_model

    registered, info = load_model(download_model(f"models:/cxr-classifier-demo/{version.version}",
                                                 tracking_uri=f"sqlite:///{work}/mlflow.db"))
    local, _ = load_model(frozen_run / "model.pt")
    assert info.class_names == results["class_names"] and info.preprocessing.image_size == 64
    pairs = zip(local.state_dict().values(), registered.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_pretrained_none_finetune_then_rerun_resumes(nih_demo, run_bundle, work):
    out = work / "classify-none"
    args = ["--dataset_dir", nih_demo, "--output_dir", out, "--track", "False", "--pretrained", "none",
            "--protocol", "finetune", "--fraction", "0.3", *tiny(max_epochs=1)]
    run_bundle(CONFIG, *args)
    results = json.loads((out / "results.json").read_text())
    assert results["pretrained"] == {"pretrained": "none", "kind": "none", "config": results["pretrained"]["config"]}
    assert results["settings"]["augment"] is True  # fine-tuning default
    assert results["n_images"]["train"] < 64 * 0.5  # the 30% label fraction
    assert read_artifact(out / "model.pt")[0].provenance["pretrained"]["kind"] == "none"
    # the same command with a larger epoch budget continues from the checkpoint instead of starting over
    second = run_bundle(CONFIG, *args[:-len(tiny())], *tiny(max_epochs=2))
    assert "resumed from" in second.stdout + second.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["training"]["epochs_trained"] == 2
    assert [h["epoch"] for h in results["training"]["validation_history"]] == [1, 2]


def test_a_wrong_pretrained_file_fails_the_bundle_clearly(nih_demo, run_bundle, work, frozen_run):
    # model.pt is a downstream model, not an encoder export
    result = run_bundle(CONFIG, "--dataset_dir", nih_demo, "--output_dir", work / "classify-bad",
                        "--track", "False", "--pretrained", frozen_run / "model.pt", *TINY_CLASSIFY, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]  # the root cause is the last line, not MONAI's wrapper
    assert last.startswith("mlvicx: error: ArtifactError:") and "holds a classifier, not a pretrained encoder" in last
    assert not (work / "classify-bad" / "results.json").exists()


def test_resolve_pretrained_sources_and_errors(tmp_path, encoder_file):
    source = resolve_pretrained("none")
    assert source.kind == "none" and source.fetch() is None and source.record["kind"] == "none"
    with pytest.raises(ArtifactError, match=r"does not exist; run the pretraining demo first.*--pretrained none"):
        resolve_pretrained(tmp_path / "pretrain" / "encoder.pt")
    # same keys, wrong shapes: an encoder saved with another reduction, its header rewritten to claim the default
    other = MLVICXEncoder(reduction=4)
    path = save_model(other, tmp_path / "wrong.pt")
    state = torch.load(path, weights_only=True)
    state["config"]["reduction"] = 2
    torch.save(state, path)
    network = build_classifier(resolve_pretrained(path).config, 2)
    with pytest.raises(ArtifactError, match="shape mismatch"):
        resolve_pretrained(path).apply(network)
    state["state_dict"].pop(next(iter(state["state_dict"])))
    torch.save(state, path)
    with pytest.raises(ArtifactError, match="missing 1 key"):
        resolve_pretrained(path).apply(network)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="not a readable PyTorch file"):
        resolve_pretrained(tmp_path / "junk.pt")
    # the weights land in the network's encoder, strictly, and the record names the file
    network = build_classifier(resolve_pretrained(encoder_file).config, 2)
    record = resolve_pretrained(encoder_file).apply(network)
    assert record["kind"] == "file" and len(record["sha256"]) == 64
    assert not _state_equal(network.encoder.state_dict(), load_model(encoder_file)[0].state_dict())


def test_an_mlflow_uri_is_fetched_only_when_applied(encoder_file, monkeypatch):
    import mlvicx_monai.engines.downstream as downstream

    monkeypatch.setattr(downstream, "_registered_encoder_config", lambda uri, tracking_uri: MLVICXEncoder().config)
    seen = []

    def downloader(uri, tracking_uri=None):
        seen.append((uri, tracking_uri))
        return encoder_file

    source = resolve_pretrained("models:/mlvicx-encoder@champion", tracking_uri="sqlite:///x.db", downloader=downloader)
    assert source.kind == "mlflow" and not seen  # resolving the config downloads nothing
    record = source.apply(build_classifier(source.config, 2))
    assert seen == [("models:/mlvicx-encoder@champion", "sqlite:///x.db")]
    assert record["uri"] == "models:/mlvicx-encoder@champion"


def test_dataset_defaults_follow_the_paper_and_stay_overridable():
    assert dataset_default("classify", "nih", "finetune", "batch_size") == 64
    assert dataset_default("classify", "nih", "finetune", "lr") == 1e-5
    for dataset in ("vindr", "rsna"):
        for protocol in ("frozen", "finetune"):
            assert dataset_default("classify", dataset, protocol, "batch_size") == 16
            assert dataset_default("classify", dataset, protocol, "lr") == 1e-3
    assert dataset_default("segment", "siim", "finetune", "batch_size") == 32
    assert dataset_default("segment", "siim", "frozen", "lr") == 3e-4
    assert dataset_default("classify", "nih", "finetune", "lr", 3e-4) == 3e-4  # an explicit value wins
    assert dataset_default("classify", "demo", "frozen", "augment") is False
    with pytest.raises(ValueError, match="pass --lr explicitly"):
        dataset_default("classify", "chexpert", "finetune", "lr")
    with pytest.raises(ValueError, match="protocol must be one of"):
        dataset_default("classify", "nih", "linear", "lr")
    assert set(DOWNSTREAM_DEFAULTS["classify"]) == {"demo", "nih", "vindr", "rsna"}


def test_frozen_protocol_refuses_augmentation():
    classifier = build_classifier({}, 2, freeze_encoder=True)
    with pytest.raises(ValueError, match="caches one encoder feature per image"):
        protocol_data("frozen", [], classifier, augment=True)
    with pytest.raises(ValueError, match="protocol must be one of"):
        protocol_data("probe", [], classifier)


def test_deployment_loading_rejects_other_files(tmp_path, encoder_file):
    with pytest.raises(ArtifactError, match="holds a encoder, not a classifier or segmenter; train a classifier"):
        load_model(encoder_file, expect=("classifier", "segmenter"))
    with pytest.raises(ArtifactError, match="model.pt does not exist"):
        load_model(tmp_path / "model.pt")
