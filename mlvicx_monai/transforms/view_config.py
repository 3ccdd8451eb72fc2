"""The one description of the two-view SSL augmentation, shared by the per-sample CPU transform
(:class:`~mlvicx_monai.transforms.TwoViewAugmentd`) and the batched device transform
(:class:`~mlvicx_monai.transforms.BatchedTwoViewAugment`), so that their distributions cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CROP_MODES", "TwoViewConfig", "central_crop_size"]

#: interpolation of the random resized crop (VICReg uses bicubic; bilinear is cheaper and the default)
CROP_MODES = ("bilinear", "bicubic")
_PADDING_MODES = ("zeros", "border", "reflection")


def central_crop_size(width: int, height: int, ratio: Sequence[float]) -> tuple[int, int]:
    """``(w, h)`` of the central crop a random resized crop falls back to when no try fits (torchvision's rule):
    the whole image, clipped to the aspect-ratio range ``ratio`` (w / h)."""
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return width, int(round(width / ratio[0]))
    if in_ratio > ratio[1]:
        return int(round(height * ratio[1])), height
    return width, height


def _pair(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    """An ordered pair ``low <= min <= max`` as floats."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}.") from None
    if not low <= lo <= hi:
        raise ValueError(f"{name} must be an ordered pair with {low} <= min <= max, got {tuple(value)}.")
    return lo, hi


def _prob(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    return value


def _prob_pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    try:
        pair = tuple(float(v) for v in value)
    except TypeError:
        raise ValueError(f"{name} is a (view1, view2) pair of probabilities, got {value!r}.") from None
    if len(pair) != 2:
        raise ValueError(f"{name} is a (view1, view2) pair of probabilities, got {value!r}.")
    return _prob(f"{name}[0]", pair[0]), _prob(f"{name}[1]", pair[1])


@dataclass(frozen=True)
class TwoViewConfig:
    """Parameters of the asymmetric two-view augmentation (VICReg's pair, grey adaptation).

    Per view, in order: random resized crop to ``image_size`` (area fraction ``U[scale]``, log-uniform aspect in
    ``ratio``, torchvision's 10 tries then a central fallback) folded with a horizontal flip (``flip_prob``) and
    a rotation ``U[-rotate_range, rotate_range]`` degrees (``rotate_prob``) into one ``crop_mode`` resampling
    (antialiased first when the crop shrinks by more than ``antialias_above``); brightness/contrast jitter
    (``jitter_prob``, factors ``U[1 -+ brightness]``, ``U[1 -+ contrast]`` in random order); Gaussian blur
    (``blur_prob``, one sigma ``U[blur_sigma]`` output pixels); solarisation above ``solarize_threshold``
    (``solarize_prob``); ``(x - mean) / std``. ``blur_prob`` and ``solarize_prob`` are ``(view1, view2)`` pairs.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    rotate_range: float = 10.0
    rotate_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    blur_prob: tuple[float, float] = (1.0, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    solarize_threshold: float = 0.5
    mean: float = 0.5
    std: float = 0.25
    padding_mode: str = "zeros"
    crop_mode: str = "bilinear"
    antialias_above: float | None = 1.5

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.image_size, bool) or int(self.image_size) != self.image_size or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}.")
        put("image_size", int(self.image_size))
        scale = _pair("scale", self.scale)
        if not 0 < scale[1] <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {tuple(self.scale)}.")
        put("scale", scale)
        put("ratio", _pair("ratio", self.ratio, low=1e-6))
        for name in ("flip_prob", "rotate_prob", "jitter_prob"):
            put(name, _prob(name, getattr(self, name)))
        if float(self.rotate_range) < 0:
            raise ValueError(f"rotate_range (degrees) must be >= 0, got {self.rotate_range}.")
        put("rotate_range", float(self.rotate_range))
        for name in ("brightness", "contrast"):
            if not 0 <= float(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
            put(name, float(getattr(self, name)))
        put("blur_prob", _prob_pair("blur_prob", self.blur_prob))
        put("solarize_prob", _prob_pair("solarize_prob", self.solarize_prob))
        put("blur_sigma", _pair("blur_sigma", self.blur_sigma, low=1e-6))
        put("solarize_threshold", float(self.solarize_threshold))
        if float(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}.")
        put("mean", float(self.mean))
        put("std", float(self.std))
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {self.padding_mode!r}.")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}.")
        if self.antialias_above is not None:
            if float(self.antialias_above) < 1:
                raise ValueError(f"antialias_above must be >= 1 (or None: never), got {self.antialias_above}.")
            put("antialias_above", float(self.antialias_above))

    @classmethod
    def build(cls, config: TwoViewConfig | None = None, **options: Any) -> TwoViewConfig:
        """``config`` (default: the defaults) with ``options`` replaced; unknown option names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"unknown two-view augmentation option(s) {unknown}; the options are {sorted(names)}.")
        if config is not None and not isinstance(config, TwoViewConfig):
            raise TypeError(f"config must be a TwoViewConfig, got {type(config).__name__}.")
        return dataclasses.replace(config, **options) if config is not None else cls(**options)

    def view_options(self, view: int) -> Mapping[str, Any]:
        """Keyword arguments of :func:`~mlvicx_monai.transforms.view_pipeline` for view ``0`` or ``1``."""
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1, got {view!r}.")
        options = dataclasses.asdict(self)
        options["blur_prob"] = self.blur_prob[view]
        options["solarize_prob"] = self.solarize_prob[view]
        return options
