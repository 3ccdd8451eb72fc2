"""Radiographic findings: what each looks like, where it goes, and its exact ground truth.

Every finding is a small class with three steps, called in this order by :func:`.render.render_cxr`:

1. ``sample(rng, thorax)`` draws its parameters (side, size, severity) for one image;
2. ``adjust(thorax)`` edits the geometry before rasterising (heart size, diaphragm height, ...);
3. ``place(rng, thorax)`` draws positions on the final geometry (inside the adjusted lungs);
4. ``render(fields, rng)`` edits the rasterised fields (removes air, adds density, erases lung
   markings) and returns its :class:`RegionMask` list, computed from the very arrays it drew.

Findings are named in snake case (:data:`FINDING_NAMES`); the dataset label spellings live in
:mod:`.vocab`. A finding is present in the labels if and only if it was rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import SIDES, Thorax, ThoraxFields
from .raster import Frame, ramp, smooth_noise

__all__ = [
    "DEFAULT_PREVALENCE",
    "FINDING_NAMES",
    "Finding",
    "RegionMask",
    "make_finding",
    "sample_finding_set",
]

SIDE_NAMES = ("right", "left")  # patient side: index 0 is the image left on a frontal view
_SIGN = (-1.0, 1.0)


@dataclass
class RegionMask:
    """One localised region of a finding, on the working grid of the renderer."""

    finding: str
    mask: np.ndarray  # bool (rows, cols)
    side: str | None = None


class Finding:
    """Base class: a finding that changes nothing (subclasses override the three steps)."""

    name = ""
    localized = True  # False: the label is global (no meaningful box)

    def __init__(self) -> None:
        self.side = 0

    def sample(self, rng: np.random.Generator, thorax: Thorax) -> None:
        self.side = int(rng.integers(0, 2))

    def adjust(self, thorax: Thorax) -> None:
        return None

    def place(self, rng: np.random.Generator, thorax: Thorax) -> None:
        return None

    def render(self, fields: ThoraxFields, rng: np.random.Generator) -> list[RegionMask]:
        return []

    # helpers -------------------------------------------------------------------------------------
    def _region(self, mask: np.ndarray, side: int | None = None) -> RegionMask:
        return RegionMask(self.name, mask, None if side is None else SIDE_NAMES[side])


def _blob_window(frame: Frame, cx: float, cy: float, rx: float, ry: float):
    return frame.window(cx - rx, cy - ry, cx + rx, cy + ry)


def _full_mask(frame: Frame, sl, sub: np.ndarray) -> np.ndarray:
    mask = np.zeros((frame.rows, frame.cols), dtype=bool)
    mask[sl] = sub
    return mask


def _min_radius(frame: Frame, r: float, pixels: float = 2.5) -> float:
    """Never draw a lesion smaller than a few pixels (tiny images would lose it)."""
    return max(r, pixels * frame.pixel)


# ------------------------------------------------------------------------------------------------
class Cardiomegaly(Finding):
    """Enlarged cardiac silhouette: cardiothoracic ratio 0.54-0.66 (measured above the diaphragm)."""

    name = "cardiomegaly"

    def sample(self, rng, thorax):
        self.ctr = float(rng.uniform(0.54, 0.66))

    def adjust(self, thorax):
        thorax.target_ctr = self.ctr

    def render(self, fields, rng):
        return [self._region(fields.heart.copy())]


class Effusion(Finding):
    """Pleural fluid: blunted costophrenic angle, meniscus rising laterally, lost diaphragm contour."""

    name = "effusion"

    def sample(self, rng, thorax):
        u = rng.random()
        self.sides = (0,) if u < 0.4 else (1,) if u < 0.75 else (0, 1)
        self.height = {s: float(rng.uniform(0.05, 0.3)) for s in SIDES}
        self.density = float(rng.uniform(0.0, 0.05))

    def render(self, fields, rng):
        th = fields.thorax
        frame = fields.frame
        out = []
        for side in self.sides:
            x, y = frame.x, frame.y
            q = _SIGN[side] * x
            W = th.half_width
            y_cp = th.dome_y[side] + th.cp_drop[side]
            s = np.clip(q * (1.0 / W), 0.0, 1.0)
            h = self.height[side]
            # level surface with a meniscus climbing the lateral wall; hazy upper border
            top = y_cp - h - (0.9 * h + 0.05) * s * s
            # fluid takes the place of aerated lung: where it lies, the lung is as dense as the abdomen
            lung = ramp(fields.lung[side], 2 * frame.pixel)
            f = np.clip((y - top) * (1.0 / 0.09), 0.0, 1.0) * lung
            f = f * f * (3.0 - 2.0 * f)
            fields.air *= 1.0 - f
            fields.vessels *= 1.0 - f
            fields.density += self.density * f
            mask = f > 0.5
            if mask.any():
                out.append(self._region(mask, side))
        return out


class _RoundLesion(Finding):
    """Shared sampler for nodules and masses: spheres inside a lung."""

    count_probs = (0.7, 0.25, 0.05)
    radius = (0.022, 0.045)
    density = (0.1, 0.18)
    lobes = 1

    def sample(self, rng, thorax):
        self.count = int(rng.choice(len(self.count_probs), p=self.count_probs)) + 1

    def place(self, rng, thorax):
        self.lesions = []
        for _ in range(self.count):
            side = int(rng.integers(0, 2))
            r = float(rng.uniform(*self.radius))
            cx, cy = thorax.sample_lung_point(rng, side, margin=0.6 * r)
            parts = [(cx, cy, r)]
            for _ in range(self.lobes - 1):
                ang = rng.uniform(0, 2 * np.pi)
                parts.append((cx + 0.5 * r * np.cos(ang), cy + 0.5 * r * np.sin(ang), r * rng.uniform(0.55, 0.8)))
            self.lesions.append((side, parts, float(rng.uniform(*self.density)), float(rng.uniform(0, 2 * np.pi))))

    def render(self, fields, rng):
        frame = fields.frame
        out = []
        for side, parts, dens, phase in self.lesions:
            cx, cy, _ = parts[0]
            ext = 2.2 * max(p[2] for p in parts) + 0.01
            win = _blob_window(frame, cx, cy, ext, ext)
            if win is None:
                continue
            sl, x, y = win
            prof = np.zeros(x.shape, dtype=np.float32)
            for px_, py_, r in parts:
                r = _min_radius(frame, r)
                dx, dy = x - px_, y - py_
                ang = np.arctan2(dy, dx)
                rr = r * (1.0 + 0.12 * np.sin(3 * ang + phase) + 0.06 * np.sin(5 * ang + 2 * phase))
                d2 = (dx * dx + dy * dy) / (rr * rr)
                prof = np.maximum(prof, np.sqrt(np.maximum(1.0 - d2, 0.0)))
            edge = np.clip(prof * 6.0, 0.0, 1.0)
            fields.density[sl] += dens * (0.4 + 0.6 * prof) * edge
            fields.air[sl] *= 1.0 - 0.6 * edge
            fields.vessels[sl] *= 1.0 - edge
            out.append(self._region(_full_mask(frame, sl, edge > 0.5), side))
        return out


class Nodule(_RoundLesion):
    """Small round opacity (roughly 8-17 mm)."""

    name = "nodule"


class Mass(_RoundLesion):
    """Large lobulated opacity (over 3 cm)."""

    name = "mass"
    count_probs = (0.9, 0.1)
    radius = (0.07, 0.12)
    density = (0.12, 0.2)
    lobes = 3


class _Airspace(Finding):
    """Shared renderer of patchy airspace opacities (pneumonia, consolidation, infiltration)."""

    zones = ("lower", "lower", "upper", "any")
    size = ((0.1, 0.2), (0.08, 0.16))
    density = (0.09, 0.16)
    cell = 0.06  # texture scale in patient units
    threshold = 0.0
    bilateral = 0.3
    bronchograms = False

    def sample(self, rng, thorax):
        self.sides = [int(rng.integers(0, 2))]
        if rng.random() < self.bilateral:
            self.sides.append(1 - self.sides[0])

    def place(self, rng, thorax):
        self.patches = []
        for side in self.sides:
            zone = str(rng.choice(self.zones))
            rx, ry = float(rng.uniform(*self.size[0])), float(rng.uniform(*self.size[1]))
            cx, cy = thorax.sample_lung_point(rng, side, margin=0.02, zone=zone)
            self.patches.append((side, cx, cy, rx, ry, float(rng.uniform(*self.density))))

    def render(self, fields, rng):
        frame = fields.frame
        out = []
        for side, cx, cy, rx, ry, dens in self.patches:
            win = _blob_window(frame, cx, cy, rx * 1.3, ry * 1.3)
            if win is None:
                continue
            sl, x, y = win
            h, w = x.shape
            cell_px = max(self.cell / frame.pixel, 1.5)
            tex = 0.6 * smooth_noise(rng, h, w, cell_px) + 0.4 * smooth_noise(rng, h, w, max(cell_px / 2.5, 1.2))
            d2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
            env = np.clip((1.0 - d2) * 1.5, 0.0, 1.0)
            lung = ramp(fields.lung[side][sl], 0.01)
            opac = np.clip(env * 1.4 + 0.45 * tex - 0.45 + self.threshold, 0.0, 1.0) * lung
            opac = np.maximum(opac, 0.0)
            if self.bronchograms:
                opac *= 1.0 - 0.5 * np.clip(fields.vessels[sl] * 2.0 - 0.3, 0.0, 1.0) * (env > 0.5)
            fields.density[sl] += dens * opac
            fields.air[sl] *= 1.0 - 0.55 * opac
            fields.vessels[sl] *= 1.0 - 0.7 * opac
            mask = opac > 0.3
            if mask.any():
                out.append(self._region(_full_mask(frame, sl, mask), side))
        return out


class Pneumonia(_Airspace):
    """Patchy, ill-defined airspace opacity, often in the lower zones, sometimes bilateral."""

    name = "pneumonia"


class Consolidation(_Airspace):
    """Dense, confluent airspace opacity with air bronchograms."""

    name = "consolidation"
    size = ((0.14, 0.26), (0.12, 0.24))
    density = (0.14, 0.2)
    cell = 0.1
    threshold = 0.25
    bilateral = 0.1
    bronchograms = True


class Infiltration(_Airspace):
    """Faint, finely textured hazy opacity over a large zone."""

    name = "infiltration"
    zones = ("any", "lower", "central")
    size = ((0.18, 0.3), (0.15, 0.28))
    density = (0.05, 0.09)
    cell = 0.025
    threshold = -0.1
    bilateral = 0.4


class Pneumothorax(Finding):
    """Air between the chest wall and a collapsed lung: no markings, a thin visceral pleural line.

    Usually one pocket along the apex and lateral wall; sometimes bilateral, sometimes two separate
    pockets on one side (each is its own region, like the several RLE rows of SIIM).
    """

    name = "pneumothorax"

    def sample(self, rng, thorax):
        side = int(rng.integers(0, 2))
        u = rng.random()
        a = thorax.anatomy
        dome = thorax.dome_y
        self.pockets = []
        if u < 0.15:  # bilateral
            for s in SIDES:
                self.pockets.append(
                    (s, a.apex_y - 0.2, float(rng.uniform(a.hilum_y, dome[s] - 0.05)), float(rng.uniform(0.04, 0.1)))
                )
        elif u < 0.27:  # two pockets on one side: apical and basal-lateral
            split = float(rng.uniform(a.hilum_y - 0.2, a.hilum_y))
            self.pockets.append((side, a.apex_y - 0.2, split, float(rng.uniform(0.04, 0.09))))
            self.pockets.append((side, split + 0.12, dome[side] + 0.05, float(rng.uniform(0.04, 0.08))))
        else:
            low = float(rng.uniform(a.hilum_y - 0.15, dome[side] + 0.1))
            self.pockets.append((side, a.apex_y - 0.2, low, float(rng.uniform(0.04, 0.15))))

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        out = []
        for side, y0, y1, depth in self.pockets:
            W = th.half_width
            xa, xb = (-W - 0.05, 0.02) if side == 0 else (-0.02, W + 0.05)
            win = frame.window(xa, y0 - 0.05, xb, y1 + 0.05)
            if win is None:
                continue
            sl, x, y = win
            d_top, d_lat, _ = th.cavity_distances(side, x, y)
            wall = np.minimum(d_top * 1.2, d_lat)  # depth below the apex / inside the lateral wall
            span = max(y1 - y0, 0.05)
            taper_top = np.clip((y - y0) * (1.0 / 0.08), 0.0, 1.0) if y0 > th.anatomy.apex_y else 1.0
            taper = np.sqrt(np.clip((y1 - y) * (1.0 / (0.3 * span)), 0.0, 1.0)) * taper_top
            dep = max(depth, 4 * frame.pixel) * taper
            lateral = np.clip((_SIGN[side] * x - 0.22 * W) * (1.0 / (0.1 * W)), 0.0, 1.0)
            dep = dep * lateral
            cav = fields.cavity[side][sl] > 0
            inside = cav & (wall < dep) & (wall > -frame.pixel)
            if not inside.any():
                continue
            soft = ramp(dep - wall, 1.2 * frame.pixel) * cav
            fields.vessels[sl] *= 1.0 - soft
            # pure air across the pocket, limited by the chest wall's own thickness (never black)
            full_air = np.clip((0.72 * fields.soft[sl] - 0.14) * (1.0 / 0.52), 0.0, 1.1 * th.lucency[side])
            fields.air[sl] = fields.air[sl] * (1.0 - soft) + soft * np.maximum(full_air, fields.air[sl])
            fields.density[sl] *= 1.0 - 0.8 * soft
            # visceral pleural line at the collapsed lung's edge, and a slightly denser lung beneath
            line = np.exp(-(((wall - dep) / (1.1 * frame.pixel)) ** 2)) * (dep > 2 * frame.pixel) * cav
            fields.density[sl] += 0.05 * line
            rim = np.clip((wall - dep) * (1.0 / 0.05), 0.0, 1.0)
            fields.air[sl] *= 1.0 - 0.1 * (1.0 - rim) * (1.0 - soft) * cav
            out.append(self._region(_full_mask(frame, sl, inside & (soft > 0.5)), side))
        return out


class Atelectasis(Finding):
    """Plate-like bands at the lung bases and ipsilateral volume loss (raised hemidiaphragm)."""

    name = "atelectasis"

    def sample(self, rng, thorax):
        self.side = int(rng.integers(0, 2))
        self.raise_by = float(rng.uniform(0.03, 0.07))
        self.count = 1 + int(rng.random() < 0.4)
        self.density = float(rng.uniform(0.08, 0.12))

    def adjust(self, thorax):
        thorax.dome_y[self.side] -= self.raise_by

    def place(self, rng, thorax):
        self.bands = []
        for _ in range(self.count):
            cx, cy = thorax.sample_lung_point(rng, self.side, margin=0.06, zone="lower")
            self.bands.append(
                (cx, cy, float(rng.uniform(0.16, 0.3)), float(rng.uniform(0.016, 0.03)), float(rng.uniform(-0.3, 0.3)))
            )

    def render(self, fields, rng):
        frame = fields.frame
        mask = np.zeros((frame.rows, frame.cols), dtype=bool)
        for cx, cy, length, thick, ang in self.bands:
            win = _blob_window(frame, cx, cy, length, length)
            if win is None:
                continue
            sl, x, y = win
            c, s = float(np.cos(ang)), float(np.sin(ang))
            u = (c * (x - cx) + s * (y - cy)) / (0.5 * length)
            v = (-s * (x - cx) + c * (y - cy)) / max(thick, 1.5 * frame.pixel)
            band = np.maximum(1.0 - v * v, 0.0) * np.clip((1.0 - np.abs(u)) * 4.0, 0.0, 1.0)
            band *= fields.lung[self.side][sl] > 0
            fields.density[sl] += self.density * band
            fields.air[sl] *= 1.0 - 0.5 * band
            mask[sl] |= band > 0.3
        return [self._region(mask, self.side)] if mask.any() else []


class Emphysema(Finding):
    """Hyperinflation: low flat diaphragm, hyperlucent lungs, sparse markings, narrow heart."""

    name = "emphysema"
    localized = False

    def sample(self, rng, thorax):
        self.lower = float(rng.uniform(0.07, 0.12))
        self.flat = float(rng.uniform(0.2, 0.45))
        self.lucency = float(rng.uniform(1.18, 1.3))
        self.ctr = float(rng.uniform(0.36, 0.41))

    def adjust(self, thorax):
        for s in SIDES:
            thorax.dome_y[s] += self.lower
            thorax.dome_curv[s] = self.flat
            thorax.cp_drop[s] *= 0.8
            thorax.lucency[s] *= self.lucency
        thorax.marking_gain *= 0.55
        if thorax.target_ctr is None:  # cardiomegaly, when present, wins
            thorax.target_ctr = self.ctr

    def render(self, fields, rng):
        return [self._region(fields.lung_mask(s), s) for s in SIDES]


class Edema(Finding):
    """Bilateral perihilar haze ("bat wing"), prominent upper-zone vessels and Kerley B lines."""

    name = "edema"

    def sample(self, rng, thorax):
        self.density = float(rng.uniform(0.08, 0.14))
        self.kerley = [
            (s, float(rng.uniform(0.0, 1.0)), float(rng.uniform(0.03, 0.05)))
            for s in SIDES
            for _ in range(int(rng.integers(3, 7)))
        ]

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        a = th.anatomy
        out = []
        for side in SIDES:
            q = _SIGN[side] * frame.x
            haze = np.exp(-(((q - 0.22) / 0.24) ** 2) - ((frame.y - a.hilum_y - 0.05) / 0.32) ** 2)
            lung = ramp(fields.lung[side], 0.02)
            h = haze * lung
            fields.density += self.density * h
            fields.air *= 1.0 - 0.3 * h
            # upper-lobe diversion: markings a little stronger above the hila
            fields.vessels *= 1.0 + 0.4 * (frame.y < a.hilum_y) * lung
            out.append(self._region(h > 0.35, side))
        # Kerley B: short horizontal lines reaching the lateral pleura at the bases
        for side, t, length in self.kerley:
            y = th.dome_y[side] - 0.02 - 0.18 * t
            q_wall = float(th.lateral_wall(side, np.float32(y)))
            x0 = _SIGN[side] * (q_wall - 0.5 * length)
            win = _blob_window(frame, x0, y, 0.6 * length, 0.02)
            if win is None:
                continue
            sl, x, yy = win
            line = np.exp(-(((yy - y) / (0.9 * frame.pixel + 0.002)) ** 2)) * (np.abs(x - x0) < 0.5 * length)
            fields.density[sl] += 0.06 * line * (fields.lung[side][sl] > 0)
        return out


class PleuralThickening(Finding):
    """A smooth band of pleural soft tissue along the apex (cap) or the lateral chest wall."""

    name = "pleural_thickening"

    def sample(self, rng, thorax):
        self.side = int(rng.integers(0, 2))
        self.apical = bool(rng.random() < 0.5)
        self.thick = float(rng.uniform(0.025, 0.05))
        a = thorax.anatomy
        if self.apical:
            self.y0, self.y1 = a.apex_y - 0.1, a.apex_y + float(rng.uniform(0.12, 0.2))
        else:
            self.y0 = float(rng.uniform(a.apex_y + 0.2, a.hilum_y + 0.1))
            self.y1 = self.y0 + float(rng.uniform(0.15, 0.35))
        self.density = float(rng.uniform(0.14, 0.2))

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        W = th.half_width
        xa, xb = (-W - 0.05, 0.02) if self.side == 0 else (-0.02, W + 0.05)
        win = frame.window(xa, self.y0 - 0.05, xb, self.y1 + 0.05)
        if win is None:
            return []
        sl, x, y = win
        d_top, d_lat, _ = th.cavity_distances(self.side, x, y)
        wall = np.minimum(d_top * 1.2, d_lat)
        thick = max(self.thick, 2.5 * frame.pixel)
        along = np.clip((y - self.y0) * 12, 0, 1) * np.clip((self.y1 - y) * 12, 0, 1)
        band = ramp(thick - wall, frame.pixel) * (fields.cavity[self.side][sl] > 0) * along
        fields.density[sl] += self.density * band
        fields.air[sl] *= 1.0 - 0.7 * band
        fields.vessels[sl] *= 1.0 - band
        mask = band > 0.5
        return [self._region(_full_mask(frame, sl, mask), self.side)] if mask.any() else []


class Fibrosis(Finding):
    """Reticular (net-like) opacities with volume loss: basal-peripheral or upper-zone."""

    name = "fibrosis"

    def sample(self, rng, thorax):
        self.basal = bool(rng.random() < 0.6)
        self.sides = (0, 1) if rng.random() < 0.7 else (int(rng.integers(0, 2)),)
        self.density = float(rng.uniform(0.08, 0.13))
        self.loss = float(rng.uniform(0.02, 0.05))

    def adjust(self, thorax):
        for s in self.sides:
            thorax.dome_y[s] -= self.loss if self.basal else 0.5 * self.loss

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        a = th.anatomy
        cell = max(0.035 / frame.pixel, 2.0)
        n = smooth_noise(rng, frame.rows, frame.cols, cell) - 0.6 * smooth_noise(rng, frame.rows, frame.cols, 2 * cell)
        net = np.exp(-((n * 4.0) ** 2))  # zero crossings of band-pass noise form a network
        out = []
        for side in self.sides:
            q = _SIGN[side] * frame.x
            if self.basal:
                zone = np.clip((frame.y - a.hilum_y) * 4.0, 0.0, 1.0) * np.clip(
                    (q / th.half_width - 0.35) * 3.0, 0.0, 1.0
                )
            else:
                zone = np.clip((a.hilum_y - 0.05 - frame.y) * 4.0, 0.0, 1.0)
            zone = zone * ramp(fields.lung[side], 0.01)
            fields.density += self.density * net * zone
            fields.air *= 1.0 - 0.25 * zone
            fields.vessels *= 1.0 - 0.5 * zone
            mask = zone > 0.5
            if mask.any():
                out.append(self._region(mask, side))
        return out


class Hernia(Finding):
    """Hiatal hernia: a retrocardiac round opacity with an air-fluid level."""

    name = "hernia"

    def sample(self, rng, thorax):
        self.r = float(rng.uniform(0.06, 0.1))
        self.dx = float(rng.uniform(-0.02, 0.08))
        self.level = float(rng.uniform(-0.2, 0.3))

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        r = _min_radius(frame, self.r, 4)
        cx, cy = self.dx, 0.5 * (th.dome_y[0] + th.dome_y[1]) - 0.6 * r
        win = _blob_window(frame, cx, cy, r * 1.3, r * 1.3)
        if win is None:
            return []
        sl, x, y = win
        d2 = ((x - cx) ** 2 + (y - cy) ** 2) / (r * r)
        disk = np.sqrt(np.maximum(1 - d2, 0))
        inside = d2 < 1
        gas = inside & (y < cy + self.level * r)
        wall = np.exp(-(((np.sqrt(d2) - 1.0) * r / (1.2 * frame.pixel + 0.003)) ** 2))
        fields.density[sl] += 0.07 * disk * ~gas + 0.04 * wall - 0.16 * disk * gas
        return [self._region(_full_mask(frame, sl, inside))]


class AorticEnlargement(Finding):
    """Enlarged, prominent aortic knob (widened upper left mediastinal contour)."""

    name = "aortic_enlargement"

    def sample(self, rng, thorax):
        self.extra = float(rng.uniform(0.035, 0.06))

    def adjust(self, thorax):
        thorax.knob_extra = self.extra

    def render(self, fields, rng):
        frame = fields.frame
        th = fields.thorax
        a = th.anatomy
        ky = th.knob_y()
        kw = 0.07 + th.knob_extra
        win = frame.window(0.0, ky - 1.6 * kw, a.mediastinum + a.aortic_knob + self.extra + 0.05, ky + 1.6 * kw)
        if win is None:
            return []
        sl, x, y = win
        d_med, _ = th.mediastinum_distance(x, y)
        mask = (d_med < 0) & (x > a.mediastinum * 0.5) & (np.abs(y - ky) < 1.3 * kw)
        return [self._region(_full_mask(frame, sl, mask))] if mask.any() else []


class Calcification(Finding):
    """Calcified granulomas: one to three tiny, very dense dots."""

    name = "calcification"

    def sample(self, rng, thorax):
        self.count = int(rng.integers(1, 4))

    def place(self, rng, thorax):
        self.dots = []
        for _ in range(self.count):
            side = int(rng.integers(0, 2))
            r = float(rng.uniform(0.007, 0.013))
            self.dots.append((side, *thorax.sample_lung_point(rng, side, margin=0.03), r))

    def render(self, fields, rng):
        frame = fields.frame
        out = []
        for side, cx, cy, r in self.dots:
            r = _min_radius(frame, r, 1.5)
            win = _blob_window(frame, cx, cy, 2 * r + 0.01, 2 * r + 0.01)
            if win is None:
                continue
            sl, x, y = win
            d2 = ((x - cx) ** 2 + (y - cy) ** 2) / (r * r)
            dot = np.sqrt(np.maximum(1 - d2, 0))
            fields.density[sl] += 0.3 * dot
            mask = d2 < 1
            out.append(self._region(_full_mask(frame, sl, mask), side))
        return out


_CLASSES: dict[str, type[Finding]] = {
    c.name: c
    for c in (
        Cardiomegaly,
        Effusion,
        Nodule,
        Mass,
        Pneumonia,
        Consolidation,
        Infiltration,
        Pneumothorax,
        Atelectasis,
        Emphysema,
        Edema,
        PleuralThickening,
        Fibrosis,
        Hernia,
        AorticEnlargement,
        Calcification,
    )
}

#: Every finding the renderer can draw, in rendering order.
FINDING_NAMES: tuple[str, ...] = tuple(_CLASSES)

#: Default per-image prevalence (chosen so a few hundred images hold positives of every class).
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.14,
    "effusion": 0.14,
    "nodule": 0.12,
    "mass": 0.1,
    "pneumonia": 0.12,
    "consolidation": 0.1,
    "infiltration": 0.12,
    "pneumothorax": 0.12,
    "atelectasis": 0.12,
    "emphysema": 0.1,
    "edema": 0.1,
    "pleural_thickening": 0.1,
    "fibrosis": 0.1,
    "hernia": 0.08,
    "aortic_enlargement": 0.14,
    "calcification": 0.1,
}


def make_finding(name: str) -> Finding:
    """A fresh finding object by name."""
    try:
        return _CLASSES[name]()
    except KeyError:
        raise ValueError(f"unknown finding {name!r}; known: {', '.join(FINDING_NAMES)}") from None


def validate_findings(names) -> tuple[str, ...]:
    """Check finding names; returns them de-duplicated in rendering order."""
    if isinstance(names, str):
        raise TypeError("findings must be a collection of names, not a single string")
    names = set(names)
    unknown = sorted(names - set(_CLASSES))
    if unknown:
        raise ValueError(f"unknown finding(s) {unknown}; known: {', '.join(FINDING_NAMES)}")
    return tuple(n for n in FINDING_NAMES if n in names)


# Co-occurrence: P(finding | other present) is raised by these factors (clinical associations).
_BOOSTS: dict[str, dict[str, float]] = {
    "effusion": {"cardiomegaly": 2.0, "edema": 2.5, "pneumonia": 1.6},
    "edema": {"cardiomegaly": 2.0},
    "consolidation": {"pneumonia": 1.8},
    "atelectasis": {"effusion": 1.8},
    "nodule": {"emphysema": 1.5},
    "mass": {"emphysema": 1.5},
}


def sample_finding_set(rng: np.random.Generator, prevalence: dict[str, float] | None = None) -> tuple[str, ...]:
    """Draw which findings an image has: independent draws with a few clinical associations.

    Args:
        rng: random generator.
        prevalence: per-finding probability (default :data:`DEFAULT_PREVALENCE`); findings not
            listed never occur.
    """
    prevalence = DEFAULT_PREVALENCE if prevalence is None else prevalence
    validate_findings(prevalence)
    for name, p in prevalence.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prevalence of {name} must be in [0, 1], got {p}")
    present: set[str] = set()
    order = [n for n in FINDING_NAMES if n in prevalence]
    first = rng.random(len(order))
    second = rng.random(len(order))
    for name, u in zip(order, first):
        if u < prevalence[name]:
            present.add(name)
    # second chance for findings associated with one already present
    for name, u in zip(order, second):
        if name in present:
            continue
        factor = max([f for other, f in _BOOSTS.get(name, {}).items() if other in present], default=1.0)
        if u < prevalence[name] * (factor - 1.0):
            present.add(name)
    return tuple(n for n in FINDING_NAMES if n in present)
