"""Fixtures of the tracking/registry tests: a real ``mlflow server`` on loopback, and an isolated MLflow state."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MlflowServer:
    """A running ``mlflow server``: its URI, backend store file, artifact destination and log file."""

    uri: str
    backend_db: Path
    artifacts: Path
    log: Path


def _mlflow_cli() -> str | None:
    found = shutil.which("mlflow")
    if found:
        return found
    candidate = Path(sys.executable).with_name("mlflow")  # the venv's script when the venv is not on PATH
    return str(candidate) if candidate.is_file() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(uri: str) -> bool:
    import requests

    try:
        return requests.get(f"{uri}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), SIGKILL if it lingers (uvicorn
    waits for idle keep-alive connections of the test process's HTTP sessions)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def running_server(root: Path) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` on 127.0.0.1 (free port), SQLite backend store and ``--artifacts-destination`` under
    ``root``; yields once it answers ``/health``; stopped on exit.

    Skips (with the reason) only when the ``mlflow`` CLI is not installed; a server that does not come up fails.
    """
    cli = _mlflow_cli()
    if cli is None:
        pytest.skip("the `mlflow` command-line tool is not installed (pip install mlflow): real-server tests not run")
    port = _free_port()
    server = MlflowServer(
        uri=f"http://127.0.0.1:{port}",
        backend_db=root / "mlflow.db",
        artifacts=root / "artifacts",
        log=root / "server.log",
    )
    cmd = [
        cli, "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{server.backend_db}",
        "--artifacts-destination", str(server.artifacts),
        "--workers", "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(server.uri):
            if proc.poll() is not None:
                tail = server.log.read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                            f"{server.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's shared server (see :func:`running_server`); tests that need an empty registry start their own."""
    with running_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _no_outside_store() -> Iterator[None]:
    """The tests never log to the store of the person running them: MLFLOW_TRACKING_URI / _REGISTRY_URI unset,
    bounded HTTP retries, no progress bars (for module- and session-scoped fixtures too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        yield


# ------------------------------------------------------------------------------ models and fresh-process loading

#: Registered names used by the tests, per kind.
TEST_NAMES = {"encoder": "mlvicx-encoder", "classifier": "cxr-classifier-demo", "segmenter": "pneumothorax-segmenter"}
INPUT_SHAPE = (1, 64, 64)


def _perturb(model, seed: int):
    """Non-default BatchNorm statistics and weights, so that a load that dropped buffers would show."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def model_zoo():
    """The three registrable models (CBAM encoder at all five levels, frozen linear classifier with dropout,
    FlexibleUNet U-Net), deterministic, in eval mode."""
    import torch

    from mlvicx_monai.networks import MLVICXEncoder, build_classifier, build_segmenter

    torch.manual_seed(0)
    encoder = _perturb(MLVICXEncoder(), 1)
    classifier = _perturb(build_classifier(MLVICXEncoder(), num_classes=3, freeze_encoder=True, dropout=0.2), 2)
    segmenter = _perturb(build_segmenter(MLVICXEncoder(), out_channels=1, decoder_channels=(64, 32, 16, 16, 8)), 3)
    return {"encoder": encoder, "classifier": classifier, "segmenter": segmenter}


@pytest.fixture(scope="session")
def model_files(model_zoo, tmp_path_factory) -> dict[str, Path]:
    """The model zoo written as this project's artifacts (``encoder.pt`` / ``model.pt``, what the bundles register),
    downstream models with class names and the preprocessing record (deployable)."""
    from mlvicx_monai.networks.artifacts import save_model
    from mlvicx_monai.transforms import Preprocessing

    root = tmp_path_factory.mktemp("model-files")
    prep = Preprocessing(image_size=INPUT_SHAPE[-1])
    files = {"encoder": save_model(model_zoo["encoder"], root / "encoder" / "encoder.pt", provenance={"seed": 0})}
    names = {"classifier": ["a", "b", "c"], "segmenter": ["pneumothorax"]}
    for kind, classes in names.items():
        files[kind] = save_model(model_zoo[kind], root / kind / "model.pt", preprocessing=prep, class_names=classes,
                                 threshold=0.5, provenance={"task": kind})
    return files


def reference_output(model, kind: str, x):
    """What the registered model must reproduce (the pyfunc's output: the model's forward, i.e. the pooled embedding
    of an encoder, logits of a classifier or U-Net)."""
    import torch

    with torch.no_grad():
        return model(x)


_FRESH_SCRIPT = r"""
import json, sys
import numpy as np
import torch
import mlflow
from mlvicx_monai.networks.artifacts import load_model as load_artifact
from mlvicx_monai.tracking.registry import download_encoder, load_model

spec = json.load(open(sys.argv[1]))
report = {}
for item in spec["models"]:
    x, expected = torch.load(item["input"]), torch.load(item["expected"])
    model = load_model(item["uri"])
    with torch.no_grad():
        got = model(x)
    report[item["uri"]] = {
        "class": type(model).__name__,
        "training": model.training,
        "max_abs_diff": float((got - expected).abs().max()),
    }
    if item["pyfunc"]:  # the generic MLflow loader (what `mlflow models serve` uses) gives the same outputs
        served = mlflow.pyfunc.load_model(item["uri"]).predict(x.numpy())
        report[item["uri"]]["pyfunc_max_abs_diff"] = float(np.abs(served - expected.numpy()).max())
if spec.get("encoder_uri"):
    path = download_encoder(spec["encoder_uri"])
    encoder, info = load_artifact(path, expect="encoder")
    reference = torch.load(spec["encoder_state"])
    report["download_encoder"] = {
        "path": str(path),
        "class": type(encoder).__name__,
        "same_state": all(torch.equal(reference[k], v) for k, v in encoder.state_dict().items())
        and set(reference) == set(encoder.state_dict()),
    }
print("REPORT " + json.dumps(report))
"""


@pytest.fixture
def fresh_process(tmp_path: Path):
    """``check(tracking_uri, items, encoder_uri=None, encoder_state=None) -> report``: load the models in a NEW
    Python process (own download cache, working directory in tmp) and compare with the expected outputs.

    ``items``: ``[(uri, kind, x, expected)]``; the first one is also loaded with ``mlflow.pyfunc.load_model``.
    """
    import json

    import torch

    def check(tracking_uri: str, items, encoder_uri: str | None = None, encoder_state=None) -> dict:
        work = tmp_path / f"fresh-{len(list(tmp_path.glob('fresh-*')))}"
        work.mkdir()
        models = []
        for i, (uri, kind, x, expected) in enumerate(items):
            torch.save(x, work / f"x{i}.pt")
            torch.save(expected, work / f"y{i}.pt")
            models.append({"uri": uri, "kind": kind, "input": str(work / f"x{i}.pt"),
                           "expected": str(work / f"y{i}.pt"), "pyfunc": i == 0})
        spec = {"models": models, "encoder_uri": encoder_uri}
        if encoder_state is not None:
            torch.save(encoder_state, work / "encoder_state.pt")
            spec["encoder_state"] = str(work / "encoder_state.pt")
        (work / "spec.json").write_text(json.dumps(spec))
        (work / "check.py").write_text(_FRESH_SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        repo = str(Path(__file__).resolve().parents[2])  # the process runs in tmp: import this checkout's code
        env.update({"PYTHONPATH": os.pathsep.join([repo, *filter(None, [os.environ.get("PYTHONPATH")])]),
                    "MLFLOW_TRACKING_URI": tracking_uri, "MLVICX_REGISTRY_CACHE": str(work / "cache"),
                    "PYTHONWARNINGS": "ignore"})
        done = subprocess.run([sys.executable, str(work / "check.py"), str(work / "spec.json")], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
        assert done.returncode == 0 and lines, f"fresh process failed ({done.returncode}):\n{done.stderr[-4000:]}"
        return json.loads(lines[-1][len("REPORT "):])

    return check
