"""The two-view SSL augmentation on a whole batch at once, on the batch's device (GPU or CPU).

:class:`TwoViewAugmentd` augments one image at a time in the data-loader workers, which at ~2 ms a sample per CPU
core cannot feed a GPU step of thousands of samples a second. :class:`BatchedTwoViewAugment` takes the cached
batch ``(B, 1, H, W)`` (uint8 from the host cache, or float in ``[0, 1]``) where it lies and returns the two views
``(B, 1, S, S)`` float32, normalised, drawn from the SAME distributions: both read one :class:`TwoViewConfig`.

Per view and sample, as the CPU version (see :mod:`mlvicx_monai.transforms.views`):

- the crop box is drawn as torchvision does (10 tries of area ``U[scale]`` and log-uniform aspect, integer box,
  central fallback), then box + flip + rotation become ONE affine ``theta`` per sample, and the whole batch is
  resampled by one ``F.affine_grid`` + ``F.grid_sample`` (``crop_mode`` bilinear or bicubic; bicubic clipped to
  ``[0, 1]``);
- antialiasing (only where a sample's crop shrinks by more than ``antialias_above``): a per-sample triangle
  filter at the source resolution before the resampling, as wide as the CPU version's antialiased resize of the
  whole image followed by its bilinear interpolation (same blur in effect, not bit-identical);
- brightness/contrast jitter, Gaussian blur (MONAI's erf kernel, one sigma per sample, edge replication),
  solarisation and normalisation, each a batched tensor operation with per-sample parameters (an op a sample does
  not draw is applied as its identity: a factor 1, a delta kernel), so nothing waits for the host.

With the same parameters the outputs equal the CPU version's to float rounding (except the antialiasing); the
random streams differ (``torch.Generator`` on the data's device here, NumPy in the workers there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from .view_config import TwoViewConfig, central_crop_size

__all__ = ["BatchedTwoViewAugment", "ViewParams"]


@dataclass
class ViewParams:
    """Random parameters of one view of a batch of ``B`` samples (all tensors on the batch's device).

    Attributes:
        box: ``(B, 4)`` crop boxes ``(top, left, height, width)`` in source pixels (integers, as float).
        flip: ``(B,)`` bool, mirror left-right. angle: ``(B,)`` rotation in degrees (0 where not rotated).
        brightness, contrast: ``(B,)`` jitter factors (1 where not jittered). brightness_first: ``(B,)`` bool.
        sigma: ``(B,)`` blur sigma in output pixels; blur: ``(B,)`` bool. solarize: ``(B,)`` bool.
    """

    box: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    brightness_first: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def __getitem__(self, index: Any) -> ViewParams:
        """The parameters of a subset of the samples."""
        return ViewParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _blur_tail(sigma: float) -> int:
    """Half-length of MONAI's ``gaussian_1d(sigma, truncated=4)`` kernel."""
    return int(max(sigma * 4.0, 0.5) + 0.5)


def _separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-sample separable filtering of ``x`` ``(B, 1, H, W)`` by ``kernel`` ``(B, K)`` (K odd), replicate edges."""
    b, c, h, w = x.shape
    r = kernel.shape[1] // 2
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    k = kernel.to(x.dtype).repeat_interleave(c, dim=0)
    y = F.conv2d(y, k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w)


class BatchedTwoViewAugment:
    """Two asymmetric augmented views of a batch, computed on the batch's device.

    Args:
        config: the augmentation (:class:`TwoViewConfig`; default: its defaults), with ``options`` (any of its
            field names: ``image_size``, ``crop_mode``, ``mean``, ``std``...) replaced.
        seed: seed of the ``torch.Generator`` made for each device the transform sees (default: drawn from
            torch's global generator when the transform is made, so ``set_determinism`` makes it reproducible).
        check_range: check that a float input lies in ``[0, 1]`` (a host synchronisation on a GPU; uint8 input
            never needs it).

    Call: ``images`` ``(B, 1, H, W)`` uint8 or float in ``[0, 1]`` -> ``(view1, view2)``, each
    ``(B, 1, image_size, image_size)`` float32 on ``images.device``. Gradients are never recorded.
    ``state_dict``/``load_state_dict`` carry the generators' states (exact resumption).
    """

    def __init__(
        self, config: TwoViewConfig | None = None, seed: int | None = None, check_range: bool = True, **options: Any
    ) -> None:
        self.config = TwoViewConfig.build(config, **options)
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if isinstance(seed, bool) or int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        self.seed = int(seed)
        self.check_range = bool(check_range)
        self._generators: dict[torch.device, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}

    # ---- random state
    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator of ``device`` (made, seeded with ``seed``, on first use)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self._generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if str(device) in self._pending:
                gen.set_state(self._pending.pop(str(device)))
            self._generators[device] = gen
        return gen

    def set_random_state(self, seed: int) -> BatchedTwoViewAugment:
        """Reseed: every device's generator restarts from ``seed``."""
        self.seed = int(seed)
        self._generators.clear()
        self._pending.clear()
        return self

    def state_dict(self) -> dict[str, Any]:
        states = {str(d): g.get_state() for d, g in self._generators.items()}
        return {"seed": self.seed, "generators": {**self._pending, **states}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._generators.clear()
        self._pending = {str(k): v for k, v in state.get("generators", {}).items()}

    # ---- parameters
    def sample(self, batch: int, height: int, width: int, view: int, device: torch.device | str) -> ViewParams:
        """Draw the parameters of view ``view`` (0 or 1) for ``batch`` sources of ``height x width`` pixels."""
        if view not in (0, 1):
            raise ValueError(f"view must be 0 or 1, got {view!r}.")
        cfg, gen = self.config, self.generator(device)
        device = gen.device
        dtype = torch.float32 if device.type == "mps" else torch.float64

        def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(shape or (batch,), generator=gen, device=device, dtype=dtype)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch, generator=gen, device=device, dtype=dtype) < p

        # crop box: torchvision's RandomResizedCrop.get_params, 10 tries for every sample at once
        target = height * width * uniform(*cfg.scale, batch, 10)
        aspect = torch.exp(uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), batch, 10))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
        found = fits.any(dim=1)
        fw, fh = central_crop_size(width, height, cfg.ratio)  # no try fits: the central crop, as torchvision
        w = torch.where(found, w.gather(1, first).squeeze(1), torch.full_like(found, fw, dtype=dtype))
        h = torch.where(found, h.gather(1, first).squeeze(1), torch.full_like(found, fh, dtype=dtype))
        top = torch.floor(uniform(0.0, 1.0) * (height - h + 1)).clamp_(max=height - h)
        left = torch.floor(uniform(0.0, 1.0) * (width - w + 1)).clamp_(max=width - w)
        top = torch.where(found, top, (height - h) // 2)
        left = torch.where(found, left, (width - w) // 2)

        flip = coin(cfg.flip_prob)
        angle = torch.where(coin(cfg.rotate_prob), uniform(-cfg.rotate_range, cfg.rotate_range), 0.0)
        jitter = coin(cfg.jitter_prob)
        brightness = torch.where(jitter, uniform(1 - cfg.brightness, 1 + cfg.brightness), 1.0)
        contrast = torch.where(jitter, uniform(1 - cfg.contrast, 1 + cfg.contrast), 1.0)
        brightness_first = coin(0.5)
        blur = coin(cfg.blur_prob[view])
        sigma = uniform(*cfg.blur_sigma)
        solarize = coin(cfg.solarize_prob[view])
        return ViewParams(
            box=torch.stack([top, left, h, w], dim=1), flip=flip, angle=angle, brightness=brightness,
            contrast=contrast, brightness_first=brightness_first, blur=blur, sigma=sigma, solarize=solarize,
        )

    # ---- the operations
    def theta(self, params: ViewParams, height: int, width: int) -> torch.Tensor:
        """``(B, 2, 3)`` affines from normalised output to normalised source coordinates (as ``RandResizedCrop``)."""
        top, left, h, w = params.box.unbind(1)
        cx, cy = (2 * left + w) / width - 1, (2 * top + h) / height - 1
        f = 1.0 - 2.0 * params.flip.to(w.dtype)
        rad = torch.deg2rad(params.angle.to(w.dtype))
        c, s = torch.cos(rad), torch.sin(rad)
        rows = [torch.stack([c * f * w / width, -s * h / width, cx], 1),
                torch.stack([s * f * w / height, c * h / height, cy], 1)]
        return torch.stack(rows, dim=1).to(torch.float32)

    def _antialias(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Triangle prefilter of half-width ``sqrt(2) shrink`` source pixels where ``shrink > antialias_above``."""
        thr, size = self.config.antialias_above, self.config.image_size
        height, width = x.shape[-2:]
        if thr is None or min(height, width) / size <= thr:  # no crop of this source can shrink that much
            return x
        shrink = torch.minimum(params.box[:, 2], params.box[:, 3]) / size
        # the CPU version's resize (a triangle of half-width s) is followed by bilinear interpolation on the coarse
        # grid (another ~s^2/6 of variance at a random phase): a triangle of half-width s*sqrt(2) has the sum
        support = torch.where(shrink > thr, shrink * math.sqrt(2), torch.ones_like(shrink)).float()  # 1: delta
        reach = math.ceil(math.sqrt(2) * min(height, width) / size)
        taps = torch.arange(-reach, reach + 1, device=x.device, dtype=torch.float32)
        kernel = (1 - taps.abs()[None] / support[:, None]).clamp_(min=0)
        return _separable(x, kernel / kernel.sum(dim=1, keepdim=True))

    def crop(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Random resized crop + flip + rotation of ``x`` ``(B, 1, H, W)`` float in one resampling."""
        cfg = self.config
        batch, _, height, width = x.shape
        src = self._antialias(x, params)
        grid = F.affine_grid(self.theta(params, height, width), [batch, 1, cfg.image_size, cfg.image_size],
                             align_corners=False)
        out = F.grid_sample(src, grid.to(src.dtype), mode=cfg.crop_mode, padding_mode=cfg.padding_mode,
                            align_corners=False)
        return out.clamp_(0.0, 1.0) if cfg.crop_mode == "bicubic" else out

    @staticmethod
    def jitter(x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """``RandBrightnessContrast`` per sample: brightness ``x b``, contrast ``c x + (1 - c) mean(x)``, each
        clipped to ``[0, 1]``, in each sample's order (a factor 1 is the identity)."""
        shape = (-1, 1, 1, 1)
        b = params.brightness.to(x.dtype).view(shape)
        first = params.brightness_first.view(shape)
        x = (x * torch.where(first, b, torch.ones_like(b))).clamp_(0.0, 1.0)
        mean = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
        x = torch.lerp(mean, x, params.contrast.to(x.dtype).view(shape)).clamp_(0.0, 1.0)
        return (x * torch.where(first, torch.ones_like(b), b)).clamp_(0.0, 1.0)

    def blur(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """``RandGaussianBlur`` per sample (MONAI's erf kernel truncated at 4 sigma; a delta where not blurred)."""
        reach = _blur_tail(self.config.blur_sigma[1])
        taps = torch.arange(-reach, reach + 1, device=x.device, dtype=torch.float32)[None]
        sigma = params.sigma.to(torch.float32)[:, None]
        t = 0.70710678 / sigma
        kernel = (0.5 * ((t * (taps + 0.5)).erf() - (t * (taps - 0.5)).erf())).clamp_(min=0)
        tail = torch.floor(torch.clamp(sigma * 4.0, min=0.5) + 0.5)
        kernel = torch.where(taps.abs() <= tail, kernel, 0.0)
        delta = (taps == 0).to(kernel.dtype).expand_as(kernel)
        kernel = torch.where(params.blur[:, None], kernel, delta)
        return _separable(x, kernel)

    def solarize(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """``RandSolarize`` per sample: ``1 - x`` where ``x >= solarize_threshold``."""
        on = params.solarize.view(-1, 1, 1, 1) & (x >= self.config.solarize_threshold)
        return torch.where(on, 1.0 - x, x)

    def apply(self, x: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """One view of ``x`` ``(B, 1, H, W)`` float in ``[0, 1]`` with the given parameters ->
        ``(B, 1, S, S)`` normalised."""
        x = self.crop(x, params)
        x = self.jitter(x, params)
        x = self.blur(x, params)
        x = self.solarize(x, params)
        return ((x - self.config.mean) / self.config.std).contiguous()

    def _as_unit_float(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (B, 1, H, W), got {type(images).__name__}.")
        if hasattr(images, "as_tensor"):
            images = images.as_tensor()  # MetaTensor: no metadata in the hot path
        if images.ndim != 4 or images.shape[1] != 1 or min(images.shape) < 1:
            raise ValueError(
                f"images must be a non-empty grey batch (B, 1, H, W), got shape {tuple(images.shape)} "
                "(collate the cached [1, H, W] images; all must have the same size)."
            )
        if images.dtype == torch.uint8:
            return images.to(torch.float32) / 255.0
        if not images.is_floating_point():
            raise TypeError(f"images must be uint8 (the cache) or float in [0, 1], got {images.dtype}.")
        images = images.to(torch.float32)
        if self.check_range:
            lo, hi = torch.aminmax(images)
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(
                    f"float images must hold intensities in [0, 1], got [{lo.item():.4g}, {hi.item():.4g}] "
                    "(pass the uint8 cache, or scale 8-bit images by 1/255)."
                )
        return images

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._as_unit_float(images)
        batch, _, height, width = x.shape
        views = []
        for view in (0, 1):
            params = self.sample(batch, height, width, view, x.device)
            views.append(self.apply(x, params))
        return views[0], views[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(config={self.config}, seed={self.seed})"
