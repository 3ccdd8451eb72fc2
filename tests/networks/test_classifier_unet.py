"""Downstream networks: linear classifier and FlexibleUNet with the MLVICX encoder (frozen / fine-tune)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.visualize import GradCAM

from mlvicx_monai.networks.artifacts import ArtifactError, save_model
from mlvicx_monai.networks.classifier import CXRClassifier, build_classifier
from mlvicx_monai.networks.encoder import LEVELS, MLVICXEncoder
from mlvicx_monai.networks.unet import (
    MLVICX_BACKBONE,
    MLVICX_PLAIN_BACKBONE,
    MLVICXFlexEncoder,
    build_segmenter,
    register_mlvicx_backbone,
)

SIZE = 64
SMALL_DECODER = (32, 16, 16, 8, 8)  # keeps the training tests fast; the shape tests use the default decoder


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny inputs gain nothing from intra-op threads, and on a busy 2-core machine OpenMP threads waiting for
    each other make every convolution several times slower: run this module single-threaded, then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pretrained_encoder(seed: int = 0, levels=LEVELS) -> MLVICXEncoder:
    """An encoder with non-trivial weights and BN statistics (stands in for a pretrained one)."""
    torch.manual_seed(seed)
    enc = MLVICXEncoder(levels=levels)
    with torch.no_grad():
        for name, buf in enc.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
    return enc.eval()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_identical(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = module.state_dict()
    assert state.keys() == snapshot.keys()
    changed = [k for k, v in state.items() if not torch.equal(v, snapshot[k])]
    assert not changed, f"changed: {changed[:5]}"


def _n_changed(module: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> int:
    return sum(not torch.equal(v, snapshot[k]) for k, v in module.state_dict().items())


# ------------------------------------------------------------------------------------------ classifier


def test_classifier_shapes_and_validation() -> None:
    enc = _pretrained_encoder()
    model = CXRClassifier(enc, num_classes=14, dropout=0.2)
    assert model.encoder is enc and isinstance(model.head, torch.nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (512, 14)
    assert model(torch.randn(2, 1, SIZE, SIZE)).shape == (2, 14)
    assert model.gradcam_target_layer == "encoder.context.layer4"
    assert CXRClassifier(MLVICXEncoder(levels=()), 2).gradcam_target_layer == "encoder.layer4"
    with pytest.raises(ValueError, match="num_classes"):
        CXRClassifier(enc, 0)
    with pytest.raises(ValueError, match="dropout"):
        CXRClassifier(enc, 2, dropout=1.0)
    with pytest.raises(TypeError, match="MLVICXEncoder"):
        CXRClassifier(torch.nn.Linear(2, 2), 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="overrides forward"):
        CXRClassifier(MLVICXFlexEncoder(), 2)


def _train_steps(model: torch.nn.Module, out_shape_fn, steps: int = 2) -> None:
    """A few SGD steps with momentum and weight decay on ALL parameters (the naive optimiser a user might build)."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=0.1)
    model.train()
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 1, SIZE, SIZE)
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out, out_shape_fn(out))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_frozen_classifier_keeps_encoder_bit_identical() -> None:
    model = CXRClassifier(_pretrained_encoder(), num_classes=3, freeze_encoder=True)
    assert model.freeze_encoder
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.head.parameters()}
    enc_before, head_before = _snapshot(model.encoder), _snapshot(model.head)
    _train_steps(model, lambda out: (torch.rand_like(out) > 0.5).float())
    assert model.training and not model.encoder.training
    assert not any(m.training for m in model.encoder.modules())  # BN stays in eval after .train()
    _assert_identical(model.encoder, enc_before)  # parameters AND buffers (BN running stats, counters)
    assert _n_changed(model.head, head_before) == 2  # weight and bias
    # unfreezing restores the fine-tune protocol
    model.set_encoder_frozen(False)
    assert model.encoder.training and all(p.requires_grad for p in model.encoder.parameters())


def test_finetune_classifier_updates_encoder() -> None:
    model = build_classifier(_pretrained_encoder(), num_classes=3, freeze_encoder=False)
    enc_before = _snapshot(model.encoder)
    _train_steps(model, lambda out: (torch.rand_like(out) > 0.5).float())
    assert model.encoder.training
    changed = {k for k, v in model.encoder.state_dict().items() if not torch.equal(v, enc_before[k])}
    assert "conv1.weight" in changed and "bn1.running_mean" in changed
    assert "context.layer4.spatial_conv.weight" in changed  # the context blocks are trained too


@pytest.mark.parametrize("frozen", [False, True])
def test_monai_gradcam_on_classifier(frozen: bool) -> None:
    model = CXRClassifier(_pretrained_encoder(), num_classes=3, freeze_encoder=frozen)
    cam = GradCAM(nn_module=model, target_layers=model.gradcam_target_layer)
    x = torch.randn(2, 1, 128, 128)  # layer4 is 4x4 (at 64 px its 2x2 map gives a flat CAM)
    if frozen:
        x.requires_grad_(True)  # nothing in a frozen encoder requires grad otherwise (see classifier docstring)
    saliency = cam(x, class_idx=1)
    assert saliency.shape == (2, 1, 128, 128)
    assert torch.isfinite(saliency).all() and saliency.std() > 0
    assert model.training and model.encoder.training is not frozen  # GradCAM restores the modes


def test_classifier_from_encoder_file(tmp_path: Path) -> None:
    enc = _pretrained_encoder(seed=3)
    path = save_model(enc, tmp_path / "encoder.pt")
    model = build_classifier(path, num_classes=2, freeze_encoder=True)
    _assert_identical(model.encoder, _snapshot(enc))
    with pytest.raises(ArtifactError, match="does not exist"):
        build_classifier(tmp_path / "missing.pt", num_classes=2)
    scratch = build_classifier({"levels": ["layer4"]}, num_classes=2)
    assert scratch.encoder.levels == ("layer4",)


# ------------------------------------------------------------------------------------------ U-Net


def test_backbones_are_registered_with_flexibleunet() -> None:
    assert FLEXUNET_BACKBONE.register_dict[MLVICX_BACKBONE]["type"] is MLVICXFlexEncoder
    assert FLEXUNET_BACKBONE.register_dict[MLVICX_PLAIN_BACKBONE]["feature_channel"] == (64, 64, 128, 256, 512)
    # plain MONAI construction works with the registered name
    net = FlexibleUNet(in_channels=1, out_channels=2, backbone=MLVICX_BACKBONE, pretrained=False, is_pad=False)
    assert isinstance(net.encoder, MLVICXFlexEncoder) and net.encoder.levels == LEVELS
    assert net(torch.randn(1, 1, SIZE, SIZE)).shape == (1, 2, SIZE, SIZE)
    # a non-standard configuration gets its own name
    name = register_mlvicx_backbone({"levels": ["layer4", "layer3"], "reduction": 4})
    assert name == "mlvicx-resnet18-layer3-layer4-r4-k7"
    assert register_mlvicx_backbone({"levels": []}) == MLVICX_PLAIN_BACKBONE
    assert register_mlvicx_backbone(None) == MLVICX_BACKBONE
    with pytest.raises(ValueError, match="pretrained"):
        MLVICXFlexEncoder(pretrained=True)
    with pytest.raises(ValueError, match="unknown encoder configuration"):
        register_mlvicx_backbone({"levels": LEVELS, "width": 2})


@pytest.mark.parametrize("size", [128, 256])
def test_unet_output_shape(size: int) -> None:
    unet = build_segmenter(_pretrained_encoder(), out_channels=1).eval()
    with torch.no_grad():
        assert unet(torch.randn(1, 1, size, size)).shape == (1, 1, size, size)


def test_unet_input_validation() -> None:
    unet = build_segmenter({"levels": ["layer4"]}).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        unet(torch.randn(1, 1, 64, 80))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        unet(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="decoder_channels"):
        build_segmenter({}, decoder_channels=(64, 32, 16))
    with pytest.raises(TypeError, match="encoder configuration mapping"):
        build_segmenter(42)  # type: ignore[arg-type]


def test_unet_encoder_weights_equal_encoder_file_and_loading_is_strict(tmp_path: Path) -> None:
    enc = _pretrained_encoder(seed=5)
    path = save_model(enc, tmp_path / "encoder.pt")
    unet = build_segmenter(path)
    stored = torch.load(path, weights_only=True)["state_dict"]
    _assert_identical(unet.encoder, stored)
    assert unet.backbone == MLVICX_BACKBONE
    # a checkpoint of another configuration (no context blocks) does not fit: typed error naming the keys
    with pytest.raises(ArtifactError, match="missing .*context"):
        unet.load_encoder_weights(MLVICXEncoder(levels=()))
    broken = dict(stored)
    broken.pop("layer2.0.conv1.weight")
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(ArtifactError, match=r"layer2\.0\.conv1\.weight.*unexpected.*extra\.weight"):
        unet.load_encoder_weights(broken)
    broken = dict(stored)
    broken["context.stem.spatial_conv.weight"] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(ArtifactError, match="shape mismatch"):
        unet.load_encoder_weights(broken)
    # a plain (no-CBAM) encoder goes to its own backbone and loads strictly
    plain = build_segmenter(_pretrained_encoder(levels=()))
    assert plain.backbone == MLVICX_PLAIN_BACKBONE and len(plain.encoder.context) == 0


def test_frozen_unet_trains_decoder_only_and_gradients_reach_decoder() -> None:
    unet = build_segmenter(_pretrained_encoder(), freeze_encoder=True, decoder_channels=SMALL_DECODER)
    enc_before = _snapshot(unet.encoder)
    dec_before = _snapshot(unet.decoder)
    trainable = {id(p) for p in unet.trainable_parameters()}
    assert trainable == {id(p) for p in [*unet.decoder.parameters(), *unet.segmentation_head.parameters()]}
    # gradients reach every decoder and head parameter, none is computed for the encoder
    unet.train()
    out = unet(torch.randn(2, 1, SIZE, SIZE))
    out.mean().backward()
    for name, p in [*unet.decoder.named_parameters(), *unet.segmentation_head.named_parameters()]:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    assert all(p.grad is None for p in unet.encoder.parameters())
    unet.zero_grad()
    _train_steps(unet, lambda out: (torch.rand_like(out) > 0.9).float())
    assert unet.training and not unet.encoder.training
    _assert_identical(unet.encoder, enc_before)
    assert _n_changed(unet.decoder, dec_before) > 0


def test_finetune_unet_updates_encoder() -> None:
    unet = build_segmenter(_pretrained_encoder(), freeze_encoder=False, decoder_channels=SMALL_DECODER)
    enc_before = _snapshot(unet.encoder)
    _train_steps(unet, lambda out: (torch.rand_like(out) > 0.9).float())
    changed = {k for k, v in unet.encoder.state_dict().items() if not torch.equal(v, enc_before[k])}
    assert {"conv1.weight", "bn1.running_mean", "context.stem.spatial_conv.weight"} <= changed


def test_unet_forward_goes_through_every_context_block() -> None:
    # Decoder BN in train mode (batch statistics): at random init and in eval mode the decoder attenuates its
    # deepest input by orders of magnitude, which would hide a change there. The frozen encoder stays in eval.
    unet = build_segmenter(_pretrained_encoder(), freeze_encoder=True, decoder_channels=SMALL_DECODER).train()
    x = torch.randn(2, 1, SIZE, SIZE)
    fired: list[str] = []
    hooks = [blk.register_forward_hook(lambda m, i, o, n=n: fired.append(n)) for n, blk in unet.encoder.context.items()]
    with torch.no_grad():
        ref = unet(x)
    for h in hooks:
        h.remove()
    assert fired == list(LEVELS)
    for level in LEVELS:
        spatial = unet.encoder.context[level].spatial_conv.weight
        saved = spatial.detach().clone()
        with torch.no_grad():
            spatial.add_(0.5)
            perturbed = unet(x)
            spatial.copy_(saved)
        assert (perturbed - ref).abs().max() > 1e-3 * ref.abs().max(), level
    with torch.no_grad():
        torch.testing.assert_close(unet(x), ref, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ serialisation


def test_full_module_pickle_and_jit_trace_round_trip() -> None:
    """What an MLflow logger can rely on: ``torch.save`` of the module and ``torch.jit.trace`` both round-trip.

    (``torch.jit.script`` fails on the encoder itself: see :func:`test_jit_script_encoder`.)
    """
    torch.manual_seed(0)
    models = {
        "classifier": CXRClassifier(_pretrained_encoder(), num_classes=3, dropout=0.1).eval(),
        "unet": build_segmenter(_pretrained_encoder(), freeze_encoder=True).eval(),
    }
    x = torch.randn(2, 1, SIZE, SIZE)
    x_other = torch.randn(1, 1, SIZE + 32, SIZE)  # another (valid) size than the one traced
    for name, model in models.items():
        with torch.no_grad():
            ref, ref_other = model(x), model(x_other)
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert type(loaded) is type(model) and loaded.freeze_encoder == model.freeze_encoder
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), ref, rtol=0, atol=0, msg=name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, x)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
        buf.seek(0)
        reloaded = torch.jit.load(buf)
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x), ref, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(reloaded(x_other), ref_other, rtol=1e-5, atol=1e-6, msg=name)


def test_unet_torch_export_round_trip_with_dynamic_shapes() -> None:
    """``torch.export`` (MLflow 3's default ``pt2`` format is built on it) with a dynamic batch and H, W = 32 * k."""
    from torch.export import Dim

    unet = build_segmenter(_pretrained_encoder(), decoder_channels=SMALL_DECODER).eval()
    dims = {0: Dim("batch", min=1, max=64), 2: 32 * Dim("h32", min=1, max=32), 3: 32 * Dim("w32", min=1, max=32)}
    program = torch.export.export(unet, (torch.randn(2, 1, SIZE, SIZE),), dynamic_shapes={"inputs": dims})
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    reloaded = torch.export.load(buf).module()
    x = torch.randn(3, 1, SIZE + 32, SIZE + 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), unet(x), rtol=1e-5, atol=1e-6)


def test_jit_script_classifier() -> None:
    model = CXRClassifier(_pretrained_encoder(), num_classes=2).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 1, SIZE, SIZE)
    torch.testing.assert_close(scripted(x), model(x))
