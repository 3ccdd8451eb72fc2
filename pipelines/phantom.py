"""Generate synthetic chest X-ray datasets in the official layout of NIH, VinDr, RSNA, SIIM or a PACS export.

Usage (from the repository root)::

    python -m pipelines.phantom --layout nih --out demo_data/nih --n 200 --seed 0 [--size 512]
    python -m pipelines.phantom --layout pacs --out demo_data/pacs --n 40 --seed 0

The output is a pure function of the arguments. Ground truth goes to ``OUT/truth.json``
(for ``pacs`` the export itself is ``OUT/export``).
"""

from __future__ import annotations

import argparse
import sys

from mlvicx_monai.data.phantom import DEFAULT_SIZE, LAYOUTS, write_layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.phantom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", required=True, choices=LAYOUTS, help="dataset layout to write")
    parser.add_argument("--out", required=True, help="output directory (created; must be empty unless --overwrite)")
    parser.add_argument("--n", type=int, required=True, help="number of images (pacs: keepable frontal images)")
    parser.add_argument("--seed", type=int, default=0, help="non-negative seed (default 0)")
    parser.add_argument(
        "--size",
        type=int,
        default=None,
        help="image side in pixels (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_SIZE.items()) + ")",
    )
    parser.add_argument("--flat", action="store_true", help="nih only: images in images/ instead of images_001/images/")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier phantom output in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = write_layout(
            args.layout,
            args.out,
            args.n,
            seed=args.seed,
            size=args.size,
            overwrite=args.overwrite,
            flat=args.flat,
            return_summary=True,
        )
    except (ValueError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
