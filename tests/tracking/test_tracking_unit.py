"""Fast unit checks of the tracking helpers: MLflow's standard run tags, the datalist as the run's input dataset (no
PHI in it), the model card, the global-URI guard, the end-of-run summary, and a server that does not answer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

from mlvicx_monai.data.datalist import datalist_checksum, write_datalist
from mlvicx_monai.networks.artifacts import read_artifact
from mlvicx_monai.tracking import TrackedRun
from mlvicx_monai.tracking import registry as R
from mlvicx_monai.tracking.runs import log_datalist, provenance_tags, standard_tags, ui_command
from pipelines.registry import main as registry_cli

PATIENT, FILE = "PAT-31337", "img_DOE_JOHN.png"


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (its migrations cost seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('unit-store')}/mlflow.db"


def _datalist(folder: Path) -> Path:
    entries = [{"id": f"img{i}", "image": f"images/{FILE}", "patient": PATIENT, "label": [i % 2], "split": split}
               for i, split in enumerate(["train", "train", "train", "val", "test"])]
    header = {"format": "mlvicx-datalist/1", "dataset": "demo", "class_names": ["Effusion"], "image_size": 64}
    write_datalist(folder / "manifest.json", header, entries)
    return folder / "manifest.json"


def test_standard_tags_are_mlflows_own_and_the_commit_only_in_a_checkout():
    tags = standard_tags("abc123")
    assert tags[MLFLOW_GIT_COMMIT] == "abc123" and tags[MLFLOW_SOURCE_TYPE] == "LOCAL"
    assert tags[MLFLOW_USER] and tags[MLFLOW_SOURCE_NAME]
    assert MLFLOW_GIT_COMMIT not in standard_tags("")  # not a git checkout: absent, no placeholder
    assert {MLFLOW_USER, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE} <= set(provenance_tags())


def test_tracked_run_records_tags_and_the_datalist_without_phi(sqlite_uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    datalist = _datalist(tmp_path / "data")
    run = TrackedRun("unit", "unit-run", tracking_uri=sqlite_uri, datalist=datalist).open()
    got = mlflow.MlflowClient(sqlite_uri).get_run(run.run_id)
    assert got.data.tags[MLFLOW_SOURCE_TYPE] == "LOCAL" and MLFLOW_USER in got.data.tags
    inputs = got.inputs.dataset_inputs
    contexts = sorted(t.value for d in inputs for t in d.tags if t.key == "mlflow.data.context")
    assert contexts == ["test", "train", "val"]
    assert sorted(d.dataset.name for d in inputs) == ["demo-test", "demo-train", "demo-val"]
    dataset = inputs[0].dataset
    assert dataset.digest == datalist_checksum(datalist)[:32]
    assert json.loads(dataset.source) == {"uri": "data/manifest.json"}  # relative, not absolute
    assert json.loads(dataset.profile)["num_rows"] == {"train": 3, "val": 1, "test": 1}
    record = json.dumps([d.dataset.to_dictionary() for d in inputs])
    assert PATIENT not in record and "DOE" not in record and "img0" not in record
    run.finish()


def test_log_datalist_outside_the_working_directory_names_no_absolute_path(sqlite_uri, tmp_path, monkeypatch):
    datalist = _datalist(tmp_path / "site" / "nih")
    monkeypatch.chdir(Path(__file__).parent)
    client = mlflow.MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("unit-abs")).info.run_id
    assert log_datalist(client, run_id, datalist) == ["train", "val", "test"]
    source = json.loads(client.get_run(run_id).inputs.dataset_inputs[0].dataset.source)["uri"]
    assert source == "nih/manifest.json"


def test_model_card_is_markdown_with_data_metrics_and_use(model_files):
    info, _ = read_artifact(model_files["classifier"])
    tags = {"mlvicx.datalist_id": "demo@abc", "mlvicx.datalist_checksum": "f" * 64}
    card = R.model_card(info, "cxr-classifier-demo", tags, {"test/mean_auc": 0.8123})
    assert card.startswith("# cxr-classifier-demo\n") and "## Data" in card and "## Intended use" in card
    assert "| test/mean_auc | 0.8123 |" in card and "`demo@abc`" in card and "classes: a, b, c" in card


def test_global_uris_are_restored_with_public_apis(monkeypatch, sqlite_uri):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    with R._global_uris(sqlite_uri):
        assert mlflow.get_tracking_uri() == sqlite_uri == mlflow.get_registry_uri()
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"  # no download bars in a job's log
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's choice wins
    with R._global_uris(sqlite_uri):
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_summary_names_outputs_the_ui_command_and_the_next_step(sqlite_uri, tmp_path):
    run = TrackedRun("unit", "summary-run", tracking_uri=sqlite_uri, output_dir=tmp_path).open()
    record = run.summary(outputs=[tmp_path / "model.pt"], next_steps=["python -m x --model m.pt"])
    text = "\n".join(record["lines"])
    assert f"outputs:  {tmp_path}" in text and str(tmp_path / "model.pt") in text
    assert f"look at it: mlflow ui --backend-store-uri {sqlite_uri}" in text and "next:     python -m x" in text
    assert record["run_id"] == run.run_id
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000 in a browser"
    off = TrackedRun("unit", "off", enabled=False).summary(next_steps=["n"])
    assert off["run_id"] is None and not any("mlflow ui" in line for line in off["lines"])


def test_unreachable_server_fails_fast(capsys):
    start = time.monotonic()
    with pytest.raises(R.ServerUnreachableError, match=r"MLflow server http://127\.0\.0\.1:9 is unreachable"):
        R.load_model("models:/mlvicx-encoder@champion", tracking_uri="http://127.0.0.1:9")
    assert registry_cli(["list", "--tracking-uri", "http://127.0.0.1:9"]) == 1
    assert time.monotonic() - start < 10
    assert "MLflow server http://127.0.0.1:9 is unreachable" in capsys.readouterr().err
    # (no monkeypatch.delenv here: its undo would restore the URI the CLI exported, after _isolated_mlflow's cleanup)


def test_disabled_tracked_run_registers_nothing(model_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = TrackedRun("x", "y", enabled=False)  # e.g. a DDP rank other than 0
    assert R.log_and_register(run, model_files["encoder"], "mlvicx-encoder") is None
    assert not list(tmp_path.iterdir()), "a disabled run touches no store"


def test_classifier_model_name():
    assert R.classifier_model_name("NIH") == "cxr-classifier-nih"
    with pytest.raises(ValueError):
        R.classifier_model_name("../x")


def test_phi_audit_skips_only_identical_copies_of_the_shipped_package(tmp_path):
    import mlvicx_monai
    from mlvicx_monai.tracking.audit import audit_artifacts

    source = Path(mlvicx_monai.__file__).parent / "data" / "phantom" / "identity.py"
    assert "BROWN" in source.read_text()  # the phantom's fake surnames: a real patient may be called Brown
    shipped = tmp_path / "models" / "m-1" / "artifacts" / "code" / "mlvicx_monai" / "data" / "phantom"
    shipped.mkdir(parents=True)
    (shipped / "identity.py").write_bytes(source.read_bytes())
    assert audit_artifacts(["Brown"], tmp_path) == []
    (shipped / "identity.py").write_bytes(source.read_bytes() + b"\n# seen: Brown\n")  # altered: searched again
    assert {h.location for h in audit_artifacts(["Brown"], tmp_path)} == {str(Path(shipped / "identity.py")
                                                                               .relative_to(tmp_path))}
    (tmp_path / "notes.py").write_bytes(source.read_bytes())  # the same bytes outside code/mlvicx_monai/: searched
    assert any(h.location == "notes.py" for h in audit_artifacts(["Brown"], tmp_path))


def test_model_metrics_go_to_the_logged_model_without_a_second_point_in_the_run(model_files, sqlite_uri):
    client = mlflow.MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("metric-link")).info.run_id
    for step, loss in enumerate((3.0, 2.5)):
        client.log_metric(run_id, "epoch/loss", loss, step=step, timestamp=1000 + step)
    R.log_and_register(run_id, model_files["encoder"], "unused-name", register=False, tracking_uri=sqlite_uri,
                       metrics={"epoch/loss": 2.5, "knn_auc": 0.71})
    history = client.get_metric_history(run_id, "epoch/loss")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (1, 2.5)]  # the run's curve is unchanged
    (model,) = client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])
    linked = {(m.key, m.value, m.step) for m in model.metrics}  # (MLflow itself also links run metrics at Model.log)
    assert {("epoch/loss", 2.5, 1), ("knn_auc", 0.71, 0)} <= linked
