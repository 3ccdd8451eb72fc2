"""Lateral chest radiographs (LL view): the views a frontal-only ingest must recognise and set aside.

Displayed with the patient facing the image left: sternum left, spine right, the heart anterior and
inferior, both lungs superimposed, the posterior costophrenic sulci lowest. Supports two findings,
``cardiomegaly`` and ``effusion`` (posterior sulcus blunting), so truth can still be stated.
"""

from __future__ import annotations

import numpy as np

from .anatomy import Anatomy, sample_anatomy
from .raster import Frame, Pose, ramp, smooth_noise
from .render import parse_size, sample_pose

__all__ = ["LATERAL_FINDINGS", "render_lateral_cxr"]

LATERAL_FINDINGS = ("cardiomegaly", "effusion")


def render_lateral_cxr(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    findings=(),
    *,
    anatomy: Anatomy | None = None,
) -> tuple[np.ndarray, dict]:
    """Render a lateral chest radiograph; returns ``(image, info)`` with ``info["findings"]``."""
    rows, cols = parse_size(size)
    names = tuple(sorted(set(findings)))
    bad = set(names) - set(LATERAL_FINDINGS)
    if bad:
        raise ValueError(f"lateral views support only {LATERAL_FINDINGS}, got {sorted(bad)}")
    anatomy = anatomy if anatomy is not None else sample_anatomy(rng)
    pose: Pose = sample_pose(rng, "PA")
    fr = Frame(rows, cols, pose)
    x, y = fr.x, fr.y
    edge = 1.5 * fr.pixel

    # body outline: sternum to the left, back to the right, narrowing to the neck
    neck = np.clip((anatomy.apex_y - 0.05 - y) * 3.0, 0.0, 1.0)
    front = -0.82 + 0.5 * neck - 0.04 * np.clip(y - 0.4, 0, None)
    back = 0.92 - 0.35 * neck
    mid, half = 0.5 * (back + front), 0.5 * (back - front)
    r = (x - mid) / half
    soft = (0.55 + 0.3 * np.sqrt(np.maximum(1 - r * r, 0.0))) * ramp(half - np.abs(x - mid), 2 * edge)
    # lungs: both superimposed, between sternum and spine, under a rounded apex, over two domes
    dome = 0.5 * (anatomy.dome_y[0] + anatomy.dome_y[1]) - 0.1 + float(rng.normal(0, 0.03))
    u = (x + 0.25) / 0.6
    dia = dome + 0.1 * u * u + 0.22 * np.clip((x - 0.15) / 0.35, 0, 1) ** 2
    if "effusion" in names:  # fluid fills the posterior sulcus with a meniscus
        dia = np.minimum(dia, dome + 0.12 - 0.12 * np.clip((x - 0.1) / 0.4, 0, 1) ** 2)
    apex = anatomy.apex_y + 0.4 * ((x - 0.02) / 0.6) ** 2
    d_front = x - (-0.66 + 0.12 * np.clip((anatomy.apex_y + 0.3 - y) * 2, 0, 1))
    d_back = 0.52 - x
    lung = np.minimum(np.minimum(d_front, d_back), np.minimum((y - apex) * 0.7, (dia - y) * 0.8))
    # heart: anterior and inferior, resting on the diaphragm
    hr = 0.24 * (1.25 if "cardiomegaly" in names else 1.0)
    hx, hy = -0.3, dome - 0.1
    d_heart = (np.sqrt(((x - hx) / (1.1 * hr)) ** 2 + ((y - hy) / hr) ** 2) - 1.0) * hr
    lung = np.minimum(lung, d_heart)
    air = np.sqrt(np.clip(lung / 0.2, 0, 1)) * ramp(lung, edge)
    # spine: vertebral bodies with discs and posterior elements; sternum; tracheal air column
    sx = 0.65 + 0.04 * (y + 0.2) ** 2
    ph = (y + 1.0) / 0.11
    f = ph - np.floor(ph)
    body = ramp(0.09 - np.abs(x - sx), edge) * (1 - 0.7 * np.exp(-(((f - 0.92) / 0.04) ** 2)))
    cortex = np.exp(-(((np.abs(x - sx) - 0.085) / 0.01) ** 2))
    posterior = ramp(0.05 - np.abs(x - sx - 0.16), edge) * (f < 0.6)
    sternum = (
        ramp(0.03 - np.abs(x + 0.72), edge)
        * np.clip((y - anatomy.apex_y - 0.05) * 10, 0, 1)
        * np.clip((dome - y) * 10, 0, 1)
    )
    tx = -0.02 + 0.12 * (y + 1.0)
    trachea = ramp(0.035 - np.abs(x - tx), edge) * np.clip((anatomy.hilum_y - 0.1 - y) * 10, 0, 1)
    bone = 0.1 * body + 0.04 * cortex + 0.04 * posterior + 0.07 * sternum
    texture = 0.03 * smooth_noise(rng, rows, cols, max(rows / 60.0, 1.5)) * (air > 0.1)
    att = 0.8 * soft - 0.5 * air - 0.12 * trachea + bone + texture
    gain = float(rng.uniform(0.9, 1.1))
    img = (1.0 - np.exp(-1.6 * gain * att)) / (1.0 - np.exp(-1.6 * 1.05))
    img = np.clip(img, 0.0, 1.0) ** float(rng.uniform(1.0, 1.4))
    img += float(rng.uniform(0.006, 0.02)) * (0.5 + 0.7 * img) * rng.standard_normal((rows, cols), dtype=np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, {"findings": names, "view": "LL", "sex": anatomy.sex, "age": anatomy.age}
