"""PHI end to end: a PHI-bearing PACS export -> ingestion -> pretraining + registration -> audit of MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from mlvicx_monai.data.ingest import IngestConfig, ingest
from mlvicx_monai.data.phantom import write_layout
from mlvicx_monai.tracking.audit import audit_phi

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # ingestion + a pretraining bundle in a subprocess


def test_no_header_phi_reaches_mlflow(tmp_path):
    export = tmp_path / "pacs"
    write_layout("pacs", export, n=24, seed=11, size=128)
    truth = json.loads((export / "truth.json").read_text())
    phi = set(truth["phi_values"]) | set(truth.get("phi_in_paths", []))
    assert len(phi) > 20
    # a fake first name can also be a word this project ships (e.g. LARS, the optimiser): such a hit would say
    # nothing about headers, so values found as whole words in the shipped bundles and README are set aside
    shipped = " ".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "bundles").rglob("*.json"))])
    own_words = {v for v in phi if re.search(rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])", shipped, re.IGNORECASE)}
    assert len(own_words) <= 3, own_words
    phi -= own_words

    secret = tmp_path / "deid.secret"
    secret.write_text("fedcba9876543210fedcba9876543210\n")
    ingested = tmp_path / "ingested"
    config = IngestConfig("pacs", export / "export", ingested, size=64, workers=1, secret_file=secret, progress=False)
    summary = ingest(config)
    assert summary["ingested"] == 24

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/mlvicx_cxr/configs/pretrain.json",
        "--dataset", "pacs", "--dataset_dir", str(ingested), "--output_dir", str(tmp_path / "pretrain"),
        "--tracking_uri", uri, "--run_name", "pretrain-pacs", "--epochs", "1", "--warmup_epochs", "0",
        "--batch_size", "8", "--image_size", "64", "--num_workers", "0", "--expander_dim", "256", "--log_every", "1",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name='mlvicx-encoder'")
    assert len(versions) == 1, "the encoder trained on the PACS export is registered"
    assert client.list_artifacts(versions[0].run_id), "the run has artifacts to audit"

    hits = audit_phi(phi, backend_store=tmp_path / "mlflow.db", artifact_root=tmp_path / "mlruns")
    assert not hits, f"PHI in MLflow: {hits[:10]}"
    hits = audit_phi(phi, artifact_root=tmp_path / "pretrain")  # encoder.pt provenance, checkpoint, std record
    assert not hits, f"PHI in the run folder: {hits[:10]}"
