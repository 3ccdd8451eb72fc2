"""The pretraining bundle (bundles/pretrain.json -> bundles/mlvicx_cxr/configs/pretrain.json) end to end: demo run,
MLflow record, encoder export, kill-and-resume, DDP overlay, augmentation on the device."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from monai.bundle import ConfigParser

from mlvicx_monai.bundle import root_cause
from mlvicx_monai.data.datalist import load_datalist
from mlvicx_monai.data.demo import prepare_data
from mlvicx_monai.networks import MLVICXEncoder
from mlvicx_monai.networks.artifacts import load_model
from mlvicx_monai.transforms import BatchedTwoViewAugment

pytestmark = pytest.mark.slow  # bundle runs in subprocesses

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--demo_images", "48", "--demo_raw_size", "128", "--demo_cache_size", "64", "--image_size", "64",
    "--batch_size", "8", "--warmup_epochs", "0", "--num_workers", "0", "--log_every", "2", "--expander_dim", "256",
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    prepare_data("demo", root, layout="nih", n_images=48, seed=0, raw_size=128, cache_size=64, workers=1)
    return root


def _command(demo_dir: Path, out: Path, uri: str, *extra: str, config: str = "bundles/pretrain.json") -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config,
        "--dataset_dir", str(demo_dir), "--output_dir", str(out), "--tracking_uri", uri, *TINY, *extra,
    ]


def _n_train(demo_dir: Path) -> int:
    return len(load_datalist(demo_dir / "nih" / "cache", "train"))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_demo_run_exports_encoder_checkpoint_and_mlflow_run(demo_dir, tmp_path):
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    result = subprocess.run(_command(demo_dir, out, uri, "--epochs", "2", "--run_name", "t-demo"), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    encoder, info = load_model(out / "encoder.pt", expect="encoder")  # strict: every key and shape
    assert isinstance(encoder, MLVICXEncoder)
    assert info.config["levels"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert info.preprocessing.image_size == 64 and info.preprocessing.source_size == 64
    fresh = MLVICXEncoder.from_config(info.config)
    fresh.load_state_dict(torch.load(out / "encoder.pt", weights_only=True)["state_dict"], strict=True)
    assert (out / "checkpoints" / "last.pt").is_file()
    resume = json.loads((out / "checkpoints" / "last.json").read_text())
    assert resume["epoch"] == 2 and resume["mlflow_run_id"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(resume["mlflow_run_id"])
    assert run.info.run_name == "t-demo" and run.info.status == "FINISHED"
    metrics = run.data.metrics
    for key in ("train/loss", "train/global/inv", "train/global/var", "train/global/cov", "train/local/inv",
                "train/local/var", "train/local/cov", "lr", "throughput/samples_per_s", "std/global_mean",
                "nstd/global_mean", "epoch/time_s", "epoch/samples_per_s"):
        assert key in metrics, f"{key} not logged"
    history = client.get_metric_history(run.info.run_id, "epoch/loss")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(m.value)) for m in history)
    params = run.data.params
    assert params["epochs"] == "2" and params["lambda_multilevel"] == "1.0" and params["method"] == "mlvicx"
    assert run.data.tags["mlvicx.git_commit"] and run.data.tags["mlvicx.job"] == "pretrain"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"embedding_std.json", "config"} <= artifacts and "encoder.pt" not in artifacts  # stored once: in the model
    std = json.loads((out / "embedding_std.json").read_text())
    assert len(std["std/global"]) == 256 and len(std["nstd/local"]) == 256
    versions = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='mlvicx-encoder'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id
    tags = versions[0].tags
    assert tags["mlvicx.kind"] == "encoder" and tags["mlvicx.datalist_id"].startswith("nih@")
    assert len(tags["mlvicx.datalist_checksum"]) == 64 and "mlvicx.metric.epoch/loss" in tags
    assert json.loads(tags["mlvicx.config"]) == info.config
    model_id = versions[0].model_id or versions[0].source[len("models:/"):]
    stored = {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert any(path.endswith("encoder.pt") for path in stored), stored


def test_sigkill_mid_epoch_then_rerun_resumes_the_same_run(demo_dir, tmp_path):
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    command = _command(demo_dir, out, uri, "--epochs", "3", "--checkpoint_every_n_iterations", "2",
                       "--run_name", "t-kill")
    process = subprocess.Popen(command, cwd=REPO, env=_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.json"
    deadline = time.time() + 300
    state = {}
    while time.time() < deadline and process.poll() is None:
        if last.exists():
            state = json.loads(last.read_text())
            if state["iteration"] >= 2:
                break
        time.sleep(0.05)
    alive = process.poll() is None
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert alive and state, "the run ended before it could be killed mid-epoch"
    killed_at = state["iteration"]
    steps_per_epoch = _n_train(demo_dir) // 8
    assert killed_at < 3 * steps_per_epoch

    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in result.stdout + result.stderr
    final = json.loads(last.read_text())
    assert final["iteration"] == 3 * steps_per_epoch and final["mlflow_run_id"] == state["mlflow_run_id"]
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mlvicx.resumed"] == "1"
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("mlvicx-pretrain")
    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs([experiment.experiment_id])
    assert len(runs) == 1, "the resumed job must continue its own run, not start another"
    load_model(out / "encoder.pt", expect="encoder")
    versions = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='mlvicx-encoder'")
    assert len(versions) == 1  # registered once, at the end of the resumed run


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun is not on PATH")
def test_multi_gpu_overlay_runs_two_gloo_processes_on_cpu(demo_dir, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    command = [torchrun, "--nproc_per_node=2", *_command(
        demo_dir, out, uri, "--epochs", "1", "--run_name", "t-ddp",
        config="['bundles/pretrain.json','bundles/mlvicx_cxr/configs/multi_gpu_train.json']")[1:]]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    load_model(out / "encoder.pt", expect="encoder")
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("mlvicx-pretrain")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "only rank 0 may talk to MLflow"
    # global batch 8 = 4 per rank; each rank sees half the training images
    assert json.loads((out / "checkpoints" / "last.json").read_text())["iteration"] == (_n_train(demo_dir) // 2) // 4


def _pretrain_parser(demo_dir: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "mlvicx_cxr" / "configs" / "pretrain.json"))
    parser.update({"dataset_dir": str(demo_dir), "demo_images": 48, "demo_raw_size": 128, "demo_cache_size": 64,
                   "image_size": 32, "num_workers": 0, "track": False, **overrides})
    return parser


def test_augment_on_device_keeps_the_uint8_image_and_gives_the_step_the_augmentation(demo_dir):
    parser = _pretrain_parser(demo_dir, augment_on="device", crop_mode="bicubic")
    sample = parser.get_parsed_content("train#dataset")[0]
    assert set(sample) == {"image"} and sample["image"].dtype == torch.uint8 and sample["image"].shape == (1, 64, 64)
    step = parser.get_parsed_content("train#step")
    assert isinstance(step.augment, BatchedTwoViewAugment) and step.compile is False
    assert step.augment.config.crop_mode == "bicubic" and step.augment.config.image_size == 32
    cpu = _pretrain_parser(demo_dir, crop_mode="bicubic")
    assert cpu.get_parsed_content("train#step").augment is None
    assert cpu.get_parsed_content("train#preprocessing").transforms[1].config == step.augment.config  # one config
    with pytest.raises(Exception) as err:
        _pretrain_parser(demo_dir, augment_on="gpu").get_parsed_content("train#step")
    assert "augment_on must be one of ('cpu', 'device'), got 'gpu'" in str(root_cause(err.value))


def test_demo_run_with_augmentation_on_the_device(demo_dir, tmp_path):
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path}/mlflow.db"
    command = _command(demo_dir, out, uri, "--epochs", "1", "--augment_on", "device", "--crop_mode", "bicubic",
                       "--run_name", "t-device-aug")
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    load_model(out / "encoder.pt", expect="encoder")
    resume = json.loads((out / "checkpoints" / "last.json").read_text())
    assert resume["iteration"] == _n_train(demo_dir) // 8
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["objects"]["step"]["augment"]["generators"]["cpu"].dtype == torch.uint8  # the generator's state
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(resume["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["augment_on"] == "device"
    assert run.data.params["crop_mode"] == "bicubic" and run.data.params["compile"] == "False"
    assert torch.isfinite(torch.tensor(run.data.metrics["train/loss"]))
