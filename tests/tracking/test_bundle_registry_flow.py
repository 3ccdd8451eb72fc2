"""Issue 5's acceptance flow through the real bundles, against a real ``mlflow server`` and against the embedded
default store: demo pretraining registers ``mlvicx-encoder`` -> ``champion`` -> demo classification starts from
``models:/mlvicx-encoder@champion`` and registers ``cxr-classifier-demo`` -> ``champion`` (the CLI) -> a fresh
process loads both aliases and reproduces the trained models' outputs -> ``infer.json`` deploys the alias. Against
the server the flow stops after the promotions (and checks that nothing went to a local store)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from mlvicx_monai.engines.infer import CXRInference
from mlvicx_monai.networks import load_model

from .conftest import running_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = ["--demo_images", "64", "--demo_raw_size", "128", "--demo_cache_size", "64", "--image_size", "64",
        "--batch_size", "8", "--num_workers", "0"]
PRETRAIN = [*DATA, "--epochs", "1", "--warmup_epochs", "0", "--expander_dim", "256", "--log_every", "2"]
CLASSIFY = [*DATA, "--max_epochs", "2", "--n_boot", "50", "--protocol", "finetune", "--classes", "all"]
CONFIGS = REPO / "bundles" / "mlvicx_cxr" / "configs"


def _bundle(name: str, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of ``bundles/mlvicx_cxr/configs/<name>.json`` with the working directory ``cwd``
    (so the default ``runs/...`` outputs and the default ``./mlflow.db`` store land there)."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / f"{name}.json"), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-5000:]}"
    return done


def _probabilities(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["id"]: np.array([float(v) for k, v in r.items() if k.startswith("prob:")]) for r in rows}


@pytest.fixture(params=["server", "embedded"])
def store(request, tmp_path, tmp_path_factory) -> Iterator[tuple[str, dict[str, str], str]]:
    """``(kind, environment of the bundle processes, tracking URI the test reads)``: the real server through
    ``MLFLOW_TRACKING_URI``, or no URI at all (the embedded default ``sqlite:///./mlflow.db``, artifacts in
    ``./mlruns``). ``PYTHONPATH`` names this checkout: the processes run elsewhere and must import this code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
                "OMP_NUM_THREADS": "1", "MLVICX_DEID_SECRET_FILE": str(tmp_path / "deid.secret"),
                "MLVICX_REGISTRY_CACHE": str(tmp_path / "registry-cache"),
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    if request.param == "server":  # its own server: the registry starts empty, whatever other tests register
        with running_server(tmp_path_factory.mktemp("flow-server")) as server:
            env["MLFLOW_TRACKING_URI"] = server.uri
            yield "server", env, server.uri
        return
    yield "embedded", env, f"sqlite:///{tmp_path}/mlflow.db"


def test_pretrain_classify_register_promote_load_and_deploy(store, tmp_path, fresh_process, monkeypatch):
    kind, env, uri = store
    _bundle("pretrain", tmp_path, env, *PRETRAIN, "--run_name", f"flow-{kind}")
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    (encoder_version,) = client.search_model_versions("name='mlvicx-encoder'")
    registry = [sys.executable, "-m", "pipelines.registry", "promote", "--alias", "champion"]
    for name, version in (("mlvicx-encoder", encoder_version.version),):
        subprocess.run([*registry, "--model", name, "--version", str(version)], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=120)

    _bundle("classify", tmp_path, env, *CLASSIFY, "--pretrained", "models:/mlvicx-encoder@champion")
    (clf_version,) = client.search_model_versions("name='cxr-classifier-demo'")
    tags = clf_version.tags
    assert tags["mlvicx.encoder.model_name"] == "mlvicx-encoder"
    assert tags["mlvicx.encoder.version"] == str(encoder_version.version)
    assert tags["mlvicx.encoder.run_id"] == encoder_version.run_id and tags["mlvicx.datalist_id"].startswith("nih@")
    assert "mlvicx.metric.test/mean_auc" in tags and len(tags["mlvicx.datalist_checksum"]) == 64
    run = client.get_run(clf_version.run_id)
    assert run.data.params["pretrained"] == "models:/mlvicx-encoder@champion"
    assert {"git_commit", "seed"} <= {k.split(".")[-1] for k in (*run.data.tags, *run.data.params)}
    done = subprocess.run([*registry, "--model", "cxr-classifier-demo", "--version", str(clf_version.version)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "cxr-classifier-demo@champion -> version" in done.stdout, done.stderr

    if kind == "server":
        # the bundles and the CLI wrote to the server only; loading the champions from a server in a new process is
        # tests/tracking/test_mlflow_server.py's, the deployment below is the same code with another URI (the suite
        # on 2 cores: each bundle process is ~15 s of imports)
        assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists(), \
            "with a server, nothing is written to the local default store"
        return
    # a new process loads the champions and reproduces the trained models' outputs on the same input
    classifier, _ = load_model(tmp_path / "runs" / "classify" / "model.pt", expect="classifier")
    encoder, _ = load_model(tmp_path / "runs" / "pretrain" / "encoder.pt", expect="encoder")
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = {"classifier": classifier(x), "encoder": encoder(x)}
    items = [(f"models:/{name}@champion", k, x, expected[k]) for name, k in
             (("cxr-classifier-demo", "classifier"), ("mlvicx-encoder", "encoder"))]
    report = fresh_process(uri, items)
    for item in items:
        assert report[item[0]]["max_abs_diff"] < 1e-5, report[item[0]]
    assert report[items[0][0]]["pyfunc_max_abs_diff"] < 1e-5

    # infer.json deploys whatever is champion: its predictions are those of the trained model.pt
    _bundle("inference", tmp_path, env, "--model", "models:/cxr-classifier-demo@champion", "--min_probability", "0.0",
            "--top_k", "1", "--demo_images", "4", "--demo_size", "128")
    deployed = _probabilities(tmp_path / "runs" / "infer" / "predictions.csv")
    monkeypatch.setenv("MLVICX_DEID_SECRET_FILE", env["MLVICX_DEID_SECRET_FILE"])
    local = CXRInference.from_paths(tmp_path / "runs" / "demo_data" / "pacs" / "export",
                                    tmp_path / "runs" / "classify" / "model.pt", tmp_path / "local-infer",
                                    save_heatmaps=False, top_k=1, min_probability=0.0)
    local.run()
    reference = _probabilities(tmp_path / "local-infer" / "predictions.csv")
    assert deployed.keys() == reference.keys() and len(deployed) >= 4
    for ident, probs in reference.items():
        np.testing.assert_allclose(deployed[ident], probs, atol=2e-6)
    assert len(list((tmp_path / "runs" / "infer" / "heatmaps").glob("*.png"))) == len(deployed)
