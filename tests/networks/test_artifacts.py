"""The one model-artifact contract (mlvicx_monai.networks.artifacts): kinds, save/load/sniff, configs stored by the
models themselves, the preprocessing chain stored with the weights, and the errors a wrong file gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.transforms import Compose
from PIL import Image

from mlvicx_monai.data.ingest import cache_image
from mlvicx_monai.data.readers import LoadCXRd
from mlvicx_monai.networks import MLVICX, CXRClassifier, MLVICXEncoder, build_segmenter
from mlvicx_monai.networks.artifacts import (
    ARTIFACT_FORMAT,
    ArtifactError,
    ModelKind,
    load_model,
    read_artifact,
    save_model,
    sniff,
    unwrap_model,
    write_torch_file,
)
from mlvicx_monai.transforms import Preprocessing

PREP = Preprocessing(image_size=64, mean=0.4, std=0.3, source_size=96)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _models() -> dict[ModelKind, nn.Module]:
    torch.manual_seed(0)
    encoder = MLVICXEncoder(levels=("layer3", "layer4"), reduction=3)
    return {
        ModelKind.ENCODER: encoder,
        ModelKind.CLASSIFIER: CXRClassifier(MLVICXEncoder(levels=("layer4",)), num_classes=3, dropout=0.1),
        ModelKind.SEGMENTER: build_segmenter({"levels": ["stem"], "reduction": 4}, decoder_channels=(32, 16, 16, 8, 8)),
    }


@pytest.mark.parametrize("kind", list(ModelKind))
def test_round_trip_rebuilds_from_the_stored_config(tmp_path: Path, kind: ModelKind) -> None:
    model = _models()[kind].eval()
    n_classes = 3 if kind is ModelKind.CLASSIFIER else 1
    extra = {} if kind is ModelKind.ENCODER else {"class_names": [f"c{i}" for i in range(n_classes)], "threshold": 0.3}
    path = save_model(
        model, tmp_path / kind.file_name, preprocessing=PREP, provenance={"seed": 7, "odd": Path("x")}, **extra
    )
    loaded, info = load_model(path, expect=kind)
    assert type(loaded) is type(model) and info.kind is kind and info.format == ARTIFACT_FORMAT
    assert info.config == model.config and info.preprocessing == PREP and info.provenance == {"seed": 7, "odd": "x"}
    assert info.class_names == extra.get("class_names") and info.threshold == extra.get("threshold")
    assert not loaded.training  # returned in eval mode
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert sniff(path) is kind


@pytest.mark.parametrize("reduction", [11, 24, 100])
def test_cbam_reductions_that_do_not_divide_the_channels_reload(tmp_path: Path, reduction: int) -> None:
    # the first artifact generation read the reduction back as channels // hidden: 11, 24, 100 came back as 12, 32, 64
    encoder = MLVICXEncoder(reduction=reduction)
    loaded, info = load_model(save_model(encoder, tmp_path / "encoder.pt"))
    assert info.config["reduction"] == reduction and loaded.reduction == reduction
    assert loaded.state_dict().keys() == encoder.state_dict().keys()


def test_a_file_of_another_kind_says_what_it_is(tmp_path: Path) -> None:
    models = _models()
    encoder_file = save_model(models[ModelKind.ENCODER], tmp_path / "encoder.pt")
    classifier_file = save_model(models[ModelKind.CLASSIFIER], tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match=r"holds a encoder, not a classifier or segmenter; train a classifier"):
        load_model(encoder_file, expect=(ModelKind.CLASSIFIER, ModelKind.SEGMENTER))
    with pytest.raises(ArtifactError, match=r"holds a classifier, not a encoder; pass the encoder.pt"):
        load_model(classifier_file, expect="encoder")
    with pytest.raises(ArtifactError, match="cannot be deployed"):
        load_model(classifier_file, require_preprocessing=True)  # saved without class names / preprocessing
    checkpoint = write_torch_file(tmp_path / "last.pt", {"format": "mlvicx-train-checkpoint/1", "objects": {}})
    with pytest.raises(ArtifactError, match="resumable training checkpoint .* use the encoder.pt or model.pt"):
        load_model(checkpoint)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="junk.pt is not a readable PyTorch file"):
        load_model(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ArtifactError, match="foreign.pt is not a model file of this project"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(ArtifactError, match="missing.pt does not exist"):
        load_model(tmp_path / "missing.pt")
    assert sniff(tmp_path / "junk.pt") is None and sniff(checkpoint) is None


def test_weights_that_do_not_fit_the_declared_architecture_are_named(tmp_path: Path) -> None:
    path = save_model(_models()[ModelKind.ENCODER], tmp_path / "encoder.pt")
    state = torch.load(path, weights_only=True)
    state["state_dict"].pop("layer1.0.conv1.weight")
    state["state_dict"]["extra.weight"] = torch.zeros(1)
    state["state_dict"]["context.layer4.spatial_conv.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(state, tmp_path / "tampered.pt")
    with pytest.raises(ArtifactError, match=r"missing 1 key\(s\): layer1\.0\.conv1\.weight; unexpected 1 key\(s\): "
                                            r"extra\.weight; shape mismatch: context\.layer4\.spatial_conv\.weight"):
        load_model(tmp_path / "tampered.pt")


def test_first_generation_files_still_load(tmp_path: Path) -> None:
    classifier = _models()[ModelKind.CLASSIFIER].eval()
    legacy = {
        "format": "mlvicx-model/1", "kind": "classifier", "config": classifier.config,
        "state_dict": classifier.state_dict(), "class_names": ["a", "b", "c"], "image_size": 64,
        "normalization": {"mean": 0.5, "std": 0.25}, "threshold": 0.5, "source_size": 256, "provenance": {},
    }
    torch.save(legacy, tmp_path / "v1.pt")
    loaded, info = load_model(tmp_path / "v1.pt", require_preprocessing=True)
    assert info.preprocessing == Preprocessing(64, 0.5, 0.25, 256) and info.class_names == ["a", "b", "c"]
    encoder = MLVICXEncoder()
    config = {k: v for k, v in encoder.config.items() if k != "zero_init_residual"}  # v1 did not record it
    torch.save({"format": "mlvicx-encoder/1", "config": config, "state_dict": encoder.state_dict()}, tmp_path / "e1.pt")
    assert load_model(tmp_path / "e1.pt", expect="encoder")[1].config == config


def test_kinds_and_wrappers() -> None:
    models = _models()
    for kind, model in models.items():
        assert ModelKind.of(model) is kind
    compiled_like = nn.Module()
    compiled_like._orig_mod = models[ModelKind.CLASSIFIER]  # what torch.compile's OptimizedModule holds
    parallel_like = nn.Module()
    parallel_like.module = compiled_like  # and DDP
    assert unwrap_model(parallel_like) is models[ModelKind.CLASSIFIER]
    with pytest.raises(ArtifactError, match="save its .encoder"):
        ModelKind.of(MLVICX(encoder_levels=("layer4",), expander_dim=32))
    with pytest.raises(ArtifactError, match="is not a model this project saves"):
        ModelKind.of(nn.Linear(2, 2))


def test_save_validates_what_it_records(tmp_path: Path) -> None:
    classifier = _models()[ModelKind.CLASSIFIER]
    with pytest.raises(ValueError, match="2 class_names for a classifier with 3 outputs"):
        save_model(classifier, tmp_path / "m.pt", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\)"):
        save_model(classifier, tmp_path / "m.pt", threshold=1.5)
    with pytest.raises(ValueError, match="no class names"):
        save_model(_models()[ModelKind.ENCODER], tmp_path / "e.pt", class_names=["a"])
    with pytest.raises(ValueError, match="image_size must be an integer >= 32"):
        Preprocessing(image_size=16)
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**PREP.to_dict(), "gamma": 2})
    assert not (tmp_path / "m.pt").exists()


def test_inference_chain_is_the_training_chain(tmp_path: Path) -> None:
    """What inference feeds a model (the record's ``from_decoded``) equals what its training bundle fed it: the
    ingested cache PNG loaded with LoadCXRd, then ``cached()`` + ``runtime()``."""
    rng = np.random.default_rng(0)
    decoded = np.clip(rng.normal(0.5, 0.2, (300, 250)), 0, 1).astype(np.float32)  # any size, not square
    png = tmp_path / "cached.png"
    Image.fromarray(cache_image(decoded, PREP.source_size)).save(png)  # what ingestion writes
    training = Compose([LoadCXRd("image"), *PREP.cached(), *PREP.runtime()])({"image": str(png)})["image"]
    inference = PREP.from_decoded()({"image": torch.from_numpy(decoded)[None]})["image"]
    assert training.shape == inference.shape == (1, 64, 64) and training.dtype == inference.dtype == torch.float32
    torch.testing.assert_close(inference, training, rtol=0, atol=0)
    saved = save_model(_models()[ModelKind.ENCODER], tmp_path / "e.pt", preprocessing=PREP)
    record = read_artifact(saved)[0].preprocessing
    assert record == PREP
