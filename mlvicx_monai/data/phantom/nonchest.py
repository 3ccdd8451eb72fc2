"""Images that are not chest radiographs, for the files a chest ingest must reject.

Radiographs of other body parts (hand, knee) and cross-sectional slices (CT in Hounsfield units,
MR in arbitrary units). Simple, but recognisably what they claim to be.
"""

from __future__ import annotations

import itertools

import numpy as np

from .raster import Frame, Pose, ramp

__all__ = ["render_ct_slice", "render_extremity", "render_mr_slice"]


def _capsule(x, y, x0, y0, x1, y1, r):
    """Signed distance (> 0 inside) to a capsule (rounded segment) of radius ``r``."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    px, py = x0 + t * dx, y0 + t * dy
    return r - np.sqrt((x - px) ** 2 + (y - py) ** 2)


def render_extremity(rng: np.random.Generator, size: tuple[int, int], part: str) -> np.ndarray:
    """A radiograph of a ``"HAND"`` or ``"KNEE"``: bone-bright float32 image in [0, 1]."""
    if part not in ("HAND", "KNEE"):
        raise ValueError(f"part must be HAND or KNEE, got {part!r}")
    rows, cols = size
    fr = Frame(rows, cols, Pose(rotation=float(rng.normal(0, 4))))
    x, y = fr.x, fr.y
    e = 1.5 * fr.pixel
    soft = np.zeros((rows, cols), dtype=np.float32)
    bone = np.zeros((rows, cols), dtype=np.float32)
    if part == "HAND":
        # palm, five rays of metacarpals and phalanges, carpal cluster and forearm bones
        soft += 0.5 * ramp(_capsule(x, y, 0.0, 0.9, 0.0, 0.1, 0.36), e)
        for k, ang in enumerate(np.deg2rad([-58, -22, -5, 10, 26])):
            base = (0.22 * np.sin(ang) * 0.6, 0.25)
            length = [0.55, 0.75, 0.82, 0.78, 0.62][k]
            tip = (base[0] + length * np.sin(ang), base[1] - length * np.cos(ang))
            soft += 0.5 * ramp(_capsule(x, y, base[0], base[1], tip[0], tip[1], 0.07), e)
            n_seg = 2 if k == 0 else 3
            segs = np.linspace(0, 1, n_seg + 2)
            for a, b in itertools.pairwise(segs):
                p0 = (base[0] + (a + 0.02) * (tip[0] - base[0]), base[1] + (a + 0.02) * (tip[1] - base[1]))
                p1 = (base[0] + (b - 0.02) * (tip[0] - base[0]), base[1] + (b - 0.02) * (tip[1] - base[1]))
                bone += 0.35 * ramp(_capsule(x, y, *p0, *p1, 0.032), e)
        for cx, cy in rng.uniform([-0.15, 0.3], [0.15, 0.45], (8, 2)):
            bone += 0.3 * ramp(0.045 - np.hypot(x - cx, y - cy), e)
        bone += 0.35 * ramp(_capsule(x, y, -0.12, 0.5, -0.12, 1.2, 0.06), e)
        bone += 0.35 * ramp(_capsule(x, y, 0.12, 0.5, 0.12, 1.2, 0.05), e)
    else:
        soft += 0.6 * ramp(_capsule(x, y, 0.0, -1.3, 0.0, 1.3, 0.55), e)
        bone += 0.4 * ramp(_capsule(x, y, 0.0, -1.3, 0.0, -0.15, 0.2), e)  # femur
        bone += 0.4 * ramp(0.3 - np.hypot((x) / 1.3, y + 0.12), e)  # condyles
        bone += 0.4 * ramp(_capsule(x, y, 0.0, 0.12, 0.0, 1.3, 0.19), e)  # tibia
        bone += 0.35 * ramp(_capsule(x, y, 0.3, 0.2, 0.33, 1.3, 0.06), e)  # fibula
        bone += 0.3 * ramp(0.13 - np.hypot(x + 0.05, y + 0.3), e)  # patella
    img = np.clip(0.9 * (soft + bone), 0, 1) ** 1.1
    img += 0.01 * rng.standard_normal((rows, cols), dtype=np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def render_ct_slice(rng: np.random.Generator, size: int) -> np.ndarray:
    """An axial chest CT slice in Hounsfield units (int16): body, lungs, heart, spine, ribs."""
    fr = Frame(size, size, Pose())
    x, y = fr.x, fr.y
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    body = ((x / 0.85) ** 2 + (y / 0.6) ** 2) < 1
    hu[body] = 40.0
    for sx in (-0.42, 0.42):
        lung = ((x - sx) / 0.3) ** 2 + ((y + 0.02) / 0.42) ** 2 < 1
        hu[lung] = -850.0
    hu[((x - 0.08) / 0.22) ** 2 + ((y + 0.05) / 0.2) ** 2 < 1] = 45.0
    hu[(x**2 + (y - 0.42) ** 2) < 0.09**2] = 700.0
    rib_ring = np.abs(np.hypot(x / 0.8, y / 0.55) - 1.0) < 0.03
    hu[rib_ring & (np.sin(np.arctan2(y, x) * 9) > 0.3)] = 600.0
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def render_mr_slice(rng: np.random.Generator, size: int) -> np.ndarray:
    """An axial brain MR slice (uint16, arbitrary units)."""
    fr = Frame(size, size, Pose())
    x, y = fr.x, fr.y
    img = np.zeros((size, size), dtype=np.float32)
    head = (x / 0.7) ** 2 + (y / 0.85) ** 2
    img[head < 1] = 300
    img[head < 0.85] = 900
    img[(x / 0.55) ** 2 + (y / 0.7) ** 2 < 1] = 650
    img[((np.abs(x) - 0.12) / 0.06) ** 2 + (y / 0.25) ** 2 < 1] = 1500  # ventricles
    img += rng.normal(0, 20, img.shape).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)
