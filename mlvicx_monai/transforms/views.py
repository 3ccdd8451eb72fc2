"""Two-view (asymmetric, VICReg-style) augmentation for grey radiographs, and the matching eval transform.

Input: a dict whose ``image`` is a ``[1, H, W]`` float tensor / MetaTensor in ``[0, 1]`` (the ~256x256 cache).
Output: the dict with ``view1``, ``view2`` ``[1, S, S]`` float32 plain tensors (the source key is dropped unless
``keep_source``, so that differently sized sources never reach the collate function).

Per view, in order (VICReg's pair, grey adaptation):

1. random resized crop to S (area scale 0.08-1, aspect 3/4-4/3, torchvision semantics), horizontal flip (p 0.5)
   and a small rotation (p 0.5, +-10 degrees): all three folded into ONE bilinear resampling of the cached image
   (``RandResizedCrop``; it replaces MONAI's RandFlipd/RandRotated, each of which would resample again), with an
   antialiasing pre-shrink only when the crop is shrunk by more than 1.5x;
2. brightness/contrast jitter (p 0.8, ``RandBrightnessContrast``);
3. Gaussian blur, one sigma in 0.1-2 output pixels (p 1.0 on view 1, 0.1 on view 2; ``RandGaussianBlur`` on
   MONAI's ``gaussian_1d`` + ``separable_filtering``);
4. solarisation (p 0 on view 1, 0.2 on view 2, ``RandSolarize``);
5. normalisation ``(x - mean) / std``.

The parameters live in one :class:`~mlvicx_monai.transforms.TwoViewConfig`, shared with the batched device version
(:class:`~mlvicx_monai.transforms.BatchedTwoViewAugment`). ``crop_mode="bicubic"`` (VICReg's interpolation) clips
the crop to ``[0, 1]`` as torchvision does for 8-bit images.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Randomizable,
    RandomizableTransform,
    Resized,
)
from monai.utils import ensure_tuple_rep

from .intensity import Normalize, RandBrightnessContrast, RandGaussianBlur, RandSolarize, _range
from .view_config import TwoViewConfig, central_crop_size

__all__ = ["RandResizedCrop", "TwoViewAugmentd", "eval_transform", "view_pipeline"]


def _as_plain_float(img: Any) -> torch.Tensor:
    t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    return t.float() if t.dtype != torch.float32 else t


class RandResizedCrop(RandomizableTransform):
    """torchvision ``RandomResizedCrop`` (+ optional horizontal flip and rotation) in a single resampling.

    The crop box ``(top, left, h, w)`` is drawn exactly as torchvision does (10 tries of area fraction
    ``U[scale]`` and log-uniform aspect ``ratio``, then a centre-crop fallback); the output pixel grid of size
    ``size`` covers the box (``align_corners=False`` geometry), optionally mirrored left-right (``flip_prob``) and
    rotated about the box centre by ``U[-rotate_range, rotate_range]`` degrees (``rotate_prob``). Points that fall
    outside the image follow ``padding_mode``. When the box is shrunk by more than ``antialias_above`` the whole
    image is first resized with antialiasing (normalised coordinates are unchanged by a full-image resize).
    ``clamp`` ``(lo, hi)`` clips the result (bicubic overshoots the input range).

    Input ``[C, H, W]`` float tensor; output ``[C, size_h, size_w]``.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.0,
        rotate_range: float = 0.0,
        rotate_prob: float = 0.0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
        antialias_above: float | None = 1.5,
        clamp: Sequence[float] | None = None,
    ) -> None:
        super().__init__(prob=1.0)
        self.size = tuple(int(s) for s in ensure_tuple_rep(size, 2))
        if min(self.size) < 1:
            raise ValueError(f"size must be positive, got {size}.")
        self.scale = _range("scale", scale)
        if self.scale[1] > 1 or self.scale[1] <= 0:
            raise ValueError(f"scale must lie in (0, 1], got {tuple(scale)}.")
        self.ratio = _range("ratio", ratio, low=1e-6)
        for name, p in (("flip_prob", flip_prob), ("rotate_prob", rotate_prob)):
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {p}.")
        if rotate_range < 0:
            raise ValueError(f"rotate_range (degrees) must be >= 0, got {rotate_range}.")
        if mode not in ("bilinear", "nearest", "bicubic"):
            raise ValueError(f"mode must be 'bilinear', 'nearest' or 'bicubic', got {mode!r}.")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"padding_mode must be 'zeros', 'border' or 'reflection', got {padding_mode!r}.")
        self.flip_prob, self.rotate_range, self.rotate_prob = float(flip_prob), float(rotate_range), float(rotate_prob)
        self.mode, self.padding_mode, self.antialias_above = mode, padding_mode, antialias_above
        self.clamp = None if clamp is None else _range("clamp", clamp, low=-math.inf)
        self.box: tuple[int, int, int, int] = (0, 0, 1, 1)
        self.flip = False
        self.angle = 0.0

    def randomize(self, data: Sequence[int]) -> None:  # data: (H, W)
        height, width = int(data[0]), int(data[1])
        self.box = self._sample_box(height, width)
        self.flip = bool(self.R.rand() < self.flip_prob)
        rotate = bool(self.R.rand() < self.rotate_prob)
        self.angle = float(self.R.uniform(-self.rotate_range, self.rotate_range)) if rotate else 0.0

    def _sample_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(self.R.randint(0, height - h + 1))
                left = int(self.R.randint(0, width - w + 1))
                return top, left, h, w
        w, h = central_crop_size(width, height, self.ratio)  # fallback: central crop
        return (height - h) // 2, (width - w) // 2, h, w

    def theta(self, height: int, width: int) -> torch.Tensor:
        """``[2, 3]`` affine from normalised output coordinates to normalised input coordinates."""
        top, left, h, w = self.box
        cx, cy = (2 * left + w) / width - 1, (2 * top + h) / height - 1  # box centre, normalised
        f = -1.0 if self.flip else 1.0
        c, s = math.cos(math.radians(self.angle)), math.sin(math.radians(self.angle))
        # output (u, v) in [-1, 1] -> pixel offsets from the box centre (f*u*w/2, v*h/2) -> rotate -> normalise
        return torch.tensor(
            [[c * f * w / width, -s * h / width, cx], [s * f * w / height, c * h / height, cy]], dtype=torch.float32
        )

    def _grid(self, theta: torch.Tensor) -> torch.Tensor:
        """``F.affine_grid(theta[None], [1, C, *size], align_corners=False)`` by broadcasting (cheaper on CPU)."""
        ys, xs = (
            (torch.arange(n, dtype=theta.dtype, device=theta.device) * 2 + 1) / n - 1 for n in self.size
        )  # pixel centres in [-1, 1]
        u, v = xs.view(1, -1), ys.view(-1, 1)
        gx = theta[0, 0] * u + theta[0, 1] * v + theta[0, 2]
        gy = theta[1, 0] * u + theta[1, 1] * v + theta[1, 2]
        return torch.stack([gx, gy], dim=-1).unsqueeze(0)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        img = _as_plain_float(img)
        if img.ndim != 3:
            raise ValueError(f"expected a channel-first [C, H, W] image, got shape {tuple(img.shape)}.")
        height, width = img.shape[-2:]
        if randomize:
            self.randomize((height, width))
        theta = self.theta(height, width).to(img.device)
        src = img.unsqueeze(0)
        _, _, h, w = self.box
        shrink = min(h / self.size[0], w / self.size[1])
        if self.antialias_above is not None and shrink > self.antialias_above:
            small = (max(1, round(height / shrink)), max(1, round(width / shrink)))
            src = F.interpolate(src, size=small, mode="bilinear", align_corners=False, antialias=True)
        grid = self._grid(theta)
        out = F.grid_sample(src, grid, mode=self.mode, padding_mode=self.padding_mode, align_corners=False)
        if self.clamp is not None:
            out = out.clamp_(*self.clamp)
        return out.squeeze(0)


def view_pipeline(
    image_size: int = 224,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    flip_prob: float = 0.5,
    rotate_range: float = 10.0,
    rotate_prob: float = 0.5,
    jitter_prob: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    blur_prob: float = 1.0,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    solarize_prob: float = 0.0,
    solarize_threshold: float = 0.5,
    mean: float = 0.5,
    std: float = 0.25,
    padding_mode: str = "zeros",
    crop_mode: str = "bilinear",
    antialias_above: float | None = 1.5,
) -> Compose:
    """The augmentation of ONE view, as a MONAI ``Compose`` of array transforms: ``[1, H, W]`` in ``[0, 1]`` ->
    ``[1, image_size, image_size]`` normalised. The defaults are view 1 of :class:`TwoViewConfig`."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}.")
    if crop_mode not in ("bilinear", "bicubic"):
        raise ValueError(f"crop_mode must be 'bilinear' or 'bicubic', got {crop_mode!r}.")
    return Compose(
        [
            RandResizedCrop(
                image_size, scale, ratio, flip_prob=flip_prob, rotate_range=rotate_range, rotate_prob=rotate_prob,
                mode=crop_mode, padding_mode=padding_mode, antialias_above=antialias_above,
                clamp=(0.0, 1.0) if crop_mode == "bicubic" else None,
            ),
            RandBrightnessContrast(prob=jitter_prob, brightness=brightness, contrast=contrast),
            RandGaussianBlur(prob=blur_prob, sigma=blur_sigma),
            RandSolarize(prob=solarize_prob, threshold=solarize_threshold),
            Normalize(mean, std),
        ]
    )


class TwoViewAugmentd(MapTransform, Randomizable):
    """Make the two asymmetric views ``view_keys`` of the image at ``keys`` (one key).

    The augmentation is ``config`` (a :class:`TwoViewConfig`; default: its defaults) with ``options`` (any of its
    field names: ``image_size``, ``crop_mode``, ``mean``, ``std``...) replaced. Per-view probabilities that differ
    between the views are pairs ``(view1, view2)``: ``blur_prob`` (1.0, 0.1) and ``solarize_prob`` (0.0, 0.2), as
    in VICReg; everything else is shared. See the module docstring for the order of operations.

    ``set_random_state`` seeds both view pipelines (MONAI's DataLoader calls it per worker).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        view_keys: Sequence[str] = ("view1", "view2"),
        keep_source: bool = False,
        allow_missing_keys: bool = False,
        config: TwoViewConfig | None = None,
        **options: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"TwoViewAugmentd takes exactly one source key, got {self.keys}.")
        if len(view_keys) != 2 or view_keys[0] == view_keys[1]:
            raise ValueError(f"view_keys must be two distinct names, got {view_keys}.")
        self.config = TwoViewConfig.build(config, **options)
        self.view_keys = tuple(view_keys)
        self.keep_source = keep_source
        self.pipelines = tuple(view_pipeline(**self.config.view_options(v)) for v in (0, 1))

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViewAugmentd:
        super().set_random_state(seed=seed, state=state)
        for pipeline in self.pipelines:
            pipeline.set_random_state(seed=int(self.R.randint(np.iinfo(np.uint32).max, dtype="uint32")))
        return self

    def randomize(self, data: Any = None) -> None:  # the randomness lives in the two pipelines
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = _as_plain_float(d[key])
            if img.ndim != 3 or img.shape[0] != 1:
                raise ValueError(f"{key!r} must be a [1, H, W] grey image, got shape {tuple(img.shape)}.")
            lo, hi = torch.aminmax(img)
            if lo < -1e-3 or hi > 1 + 1e-3:  # jitter clipping and the solarisation threshold assume [0, 1]
                raise ValueError(
                    f"{key!r} must hold intensities in [0, 1], got [{lo.item():.4g}, {hi.item():.4g}] "
                    "(scale 8-bit images by 1/255 first)."
                )
            for view_key, pipeline in zip(self.view_keys, self.pipelines):
                view = pipeline(img)
                d[view_key] = _as_plain_float(view).contiguous()
            if not self.keep_source:
                del d[key]
        return d


def eval_transform(
    keys: KeysCollection = "image", image_size: int = 224, mean: float = 0.5, std: float = 0.25
) -> Compose:
    """Deterministic downstream transform: antialiased bilinear resize of ``[1, H, W]`` (in ``[0, 1]``) to
    ``[1, image_size, image_size]``, then the same normalisation as the views; plain float32 tensors out."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}.")
    return Compose(
        [
            Resized(keys, spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
            NormalizeIntensityd(keys, subtrahend=mean, divisor=std),
            EnsureTyped(keys, data_type="tensor", dtype=torch.float32, track_meta=False),
        ]
    )
