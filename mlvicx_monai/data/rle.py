"""SIIM-ACR run-length encoding (the relative format of ``train-rle.csv``).

The file stores pairs ``(start, length)``. Each ``start`` is counted from the end of the previous run
(the first from pixel 0). Runs index a flat array of ``height * width`` pixels in column-major order,
so the flat array is reshaped to ``(width, height)`` and transposed. ``-1`` (or an empty string) means
"no pneumothorax". Several rows for one image are several masks: their union is the image's mask.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["RLEError", "rle_decode", "rle_encode", "rle_merge", "is_empty_rle"]


class RLEError(ValueError):
    """An RLE string that does not describe a valid mask of the given size."""


def is_empty_rle(rle: str | None) -> bool:
    """True for the SIIM markers of an image without pneumothorax (``-1``, blank, NaN)."""
    if rle is None:
        return True
    if isinstance(rle, float):  # pandas NaN
        return rle != rle
    text = str(rle).strip()
    return text in ("", "-1")


def rle_decode(rle: str | None, height: int = 1024, width: int = 1024) -> np.ndarray:
    """Decode one SIIM relative RLE string into a boolean mask of shape ``(height, width)``.

    Raises:
        RLEError: odd number of values, negative values, zero lengths or a run past the image end.
    """
    mask = np.zeros(height * width, dtype=bool)
    if is_empty_rle(rle):
        return mask.reshape(height, width)
    try:
        values = np.array([int(v) for v in str(rle).split()], dtype=np.int64)
    except ValueError as err:
        raise RLEError(f"RLE contains a non-integer token: {err}") from None
    if values.size % 2:
        raise RLEError(f"RLE has an odd number of values ({values.size}); expected (start, length) pairs")
    starts, lengths = values[0::2], values[1::2]
    if (starts < 0).any() or (lengths <= 0).any():
        raise RLEError("RLE has a negative start or a non-positive run length")
    position = 0
    for start, length in zip(starts.tolist(), lengths.tolist()):
        position += start
        end = position + length
        if end > mask.size:
            raise RLEError(
                f"RLE run ends at pixel {end} beyond the {height}x{width} image ({mask.size} pixels); "
                "is the image size right?"
            )
        mask[position:end] = True
        position = end
    return mask.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask ``(height, width)`` in the SIIM relative format; ``"-1"`` for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"expected a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if not flat.any():
        return "-1"
    padded = np.concatenate([[False], flat, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    run_starts, run_ends = edges[0::2], edges[1::2]
    lengths = run_ends - run_starts
    previous_end = np.concatenate([[0], run_ends[:-1]])
    relative = run_starts - previous_end
    return " ".join(f"{s} {n}" for s, n in zip(relative.tolist(), lengths.tolist()))


def rle_merge(rles: Iterable[str | None], height: int = 1024, width: int = 1024) -> np.ndarray:
    """Union of all masks of one image (SIIM lists each pneumothorax region on its own row)."""
    mask = np.zeros((height, width), dtype=bool)
    for rle in rles:
        mask |= rle_decode(rle, height, width)
    return mask
