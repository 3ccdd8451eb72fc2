"""The registry against a REAL ``mlflow server`` on loopback (SQLite backend, ``--artifacts-destination``):
register, promote, load in a fresh process, the CLI, and the PHI audit of the server's store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from mlvicx_monai.networks import load_model
from mlvicx_monai.tracking import TrackedRun
from mlvicx_monai.tracking import registry as R
from mlvicx_monai.tracking.audit import audit_phi
from pipelines.registry import main as registry_cli

from .conftest import INPUT_SHAPE, TEST_NAMES, reference_output

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # a real `mlflow server` process


@pytest.fixture(scope="module")
def on_server(mlflow_server, model_files, tmp_path_factory):
    """The encoder and the classifier registered on the server the way the bundles do it (MLFLOW_TRACKING_URI names
    the server, the run is a TrackedRun, the classifier names ``models:/mlvicx-encoder@champion`` as its encoder).
    The U-Net's round trip is the same code path (checked on the embedded store, test_registry.py)."""
    work = tmp_path_factory.mktemp("server-client")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
        mp.chdir(work)
        run = TrackedRun("server-tests", "register-on-server", params={"lr": 0.1}, tags={"mlvicx.dataset": "demo"})
        run.open()
        versions = {"encoder": R.log_and_register(run, model_files["encoder"], TEST_NAMES["encoder"],
                                                  metrics={"knn_auc": 0.6}, config={"epochs": 1})}
        R.set_alias(TEST_NAMES["encoder"], versions["encoder"].version, "champion")
        for kind in ("classifier",):
            versions[kind] = R.log_and_register(
                run, model_files[kind], TEST_NAMES[kind], metrics={"test_score": 0.5},
                config={"epochs": 1}, encoder_source=f"models:/{TEST_NAMES['encoder']}@champion",
                datalist_id="demo@abc", datalist_checksum="f" * 64,
            )
        run.finish()
    return {"run_id": run.run_id, "versions": versions, "work": work}


def test_register_promote_and_load_in_fresh_process(
    mlflow_server, on_server, model_zoo, fresh_process, capsys, monkeypatch
):
    uri = mlflow_server.uri
    for kind in ("classifier",):  # promotion through the CLI (in-process: same code as the command)
        version = str(on_server["versions"][kind].version)
        assert registry_cli(["promote", "--model", TEST_NAMES[kind], "--version", version, "--alias", "champion",
                             "--tracking-uri", uri]) == 0
        assert f"{TEST_NAMES[kind]}@champion -> version {version}" in capsys.readouterr().out
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the CLI exported its --tracking-uri

    x = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(11))
    kinds = ("classifier", "encoder")  # the first is also loaded through mlflow.pyfunc
    items = [(f"models:/{TEST_NAMES[k]}@champion", k, x, reference_output(model_zoo[k], k, x)) for k in kinds]
    report = fresh_process(uri, items, encoder_uri=f"models:/{TEST_NAMES['encoder']}@champion",
                           encoder_state=model_zoo["encoder"].state_dict())
    for uri_, _, _, _ in items:
        assert report[uri_]["max_abs_diff"] < 1e-5, report[uri_]
    assert report[items[0][0]]["pyfunc_max_abs_diff"] < 1e-5
    assert report["download_encoder"]["same_state"]

    # the artifacts live in the server's --artifacts-destination, nothing in the client's working directory
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert {"encoder.pt", "model.pt", "MLmodel", "training_config.json", "input_example.json"} <= stored
    assert not (on_server["work"] / "mlruns").exists()

    clf = R.resolve_model(f"models:/{TEST_NAMES['classifier']}@champion", tracking_uri=uri)
    assert clf.run_id == on_server["run_id"] and clf.tags["mlvicx.encoder.version"] == "1"
    assert clf.tags["mlvicx.encoder.run_id"] == on_server["run_id"] and clf.tags["mlvicx.datalist_id"] == "demo@abc"
    path = R.download_encoder(f"models:/{TEST_NAMES['encoder']}@champion", tracking_uri=uri)
    load_model(path, expect="encoder")


def test_cli_list_and_show_against_server(mlflow_server, on_server, capsys, monkeypatch):
    uri = mlflow_server.uri
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["MLFLOW_TRACKING_URI"] = uri  # the environment variable alone points the command at the server
    done = subprocess.run([sys.executable, "-m", "pipelines.registry", "list"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in (TEST_NAMES["encoder"], TEST_NAMES["classifier"]):
        assert name in done.stdout
    assert "@champion -> v1" in done.stdout

    show = ["show", "--tracking-uri", uri, "--model"]
    assert registry_cli([*show, TEST_NAMES["classifier"], "--alias", "champion"]) == 0
    out = capsys.readouterr().out
    assert "cxr-classifier-demo version 1" in out and "test_score: 0.5" in out
    assert "model_name: mlvicx-encoder" in out and f"source run: {on_server['run_id']} (register-on-server" in out
    assert registry_cli([*show, TEST_NAMES["encoder"], "--version", "1", "--json"]) == 0
    assert '"knn_auc": 0.6' in capsys.readouterr().out

    assert registry_cli(["show", "--model", "no-such-model", "--tracking-uri", uri]) == 1
    assert "no registered model 'no-such-model'" in capsys.readouterr().err
    assert registry_cli(["promote", "--model", TEST_NAMES["encoder"], "--version", "9", "--tracking-uri", uri]) == 1
    assert "has no version 9" in capsys.readouterr().err
    assert registry_cli(["show", "--model", TEST_NAMES["encoder"], "--alias", "gold", "--tracking-uri", uri]) == 1
    assert "has no alias @gold" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_phi_audit_of_the_server_store(mlflow_server, on_server):
    client = mlflow.MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri)
    stores = {"backend_store": mlflow_server.backend_db, "artifact_root": mlflow_server.artifacts}
    clean = audit_phi(["ROE^RICHARD", "PAT-31337"], **stores)
    assert clean == []
    client.set_model_version_tag(TEST_NAMES["encoder"], "1", "planted", "referred by roe^richard")
    hits = audit_phi(["ROE^RICHARD", "PAT-31337"], **stores)
    assert [(h.where, h.value) for h in hits] == [("database", "ROE^RICHARD")]
    assert hits[0].location.startswith("model_version_tags.value")
    client.delete_model_version_tag(TEST_NAMES["encoder"], "1", "planted")
