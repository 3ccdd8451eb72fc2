"""The downstream preprocessing chain: one factory used by the bundles AND stored with every model.

A trained model carries its :class:`Preprocessing` record (in its artifact, see
:mod:`mlvicx_monai.networks.artifacts`); inference rebuilds the chain from the record with the same methods the
training bundles call, instead of re-implementing it::

    ingested cache image (PNG, source_size^2, 8-bit)          decoded radiograph (float [0, 1], any size)
            |  LoadCXRd (bundle)                                      |  to_source_cache (inference only):
            |                                                         |  ingestion's resize + 8-bit rounding
            v                                                         v
    cached():  Resized(image_size, bilinear, antialiased) -> QuantizeUint8d        (what CacheDataset keeps)
    runtime(): DequantizeUint8d -> [augmentation, training only] -> NormalizeIntensityd -> EnsureTyped(float32)

``(x - mean) / std`` of an image in ``[0, 1]``, bone bright; ``image_size`` is the network's square input side and
``source_size`` the side of the ingested cache the model was trained from (``None``: unknown, inference then resizes
the decoded image straight to ``image_size``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, EnsureTyped, MapTransform, NormalizeIntensityd, Resized, Transform

from mlvicx_monai.transforms.cache import DequantizeUint8d, QuantizeUint8d

__all__ = ["PREPROCESSING_FORMAT", "Preprocessing", "ToSourceCached"]

PREPROCESSING_FORMAT = "mlvicx-cxr-preprocessing/1"


class ToSourceCached(MapTransform):
    """A decoded radiograph ``[1, H, W]`` (float in [0, 1]) -> what ingestion would have cached for it: the image
    resized to ``size`` x ``size`` and rounded to 8 bits, as float in [0, 1] (the ingestion's own resize function,
    so the two never drift apart)."""

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        from mlvicx_monai.data.ingest import cache_image

        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            array = np.asarray(img.as_tensor() if hasattr(img, "as_tensor") else img, dtype=np.float32)
            if array.ndim != 3 or array.shape[0] != 1:
                raise ValueError(f"{key!r} must be a [1, H, W] image, got shape {array.shape}")
            cached = cache_image(array[0], self.size)  # uint8 [size, size]
            d[key] = torch.from_numpy(cached.astype(np.float32) / np.float32(255.0))[None]
        return d


@dataclass(frozen=True)
class Preprocessing:
    """What a downstream model's input is made of (see the module docstring).

    Args:
        image_size: side of the square network input (>= 32).
        mean, std: normalisation ``(x - mean) / std`` of the [0, 1] image (``std`` > 0).
        source_size: side of the ingested cache images the model was trained on, or ``None``.
    """

    image_size: int
    mean: float = 0.5
    std: float = 0.25
    source_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32, got {self.image_size!r}")
        if not float(self.std) > 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if self.source_size is not None and (
            isinstance(self.source_size, bool) or not isinstance(self.source_size, int) or self.source_size < 1
        ):
            raise ValueError(f"source_size must be a positive integer or None, got {self.source_size!r}")

    # ---- record ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record (stored in model artifacts and registered versions)."""
        return {"format": PREPROCESSING_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "Preprocessing":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: another format, unknown keys or invalid values.
        """
        record = dict(record)
        fmt = record.pop("format", None)
        if fmt != PREPROCESSING_FORMAT:
            raise ValueError(f"preprocessing record of format {fmt!r}; expected {PREPROCESSING_FORMAT!r}")
        unknown = sorted(set(record) - {"image_size", "mean", "std", "source_size"})
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}")
        return cls(**record)

    # ---- transforms ------------------------------------------------------------------------------------
    def cached(self, keys: KeysCollection = "image") -> list[Transform]:
        """After loading: the deterministic part a ``CacheDataset`` keeps (uint8 at the network's size)."""
        size = [self.image_size, self.image_size]
        return [Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True), QuantizeUint8d(keys)]

    def runtime(
        self,
        keys: KeysCollection = "image",
        augmentation: Sequence[Transform] = (),
        tensor_keys: KeysCollection | None = None,
    ) -> list[Transform]:
        """After the cache: dequantise, optional ``augmentation`` (on [0, 1] images), normalise, plain float32 tensors
        (of ``tensor_keys``, default ``keys``; e.g. ``["image", "label"]``)."""
        return [
            DequantizeUint8d(keys),
            *augmentation,
            NormalizeIntensityd(keys, subtrahend=float(self.mean), divisor=float(self.std)),
            EnsureTyped(tensor_keys if tensor_keys is not None else keys, dtype=torch.float32, track_meta=False),
        ]

    def from_decoded(self, keys: KeysCollection = "image") -> Compose:
        """Inference: a decoded radiograph ``{"image": [1, H, W] float in [0, 1]}`` -> the network input
        ``[1, image_size, image_size]``, exactly as training saw its ingested image."""
        head: list[Transform] = [ToSourceCached(keys, self.source_size)] if self.source_size else []
        return Compose([*head, *self.cached(keys), *self.runtime(keys)])
