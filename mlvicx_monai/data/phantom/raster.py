"""The pixel grid of a synthetic radiograph and its mapping to patient coordinates.

Patient coordinates are normalised: ``x`` grows towards the image right (the patient's left on a PA
film), ``y`` grows downwards, and the shorter image side spans ``[-1, 1]`` when the pose is neutral.
Every anatomical shape is written as a function of ``(x, y)``, so the patient pose (rotation, shift,
scale) costs nothing: it only changes how pixel centres map to patient coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["Frame", "Pose", "bbox_of_mask", "ramp", "smooth_noise"]


@dataclass(frozen=True)
class Pose:
    """Patient position on the detector.

    Args:
        rotation: in-plane rotation in degrees (counter-clockwise on the displayed image).
        shift_x: horizontal shift of the patient, in normalised units (image half-side = 1).
        shift_y: vertical shift of the patient, in normalised units.
        scale: magnification (> 1 fills more of the image).
    """

    rotation: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.3 <= self.scale <= 3.0:
            raise ValueError(f"pose scale must be in [0.3, 3], got {self.scale}")
        if abs(self.rotation) > 45:
            raise ValueError(f"pose rotation must be within +-45 degrees, got {self.rotation}")


class Frame:
    """Pixel grid of a ``(rows, cols)`` image seen through a :class:`Pose`.

    ``frame.x`` and ``frame.y`` hold the patient coordinates of every pixel centre (float32);
    :meth:`window` gives the same for the pixel rectangle covering a patient-space box, so that
    small structures are computed on a small sub-grid only.
    """

    def __init__(self, rows: int, cols: int, pose: Pose | None = None) -> None:
        if rows < 16 or cols < 16:
            raise ValueError(f"image must be at least 16x16 pixels, got {rows}x{cols}")
        self.rows, self.cols = int(rows), int(cols)
        self.pose = pose or Pose()
        self.half = min(rows, cols) / 2.0
        theta = np.deg2rad(self.pose.rotation)
        c, s = np.cos(theta), np.sin(theta)
        k = 1.0 / (self.half * self.pose.scale)
        # image-normalised u = (col + 0.5 - cols/2)/half - shift_x; patient = R(-theta) u / scale
        # x = k*( c*(col+0.5-cx) - s*(row+0.5-cy)) ... expressed as affine maps of (col, row).
        cx, cy = cols / 2.0, rows / 2.0
        sx, sy = self.pose.shift_x * self.half, self.pose.shift_y * self.half
        # u_col = col + 0.5 - cx - sx ; u_row = row + 0.5 - cy - sy (pixels)
        # rotation by -theta on the displayed image (y down): x = c*u_col - s*u_row, y = s*u_col + c*u_row
        self._a = np.array([[c * k, -s * k], [s * k, c * k]], dtype=np.float64)
        self._o = np.array([0.5 - cx - sx, 0.5 - cy - sy], dtype=np.float64)
        self.pixel = k  # size of one pixel in patient units
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None

    # -- coordinate maps -------------------------------------------------------------------------
    def _grid(self, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        cols = (np.arange(c0, c1, dtype=np.float64) + self._o[0])[None, :]
        rows = (np.arange(r0, r1, dtype=np.float64) + self._o[1])[:, None]
        x = (self._a[0, 0] * cols + self._a[0, 1] * rows).astype(np.float32)
        y = (self._a[1, 0] * cols + self._a[1, 1] * rows).astype(np.float32)
        return x, y

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            self._x, self._y = self._grid(0, self.rows, 0, self.cols)
        return self._x

    @property
    def y(self) -> np.ndarray:
        if self._y is None:
            self._x, self._y = self._grid(0, self.rows, 0, self.cols)
        return self._y  # type: ignore[return-value]

    def to_pixel(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates -> (col, row) pixel coordinates (continuous, pixel centres at +0.5)."""
        inv = np.linalg.inv(self._a)
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        u = inv[0, 0] * x + inv[0, 1] * y - self._o[0] + 0.5
        v = inv[1, 0] * x + inv[1, 1] * y - self._o[1] + 0.5
        return u, v

    def window(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixel slices and sub-grid coordinates covering the patient box ``[x0, x1] x [y0, y1]``.

        Returns None when the box falls entirely outside the image.
        """
        xs = np.array([x0, x1, x0, x1])
        ys = np.array([y0, y0, y1, y1])
        u, v = self.to_pixel(xs, ys)
        c0 = max(int(np.floor(u.min())) - 1, 0)
        c1 = min(int(np.ceil(u.max())) + 2, self.cols)
        r0 = max(int(np.floor(v.min())) - 1, 0)
        r1 = min(int(np.ceil(v.max())) + 2, self.rows)
        if c0 >= c1 or r0 >= r1:
            return None
        if self._x is not None:
            sl = (slice(r0, r1), slice(c0, c1))
            return sl, self._x[sl], self._y[sl]  # type: ignore[index]
        x, y = self._grid(r0, r1, c0, c1)
        return (slice(r0, r1), slice(c0, c1)), x, y


def ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased inside indicator of a signed distance ``d`` (> 0 inside): 0..1 over ``width``."""
    return np.clip(0.5 + d * (1.0 / width), 0.0, 1.0, dtype=np.float32)


def smooth_noise(
    rng: np.random.Generator, rows: int, cols: int, cell: float, resample=Image.Resampling.BICUBIC
) -> np.ndarray:
    """Zero-mean, unit-ish smooth Gaussian noise of correlation length ``cell`` pixels (upsampled)."""
    if cell < 1:
        raise ValueError(f"noise cell must be >= 1 pixel, got {cell}")
    gr = max(int(np.ceil(rows / cell)) + 3, 4)
    gc = max(int(np.ceil(cols / cell)) + 3, 4)
    small = rng.standard_normal((gr, gc), dtype=np.float32)
    big = Image.fromarray(small).resize((cols, rows), resample, box=(1.0, 1.0, gc - 2.0, gr - 2.0))
    return np.asarray(big, dtype=np.float32)


def bbox_of_mask(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x_min, y_min, x_max, y_max)`` in pixels (max exclusive) of a boolean mask; None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1
