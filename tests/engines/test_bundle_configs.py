"""The MONAI bundle as MONAI's own tools see it (model-zoo CI style), and what its configs actually build:
properties, metadata, verify_net_in_out, ckpt_export, side-effect-free resolution, the command-line checks, the
uint8 pretraining cache, the demo seed, the DDP overlay and the paper profile. All in-process, no training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.scripts import ckpt_export, verify_metadata, verify_net_in_out
from monai.engines import SupervisedEvaluator, SupervisedTrainer

from mlvicx_monai.bundle import BundleInvocationError, check_invocation, root_cause
from mlvicx_monai.networks import build_classifier, build_segmenter
from mlvicx_monai.networks.artifacts import save_model
from mlvicx_monai.transforms import Preprocessing

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "mlvicx_cxr"
CONFIGS = BUNDLE / "configs"
META = str(CONFIGS / "metadata.json")
TRAIN_CONFIGS = ("pretrain.json", "classify.json", "segment.json")
MONAI_RUN = [str(Path("/x/site-packages/monai/bundle/__main__.py")), "run"]


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update(overrides)
    return parser


def test_model_zoo_layout_and_the_fixed_entry_point() -> None:
    for name in ("LICENSE", "docs/README.md", "models", "configs/logging.conf", "configs/evaluate.json",
                 "configs/multi_gpu_train.json", "configs/inference.json", "configs/metadata.json", *(
                     f"configs/{c}" for c in TRAIN_CONFIGS)):
        assert (BUNDLE / name).exists(), name
    # the README's command stays `--config_file bundles/pretrain.json` from the repository root
    assert (REPO / "bundles" / "pretrain.json").resolve() == (CONFIGS / "pretrain.json").resolve()


TINY = {"demo_raw_size": 128, "demo_cache_size": 64, "image_size": 64, "num_workers": 0, "track": False}
#: demo sizes of the tiny_demo fixture (the classify demo needs enough images for a defined validation AUC)
DEMO_IMAGES = {"nih": 64, "siim": 60}


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_train_workflows_have_the_standard_properties(config: str, tiny_demo: Path) -> None:
    overrides = {**TINY, "demo_images": DEMO_IMAGES["siim" if config == "segment.json" else "nih"]}
    if config != "pretrain.json":
        overrides["pretrained"] = "none"
    workflow = ConfigWorkflow(config_file=str(CONFIGS / config), meta_file=META, workflow_type="train",
                              dataset_dir=str(tiny_demo), **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.trainer, SupervisedTrainer) and workflow.max_epochs == workflow.trainer.state.max_epochs
    assert len(workflow.train_dataset) > 0 and isinstance(workflow.network_def, torch.nn.Module)


def test_infer_workflow_has_the_standard_properties(tmp_path: Path) -> None:
    model = save_model(build_classifier({}, 5), tmp_path / "model.pt", class_names=list("abcde"),
                       preprocessing=Preprocessing(64, source_size=64))
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, workflow_type="infer",
                              model=str(model), output_dir=str(tmp_path / "out"), demo_dir=str(tmp_path / "pacs"),
                              deid_secret=str(tmp_path / "s.secret"), new_secret=True)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert isinstance(workflow.evaluator, SupervisedEvaluator)
    assert workflow.evaluator.network is workflow.parser.get_parsed_content("network")
    assert len(workflow.dataset) > 0 and workflow.evaluator.inferer is workflow.inferer
    summary = workflow.evaluator.run()
    assert summary["images"] > 0 and (tmp_path / "out" / "predictions.csv").is_file()


def test_metadata_verifies_offline() -> None:
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["name"] and "eval_metrics" in meta
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 512  # the encoder's vector, not an image
    for overlay in ("metadata_classifier.json", "metadata_segmenter.json"):
        assert set(json.loads((CONFIGS / overlay).read_text())) == {"network_data_format"}
    verify_metadata(meta_file=META, filepath=str(BUNDLE / "docs" / "meta_schema.json"))


@pytest.mark.parametrize(
    "config, meta",
    [
        ("pretrain.json", []),
        ("classify.json", ["metadata_classifier.json"]),
        ("segment.json", ["metadata_segmenter.json"]),
    ],
)
def test_verify_net_in_out(config: str, meta: list[str], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # resolving network_def must not need (or write) anything in the working directory
    verify_net_in_out(net_id="network_def", meta_file=[META, *(str(CONFIGS / m) for m in meta)],
                      config_file=str(CONFIGS / config), device="cpu", n=4, pretrained="none")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config", TRAIN_CONFIGS)
def test_ckpt_export_torchscript_equals_the_network(config: str, tmp_path: Path) -> None:
    parser = _parser(config, pretrained="none")
    network = parser.get_parsed_content("network_def").eval()
    torch.manual_seed(1)
    for p in network.parameters():
        p.data.normal_(0, 0.05)
    ckpt = save_model(network, tmp_path / "model.pt")
    target = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(target), ckpt_file=str(ckpt), key_in_ckpt="state_dict",
                config_file=str(CONFIGS / config), meta_file=META, pretrained="none", bundle_root=str(tmp_path))
    scripted = torch.jit.load(str(target))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), rtol=1e-5, atol=1e-5)


def test_resolving_the_networks_has_no_side_effect(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for config in TRAIN_CONFIGS:
        _parser(config, pretrained="none").get_parsed_content("network_def")
    parser = _parser("classify.json")  # the default pretrained file does not exist: resolution says so, writes nothing
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("network_def")
    assert "run the pretraining demo first" in str(root_cause(err.value))
    assert list(tmp_path.iterdir()) == []


def test_the_pretraining_cache_holds_uint8(tmp_path: Path, tiny_demo: Path) -> None:
    parser = _parser("pretrain.json", dataset_dir=str(tiny_demo), demo_images=64, demo_raw_size=128,
                     demo_cache_size=64, image_size=32, num_workers=0)
    cache = parser.get_parsed_content("train#cache")
    assert cache._cache and all(item["image"].dtype == torch.uint8 for item in cache._cache)
    sample = parser.get_parsed_content("train#dataset")[0]
    assert set(sample) == {"view1", "view2"} and sample["view1"].dtype == torch.float32
    assert sample["view1"].shape == (1, 32, 32)


def test_a_training_seed_leaves_the_demo_data_alone(tiny_demo: Path) -> None:
    # the demo is generated with demo_seed; --seed only seeds training (it used to regenerate / refuse the demo)
    parser = _parser("pretrain.json", dataset_dir=str(tiny_demo), demo_images=64, demo_raw_size=128,
                     demo_cache_size=64, seed=1, track=False)
    parser.get_parsed_content("initialize")


def test_overrides_and_dataset_names_are_checked(tmp_path: Path) -> None:
    argv = [*MONAI_RUN, "--config_file", str(CONFIGS / "pretrain.json")]
    assert check_invocation([*argv, "--epochs", "3", "--track", "False"], install_error_hook=False).overrides == {
        "epochs": 3, "track": False}
    with pytest.raises(BundleInvocationError, match="unknown override key.*--epoch .* the tunables are: .*epochs"):
        check_invocation([*argv, "--epoch", "3"], install_error_hook=False)
    with pytest.raises(BundleInvocationError, match="--track expects True or False .*'false'"):
        check_invocation([*argv, "--track", "false"], install_error_hook=False)
    with pytest.raises(BundleInvocationError, match="--tracking is not supported"):
        check_invocation([*argv, "--tracking", "mlflow"], install_error_hook=False)
    overlay_files = [str(CONFIGS / "pretrain.json"), str(CONFIGS / "multi_gpu_train.json")]
    overlay = [*MONAI_RUN, "--config_file", str(overlay_files)]
    assert check_invocation([*overlay, "--sync_bn", "True"], install_error_hook=False) is not None  # overlay keys count
    assert check_invocation(["pytest"], install_error_hook=False) is None  # not a bundle run: nothing to check
    parser = _parser("classify.json", dataset="nih2")
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("initialize#1")
    assert "unknown dataset 'nih2' for the classify bundle" in str(root_cause(err.value))


def test_ddp_overlay_uses_sync_batchnorm_on_cuda_by_default() -> None:
    overlay = json.loads((CONFIGS / "multi_gpu_train.json").read_text())
    assert overlay["sync_bn"] == "auto"


def test_paper_profile_follows_the_paper_and_the_authors() -> None:
    profile = json.loads((CONFIGS / "profiles" / "paper_nih.json").read_text())
    assert profile["expander_last_bn"] is True  # the authors' heads end in BatchNorm
    assert profile["min_cache_size"] >= 512  # 224 px crops of a >= 512 px cache are (nearly all) downsampled
    assert profile["pretrain_split"] == "train+val"  # 86,524 images, as the paper
    assert profile["crop_mode"] == "bicubic"  # VICReg's RandomResizedCrop interpolation
    merged = _parser("pretrain.json", "profiles/paper_nih.json")
    assert merged["epochs"] == 300 and merged["batch_size"] == 64 and merged["image_size"] == 224


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """A demo dataset_dir with tiny NIH (pretrain, classify) and SIIM (segment) layouts, as TINY asks."""
    from mlvicx_monai.data.demo import prepare_data

    root = tmp_path_factory.mktemp("demo")
    for layout, n in DEMO_IMAGES.items():
        prepare_data("demo", root, layout=layout, n_images=n, seed=0, raw_size=128, cache_size=64, workers=1)
    return root


@pytest.fixture(autouse=True)
def _private_secret(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLVICX_DEID_SECRET_FILE", str(tmp_path / "deid.secret"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.mark.parametrize("config, kind", [("classify.json", "classifier"), ("segment.json", "segmenter")])
def test_evaluate_overlay_scores_a_saved_model_without_training(
    config: str, kind: str, tiny_demo: Path, tmp_path: Path
) -> None:
    layout = "siim" if kind == "segmenter" else "nih"
    network = (build_segmenter({}, decoder_channels=(32, 16, 16, 8, 8)) if kind == "segmenter"
               else build_classifier({}, 5))
    classes = ["Cardiomegaly", "Consolidation", "Effusion", "Mass", "Pneumothorax"]
    names = ["Pneumothorax"] if kind == "segmenter" else classes
    save_model(network, tmp_path / "model.pt", class_names=names, threshold=0.5,
               preprocessing=Preprocessing(64, source_size=64))
    workflow = ConfigWorkflow(config_file=[str(CONFIGS / config), str(CONFIGS / "evaluate.json")], meta_file=META,
                              workflow_type="train", dataset_dir=str(tiny_demo), output_dir=str(tmp_path),
                              demo_images=DEMO_IMAGES[layout], demo_raw_size=128, demo_cache_size=64, num_workers=0)
    workflow.initialize()
    (record,) = workflow.run()
    evaluation = json.loads((tmp_path / "evaluate" / "evaluation.json").read_text())
    assert evaluation["model"] == str(tmp_path / "model.pt")
    assert evaluation["test"] == json.loads(json.dumps(record["test"]))
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()  # nothing trained
