"""Render one synthetic frontal chest radiograph with exact ground truth.

:func:`render_cxr` draws the anatomy (:mod:`.anatomy`), the requested findings (:mod:`.findings`),
then the acquisition: patient pose, exposure and detector response (characteristic curve, gamma, CR
edge enhancement, quantum noise), collimator shutters and an occasional lead L/R marker. The image is
float32 in ``[0, 1]``, bone bright, shape ``(rows, cols)``. Heavy fields are computed on a working grid
of at most ``work_size`` pixels per side and upsampled; masks and boxes are taken from the very fields
the image was drawn from, at the output size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .anatomy import Anatomy, Thorax, render_thorax, sample_anatomy
from .findings import make_finding, validate_findings
from .raster import Frame, Pose, bbox_of_mask, smooth_noise

__all__ = ["Annotations", "Exposure", "Region", "parse_size", "render_cxr", "sample_exposure", "sample_pose"]


@dataclass(frozen=True)
class Exposure:
    """Acquisition and display parameters of one image."""

    gain: float = 1.0  # scales attenuation (beam quality / patient habitus)
    contrast: float = 1.6  # steepness of the characteristic curve
    gamma: float = 1.1
    offset: float = 0.0
    noise: float = 0.012  # quantum noise (fraction of full scale)
    mottle: float = 0.004  # correlated detector noise
    unsharp: float = 0.0  # CR edge enhancement strength
    collimation: tuple[float, float, float, float] | None = None  # margins (left, top, right, bottom), fractions
    collimation_angle: float = 0.0
    collimation_value: float = 0.95  # what shutters show: ~1 white (unexposed) or 0 black (masked)
    marker: str | None = None  # "L", "R" or None
    marker_pos: tuple[float, float] = (0.85, 0.08)  # centre, as fractions of (cols, rows)

    def __post_init__(self) -> None:
        if self.marker not in (None, "L", "R"):
            raise ValueError(f"marker must be None, 'L' or 'R', got {self.marker!r}")
        if self.noise < 0 or self.mottle < 0:
            raise ValueError("noise levels must be non-negative")
        if self.collimation is not None and (len(self.collimation) != 4 or max(self.collimation) >= 0.4):
            raise ValueError(f"collimation margins must be 4 fractions < 0.4, got {self.collimation}")


def sample_exposure(rng: np.random.Generator, view: str = "PA") -> Exposure:
    """Random exposure, processing, shutters and marker."""
    coll = None
    if rng.random() < 0.45:
        coll = tuple(float(v) if rng.random() < 0.7 else 0.0 for v in rng.uniform(0.01, 0.07, 4))
    marker = None
    pos = (0.85, 0.08)
    if rng.random() < 0.25:
        marker = "L" if rng.random() < 0.7 else "R"
        fx = float(rng.uniform(0.84, 0.95)) if marker == "L" else float(rng.uniform(0.05, 0.16))
        pos = (fx, float(rng.uniform(0.04, 0.1)))  # a top corner, clear of the lungs
    return Exposure(
        gain=float(rng.uniform(0.88, 1.12)),
        contrast=float(rng.uniform(1.2, 2.0)),
        gamma=float(rng.uniform(1.0, 1.5)),
        offset=float(rng.normal(0.0, 0.025)),
        noise=float(rng.uniform(0.006, 0.022) * (1.3 if view == "AP" else 1.0)),
        mottle=float(rng.uniform(0.002, 0.008)),
        unsharp=float(rng.uniform(0.2, 0.9)) if rng.random() < 0.5 else 0.0,
        collimation=coll,  # type: ignore[arg-type]
        collimation_angle=float(rng.normal(0, 0.8)),
        collimation_value=float(rng.uniform(0.85, 1.0)) if rng.random() < 0.75 else 0.0,
        marker=marker,
        marker_pos=pos,
    )


def sample_pose(rng: np.random.Generator, view: str = "PA") -> Pose:
    """Random patient position: small rotation, shift and magnification."""
    return Pose(
        rotation=float(rng.normal(0.0, 1.6)),
        shift_x=float(rng.normal(0.0, 0.025)),
        shift_y=float(rng.normal(0.02, 0.03)),
        scale=float(rng.uniform(0.86, 1.0) * (1.03 if view == "AP" else 1.0)),
    )


@dataclass
class Region:
    """A localised finding region at the output size: box ``(x_min, y_min, x_max, y_max)``, max exclusive."""

    finding: str
    bbox: tuple[int, int, int, int]
    mask: np.ndarray
    side: str | None = None


@dataclass
class Annotations:
    """Ground truth of one rendered image (pixel coordinates of the output image)."""

    findings: tuple[str, ...]
    regions: list[Region]
    ctr: float  # cardiothoracic ratio measured on the heart and thorax masks
    heart_mask: np.ndarray
    lung_mask: np.ndarray
    heart_width: int
    thorax_width: int
    view: str
    sex: str
    age: int
    pose: Pose
    exposure: Exposure

    def regions_of(self, finding: str) -> list[Region]:
        return [r for r in self.regions if r.finding == finding]

    def boxes(self, finding: str) -> list[tuple[int, int, int, int]]:
        return [r.bbox for r in self.regions_of(finding)]

    def masks(self, finding: str) -> list[np.ndarray]:
        return [r.mask for r in self.regions_of(finding)]

    def mask(self, finding: str) -> np.ndarray:
        """Union of the finding's region masks (all False when absent)."""
        out = np.zeros_like(self.lung_mask)
        for r in self.regions_of(finding):
            out |= r.mask
        return out


def parse_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as ``(rows, cols)``; an int means a square image."""
    if isinstance(size, (int, np.integer)):
        rows = cols = int(size)
    else:
        try:
            rows, cols = (int(v) for v in size)
        except (TypeError, ValueError):
            raise TypeError(f"size must be an int or a (rows, cols) pair, got {size!r}") from None
    if rows < 32 or cols < 32 or rows > 8192 or cols > 8192:
        raise ValueError(f"image size must be between 32 and 8192 pixels per side, got {rows}x{cols}")
    return rows, cols


def _resize(arr: np.ndarray, rows: int, cols: int, resample=Image.Resampling.BILINEAR) -> np.ndarray:
    if arr.shape == (rows, cols):
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    return np.array(img.resize((cols, rows), resample), dtype=np.float32)


def _resize_mask(mask: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Upsample a boolean mask consistently with the image (bilinear, threshold at one half).

    Only the mask's bounding box is resampled: the result equals resampling the whole mask.
    """
    if mask.shape == (rows, cols):
        return mask.copy()
    out = np.zeros((rows, cols), dtype=bool)
    box = bbox_of_mask(mask)
    if box is None:
        return out
    h, w = mask.shape
    sy, sx = h / rows, w / cols
    # output pixels whose bilinear footprint touches the box (1 source pixel margin)
    c0 = max(int(np.floor((box[0] - 1) / sx)), 0)
    c1 = min(int(np.ceil((box[2] + 1) / sx)) + 1, cols)
    r0 = max(int(np.floor((box[1] - 1) / sy)), 0)
    r1 = min(int(np.ceil((box[3] + 1) / sy)) + 1, rows)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    crop = img.resize((c1 - c0, r1 - r0), Image.Resampling.BILINEAR, box=(c0 * sx, r0 * sy, c1 * sx, r1 * sy))
    out[r0:r1, c0:c1] = np.asarray(crop) >= 128
    return out


def _blur(img: np.ndarray, factor: int) -> np.ndarray:
    """Cheap large-kernel low-pass: box downsampling then bilinear upsampling."""
    rows, cols = img.shape
    small = Image.fromarray(img).resize((max(cols // factor, 2), max(rows // factor, 2)), Image.Resampling.BOX)
    return np.asarray(small.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)


_GLYPHS = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


def _stamp_marker(img: np.ndarray, letter: str, pos: tuple[float, float]) -> None:
    """A lead letter: bright glyph in a faint square, about 4 % of the image height."""
    rows, cols = img.shape
    cell = max(round(rows * 0.045 / 7), 1)
    glyph = np.array([[c == "1" for c in line] for line in _GLYPHS[letter]], dtype=bool)
    big = np.kron(glyph, np.ones((cell, cell), dtype=bool))
    h, w = big.shape
    pad = cell
    r0 = int(np.clip(pos[1] * rows - h / 2, 0, rows - h - 2 * pad))
    c0 = int(np.clip(pos[0] * cols - w / 2, 0, cols - w - 2 * pad))
    box = img[r0 : r0 + h + 2 * pad, c0 : c0 + w + 2 * pad]
    box[:] = np.maximum(box * 0.7, 0.35)
    inner = box[pad : pad + h, pad : pad + w]
    inner[big] = 0.98


def _collimate(img: np.ndarray, exp: Exposure) -> None:
    rows, cols = img.shape
    left, top, right, bottom = exp.collimation  # type: ignore[misc]
    rr = np.arange(rows, dtype=np.float32)[:, None] / rows
    cc = np.arange(cols, dtype=np.float32)[None, :] / cols
    t = np.deg2rad(exp.collimation_angle)
    u = cc + float(np.sin(t)) * (rr - 0.5)
    v = rr - float(np.sin(t)) * (cc - 0.5)
    soft = 1.5 / min(rows, cols)
    inside = (
        np.clip((u - left) / soft, 0, 1)
        * np.clip((1 - right - u) / soft, 0, 1)
        * np.clip((v - top) / soft, 0, 1)
        * np.clip((1 - bottom - v) / soft, 0, 1)
    )
    img *= inside
    img += (1.0 - inside) * exp.collimation_value


def render_cxr(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    findings=(),
    *,
    anatomy: Anatomy | None = None,
    view: str = "PA",
    pose: Pose | None = None,
    exposure: Exposure | None = None,
    work_size: int = 512,
) -> tuple[np.ndarray, Annotations]:
    """Render a frontal chest radiograph.

    Args:
        rng: the only source of randomness (same generator state -> same image and truth).
        size: output size, an int (square) or ``(rows, cols)``.
        findings: names of findings to draw (see :data:`.findings.FINDING_NAMES`); each one is
            rendered, and only those are.
        anatomy: the patient (default: a new random one); reuse it for follow-up images.
        view: "PA" or "AP".
        pose, exposure: acquisition parameters (default: random).
        work_size: maximum side of the grid the anatomy is computed on (then upsampled).

    Returns:
        ``(image, annotations)``: float32 ``(rows, cols)`` in [0, 1], bone bright, and the truth.
    """
    rows, cols = parse_size(size)
    if not 64 <= work_size <= 4096:
        raise ValueError(f"work_size must be in [64, 4096], got {work_size}")
    names = validate_findings(findings)
    anatomy = anatomy if anatomy is not None else sample_anatomy(rng)
    pose = pose if pose is not None else sample_pose(rng, view)
    exposure = exposure if exposure is not None else sample_exposure(rng, view)
    thorax = Thorax(
        anatomy,
        view=view,
        inspiration=float(rng.normal(0.0, 0.035)),
        arm_gap=float(rng.uniform(0.02, 0.1)) if rng.random() < 0.6 else 5.0,
        shoulder=float(rng.uniform(0.08, 0.25)),
    )

    # findings: parameters, geometry changes, heart size, then positions on the final geometry
    objs = [make_finding(n) for n in names]
    for f in objs:
        f.sample(rng, thorax)
    for f in objs:
        f.adjust(thorax)
    thorax.fit_ctr(thorax.target_ctr if thorax.target_ctr is not None else anatomy.ctr)
    for f in objs:
        f.place(rng, thorax)

    scale = min(1.0, work_size / max(rows, cols))
    wr, wc = max(round(rows * scale), 32), max(round(cols * scale), 32)
    frame = Frame(wr, wc, pose)
    fields = render_thorax(frame, thorax)
    raw_regions = []
    for f in objs:
        raw_regions.extend(f.render(fields, rng))

    # attenuation -> detector -> display (on the working grid), then upsample and add detector noise
    lung_gate = np.clip(fields.air * 3.0, 0.0, 1.0)
    att = 0.72 * fields.soft - 0.52 * fields.air + fields.bone + 0.1 * fields.vessels * lung_gate + fields.density
    e = exposure
    k = e.contrast
    img = (1.0 - np.exp(-k * e.gain * att)) * (1.0 / (1.0 - np.exp(-k * 0.95)))
    img = np.clip(img + e.offset, 0.0, 1.0) ** e.gamma
    if e.unsharp > 0:
        img += e.unsharp * (img - _blur(img, max(wc // 20, 2)))
    img = _resize(img, rows, cols, Image.Resampling.BICUBIC)
    # quantum noise: uniform with unit variance (cheaper than Gaussian, indistinguishable once mixed)
    noise = rng.random((rows, cols), dtype=np.float32)
    noise -= 0.5
    img += (e.noise * 3.4641) * (0.5 + 0.7 * img) * noise
    img += e.mottle * smooth_noise(rng, rows, cols, max(min(rows, cols) / 150.0, 1.5), Image.Resampling.BILINEAR)
    np.clip(img, 0.0, 1.0, out=img)
    if e.collimation is not None:
        _collimate(img, _clear_of(e, (fields.cavity[0] > 0) | (fields.cavity[1] > 0)))
    if e.marker is not None:
        _stamp_marker(img, e.marker, e.marker_pos)

    # ground truth at the output size
    heart = _resize_mask(fields.heart, rows, cols)
    lung = _resize_mask(fields.lung_mask(), rows, cols)
    regions = []
    for rm in raw_regions:
        m = _resize_mask(rm.mask, rows, cols)
        box = bbox_of_mask(m)
        if box is None:
            continue
        regions.append(Region(rm.finding, box, m, rm.side))
    # cardiothoracic ratio on the working grid (widths reported in output pixels)
    to_out = cols / wc
    heart_w = round(_max_row_extent(fields.heart) * to_out)
    thorax_w = round(_max_row_extent((fields.cavity[0] > 0) | (fields.cavity[1] > 0)) * to_out)
    rendered = tuple(n for n in names if any(r.finding == n for r in regions) or not _needs_region(n))
    missing = set(names) - set(rendered)
    if missing:
        raise RuntimeError(f"findings {sorted(missing)} left no visible region at {rows}x{cols}; use a larger image")
    ann = Annotations(
        findings=names,
        regions=regions,
        ctr=heart_w / max(thorax_w, 1),
        heart_mask=heart,
        lung_mask=lung,
        heart_width=heart_w,
        thorax_width=thorax_w,
        view=view,
        sex=anatomy.sex,
        age=anatomy.age,
        pose=pose,
        exposure=exposure,
    )
    return img.astype(np.float32, copy=False), ann


def _clear_of(e: Exposure, thorax: np.ndarray) -> Exposure:
    """Narrow the shutters so they never hide the thoracic cavities (findings stay visible)."""
    box = bbox_of_mask(thorax)
    if box is None or e.collimation is None:
        return e
    rows, cols = thorax.shape
    left, top, right, bottom = e.collimation
    slack = 0.01 + abs(float(np.sin(np.deg2rad(e.collimation_angle))))
    left = min(left, max(box[0] / cols - slack, 0.0))
    top = min(top, max(box[1] / rows - slack, 0.0))
    right = min(right, max(1.0 - box[2] / cols - slack, 0.0))
    bottom = min(bottom, max(1.0 - box[3] / rows - slack, 0.0))
    return replace(e, collimation=(left, top, right, bottom))


def _needs_region(name: str) -> bool:
    return name not in ("emphysema",)


def _max_row_extent(mask: np.ndarray) -> int:
    """Largest horizontal extent (first to last set pixel) over all rows."""
    any_row = mask.any(axis=1)
    if not any_row.any():
        return 0
    m = mask[any_row]
    first = m.argmax(axis=1)
    last = m.shape[1] - 1 - m[:, ::-1].argmax(axis=1)
    return int((last - first + 1).max())
