"""Does Grad-CAM sit on the finding? A measurement on synthetic radiographs whose finding boxes are known.

    python -m pipelines.benchmarks.gradcam_localization --model runs/classify/model.pt [--n 24] [--seed 7]
        [--size 256] [--layer auto] [--save-dir runs/gradcam_check]

Renders a fresh synthetic PACS export (``write_layout("pacs")``: DICOM files with the ground-truth boxes of every
finding in ``truth.json``), runs the classifier and MONAI's Grad-CAM exactly as ``bundles/infer.json`` does
(:class:`~mlvicx_monai.engines.infer.CXRInference`), and for every (image, class of the model present in the
image) prints and summarises:

- pointing game: is the hottest pixel inside a box of that finding? (chance = the boxes' area fraction);
- energy ratio: share of the heat inside the boxes / share of the image area they cover (1 = no localisation);
- border ratio: mean heat in the outer 10 % band of the image / mean heat over the image (> 1 = border artefact).

With ``--save-dir`` it also writes each overlay with the truth boxes drawn in white, to look at.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _box_mask(shape: tuple[int, int], boxes: list[list[int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    return mask


def _border(shape: tuple[int, int], fraction: float = 0.1) -> np.ndarray:
    rows, cols = shape
    br, bc = max(1, round(rows * fraction)), max(1, round(cols * fraction))
    band = np.ones(shape, dtype=bool)
    band[br : rows - br, bc : cols - bc] = False
    return band


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.benchmarks.gradcam_localization", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--model", default="runs/classify/model.pt", help="a classifier model.pt (bundles/classify.json)"
    )
    parser.add_argument("--n", type=int, default=24, help="keepable images in the synthetic export")
    parser.add_argument("--seed", type=int, default=7, help="seed of the export (use one the model was not trained on)")
    parser.add_argument("--size", type=int, default=256, help="nominal image side of the export")
    parser.add_argument(
        "--layer", default="auto", help="Grad-CAM target layer (infer.json's gradcam_layer; auto = the refined layer4)"
    )
    parser.add_argument("--save-dir", type=Path, default=None, help="write overlays with the truth boxes here")
    args = parser.parse_args(argv)

    from PIL import Image, ImageDraw

    from mlvicx_monai.data.dicom import load_cxr
    from mlvicx_monai.data.phantom import write_layout
    from mlvicx_monai.engines.infer import CXRInference, heatmap_overlay

    with tempfile.TemporaryDirectory(prefix="gradcam-") as tmp:
        root = Path(tmp)
        write_layout("pacs", root / "pacs", n=args.n, seed=args.seed, size=args.size, overwrite=True)
        truth = json.loads((root / "pacs" / "truth.json").read_text())
        job = CXRInference.from_paths(
            root / "pacs" / "export", args.model, root / "out", gradcam_layer=args.layer,
            deid_secret=root / "secret", new_secret=True,
        )
        classes = {c.lower(): k for k, c in enumerate(job.class_names)}
        records = []
        for entry in truth["files"]:
            if entry["outcome"] != "keep" or not entry.get("regions"):
                continue
            image, _ = load_cxr(root / "pacs" / "export" / entry["path"])
            x = job.preprocess(image)
            findings = sorted({r["finding"] for r in entry["regions"]} & set(classes))
            for finding in findings:
                k = classes[finding]
                heat = job.heatmap(x, k, image.shape)
                boxes = _box_mask(image.shape, [r["bbox"] for r in entry["regions"] if r["finding"] == finding])
                border = _border(image.shape)
                total = float(heat.sum()) or 1e-12
                peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
                records.append({
                    "image": entry["image_key"], "finding": finding,
                    "hit": bool(boxes[peak]), "area": float(boxes.mean()),
                    "energy_ratio": float(heat[boxes].sum() / total / max(boxes.mean(), 1e-12)),
                    "border_ratio": float(heat[border].mean() / max(heat.mean(), 1e-12)),
                })
                if args.save_dir is not None:
                    args.save_dir.mkdir(parents=True, exist_ok=True)
                    picture = Image.fromarray(heatmap_overlay(image, heat))
                    draw = ImageDraw.Draw(picture)
                    for r in entry["regions"]:
                        if r["finding"] == finding:
                            draw.rectangle(r["bbox"], outline=(255, 255, 255))
                    picture.save(args.save_dir / f"{entry['image_key']}_{finding}.png")
    if not records:
        print("no image of the export has a finding among the model's classes", file=sys.stderr)
        return 1
    print(f"{'image':<16} {'finding':<14} {'hit':>4} {'box area':>9} {'energy x':>9} {'border x':>9}")
    for r in records:
        print(f"{r['image']:<16} {r['finding']:<14} {int(r['hit']):>4} {r['area']:>9.3f} "
              f"{r['energy_ratio']:>9.2f} {r['border_ratio']:>9.2f}")
    hits = np.array([r["hit"] for r in records])
    print(f"\n{len(records)} (image, finding) pairs over {len({r['image'] for r in records})} images")
    print(f"pointing game: {hits.mean():.2f} (chance {np.mean([r['area'] for r in records]):.2f})")
    for finding in sorted({r["finding"] for r in records}):
        sub = [r for r in records if r["finding"] == finding]
        print(f"  {finding:<14} n={len(sub):<3} hits {np.mean([r['hit'] for r in sub]):.2f}  "
              f"energy x {np.median([r['energy_ratio'] for r in sub]):.2f} (median)  "
              f"chance {np.mean([r['area'] for r in sub]):.2f}")
    print(f"energy inside boxes / their area: median {np.median([r['energy_ratio'] for r in records]):.2f} (1 = none)")
    print(f"border band heat / mean heat: median {np.median([r['border_ratio'] for r in records]):.2f} "
          "(> 1: border artefact)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
