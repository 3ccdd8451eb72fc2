"""The batched (device) two-view augmentation against the per-sample CPU one, on CPU tensors: same parameters give
the same pixels, the random parameters and the outputs follow the same distributions (KS tests / binomial bounds),
seeding, resumption and input validation."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from mlvicx_monai.transforms import (
    BatchedTwoViewAugment,
    RandResizedCrop,
    TwoViewAugmentd,
    TwoViewConfig,
    ViewParams,
    view_pipeline,
)

N = 2000  # draws per distribution test (KS p-values below 1e-3 fail; the seeds are fixed, so no flakiness)
P_MIN = 1e-3


def _image(h: int = 96, w: int = 96, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (0.6 * xx + 0.3 * yy + 0.1 * torch.rand(h, w, generator=gen)).clamp(0, 1)[None].float()


def _cpu_view(config: TwoViewConfig, view: int, img: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """The CPU view pipeline on ``img`` [1, H, W] with the parameters of ONE sample of ``p`` set by hand."""
    crop, jitter, blur, solarize, normalize = view_pipeline(**config.view_options(view)).transforms
    crop.box = tuple(int(v) for v in p.box.tolist())
    crop.flip, crop.angle = bool(p.flip), float(p.angle)
    jitter._do_transform, jitter._b, jitter._c = True, float(p.brightness), float(p.contrast)
    jitter._brightness_first = bool(p.brightness_first)
    blur._do_transform, blur._sigma = bool(p.blur), float(p.sigma)
    solarize._do_transform = bool(p.solarize)
    x = crop(img, randomize=False)
    x = blur(jitter(x, randomize=False), randomize=False)
    return normalize(solarize(x, randomize=False))


def _detail(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute difference of horizontal neighbours (high-frequency content; blur lowers it)."""
    return (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))


def _rate_ok(hits: np.ndarray, p: float) -> bool:
    """A binomial rate within 4.5 standard errors of p (exact when p is 0 or 1)."""
    rate, n = float(np.mean(hits)), len(hits)
    return abs(rate - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12


@pytest.mark.parametrize("crop_mode", ["bilinear", "bicubic"])
def test_same_parameters_give_the_cpu_pixels(crop_mode: str) -> None:
    config = TwoViewConfig(image_size=40, crop_mode=crop_mode, antialias_above=None)
    aug = BatchedTwoViewAugment(config, seed=3)
    img = _image(96, 80)
    batch = img[None].expand(12, -1, -1, -1).contiguous()
    for view in (0, 1):
        params = aug.sample(12, 96, 80, view, "cpu")
        out = aug.apply(batch, params)
        assert out.shape == (12, 1, 40, 40) and out.dtype == torch.float32
        for i in range(12):
            # 1e-4 after normalisation: 1/150 of a grey level (theta in float64 here, float32 there)
            torch.testing.assert_close(out[i], _cpu_view(config, view, img, params[i]), atol=1e-4, rtol=0)


def test_antialiasing_matches_the_cpu_resize_in_effect() -> None:
    # 256 px source, 32 px views: shrink factors up to 8 (the CPU version resizes the image first)
    config = TwoViewConfig(image_size=32, scale=(0.5, 1.0), jitter_prob=0.0, blur_prob=(0.0, 0.0),
                           solarize_prob=(0.0, 0.0), rotate_prob=0.0)
    aug = BatchedTwoViewAugment(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    img = (_image(256, 256) * 0.5 + 0.5 * torch.rand(1, 256, 256, generator=gen)).clamp(0, 1)  # strong noise
    params = aug.sample(16, 256, 256, 0, "cpu")
    out = aug.apply(img[None].expand(16, -1, -1, -1), params)
    plain = BatchedTwoViewAugment(config.build(config, antialias_above=None), seed=0).apply(
        img[None].expand(16, -1, -1, -1), params)
    cpu = torch.stack([_cpu_view(config, 0, img, params[i]) for i in range(16)])
    # the noise is averaged away by antialiasing (both versions) and aliased without it
    assert _detail(out).mean() < 0.3 * _detail(plain).mean()
    ratio = _detail(out) / _detail(cpu)
    assert 0.75 < float(ratio.min()) and float(ratio.max()) < 1.33, ratio
    assert float((out - cpu).abs().mean()) < 0.1 * float(cpu.std())
    assert float((out.mean(dim=(1, 2, 3)) - cpu.mean(dim=(1, 2, 3))).abs().max()) < 0.01


def test_crop_and_geometry_distributions_follow_the_cpu_version() -> None:
    config = TwoViewConfig(image_size=32)
    height, width = 256, 200  # non-square: the aspect rejection and the fallback matter
    p = BatchedTwoViewAugment(config, seed=0).sample(N, height, width, 0, "cpu")
    crop = RandResizedCrop(32, config.scale, config.ratio, flip_prob=config.flip_prob,
                           rotate_range=config.rotate_range, rotate_prob=config.rotate_prob)
    crop.set_random_state(0)
    cpu = []
    for _ in range(N):
        crop.randomize((height, width))
        cpu.append((*crop.box, crop.flip, crop.angle))
    top, left, h, w, flip, angle = (np.asarray(c, dtype=float) for c in zip(*cpu))
    box = p.box.numpy()
    assert (box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= height).all()
    assert (box[:, 1] >= 0).all() and (box[:, 1] + box[:, 3] <= width).all()
    assert np.array_equal(box, np.round(box))  # integer boxes, as torchvision
    for name, ours, theirs in (
        ("area", box[:, 2] * box[:, 3] / (height * width), h * w / (height * width)),
        ("aspect", box[:, 3] / box[:, 2], w / h),
        ("top", box[:, 0] / height, top / height),
        ("left", box[:, 1] / width, left / width),
        ("angle|rotated", p.angle.numpy()[p.angle.numpy() != 0], angle[angle != 0]),
    ):
        assert ks_2samp(ours, theirs).pvalue > P_MIN, name
    assert _rate_ok(p.flip.numpy(), config.flip_prob) and _rate_ok(flip, config.flip_prob)
    assert _rate_ok(p.angle.numpy() != 0, config.rotate_prob) and _rate_ok(angle != 0, config.rotate_prob)
    assert np.abs(p.angle.numpy()).max() <= config.rotate_range


def test_intensity_distributions_and_per_view_probabilities_follow_the_cpu_version() -> None:
    config = TwoViewConfig(image_size=32)
    aug = BatchedTwoViewAugment(config, seed=1)
    cpu = TwoViewAugmentd(config=config)
    cpu.set_random_state(1)
    for view in (0, 1):
        p = aug.sample(N, 64, 64, view, "cpu")
        _, jitter, blur, solarize, _ = cpu.pipelines[view].transforms
        draws = {"jitter": [], "b": [], "c": [], "first": [], "blur": [], "sigma": [], "solarize": []}
        for _ in range(N):
            jitter.randomize()
            blur.randomize()
            solarize.randomize(None)
            draws["jitter"].append(jitter._do_transform)
            draws["blur"].append(blur._do_transform)
            draws["solarize"].append(solarize._do_transform)
            if jitter._do_transform:
                draws["b"].append(jitter._b)
                draws["c"].append(jitter._c)
                draws["first"].append(jitter._brightness_first)
            if blur._do_transform:
                draws["sigma"].append(blur._sigma)
        jittered = (p.brightness != 1).numpy() | (p.contrast != 1).numpy()
        assert _rate_ok(jittered, config.jitter_prob) and _rate_ok(np.array(draws["jitter"]), config.jitter_prob)
        assert _rate_ok(p.blur.numpy(), config.blur_prob[view])
        assert _rate_ok(np.array(draws["blur"]), config.blur_prob[view])
        assert _rate_ok(p.solarize.numpy(), config.solarize_prob[view])
        assert _rate_ok(np.array(draws["solarize"]), config.solarize_prob[view])
        assert _rate_ok(p.brightness_first.numpy()[jittered], 0.5) and _rate_ok(np.array(draws["first"]), 0.5)
        assert ks_2samp(p.brightness.numpy()[jittered], draws["b"]).pvalue > P_MIN
        assert ks_2samp(p.contrast.numpy()[jittered], draws["c"]).pvalue > P_MIN
        if config.blur_prob[view] > 0.5:
            assert ks_2samp(p.sigma.numpy()[p.blur.numpy()], draws["sigma"]).pvalue > P_MIN
    assert p.solarize.any() and not aug.sample(N, 64, 64, 0, "cpu").solarize.any()  # view 1 is never solarised


@pytest.mark.parametrize("crop_mode", ["bilinear", "bicubic"])
def test_output_mean_and_std_distributions_agree_with_the_cpu_version(crop_mode: str) -> None:
    n, img = 400, _image(64, 64)
    cpu = TwoViewAugmentd(image_size=32, crop_mode=crop_mode)
    cpu.set_random_state(0)
    cpu_views = [cpu({"image": img}) for _ in range(n)]
    ours = BatchedTwoViewAugment(seed=0, image_size=32, crop_mode=crop_mode)(img[None].expand(n, -1, -1, -1))
    for view, key in enumerate(("view1", "view2")):
        theirs = torch.stack([v[key] for v in cpu_views])
        for stat in ("mean", "std", "detail"):
            a, b = (_detail(v) if stat == "detail" else getattr(v, stat)(dim=(1, 2, 3)) for v in (ours[view], theirs))
            a, b = a.numpy(), b.numpy()
            assert ks_2samp(a, b).pvalue > P_MIN, (key, stat)
    # the two views differ in distribution (view 1 is always blurred, view 2 rarely): the test has power
    assert ks_2samp(_detail(ours[0]).numpy(), _detail(ours[1]).numpy()).pvalue < P_MIN


def test_uint8_and_float_inputs_agree_and_the_output_is_normalised() -> None:
    u8 = torch.randint(0, 256, (4, 1, 48, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = BatchedTwoViewAugment(seed=5, image_size=24)(u8)
    b = BatchedTwoViewAugment(seed=5, image_size=24)(u8.float() / 255)
    for x, y in zip(a, b):
        assert x.shape == (4, 1, 24, 24) and x.dtype == torch.float32 and x.is_contiguous()
        torch.testing.assert_close(x, y)
    cfg = TwoViewConfig()
    assert a[0].min() >= (0 - cfg.mean) / cfg.std - 1e-5 and a[0].max() <= (1 - cfg.mean) / cfg.std + 1e-5
    assert not torch.equal(a[0], a[1])


def test_seeded_reproducible_and_resumable() -> None:
    x = (_image(64, 64)[None].expand(6, -1, -1, -1) * 255).round().to(torch.uint8)
    first, second = BatchedTwoViewAugment(seed=7, image_size=16), BatchedTwoViewAugment(seed=7, image_size=16)
    for a, b in zip(first(x), second(x)):
        assert torch.equal(a, b)
    assert not torch.equal(BatchedTwoViewAugment(seed=8, image_size=16)(x)[0], first.set_random_state(7)(x)[0])
    # the generator state travels in state_dict (the pretraining checkpoint stores it)
    run = BatchedTwoViewAugment(seed=1, image_size=16)
    run(x)
    state = run.state_dict()
    expected = run(x)
    resumed = BatchedTwoViewAugment(seed=99, image_size=16)
    resumed.load_state_dict(state)
    for a, b in zip(resumed(x), expected):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    s1 = BatchedTwoViewAugment().seed
    torch.manual_seed(0)
    assert BatchedTwoViewAugment().seed == s1  # seed=None follows torch's global seed (set_determinism)


def test_input_and_option_validation() -> None:
    aug = BatchedTwoViewAugment(seed=0, image_size=16)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 3, 32, 32\)"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(1, 32, 32\)"):
        aug(torch.zeros(1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        aug(torch.zeros(0, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 .* or float.*int32"):
        aug(torch.zeros(2, 1, 32, 32, dtype=torch.int32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        aug(np.zeros((2, 1, 32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"in \[0, 1\].*255"):
        aug(torch.full((2, 1, 32, 32), 255.0))
    BatchedTwoViewAugment(seed=0, image_size=16, check_range=False)(torch.full((2, 1, 32, 32), 2.0))  # opted out
    with pytest.raises(ValueError, match="unknown two-view augmentation option.*'crop'"):
        BatchedTwoViewAugment(crop="bicubic")
    with pytest.raises(ValueError, match="unknown two-view augmentation option"):
        TwoViewAugmentd(crop="bicubic")
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        TwoViewConfig(crop_mode="nearest")
    with pytest.raises(ValueError, match=r"blur_prob\[1\]"):
        TwoViewConfig(blur_prob=(1.0, 1.5))
    with pytest.raises(ValueError, match="seed"):
        BatchedTwoViewAugment(seed=-1)
    with pytest.raises(ValueError, match="view must be 0 or 1"):
        aug.sample(2, 32, 32, 2, "cpu")


def test_one_config_drives_both_versions() -> None:
    options = dict(image_size=48, crop_mode="bicubic", mean=0.4, std=0.3, solarize_prob=(0.0, 0.3))
    cpu, dev = TwoViewAugmentd(**options), BatchedTwoViewAugment(**options)
    assert cpu.config == dev.config == TwoViewConfig(**options)
    crop = cpu.pipelines[0].transforms[0]
    assert crop.mode == "bicubic" and crop.clamp == (0.0, 1.0)  # crop_mode reaches the CPU resampling
    assert TwoViewAugmentd().pipelines[0].transforms[0].mode == "bilinear"
    # view_pipeline's own defaults are view 1 of the shared config
    defaults = {k: v.default for k, v in inspect.signature(view_pipeline).parameters.items()}
    expected = dict(TwoViewConfig().view_options(0))
    assert set(defaults) == set(expected)
    for key, value in expected.items():
        assert np.allclose(defaults[key], value) if isinstance(value, (tuple, float)) else defaults[key] == value, key
