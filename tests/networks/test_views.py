"""Two-view augmentation: shapes, seeding, crop geometry, the view asymmetry, and its CPU cost."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import set_rnd

from mlvicx_monai.transforms import RandResizedCrop, RandSolarize, TwoViewAugmentd, eval_transform

MEAN, STD = 0.5, 0.25


def _image(h=256, w=256, seed=0):
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = 0.6 * xx + 0.3 * yy + 0.1 * torch.rand(h, w, generator=gen)
    return MetaTensor(img.clamp(0, 1)[None].float())


@pytest.mark.parametrize("size", [224, 64])
def test_shapes_and_types(size):
    t = TwoViewAugmentd(image_size=size)
    out = t({"image": _image(), "id": "x"})
    assert set(out) == {"view1", "view2", "id"}  # the source is dropped by default
    for key in ("view1", "view2"):
        v = out[key]
        assert type(v) is torch.Tensor and v.dtype == torch.float32 and v.shape == (1, size, size)
        assert v.is_contiguous() and torch.isfinite(v).all()
    kept = TwoViewAugmentd(image_size=size, keep_source=True)({"image": _image()})
    assert "image" in kept
    # non-square source
    assert TwoViewAugmentd(image_size=32)({"image": torch.rand(1, 200, 300)})["view1"].shape == (1, 32, 32)


def test_input_validation():
    with pytest.raises(ValueError, match=r"\[1, H, W\]"):
        TwoViewAugmentd(image_size=32)({"image": torch.rand(3, 64, 64)})
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        TwoViewAugmentd(image_size=32)({"image": torch.rand(1, 64, 64) * 255})
    with pytest.raises(ValueError, match="one source key"):
        TwoViewAugmentd(keys=("a", "b"))
    with pytest.raises(ValueError, match="scale"):
        RandResizedCrop(32, scale=(0.5, 0.1))


def test_deterministic_under_seed():
    img = _image()

    def run(seed, n=4):
        t = TwoViewAugmentd(image_size=48)
        t.set_random_state(seed=seed)
        return [t({"image": img}) for _ in range(n)]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert torch.equal(x["view1"], y["view1"]) and torch.equal(x["view2"], y["view2"])
    assert not all(torch.equal(x["view1"], z["view1"]) for x, z in zip(a, c))
    assert not torch.equal(a[0]["view1"], a[0]["view2"])
    # MONAI's DataLoader seeds workers through set_rnd, which must reach both view pipelines
    t1, t2 = TwoViewAugmentd(image_size=48), TwoViewAugmentd(image_size=48)
    set_rnd(t1, 123), set_rnd(t2, 123)
    assert torch.equal(t1({"image": img})["view2"], t2({"image": img})["view2"])


def test_crop_box_statistics_follow_torchvision():
    crop = RandResizedCrop(32)
    crop.set_random_state(0)
    areas, ratios = [], []
    for _ in range(500):
        crop.randomize((256, 256))
        top, left, h, w = crop.box
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 256
        areas.append(h * w / 256**2)
        ratios.append(w / h)
    # rounding of w, h to integers makes the bounds approximate
    assert min(areas) >= 0.08 * 0.95 and max(areas) <= 1.0
    assert min(ratios) >= 0.75 * 0.95 and max(ratios) <= 4 / 3 * 1.05
    # the whole range is covered (rejection of boxes that do not fit biases the mean below E[U(0.08, 1)] = 0.54,
    # as in torchvision)
    assert min(areas) < 0.12 and max(areas) > 0.9 and 0.4 < np.mean(areas) < 0.54


def test_single_resampling_geometry():
    img = _image(64, 80).as_tensor()
    crop = RandResizedCrop((20, 30))
    # a box of exactly the output size is a pure slice
    crop.box, crop.flip, crop.angle = (10, 17, 20, 30), False, 0.0
    torch.testing.assert_close(crop(img, randomize=False), img[:, 10:30, 17:47])
    crop.flip = True
    torch.testing.assert_close(crop(img, randomize=False), img[:, 10:30, 17:47].flip(-1))
    # +90 degrees about the box centre == counter-clockwise rot90 of the slice (torchvision's sign convention)
    square = RandResizedCrop(24)
    square.box, square.flip, square.angle = (5, 9, 24, 24), False, 90.0
    torch.testing.assert_close(square(img, randomize=False), torch.rot90(img[:, 5:29, 9:33], 1, dims=(1, 2)))
    # full-image crop at the native size is the identity
    ident = RandResizedCrop((64, 80))
    ident.box, ident.flip, ident.angle = (0, 0, 64, 80), False, 0.0
    torch.testing.assert_close(ident(img, randomize=False), img)


def test_small_rotation_keeps_content():
    img = _image(128, 128).as_tensor()
    crop = RandResizedCrop(64, scale=(0.5, 0.5), ratio=(1.0, 1.0), rotate_range=10.0, rotate_prob=1.0)
    crop.set_random_state(3)
    out = crop(img)
    assert abs(crop.angle) <= 10.0 and crop.angle != 0.0
    assert (out == 0).float().mean() < 0.05  # a small rotation of a centred half crop stays inside the image


def _controlled(solarize_prob=(0.0, 0.2)):
    """Everything off except solarisation: the view is the normalised image, or its solarised version."""
    return TwoViewAugmentd(
        image_size=32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0.0, rotate_prob=0.0, jitter_prob=0.0,
        blur_prob=(0.0, 0.0), solarize_prob=solarize_prob, mean=MEAN, std=STD,
    )


def test_view_asymmetry_solarisation():
    img = _image(32, 32)
    plain = (img.as_tensor() - MEAN) / STD
    solarised = (torch.where(img.as_tensor() >= 0.5, 1 - img.as_tensor(), img.as_tensor()) - MEAN) / STD
    t = _controlled()
    t.set_random_state(0)
    counts = {"view1": 0, "view2": 0}
    n = 300
    for _ in range(n):
        out = t({"image": img})
        for key in counts:
            if torch.allclose(out[key], solarised, atol=1e-5):
                counts[key] += 1
            else:
                torch.testing.assert_close(out[key], plain, atol=1e-5, rtol=0)
    assert counts["view1"] == 0  # view 1 is never solarised
    assert 0.1 * n < counts["view2"] < 0.3 * n  # view 2 about 20% of the time
    # default configuration: the asymmetric probabilities of VICReg
    default = TwoViewAugmentd()
    blur = [[tr for tr in p.transforms if type(tr).__name__ == "RandGaussianBlur"][0].prob for p in default.pipelines]
    sol = [[tr for tr in p.transforms if isinstance(tr, RandSolarize)][0].prob for p in default.pipelines]
    assert blur == [1.0, 0.1] and sol == [0.0, 0.2]


def test_eval_transform():
    out = eval_transform(image_size=48, mean=MEAN, std=STD)({"image": _image()})
    img = out["image"]
    assert type(img) is torch.Tensor and img.shape == (1, 48, 48) and img.dtype == torch.float32
    assert img.min() >= (0 - MEAN) / STD - 1e-4 and img.max() <= (1 - MEAN) / STD + 1e-4


def test_runtime_per_sample():
    """Prints the per-sample CPU cost in a DataLoader-like setting (1 thread per worker); not asserted."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        img = _image()
        for size in (224, 128):
            t = TwoViewAugmentd(image_size=size)
            t.set_random_state(0)
            t({"image": img})
            n = 40
            start = time.perf_counter()
            for _ in range(n):
                t({"image": img})
            ms = (time.perf_counter() - start) / n * 1e3
            print(f"\nTwoViewAugmentd 256x256 -> 2 x {size}x{size}: {ms:.2f} ms/sample (1 thread)")
            assert math.isfinite(ms)
    finally:
        torch.set_num_threads(threads)
