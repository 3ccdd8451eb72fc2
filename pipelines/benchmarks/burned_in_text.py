"""Detection rate and false-positive rate of the burned-in text detector (:mod:`mlvicx_monai.data.burned_in`).

    python -m pipelines.benchmarks.burned_in_text [--phantoms 60] [--sizes 512 1024 2048]

Text images: clean radiographs (the project's phantom at several sizes, and the real ``RG1_UNCR.dcm`` and
``RG3_UNCR.dcm`` of pydicom-data) with a label rendered into one corner, as modalities burn them in: a patient
name (Latin, accented, Cyrillic), a birth date or study date in several formats, an id; in several fonts (Debian's
DejaVu Sans / Serif / Mono / Condensed, bold or not, and Pillow's built-in fonts), heights of 1-4 % of the image
but at least 10 px (smaller text is unreadable on a screen; modalities burn labels at a readable pixel size),
and contrasts against the local background (0.6, 0.35, 0.25 of the display range, or black text on a white box).
Clean images: the phantom (many seeds and sizes) and the real radiographs (RG3 carries a lead "R" marker, which
must not count as text). Prints
both rates, per condition, and the detector's time per image.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSansCondensed.ttf"
)
LABELS = (
    "DOE^JOHN  1961-03-04",
    "MÜLLER, JÜRGEN",
    "ИВАНОВ^ПЁТР 04.03.1961",
    "ID 12345678",
    "03/04/1961 14:22",
    "SMITH JANE F 52Y",
)
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
HEIGHTS = (0.01, 0.015, 0.025, 0.04)  # text height / image height
#: text against its local background: |text - median| of 0.6 / 0.35 / 0.25 (brighter text on dark areas, darker on
#: bright ones, as a modality picks its label colour to be readable), or black text on a white box.
CONTRASTS = {"high": 0.6, "medium": 0.35, "low": 0.25, "boxed": None}


def fonts() -> list[tuple[str, object]]:
    """(name, factory(size) -> ImageFont) of every font available here."""
    out = [
        (f, lambda size, f=f: ImageFont.truetype(str(FONT_DIR / f), size))
        for f in FONT_FILES
        if (FONT_DIR / f).is_file()
    ]
    out.append(("pillow-default", lambda size: ImageFont.load_default(size=size)))
    return out


def render_text(image: np.ndarray, text: str, font, corner: str, contrast: str) -> np.ndarray:
    """``image`` (float [0, 1]) with ``text`` burned into ``corner``, as a modality label would be."""
    rows, cols = image.shape
    mask = Image.new("L", (cols, rows), 0)
    draw = ImageDraw.Draw(mask)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    margin = max(4, rows // 60)
    x = margin if "left" in corner else cols - w - margin
    y = margin if "top" in corner else rows - h - margin
    out = image.copy()
    delta = CONTRASTS[contrast]
    if delta is None:  # a white box with black text
        pad = max(2, h // 4)
        out[max(0, y - pad) : y + h + pad, max(0, x - pad) : x + w + pad] = 1.0
        value = 0.0
    else:
        background = float(np.median(out[y : y + h, x : x + w])) if w > 0 and h > 0 else 0.5
        value = background + delta if background + delta <= 1.0 else background - delta
        if value < 0.0:  # mid-grey background and a large delta: the readable extreme
            value = 1.0 if background < 0.5 else 0.0
    draw.text((x - left, y - top), text, fill=255, font=font)
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    return out * (1 - alpha) + value * alpha


def clean_images(n_phantoms: int, sizes: list[int]) -> list[tuple[str, np.ndarray]]:
    from pydicom.data import get_testdata_file

    from mlvicx_monai.data.dicom import load_cxr
    from mlvicx_monai.data.phantom import render_cxr

    out = []
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KI.dcm", "RG3_J2KI.dcm"):
        path = get_testdata_file(name)
        if path:
            out.append((name, load_cxr(path)[0]))
    findings = ([], ["cardiomegaly"], ["effusion"], ["nodule"], ["pneumothorax"], ["consolidation"])
    for seed in range(n_phantoms):
        size = sizes[seed % len(sizes)]
        image, _ = render_cxr(np.random.default_rng(1000 + seed), size, list(findings[seed % len(findings)]))
        out.append((f"phantom-{seed}-{size}", image))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", type=int, default=60, help="clean phantom radiographs (sizes cycle)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="phantom sides with text")
    parser.add_argument("--clean-sizes", type=int, nargs="+", default=[160, 256, 512, 1024, 2048],
                        help="phantom sides of the clean (false positive) set")
    parser.add_argument("--text-images", type=int, default=400, help="text images (conditions cycle over the bases)")
    args = parser.parse_args(argv)

    from mlvicx_monai.data.burned_in import WORK_SIDE, detect_burned_in_text

    clean = clean_images(args.phantoms, args.clean_sizes)
    bases = clean_images(max(6, args.phantoms // 2), args.sizes)
    times = []

    def detect(image):
        start = time.perf_counter()
        found = detect_burned_in_text(image)
        times.append(time.perf_counter() - start)
        return found

    false_positives = [name for name, image in clean if detect(image) is not None]
    conditions = list(itertools.product(fonts(), LABELS, CORNERS, HEIGHTS, CONTRASTS))
    rng = np.random.default_rng(0)
    picks = rng.choice(len(conditions), size=min(args.text_images, len(conditions)), replace=False)
    hits: dict[str, list[bool]] = {}
    for k, pick in enumerate(picks):
        (font_name, factory), label, corner, height, contrast = conditions[pick]
        base_name, base = bases[k % len(bases)]
        size_px = max(10, round(height * base.shape[0]))
        image = render_text(base, label, factory(size_px), corner, contrast)
        found = detect(image) is not None
        for key in (f"font={font_name}", f"height={height:.3f}", f"contrast={contrast}", f"corner={corner}",
                    f"base={'real' if base_name.startswith('RG') else 'phantom'}", f"side={max(base.shape)}", "all"):
            hits.setdefault(key, []).append(found)

    n_clean = len(clean)
    print(f"clean radiographs: {n_clean} ({sum(1 for n, _ in clean if n.startswith('RG'))} real, the rest phantom "
          f"at sides {args.clean_sizes})")
    print(f"false positives: {len(false_positives)} / {n_clean} = {len(false_positives) / n_clean:.1%}"
          + (f"  ({', '.join(false_positives)})" if false_positives else ""))
    total = hits["all"]
    print(f"text images: {len(total)} (on the real radiographs and phantoms at sides {args.sizes}); "
          f"detected: {sum(total)} / {len(total)} = {sum(total) / len(total):.1%}")
    for key in sorted(k for k in hits if k != "all"):
        values = hits[key]
        print(f"  {key:<36} {sum(values):>4} / {len(values):<4} = {sum(values) / len(values):6.1%}")
    print(f"detector time per image: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
          f"(one core; larger images are worked at {WORK_SIDE} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
