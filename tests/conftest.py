"""Fixtures of every test: MLflow's global state isolated per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# no MLflow usage telemetry from the tests or the processes they start (an offline CI machine would have each
# process try, and wait on, Databricks' endpoints); DO_NOT_TRACK survives the tests that drop MLFLOW_* variables
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per worker process (torch/OpenMP/BLAS read this on import): the suite runs on as many
    # workers as cores, and two threads each would oversubscribe them
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path: Path) -> Iterator[None]:
    """Per test: no MLFLOW_TRACKING_URI (``mlflow.set_tracking_uri``, e.g. in ``runs.get_client``, exports it, so an
    earlier test's store would otherwise win over the URI a test passes), a private registry download cache, and
    MLflow's global tracking/registry URIs restored after. Its own MonkeyPatch, not the test's: this fixture is set up
    first, so torn down last, after the test's monkeypatch undo (which could re-export a URI a CLI had set)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mp.setenv("MLVICX_REGISTRY_CACHE", str(tmp_path / "registry-cache"))
    tracking, registry = tracking_utils._tracking_uri, registry_utils._registry_uri
    yield
    mp.undo()
    # restore MLflow's module state directly: mlflow.set_tracking_uri() would export $MLFLOW_TRACKING_URI (to the
    # default store when nothing was set), and that would redirect every later test of the session
    tracking_utils._tracking_uri, registry_utils._registry_uri = tracking, registry
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


#: Test modules whose tests are long and share no costly module-scoped fixture: under ``pytest -n 2 --dist
#: loadgroup`` (the README's test command) their tests are spread over the workers one by one; every other module
#: stays on one worker as a whole, so its module fixtures (a bundle run, an MLflow server) are built once.
SPREAD_MODULES = {"tests/tracking/test_bundle_registry_flow.py", "tests/engines/test_pretrain_bundle.py"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(module))
