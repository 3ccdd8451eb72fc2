"""Build, check and show the versioned split/label manifests in ``data_manifests/``.

    python -m pipelines.manifests build --dataset nih --src ../shared/reference-labels/nih [--seed 0] [--version v1]
    python -m pipelines.manifests check [--dataset nih] [--root data_manifests]
    python -m pipelines.manifests show --dataset nih [--version latest]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from mlvicx_monai.data.datasets import ADAPTER_NAMES, DatasetError
from mlvicx_monai.data.manifests import (
    ManifestError,
    build_manifest,
    check_manifest,
    load_manifest,
    manifest_dirs,
    manifest_id,
    summary,
)
from mlvicx_monai.data.splits import FractionError, LeakageError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.manifests", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build one manifest from the dataset's label files")
    build.add_argument("--dataset", required=True, choices=ADAPTER_NAMES)
    build.add_argument("--src", required=True, type=Path, help="folder with the official label files")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--version", default="v1")
    build.add_argument("--out", type=Path, default=Path("data_manifests"))
    build.add_argument("--aggregation", choices=("majority", "any", "all"),
                       help="VinDr reader aggregation (default: majority)")
    build.add_argument("--force", action="store_true", help="replace an existing, different manifest of this version")
    check = sub.add_parser("check", help="re-verify committed manifests (checksums, leakage, nesting, counts)")
    check.add_argument("--root", type=Path, default=Path("data_manifests"))
    check.add_argument("--dataset", choices=ADAPTER_NAMES, help="only this dataset (all versions)")
    show = sub.add_parser("show", help="print a manifest's rules and counts")
    show.add_argument("--dataset", required=True, help="dataset name or a manifest folder")
    show.add_argument("--version", default="latest")
    show.add_argument("--root", type=Path, default=Path("data_manifests"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            options = {"aggregation": args.aggregation} if args.aggregation else {}
            if options and args.dataset != "vindr":
                raise ManifestError("--aggregation applies to --dataset vindr only")
            start = time.perf_counter()
            folder = build_manifest(
                args.dataset, args.src, seed=args.seed, version=args.version, out=args.out,
                command="python -m pipelines.manifests " + shlex.join(argv), overwrite=args.force, **options,
            )
            meta, _ = load_manifest(folder)
            print(summary(meta))
            print(f"wrote {folder} in {time.perf_counter() - start:.1f} s")
            return 0
        if args.command == "check":
            folders = [d for d in manifest_dirs(args.root) if args.dataset is None or d.parent.name == args.dataset]
            if not folders:
                print(f"no manifests under {args.root}", file=sys.stderr)
                return 1
            failed = 0
            for folder in folders:
                try:
                    result = check_manifest(folder)
                    print(f"OK   {result['id']}  splits {result['splits']}  fractions {result['fractions']}")
                except (ManifestError, LeakageError, FractionError, KeyError, ValueError) as err:
                    failed += 1
                    print(f"FAIL {folder}: {type(err).__name__}: {err}")
            print(f"{len(folders) - failed} manifests OK, {failed} failed")
            return 1 if failed else 0
        meta, _ = load_manifest(args.dataset, args.version, root=args.root)
        print(summary(meta))
        print(f"id: {manifest_id(meta)}")
        return 0
    except (ManifestError, DatasetError, LeakageError, FractionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
