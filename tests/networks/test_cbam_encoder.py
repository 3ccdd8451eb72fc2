"""Context-bottleneck block, MLVICX encoder, multi-level aggregator, expanders and the full model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import resnet18

from mlvicx_monai.losses import MLVICXLoss
from mlvicx_monai.networks import (
    LEVELS,
    MLVICX,
    ContextBottleneck,
    Expander,
    MLVICXEncoder,
    MultiLevelAggregator,
    build_model,
    resize_pool_matrix,
)

CHANNELS = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
STRIDES = {"stem": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ CBAM
def test_context_bottleneck_matches_equations():
    torch.manual_seed(0)
    block = ContextBottleneck(8, reduction=2)
    y = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    block = block.double()
    w1, w2 = block.channel_mlp[0].weight[:, :, 0, 0], block.channel_mlp[2].weight[:, :, 0, 0]  # [4, 8], [8, 4]
    assert w1.shape == (4, 8) and w2.shape == (8, 4)
    assert block.channel_mlp[0].bias is None and block.spatial_conv.bias is None

    def mlp(v):  # v [B, C]
        return torch.relu(v @ w1.T) @ w2.T

    a_ch = torch.sigmoid(mlp(y.mean(dim=(2, 3))) + mlp(y.amax(dim=(2, 3))))[:, :, None, None]  # eq. (1)
    k = a_ch * y
    pooled = torch.cat([k.mean(dim=1, keepdim=True), k.amax(dim=1, keepdim=True)], dim=1)
    a_s = torch.sigmoid(F.conv2d(pooled, block.spatial_conv.weight, padding=3))  # eq. (2)
    expected = a_s * k
    torch.testing.assert_close(block(y), expected, rtol=1e-12, atol=1e-12)
    assert block.spatial_conv.kernel_size == (7, 7)
    with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
        block(torch.randn(2, 4, 5, 5, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------ encoder
@pytest.mark.parametrize("size", [224, 128])
def test_encoder_level_shapes(size):
    enc = MLVICXEncoder().eval()
    assert enc.feature_dim == 512 and enc.level_channels == CHANNELS and enc.level_strides == STRIDES
    with torch.no_grad():
        pooled, feats = enc.encode(torch.randn(2, 1, size, size))
    assert pooled.shape == (2, 512)
    assert list(feats) == list(LEVELS)
    for lvl in LEVELS:
        assert feats[lvl].shape == (2, CHANNELS[lvl], size // STRIDES[lvl], size // STRIDES[lvl]), lvl
    pyramid = enc.feature_pyramid(torch.randn(1, 1, size, size))
    assert [p.shape[1] for p in pyramid] == [64, 64, 128, 256, 512]


def test_plain_encoder_is_monai_resnet18():
    ref = resnet18(
        spatial_dims=2, n_input_channels=1, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
        feed_forward=False,
    )
    plain = MLVICXEncoder(levels=())
    assert len(plain.context) == 0
    ref_sd, sd = ref.state_dict(), plain.state_dict()
    assert list(sd) == list(ref_sd)
    assert all(sd[k].shape == ref_sd[k].shape for k in sd)
    assert _n_params(plain) == _n_params(ref) == 11_170_240  # torchvision ResNet18 without fc, 1 input channel
    plain.load_state_dict(ref_sd, strict=True)
    plain.eval(), ref.eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref(x))


def test_encoder_state_dict_strict_round_trip():
    enc = MLVICXEncoder(levels=("stem", "layer2", "layer4"))
    fresh = MLVICXEncoder(levels=("layer4", "stem", "layer2"))  # order of the argument does not matter
    fresh.load_state_dict(enc.state_dict(), strict=True)
    for k, v in enc.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert MLVICXEncoder(**enc.config).state_dict().keys() == enc.state_dict().keys()
    same_levels_other_reduction = MLVICXEncoder(levels=("stem", "layer2", "layer4"), reduction=4)
    others = (MLVICXEncoder(), MLVICXEncoder(levels=()), same_levels_other_reduction)
    for other in others:
        with pytest.raises(RuntimeError):
            other.load_state_dict(enc.state_dict(), strict=True)


def test_encoder_argument_validation():
    with pytest.raises(ValueError, match="unknown encoder level"):
        MLVICXEncoder(levels=("layer5",))
    with pytest.raises(ValueError, match="duplicate"):
        MLVICXEncoder(levels=("stem", "stem"))
    with pytest.raises(TypeError, match="sequence"):
        MLVICXEncoder(levels="stem")
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        MLVICXEncoder()(torch.randn(2, 3, 64, 64))


# ------------------------------------------------------------------------------------------------ aggregator
def _maps(batch=2, size=224, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        lvl: torch.randn(
            batch, CHANNELS[lvl], size // STRIDES[lvl], size // STRIDES[lvl], generator=gen, dtype=torch.float64
        )
        for lvl in LEVELS
    }


def _authors_sum(agg: MultiLevelAggregator, maps):
    """The authors' order: bilinear resize to 64x64, 1x1 conv per level, sum, AdaptiveAvgPool 4x4, flatten."""
    projected = [
        agg.projections[lvl](F.interpolate(maps[lvl], size=agg.common_size, mode="bilinear", align_corners=False))
        for lvl in agg.level_names
    ]
    return torch.flatten(F.adaptive_avg_pool2d(torch.stack(projected).sum(0), agg.pool_size), 1)


@pytest.mark.parametrize("size", [224, 128, 96])
@pytest.mark.parametrize("bias", [False, True])
def test_aggregator_sum_equals_authors_order(size, bias):
    torch.manual_seed(0)
    agg = MultiLevelAggregator(CHANNELS, mode="sum", bias=bias).double()
    if bias:
        for conv in agg.projections.values():
            nn.init.normal_(conv.bias)
    maps = _maps(size=size)
    ours = agg(maps)
    assert ours.shape == (2, 512 * 16) and agg.out_dim == 512 * 16
    torch.testing.assert_close(ours, _authors_sum(agg, maps), rtol=1e-9, atol=1e-10)
    # float32 too, within float tolerance
    agg32, maps32 = agg.float(), {k: v.float() for k, v in maps.items()}
    torch.testing.assert_close(agg32(maps32), _authors_sum(agg32, maps32), rtol=1e-4, atol=1e-4)


def test_resize_pool_matrix_is_the_pytorch_operator():
    for n in (7, 28, 112, 64, 3):
        a = resize_pool_matrix(n, 64, 4, dtype=torch.float64)
        assert a.shape == (4, n)
        torch.testing.assert_close(a.sum(1), torch.ones(4, dtype=torch.float64))
        y = torch.randn(1, 2, n, n + 1, dtype=torch.float64)
        b = resize_pool_matrix(n + 1, 64, 4, dtype=torch.float64)
        ref = F.adaptive_avg_pool2d(F.interpolate(y, size=64, mode="bilinear", align_corners=False), 4)
        torch.testing.assert_close(a @ y @ b.T, ref)


def test_aggregator_concat():
    agg = MultiLevelAggregator(CHANNELS, mode="concat").double()
    assert _n_params(agg) == 0 and agg.out_dim == sum(CHANNELS.values()) * 16
    maps = _maps(size=128)
    resized = [F.interpolate(maps[lvl], size=64, mode="bilinear", align_corners=False) for lvl in LEVELS]
    ref = torch.cat([F.adaptive_avg_pool2d(r, 4) for r in resized], dim=1).flatten(1)
    torch.testing.assert_close(agg(maps), ref)
    model = MLVICX(aggregate="concat", expander_dim=64)
    out = model(torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64))
    assert out["m1"].shape == (2, 64)


def test_aggregator_validation():
    with pytest.raises(ValueError, match="mode"):
        MultiLevelAggregator(CHANNELS, mode="max")
    with pytest.raises(ValueError, match="at least one"):
        MultiLevelAggregator({})
    agg = MultiLevelAggregator({"layer3": 256, "layer4": 512})
    with pytest.raises(KeyError, match="layer3"):
        agg({"layer4": torch.randn(1, 512, 2, 2)})
    with pytest.raises(ValueError, match="layer4"):
        agg({"layer3": torch.randn(1, 256, 4, 4), "layer4": torch.randn(1, 256, 2, 2)})


# ------------------------------------------------------------------------------------------------ full model
def test_all_parameters_exist_at_construction_and_all_receive_gradient():
    torch.manual_seed(0)
    model = MLVICX(expander_dim=128)
    names_before = [n for n, _ in model.named_parameters()]
    count_before = _n_params(model)
    v1, v2 = torch.randn(6, 1, 64, 64), torch.randn(6, 1, 64, 64)
    out = MLVICXLoss()(**model(v1, v2))
    out["loss"].backward()
    assert [n for n, _ in model.named_parameters()] == names_before and _n_params(model) == count_before
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max().item() == 0.0]
    assert not dead, f"parameters without gradient: {dead}"
    # every group of the model is there: encoder + 5 blocks, aggregator convs, both expanders
    prefixes = {n.split(".")[0] for n in names_before}
    assert prefixes == {"encoder", "global_expander", "aggregator", "multilevel_expander"}
    assert {n.split(".")[2] for n in names_before if n.startswith("encoder.context.")} == set(LEVELS)
    assert sum(n.startswith("aggregator.projections.") for n in names_before) == 5


def test_vicreg_baseline_and_outputs():
    vic = build_model("vicreg", expander_dim=32)
    assert vic.aggregator is None and len(vic.encoder.context) == 0
    out = vic(torch.randn(3, 1, 64, 64), torch.randn(3, 1, 64, 64))
    assert set(out) == {"z1", "z2"} and out["z1"].shape == (3, 32)
    assert _n_params(vic.encoder) == 11_170_240
    ml = build_model("mlvicx", expander_dim=32)
    assert set(ml(torch.randn(3, 1, 64, 64), torch.randn(3, 1, 64, 64))) == {"z1", "z2", "m1", "m2"}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("simclr")
    with pytest.raises(ValueError, match="fixes"):
        build_model("vicreg", multilevel=True)
    with pytest.raises(ValueError, match="batch size"):
        ml(torch.randn(3, 1, 64, 64), torch.randn(2, 1, 64, 64))


def test_expander():
    e = Expander(16, 32, 8)
    layers = ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert [type(m).__name__ for m in e] == layers
    assert Expander(16, 32, 8, last_bn=False)[-1].out_features == 8
    assert e(torch.randn(4, 16)).shape == (4, 8)
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        e(torch.randn(4, 15))


def test_channels_last_and_autocast():
    torch.manual_seed(0)
    model = MLVICX(expander_dim=32).to(memory_format=torch.channels_last)
    v1 = torch.randn(4, 1, 64, 64).to(memory_format=torch.channels_last)
    v2 = torch.randn(4, 1, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(v1, v2)
        loss = MLVICXLoss()(**out)
    assert loss["loss"].dtype == torch.float32 and torch.isfinite(loss["loss"])
    loss["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_encoder_is_torchscript_compatible():
    enc = MLVICXEncoder(levels=("stem", "layer3")).eval()
    scripted = torch.jit.script(enc)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref, out = enc.encode(x), scripted(x)
        features = scripted.forward_features(x)
    torch.testing.assert_close(out, ref.pooled)  # forward: the exported 512-d representation
    for lvl in LEVELS:
        torch.testing.assert_close(features[lvl], ref.features[lvl])
