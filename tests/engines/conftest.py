"""Shared fixtures of the downstream-bundle tests: tiny synthetic datasets, a random encoder.pt, a bundle runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mlvicx_monai.data.demo import prepare_data
from mlvicx_monai.networks import MLVICXEncoder, save_model

REPO = Path(__file__).resolve().parents[2]

#: classify.json overrides that make a run take seconds on 2 CPU cores (64 px, 2 epochs, small bootstrap).
TINY_CLASSIFY = [
    "--demo_images", "64", "--demo_raw_size", "128", "--demo_cache_size", "64", "--image_size", "64",
    "--batch_size", "16", "--max_epochs", "2", "--n_boot", "50", "--num_workers", "0",
]
TINY_SEGMENT = [
    "--demo_images", "60", "--demo_raw_size", "128", "--demo_cache_size", "64", "--image_size", "64",
    "--batch_size", "8", "--max_epochs", "2", "--num_workers", "0", "--decoder_channels", "[32,16,16,8,8]",
]


def bundle_env(tmp: Path) -> dict[str, str]:
    """Environment of a bundle subprocess: one thread, a private de-identification secret, no global MLflow URI."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    env["MLVICX_DEID_SECRET_FILE"] = str(tmp / "deid.secret")
    return env


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downstream")


def _demo(work: Path, layout: str, n_images: int) -> Path:
    """The demo under ``work/data``, pseudonymised with the bundles' secret (:func:`bundle_env`), whichever test asks
    first: a test's own ``$MLVICX_DEID_SECRET_FILE`` would otherwise change the patients' pseudonyms, so the splits."""
    root = work / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLVICX_DEID_SECRET_FILE", bundle_env(work)["MLVICX_DEID_SECRET_FILE"])
        prepare_data("demo", root, layout=layout, n_images=n_images, seed=0, raw_size=128, cache_size=64, workers=1)
    return root


@pytest.fixture(scope="session")
def nih_demo(work) -> Path:
    """dataset_dir holding a 64-image NIH-layout demo (as the bundle's --demo_* overrides in TINY_CLASSIFY ask)."""
    return _demo(work, "nih", 64)


@pytest.fixture(scope="session")
def siim_demo(work) -> Path:
    return _demo(work, "siim", 60)


@pytest.fixture(scope="session")
def encoder_file(work) -> Path:
    """A randomly initialised encoder written as encoder.pt (pretraining is tested elsewhere; this is fast)."""
    torch.manual_seed(0)
    return save_model(MLVICXEncoder(), work / "encoder" / "encoder.pt", provenance={"method": "random-for-tests"})


@pytest.fixture(scope="session")
def run_bundle(work) -> Callable[..., subprocess.CompletedProcess]:
    """``run_bundle(config, *args)``: ``python -m monai.bundle run`` from the repository root."""

    def run(config: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *map(str, args)]
        result = subprocess.run(
            command, cwd=REPO, env=bundle_env(work), capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            pytest.fail(f"{config} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
        return result

    return run
