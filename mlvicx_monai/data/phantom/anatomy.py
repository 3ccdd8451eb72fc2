"""Normal chest anatomy of a frontal (PA/AP) radiograph, as vectorised attenuation fields.

An :class:`Anatomy` holds one patient's constant body shape (thorax size, heart, diaphragm, ribs,
vessel tree, sex). A :class:`Thorax` resolves it for one exposure (inspiration depth, AP/PA view, heart
size after findings) into the shapes that :func:`render_thorax` rasterises on a :class:`~.raster.Frame`.

Attenuation is in arbitrary "bone-bright" units: soft tissue through the full body depth is about
0.7, aerated lung removes up to about 0.5, bones add 0.05-0.2. The display mapping lives in
:mod:`.render`. Lung sides are indexed 0 = the patient's right lung (image left, ``x < 0``) and
1 = the patient's left lung (image right, ``x > 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .raster import Frame, ramp

__all__ = ["SIDES", "Anatomy", "Thorax", "ThoraxFields", "render_thorax", "sample_anatomy"]

SIDES = (0, 1)
_SIGN = (-1.0, 1.0)


@dataclass(frozen=True)
class Anatomy:
    """One patient's body shape (constant across follow-up images). Units: normalised patient coords."""

    sex: str = "M"
    age: int = 50
    half_width: float = 0.78  # inner rib-cage half width at its widest (thoracic width / 2)
    chest_wall: float = 0.11  # soft tissue + ribs lateral to the lungs
    apex_y: float = -0.72
    dome_y: tuple[float, float] = (0.36, 0.41)  # diaphragm dome height, right and left
    cp_drop: float = 0.14  # costophrenic recess depth below the dome
    dome_peak: float = 0.40  # lateral position of the dome top, fraction of half_width
    ctr: float = 0.43  # cardiothoracic ratio
    heart_angle: float = 32.0  # degrees, long axis tilted down to the image right
    heart_aspect: float = 0.72  # short / long axis
    heart_shift: float = 0.0  # extra horizontal shift of the heart
    mediastinum: float = 0.085  # upper mediastinum half width
    aortic_knob: float = 0.045
    spine_period: float = 0.1
    rib_start: float = -0.86  # where the first posterior rib meets the spine
    rib_period: float = 0.085  # posterior rib spacing at the top
    rib_growth: float = 0.0035  # spacing increase per rib
    rib_width: float = 0.42  # rib thickness as a fraction of the spacing
    clavicle_y: float = -0.74
    clavicle_tilt: float = 0.07
    breast: float = 0.0  # 0 (none) .. 1 (large)
    soft: float = 1.0  # soft-tissue density (habitus)
    lucency: float = 1.0  # lung air factor
    hilum_y: float = -0.06
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if self.sex not in ("M", "F"):
            raise ValueError(f"sex must be 'M' or 'F', got {self.sex!r}")
        if not 0.5 <= self.half_width <= 0.95:
            raise ValueError(f"half_width must be in [0.5, 0.95], got {self.half_width}")
        if not 0.25 <= self.ctr <= 0.8:
            raise ValueError(f"cardiothoracic ratio must be in [0.25, 0.8], got {self.ctr}")


def sample_anatomy(rng: np.random.Generator, sex: str | None = None, age: int | None = None) -> Anatomy:
    """Draw a plausible adult patient (normal heart size, CTR 0.38-0.47)."""
    sex = sex or ("F" if rng.random() < 0.45 else "M")
    age = int(age if age is not None else np.clip(rng.normal(52, 17), 18, 92))
    hw = float(rng.uniform(0.72, 0.82) * (0.97 if sex == "F" else 1.0))
    dome_r = float(rng.uniform(0.31, 0.41))
    return Anatomy(
        sex=sex,
        age=age,
        half_width=hw,
        chest_wall=float(rng.uniform(0.08, 0.14)),
        apex_y=float(rng.uniform(-0.78, -0.68)),
        dome_y=(dome_r, dome_r + float(rng.uniform(0.02, 0.07))),
        cp_drop=float(rng.uniform(0.11, 0.17)),
        dome_peak=float(rng.uniform(0.36, 0.48)),
        ctr=float(rng.uniform(0.38, 0.47)),
        heart_angle=float(rng.uniform(25, 40)),
        heart_aspect=float(rng.uniform(0.66, 0.8)),
        heart_shift=float(rng.normal(0, 0.015)),
        mediastinum=float(rng.uniform(0.075, 0.1)),
        aortic_knob=float(rng.uniform(0.03, 0.055) * (1.2 if age > 65 else 1.0)),
        spine_period=float(rng.uniform(0.095, 0.11)),
        rib_start=float(rng.uniform(-0.9, -0.82)),
        rib_period=float(rng.uniform(0.078, 0.092)),
        rib_growth=float(rng.uniform(0.002, 0.005)),
        rib_width=float(rng.uniform(0.36, 0.46)),
        clavicle_y=float(rng.uniform(-0.8, -0.7)),
        clavicle_tilt=float(rng.uniform(0.03, 0.1)),
        breast=float(rng.uniform(0.3, 1.0)) if sex == "F" else 0.0,
        soft=float(rng.uniform(0.9, 1.12)),
        lucency=float(rng.uniform(0.9, 1.08)),
        hilum_y=float(rng.uniform(-0.1, -0.02)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


@dataclass
class Thorax:
    """An :class:`Anatomy` resolved for one exposure; findings edit these numbers before rasterising.

    Args:
        anatomy: the patient.
        view: "PA" or "AP" (AP: magnified heart, higher horizontal clavicles, scapulae over the lungs).
        inspiration: shift of both diaphragm domes (+ = deeper breath, lower domes).
    """

    anatomy: Anatomy
    view: str = "PA"
    inspiration: float = 0.0
    dome_y: list[float] = field(default_factory=list)
    cp_drop: list[float] = field(default_factory=list)
    dome_curv: list[float] = field(default_factory=list)  # 1 = normal dome, < 1 flattened
    ctr: float = 0.0
    lucency: list[float] = field(default_factory=list)
    marking_gain: float = 1.0  # lung vessel markings (emphysema: fewer)
    knob_extra: float = 0.0  # aortic enlargement
    arm_gap: float = 0.05  # air gap between chest wall and arm (>= 1: arms out of the field)
    target_ctr: float | None = None  # set by findings; None keeps the patient's own ratio
    shoulder: float = 0.15  # how far the shoulders stand out beyond the chest wall (fraction)
    mediastinal_shift: float = 0.0

    def __post_init__(self) -> None:
        if self.view not in ("PA", "AP"):
            raise ValueError(f"view must be 'PA' or 'AP', got {self.view!r}")
        a = self.anatomy
        if not self.dome_y:
            self.dome_y = [a.dome_y[0] + self.inspiration, a.dome_y[1] + self.inspiration]
        if not self.cp_drop:
            self.cp_drop = [a.cp_drop, a.cp_drop]
        if not self.dome_curv:
            self.dome_curv = [1.0, 1.0]
        if not self.ctr:
            self.ctr = a.ctr
        if not self.lucency:
            self.lucency = [a.lucency, a.lucency]

    # ---- resolved shapes (patient coordinates) -------------------------------------------------
    @property
    def half_width(self) -> float:
        return self.anatomy.half_width

    def heart_ellipse(self, ctr: float | None = None) -> tuple[float, float, float, float, float]:
        """``(cx, cy, a, b, angle_rad)`` of the cardiac ellipse for a target cardiothoracic ratio."""
        a = self.anatomy
        ctr = self.ctr if ctr is None else ctr
        phi = np.deg2rad(a.heart_angle)
        hw = ctr * a.half_width  # half of the horizontal cardiac width
        rho = a.heart_aspect
        major = hw / np.sqrt(np.cos(phi) ** 2 + rho**2 * np.sin(phi) ** 2)
        minor = rho * major
        vh = np.sqrt(major**2 * np.sin(phi) ** 2 + minor**2 * np.cos(phi) ** 2)
        dome = 0.5 * (self.dome_y[0] + self.dome_y[1])
        cx = hw / 3.0 + a.heart_shift + self.mediastinal_shift
        cy = dome + 0.06 - 0.8 * vh
        return float(cx), float(cy), float(major), float(minor), float(phi)

    def diaphragm(self, side: int, q: np.ndarray) -> np.ndarray:
        """Height of the hemidiaphragm at lateral coordinate ``q`` (distance from midline)."""
        W = self.half_width
        peak = self.anatomy.dome_peak * W
        drop = self.cp_drop[side]
        curv = self.dome_curv[side]
        lat = np.maximum((q - peak) * (1.0 / (W - peak)), 0.0)
        med = np.maximum((peak - q) * (1.0 / peak), 0.0)
        lat2 = lat * lat
        return (
            self.dome_y[side]
            + drop * (curv * (0.45 * lat2 + 0.55 * lat2 * lat2) + (1 - curv) * lat)
            + (0.5 * drop * curv) * med * med
        )

    def lateral_wall(self, side: int, y: np.ndarray) -> np.ndarray:
        """Inner rib-cage boundary ``q_lat(y)``: narrow at the apex, widest just above the domes."""
        W = self.half_width
        top = self.anatomy.apex_y
        widest = self.dome_y[side] - 0.05
        t = np.clip((widest - y) * (1.0 / (widest - top)), 0.0, 1.0)
        return W * (1.0 - 0.3 * t * t)

    def apex(self, side: int, q: np.ndarray) -> np.ndarray:
        """Upper lung boundary: a parabolic dome centred at 40 % of the half width."""
        W = self.half_width
        u = (q - 0.45 * W) * (1.0 / W)
        return self.anatomy.apex_y + 2.2 * u * u

    def knob_y(self) -> float:
        return self.anatomy.apex_y + 0.42

    def mediastinum_distance(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed distances ``(d_mediastinum, d_heart)`` (> 0 outside) of the central opaque column."""
        a = self.anatomy
        cx, cy, A, B, phi = self.heart_ellipse()
        d_heart = (np.sqrt(_ellipse_level(x, y, cx, cy, A, B, phi)) - 1.0) * B
        knob_y = self.knob_y()
        kw = 0.07 + self.knob_extra
        knob = (a.aortic_knob + self.knob_extra) * np.exp(-(((y - knob_y) * (1.0 / kw)) ** 2))
        xm = x - self.mediastinal_shift * np.clip((y - a.apex_y) * 2, 0, 1)
        m_half = a.mediastinum + 0.03 * np.clip((y - knob_y) * 3, 0, 1) + (xm > 0) * knob
        d_upper = np.abs(xm) - m_half
        return _smin(d_upper, d_heart, 0.08), d_heart

    def cavity_distances(self, side: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signed distances (> 0 inside) of one thoracic cavity to its apex, lateral wall and diaphragm."""
        q = _SIGN[side] * x
        d_top = (y - self.apex(side, q)) * 0.6
        d_lat = self.lateral_wall(side, y) - q
        d_dia = (self.diaphragm(side, q) - y) * 0.85
        return d_top, d_lat, d_dia

    def lung_distance(self, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (> 0 inside) of the aerated lung of ``side``."""
        d_top, d_lat, d_dia = self.cavity_distances(side, x, y)
        q = _SIGN[side] * np.asarray(x)
        cav = np.where(q > -0.01, np.minimum(np.minimum(d_top, d_lat), d_dia), -1.0)
        return np.minimum(cav, self.mediastinum_distance(x, y)[0])

    def sample_lung_point(
        self, rng: np.random.Generator, side: int, margin: float = 0.0, zone: str = "any"
    ) -> tuple[float, float]:
        """A random point at least ``margin`` inside the lung of ``side``; ``zone``: any/upper/lower/peripheral."""
        if zone not in ("any", "upper", "lower", "peripheral", "central"):
            raise ValueError(f"unknown lung zone {zone!r}")
        a = self.anatomy
        W = self.half_width
        top, bottom = a.apex_y, self.dome_y[side] + self.cp_drop[side]
        mid = a.hilum_y
        for attempt in range(400):
            m = margin * (0.5 if attempt > 200 else 1.0)
            q = float(rng.uniform(0.05, W))
            y = float(rng.uniform(top, bottom))
            if zone == "upper" and y > mid:
                continue
            if zone == "lower" and y < mid:
                continue
            if zone == "peripheral" and q < 0.6 * self.lateral_wall(side, np.float32(y)):
                continue
            if zone == "central" and q > 0.55 * W:
                continue
            x = _SIGN[side] * q
            if float(self.lung_distance(side, np.float32(x), np.float32(y))) > m:
                return x, y
        # fall back to the middle of the lung
        return _SIGN[side] * 0.5 * W, mid + 0.1

    def heart_width_ratio(self, ctr: float | None = None) -> float:
        """Cardiothoracic ratio of the rendered silhouette (heart above the diaphragm), on a fine grid."""
        cx, cy, A, B, phi = self.heart_ellipse(ctr)
        span = max(A, B) * 1.05
        n = 160
        xs = np.linspace(cx - span, cx + span, n, dtype=np.float32)
        ys = np.linspace(cy - span, cy + span, n, dtype=np.float32)
        X, Y = xs[None, :], ys[:, None]
        inside = _ellipse_level(X, Y, cx, cy, A, B, phi) < 1.0
        q = np.abs(xs)
        dia = np.where(xs > 0, self.diaphragm(1, q), self.diaphragm(0, q))[None, :]
        inside &= Y < dia
        cols = np.flatnonzero(inside.any(axis=0))
        if cols.size == 0:
            return 0.0
        width = float(xs[cols[-1]] - xs[cols[0]]) + float(xs[1] - xs[0])
        return width / (2 * self.half_width)

    def fit_ctr(self, target: float) -> None:
        """Set the heart size so that the silhouette measured above the diaphragm has ratio ``target``."""
        if not 0.25 <= target <= 0.8:
            raise ValueError(f"cardiothoracic ratio must be in [0.25, 0.8], got {target}")
        lo, hi = target, min(target * 1.6, 0.95)
        for _ in range(12):
            mid = 0.5 * (lo + hi)
            if self.heart_width_ratio(mid) < target:
                lo = mid
            else:
                hi = mid
        self.ctr = 0.5 * (lo + hi)


def _ellipse_level(x, y, cx: float, cy: float, a: float, b: float, phi: float):
    c, s = float(np.cos(phi)), float(np.sin(phi))
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / a
    v = (-s * dx + c * dy) / b
    return u * u + v * v


@dataclass
class ThoraxFields:
    """Rasterised anatomy of one image (all arrays ``(rows, cols)`` float32 unless noted)."""

    frame: Frame
    thorax: Thorax
    soft: np.ndarray  # soft-tissue path (0 outside the body)
    bone: np.ndarray  # bone attenuation
    air: np.ndarray  # aerated lung path (0..1); findings scale it
    vessels: np.ndarray  # lung markings (0..1)
    density: np.ndarray  # extra density added by findings (starts at 0)
    cavity: list[np.ndarray]  # per side: signed distance inside the thoracic cavity (> 0 inside)
    lung: list[np.ndarray]  # per side: signed distance inside the aerated lung (> 0 inside)
    heart: np.ndarray  # bool, cardiac silhouette above the diaphragm
    mediastinum: np.ndarray  # bool, heart and mediastinum (the central opaque column)
    below_diaphragm: np.ndarray  # bool

    def lung_mask(self, side: int | None = None) -> np.ndarray:
        """Boolean mask of the aerated lung of one side (or both)."""
        if side is None:
            return (self.lung[0] > 0) | (self.lung[1] > 0)
        return self.lung[side] > 0

    def side_q(self, side: int) -> np.ndarray:
        """Lateral coordinate (distance from the midline towards the side's wall)."""
        return _SIGN[side] * self.frame.x


def _rib_field(
    q: np.ndarray, y: np.ndarray, start: float, p0: float, growth: float, width: float, n: int
) -> np.ndarray:
    """Periodic band pattern of ``n`` ribs whose centre lines are ``y = start + spacing(k)``.

    The band index k is recovered in closed form from the quadratic rib spacing, so all ribs of a
    side cost a handful of array operations.
    """
    w = y - start
    disc = p0 * p0 + 4.0 * growth * np.maximum(w, 0.0)
    k = (np.sqrt(disc) - p0) * (0.5 / growth) if growth > 0 else w / p0
    frac = k - np.floor(k)
    valid = (w > 0) & (k < n)
    # tube profile with cortical margins
    u = np.abs(frac - 0.5 * width) * (2.0 / width)
    tube = np.sqrt(np.maximum(1.0 - u * u, 0.0))
    c = np.maximum(1.0 - ((u - 0.85) * 6.0) ** 2, 0.0)  # cortical margin (cheap bump)
    return (0.75 * tube + 0.3 * c * c) * valid


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth minimum (rounded union of two signed-distance shapes) with blend radius ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def render_thorax(frame: Frame, thorax: Thorax) -> ThoraxFields:
    """Rasterise the normal anatomy of ``thorax`` on ``frame`` (deterministic: textures are seeded by the patient)."""
    a = thorax.anatomy
    px = frame.pixel
    edge = 1.2 * px
    W = thorax.half_width
    rows, cols = frame.rows, frame.cols
    low = max(thorax.dome_y) + max(thorax.cp_drop) + 0.08

    # ---- body outline and soft tissue (whole image) ---------------------------------------------
    x, y = frame.x, frame.y
    body_w = W + a.chest_wall
    # shoulders: wider than the chest at the apices, sloping to the neck above and the axillae below
    y_sh, y_neck = a.apex_y - 0.02, a.apex_y - 0.3
    sh = np.clip((y - y_neck) * (1.0 / (y_sh - y_neck)), 0.0, 1.0)
    axilla = np.clip((y - y_sh) * (1.0 / 0.45), 0.0, 1.0)
    neck_w = 0.24
    top_w = body_w * (1.0 + thorax.shoulder * (1.0 - axilla * axilla * (3 - 2 * axilla)))
    bw = neck_w + (top_w - neck_w) * sh * (2.0 - sh) + 0.03 * np.maximum(y - 0.5, 0)
    r = x / bw
    soft = np.sqrt(np.maximum(1.0 - r * r, 0.0)) * a.soft
    soft *= ramp(bw - np.abs(x), 2 * edge)
    # neck and shoulder-girdle muscles over the apices
    soft *= 1.0 + 0.22 * np.clip((a.apex_y + 0.25 - y) * 3.0, 0.0, 1.0)
    soft = soft.astype(np.float32)

    # ---- mediastinum and heart (central window) -------------------------------------------------
    c_win = frame.window(-W - 0.1, a.apex_y - 0.35, W + 0.1, low)
    if c_win is None:
        raise ValueError("the thorax lies outside the image; check the pose")
    csl, xc, yc = c_win
    d_med, d_heart = thorax.mediastinum_distance(xc, yc)
    d_med = d_med.astype(np.float32)

    # ---- thoracic cavities and lungs, per side --------------------------------------------------
    full = (rows, cols)
    cavity = [np.full(full, -1.0, dtype=np.float32), np.full(full, -1.0, dtype=np.float32)]
    lung = [np.full(full, -1.0, dtype=np.float32), np.full(full, -1.0, dtype=np.float32)]
    below = np.zeros(full, dtype=bool)
    air = np.zeros(full, dtype=np.float32)
    c_off = csl[1].start
    for side in SIDES:
        sg = _SIGN[side]
        # restrict to the columns of this side's half of the central window
        s_box = (
            frame.window(-W - 0.15, a.apex_y - 0.35, 0.02, low)
            if side == 0
            else frame.window(-0.02, a.apex_y - 0.35, W + 0.15, low)
        )
        if s_box is None:
            continue
        c0 = max(s_box[0][1].start, csl[1].start) - c_off
        c1 = min(s_box[0][1].stop, csl[1].stop) - c_off
        sub = (slice(None), slice(c0, c1))
        full_sl = (csl[0], slice(c0 + c_off, c1 + c_off))
        xs, ys = xc[sub], yc[sub]
        q = sg * xs
        d_top, d_lat, d_dia = thorax.cavity_distances(side, xs, ys)
        cav = np.minimum(np.minimum(d_top, d_lat), d_dia)
        cav = np.where(q > -0.01, cav, -1.0).astype(np.float32)
        lg = np.minimum(cav, d_med[sub])
        cavity[side][full_sl] = cav
        lung[side][full_sl] = lg
        below[full_sl] |= (d_dia < 0) & (q >= 0)
        depth = np.minimum(np.maximum(lg, 0.0) * (1.0 / 0.16), 1.0)
        air[full_sl] += np.sqrt(depth) * ramp(lg, edge) * thorax.lucency[side]
    heart = np.zeros(full, dtype=bool)
    heart[csl] = d_heart < 0
    heart &= ~below
    mediastinum = np.zeros(full, dtype=bool)
    mediastinum[csl] = d_med < 0
    mediastinum &= ~below & (frame.y > a.apex_y - 0.1)
    soft[csl] += 0.04 * ramp(-d_heart, 3 * edge)  # the heart is a little denser

    # ---- bones ----------------------------------------------------------------------------------
    bone = np.zeros(full, dtype=np.float32)
    _add_spine(bone, frame, thorax)
    for side in SIDES:
        _add_ribs(bone, frame, thorax, side)
        _add_clavicle(bone, frame, thorax, side)
        _add_shoulder(bone, soft, frame, thorax, side)
    bone *= soft > 0.05

    # ---- lung markings, hila, trachea, stomach, breasts -----------------------------------------
    vessels = _vessel_field(frame, thorax)
    density = np.zeros(full, dtype=np.float32)
    _add_hila(density, frame, thorax)
    _add_trachea(air, frame, thorax)
    _add_stomach(air, frame, thorax)
    if a.breast > 0:
        _add_breasts(soft, frame, thorax)
    return ThoraxFields(
        frame=frame,
        thorax=thorax,
        soft=soft,
        bone=bone,
        air=air,
        vessels=vessels,
        density=density,
        cavity=cavity,
        lung=lung,
        heart=heart,
        mediastinum=mediastinum,
        below_diaphragm=below,
    )


# ---- bones ----------------------------------------------------------------------------------------
def _add_spine(bone: np.ndarray, frame: Frame, thorax: Thorax) -> None:
    a = thorax.anatomy
    win = frame.window(-0.1, -1.6, 0.1, 1.6)
    if win is None:
        return
    sl, x, y = win
    hw = 0.065
    r = x * (1.0 / hw)
    body = np.sqrt(np.maximum(1 - r * r, 0))
    ph = (y - a.rib_start) * (1.0 / a.spine_period)
    f = ph - np.floor(ph)
    disc = np.exp(-(((f - 0.93) * 20.0) ** 2))
    ped = np.exp(-(((np.abs(x) - 0.048) * 50.0) ** 2) - ((f - 0.35) * 5.0) ** 2)
    fade = np.clip((y - a.apex_y + 0.5) * 2, 0.4, 1.0)
    bone[sl] += (0.09 * body * (1.0 - 0.45 * disc) + 0.04 * ped) * fade


def _add_ribs(bone: np.ndarray, frame: Frame, thorax: Thorax, side: int) -> None:
    a = thorax.anatomy
    W = thorax.half_width
    sg = _SIGN[side]
    xa, xb = (-W - 0.2, 0.0) if side == 0 else (0.0, W + 0.2)
    win = frame.window(xa, a.rib_start - 0.15, xb, max(thorax.dome_y) + 0.3)
    if win is None:
        return
    sl, x, y = win
    q = sg * x
    t = np.clip(q * (1.0 / W), 0.0, 1.3)
    inside = np.clip((thorax.lateral_wall(side, y) + 0.03 - q) * 40.0, 0.0, 1.0) * np.clip((q - 0.04) * 30, 0, 1)
    # posterior ribs: up and out from the spine, then curving down to the lateral wall
    t2 = t * t
    post_curve = -0.07 * t + 0.36 * t2 * (0.4 + 0.6 * t)
    post = _rib_field(q, y - post_curve, a.rib_start, a.rib_period, a.rib_growth, a.rib_width, 10)
    post *= np.clip((1.25 - t) * 2.0, 0.3, 1.0) * np.clip((q - 0.07) * 8.0, 0.35, 1.0)  # faint over the spine
    # anterior ribs: from the lateral wall down and in towards the sternum, fainter, end at cartilage
    ant_start = a.rib_start + 0.2 + (0.06 if thorax.view == "AP" else 0.0)
    u = np.clip(1.0 - t, 0.0, 1.0)
    ant_curve = 0.34 * u * u * (0.5 + 0.5 * u) - 0.1 * t
    ant = _rib_field(q, y - ant_curve, ant_start, a.rib_period * 1.3, a.rib_growth, a.rib_width * 0.85, 7)
    ant *= np.clip((t - 0.3) * 3.0, 0.0, 1.0)
    bone[sl] += (0.085 * post + 0.04 * ant) * inside


def _add_clavicle(bone: np.ndarray, frame: Frame, thorax: Thorax, side: int) -> None:
    a = thorax.anatomy
    sg = _SIGN[side]
    ap = thorax.view == "AP"
    q0, q1 = 0.05, 0.5 + 0.15 * thorax.half_width
    y0 = a.clavicle_y + 0.1 + (-0.04 if ap else 0.0)
    rise = 0.08 + a.clavicle_tilt * (0.4 if ap else 1.0)
    xa, xb = sorted((sg * (q0 - 0.05), sg * (q1 + 0.05)))
    win = frame.window(xa, y0 - rise - 0.1, xb, y0 + 0.1)
    if win is None:
        return
    sl, x, y = win
    q = sg * x
    s = (q - q0) * (1.0 / (q1 - q0))
    sc = np.clip(s, 0, 1)
    # gentle S: medial end low, rising laterally, a slight upward bow at the acromial end
    centre = y0 - rise * sc * sc * (3 - 2 * sc) + 0.02 * sc * (1 - sc) * (1 - 2 * sc)
    th = 0.026 + 0.012 * np.exp(-((s * 8.0) ** 2)) + 0.008 * np.exp(-(((s - 1) * 8.0) ** 2))
    v = np.abs(y - centre) / th
    prof = np.sqrt(np.maximum(1 - v * v, 0)) + 0.35 * np.exp(-(((v - 0.88) * 8.0) ** 2)) * (v < 1.1)
    along = np.clip(s * 12, 0, 1) * np.clip((1 - s) * 12, 0, 1)
    bone[sl] += 0.12 * prof * along


def _add_shoulder(bone: np.ndarray, soft: np.ndarray, frame: Frame, thorax: Thorax, side: int) -> None:
    """Shoulder, arm and humerus at the upper outer corner, and the scapula's border over the lung."""
    a = thorax.anatomy
    sg = _SIGN[side]
    W = thorax.half_width
    body_w = W + a.chest_wall
    arm_q = body_w + thorax.arm_gap + 0.1
    hx, hy, hr = body_w + 0.06, a.apex_y - 0.02, 0.1
    xa, xb = sorted((sg * (W - 0.3), sg * (arm_q + 0.2)))
    win = frame.window(xa, hy - 0.3, xb, 1.6 if thorax.arm_gap < 1.0 else hy + 0.65)
    if win is None:
        return
    sl, x, y = win
    q = sg * x
    if thorax.arm_gap < 1.0:
        # deltoid cap joining torso and arm, then the arm hanging beside the chest
        cap = 1.0 - ((q - hx) * (1.0 / 0.19)) ** 2 - ((y - hy - 0.02) * (1.0 / 0.15)) ** 2
        u = (q - arm_q) * (1.0 / 0.12)
        arm = (1.0 - u * u) * np.clip((y - hy) * 6, 0, 1)
        soft[sl] = np.maximum(soft[sl], 0.8 * np.sqrt(np.maximum(np.maximum(cap, arm), 0)))
        d2 = ((q - hx) ** 2 + (y - hy) ** 2) * (1.0 / (hr * hr))
        head = np.sqrt(np.maximum(1 - d2, 0))
        v = (q - hx - 0.05 - 0.12 * (y - hy)) * (1.0 / 0.05)
        v = np.minimum(v * v, 4.0)
        shaft = np.sqrt(np.maximum(1 - v, 0)) * np.clip((y - hy) * 10, 0, 1)
        bone[sl] += 0.12 * np.maximum(head, 0.85 * shaft) * (soft[sl] > 0.2)
    # scapula: a faint plate with a sharp medial border over the upper lateral lung
    border = W - (0.22 if thorax.view == "AP" else 0.04) + 0.2 * (y - hy)
    plate = (
        np.clip((q - border) * 30, 0, 1) * np.clip((hy + 0.6 - y) * 5, 0, 1) * np.clip((y - hy + 0.05) * 10, 0, 1)
    ) * np.clip((body_w - q) * 20, 0, 1)
    bone[sl] += 0.035 * plate


# ---- soft-tissue details --------------------------------------------------------------------------
def _vessel_tables(thorax: Thorax) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Angular profiles and lengths of the vessel tree (per side, per generation), seeded by the patient."""
    rng = np.random.default_rng(thorax.anatomy.texture_seed)
    n_bins = _VESSEL_BINS
    idx = np.arange(n_bins, dtype=np.float32)[None, :]
    tables = []
    for _side in SIDES:
        per = []
        for gen, (count, w_lo, w_hi) in enumerate(((16, 14.0, 28.0), (40, 6.0, 12.0), (90, 3.0, 6.0))):
            c = rng.uniform(0, n_bins, count).astype(np.float32)[:, None]
            w = rng.uniform(w_lo, w_hi, count).astype(np.float32)[:, None]
            amp = rng.uniform(0.5, 1.0, count).astype(np.float32)[:, None]
            r0, r1 = _VESSEL_GENERATIONS[gen][:2]
            length = rng.uniform(r0 + 0.15, r1 + 0.1, count).astype(np.float32)
            dist = np.abs(idx - c)
            dist = np.minimum(dist, n_bins - dist)
            contrib = amp * np.exp(-((dist / w) ** 2))
            per.append((contrib.max(axis=0), length[contrib.argmax(axis=0)]))
        tables.append(per)
    return tables


_VESSEL_BINS = 2048
_VESSEL_GENERATIONS = ((0.0, 0.5, 1.0), (0.1, 0.8, 0.75), (0.28, 1.0, 0.5))  # (r start, r end, gain)


def _vessel_field(frame: Frame, thorax: Thorax) -> np.ndarray:
    """Branching lung markings radiating from the hila, tapering outwards (fixed per patient)."""
    a = thorax.anatomy
    out = np.zeros((frame.rows, frame.cols), dtype=np.float32)
    W = thorax.half_width
    tables = _vessel_tables(thorax)
    phase_rng = np.random.default_rng(a.texture_seed + 1)
    scale = _VESSEL_BINS / (2 * np.pi)
    for side in SIDES:
        sg = _SIGN[side]
        hx, hy = sg * 0.2 * W / 0.78, a.hilum_y - 0.02 * side
        xa, xb = (-W - 0.05, 0.0) if side == 0 else (0.0, W + 0.05)
        win = frame.window(xa, a.apex_y - 0.05, xb, max(thorax.dome_y) + thorax.cp_drop[side] + 0.05)
        if win is None:
            continue
        sl, x, y = win
        dx, dy = x - hx, y - hy
        rr = np.sqrt(dx * dx + dy * dy)
        th = np.arctan2(dy, dx)
        total = np.zeros_like(rr)
        for gen, (r0, r1, gain) in enumerate(_VESSEL_GENERATIONS):
            wig = (0.1 / (1 + gen)) * np.sin(rr * (9.0 + 4 * gen) + float(phase_rng.uniform(0, 6.3)))
            pos = ((th + wig) * scale).astype(np.int32) & (_VESSEL_BINS - 1)
            table, length = tables[side][gen]
            val = table[pos]
            thr = np.minimum(0.15 + 1.1 * rr, 0.85)  # vessels get thinner away from the hilum
            val = np.maximum(val - thr, 0) / (1.0 - thr)
            val *= np.clip((length[pos] - rr) * 25.0, 0.0, 1.0)  # each branch ends somewhere
            fade = np.clip((rr - r0) * 8, 0, 1) * np.clip((r1 - rr) * 3.5, 0, 1)
            total += gain * val * fade
        total *= np.clip(1.25 - rr, 0.0, 1.0) * thorax.marking_gain
        out[sl] = np.maximum(out[sl], total)
    return out


def _add_hila(density: np.ndarray, frame: Frame, thorax: Thorax) -> None:
    a = thorax.anatomy
    W = thorax.half_width
    for side in SIDES:
        sg = _SIGN[side]
        hx, hy = sg * 0.2 * W / 0.78, a.hilum_y - 0.02 * side
        win = frame.window(hx - 0.15, hy - 0.18, hx + 0.15, hy + 0.18)
        if win is None:
            continue
        sl, x, y = win
        d = ((x - hx) / 0.075) ** 2 + ((y - hy) / 0.12) ** 2
        density[sl] += 0.07 * np.exp(-d)


def _add_trachea(air: np.ndarray, frame: Frame, thorax: Thorax) -> None:
    a = thorax.anatomy
    carina = a.hilum_y - 0.12
    win = frame.window(-0.3, -1.6, 0.3, carina + 0.2)
    if win is None:
        return
    sl, x, y = win
    tx = thorax.mediastinal_shift * 0.5
    r = (x - tx) * (1.0 / 0.028)
    tube = np.sqrt(np.maximum(1 - r * r, 0)) * np.clip((carina - y) * 15, 0, 1)
    bronchi = np.zeros_like(tube)
    dy = y - carina
    for sg, (sa, ca) in ((-1.0, (0.6, 0.8)), (1.0, (0.75, 0.66))):
        # main bronchi leave the carina obliquely and fade into the hila
        dx = x - tx
        along = sg * dx * sa + dy * ca
        across = (-sg * dx * ca + dy * sa) * (1.0 / 0.02)
        bronchi = np.maximum(
            bronchi,
            np.sqrt(np.maximum(1 - across * across, 0))
            * np.clip(along * 30, 0, 1)
            * np.clip((0.13 - along) * 10, 0, 1),
        )
    air[sl] += 0.13 * np.maximum(tube, 0.8 * bronchi)


def _add_stomach(air: np.ndarray, frame: Frame, thorax: Thorax) -> None:
    cx, cy = 0.42 * thorax.half_width, thorax.dome_y[1] + 0.12
    win = frame.window(cx - 0.15, cy - 0.12, cx + 0.15, cy + 0.1)
    if win is None:
        return
    sl, x, y = win
    d = ((x - cx) / 0.12) ** 2 + ((y - cy) / 0.07) ** 2
    bubble = np.clip((1 - d) * 4, 0, 1) * (y < cy + 0.02)
    air[sl] += 0.25 * bubble


def _add_breasts(soft: np.ndarray, frame: Frame, thorax: Thorax) -> None:
    a = thorax.anatomy
    for side in SIDES:
        sg = _SIGN[side]
        cx, cy = sg * 0.55 * thorax.half_width, thorax.dome_y[side] - 0.02
        rx, ry = 0.38, 0.3 + 0.08 * a.breast
        win = frame.window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            continue
        sl, x, y = win
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        lower = np.clip((y - cy + 0.6 * ry) / ry, 0, 1)
        soft[sl] += 0.16 * a.breast * np.sqrt(np.clip(1 - d, 0, None)) * lower
