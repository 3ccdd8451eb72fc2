"""Ingest a public dataset download or a hospital PACS export into a de-identified image cache.

    python -m pipelines.ingest --dataset {nih,vindr,rsna,siim,pacs} --src DIR --out DIR [--size N] [--workers N]
        [--secret-file FILE [--new-secret]] [--max-pixel-mb MB] [--allow-burned-in] [--no-text-detection]
        [--phi-path-map LOCAL.csv]

Writes OUT/images/, OUT/manifest.json (MONAI datalist), OUT/quarantine.csv (file pseudonym, code, reason) and
OUT/ingest_summary.json. Nothing it prints or logs holds a header value, a UID or a source path.
Rerunning the same command after an interruption resumes where it stopped. See
:mod:`mlvicx_monai.data.ingest` for the guarantees.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from mlvicx_monai.data.deid import DeidSecretError
from mlvicx_monai.data.dicom import DEFAULT_MAX_PIXEL_BYTES
from mlvicx_monai.data.ingest import DATASETS, IngestConfig, IngestError, ingest
from mlvicx_monai.data.pacs import PacsFilter


def _csv(text: str) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--src", required=True, type=Path, help="dataset download or PACS export folder (read only)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (created; not inside --src)")
    parser.add_argument("--size", type=int, default=256, help="side of the cached square images (default 256)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1,
        help="worker processes (default: all cores); a worker that dies costs one file. 0: in this process",
    )
    parser.add_argument(
        "--secret-file", type=Path, default=None,
        help="pseudonymisation secret; a named file must exist unless --new-secret (default: $MLVICX_DEID_SECRET_FILE, "
        "else ~/.config/mlvicx-monai/deid.secret, generated there on first use); keep it outside the outputs and the "
        "same across runs",
    )
    parser.add_argument(
        "--new-secret", action="store_true",
        help="create --secret-file if it does not exist (a new secret gives every patient new pseudonyms)",
    )
    parser.add_argument(
        "--max-pixel-mb", type=float, default=DEFAULT_MAX_PIXEL_BYTES / 2**20,
        help="memory bound per file: reject (too_large) a file whose header declares more stored pixel data, "
        "Rows x Columns x frames x bytes, before reading or decoding it (default %(default)g)",
    )
    parser.add_argument(
        "--phi-path-map", type=Path, default=None, metavar="LOCAL.csv",
        help="also write a local-only CSV mapping each file pseudonym of quarantine.csv to its source path; it "
        "holds PHI (patient-named folders) and is refused inside --out or --src",
    )
    parser.add_argument(
        "--split-source", default="auto",
        help="'auto' (versioned manifest in data_manifests/ when it covers every image, else the dataset's "
        "official split files, else seeded), 'computed', or a versioned manifest folder",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of computed splits and label fractions")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    labels = parser.add_argument_group("labels")
    labels.add_argument(
        "--vindr-aggregation", choices=("any", "majority", "all"), default=None,
        help="VinDr-CXR: how the 3 readers' labels are combined (default: the adapter's, see README)",
    )
    pacs = parser.add_argument_group("PACS filters (--dataset pacs)")
    defaults = PacsFilter()
    pacs.add_argument("--modalities", type=_csv, default=defaults.modalities, help="default CR,DX")
    pacs.add_argument("--views", type=_csv, default=defaults.views, help="default PA,AP (frontal)")
    pacs.add_argument("--body-parts", type=_csv, default=defaults.body_parts, help="default CHEST,THORAX")
    pacs.add_argument("--allow-missing-body-part", action="store_true")
    pacs.add_argument("--allow-missing-view", action="store_true")
    pacs.add_argument("--allow-for-processing", action="store_true")
    pacs.add_argument(
        "--allow-burned-in", action="store_true",
        help="keep images whose header says BurnedInAnnotation = YES or whose pixels show text (default: quarantined)",
    )
    pacs.add_argument(
        "--no-text-detection", action="store_true",
        help="do not look for burned-in text in the pixels (the BurnedInAnnotation header check stays)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    label_options = {}
    if args.vindr_aggregation:
        if args.dataset != "vindr":
            print("--vindr-aggregation only applies to --dataset vindr", file=sys.stderr)
            return 2
        label_options["aggregation"] = args.vindr_aggregation
    cfg = IngestConfig(
        dataset=args.dataset,
        src=args.src,
        out=args.out,
        size=args.size,
        workers=args.workers,
        secret_file=args.secret_file,
        split_source=args.split_source,
        seed=args.seed,
        pacs_filter=PacsFilter(
            modalities=args.modalities,
            views=args.views,
            body_parts=args.body_parts,
            allow_missing_body_part=args.allow_missing_body_part,
            allow_missing_view=args.allow_missing_view,
            allow_for_processing=args.allow_for_processing,
        ),
        label_options=label_options,
        new_secret=args.new_secret,
        allow_burned_in=args.allow_burned_in,
        detect_burned_in_text=not args.no_text_detection,
        max_pixel_bytes=int(args.max_pixel_mb * 2**20) if args.max_pixel_mb > 0 else None,
        phi_path_map=args.phi_path_map,
        progress=not args.no_progress,
    )
    try:
        summary = ingest(cfg)
    except (IngestError, DeidSecretError) as err:
        print(f"ingest: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    print(f"manifest: {cfg.out / 'manifest.json'}   quarantine: {cfg.out / 'quarantine.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
