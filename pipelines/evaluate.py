"""Transfer-evaluation sweep: run a grid of downstream bundles, then tabulate, test and plot the results.

    python -m pipelines.evaluate --out runs/evaluate \\
        --datasets demo --protocols frozen --fractions 0.1 --seeds 0 1 2 \\
        --pretrained mlvicx=runs/pretrain/encoder.pt --pretrained random=none

Every cell (dataset x protocol x fraction x pretrained source x seed) is one
``python -m monai.bundle run --config_file bundles/mlvicx_cxr/configs/classify.json ...``
(``--task segment``: segment.json) into
``OUT/cells/<dataset>/<protocol>/<source>/f<fraction>/seed<seed>/``. A cell whose ``results.json`` exists is
skipped, so rerunning the command resumes the sweep. Extra bundle overrides go after ``--set`` (``--set
max_epochs=5 image_size=96``). Then, under ``OUT``:

- ``table.md`` / ``table.csv``: per dataset and protocol, rows = pretrained source per label fraction (the shape
  of the paper's Tables I and II), columns = per-class AUC and the mean AUC (segmentation: per-image mean Dice and
  global Dice; RSNA also accuracy), each as mean +- sample std over seeds;
- ``ttest.md`` / ``ttest.csv``: paired t-test (``scipy.stats.ttest_rel``, two-sided) of the headline metric between
  two pretrained sources (``--compare A B``, default the first two), paired by seed, per cell (paper section V-A).
  With ``--resample-fractions`` (the default) seed ``s`` also draws its own labelled subset (bundle
  ``fraction_seed=s``: nested over fractions, patient-level; both sources of a pair train on the same subset), so
  the test's variance includes the choice of the labelled images; ``--no-resample-fractions`` keeps the
  datalist's fixed subset (only the training randomness varies). ``ttest.md`` states which, and every
  ``results.json`` records its subset (``training_subset``: seed, images, patients, SHA-256 of the ids);
- ``metric_vs_fraction.png``: headline metric against label fraction, one line per source, error bars = std;
- ``summary.json``: every cell, its status and its results path.

Exit status 1 when a cell failed (its log is ``<cell>/bundle.log``); the tables then cover the cells that ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlvicx_monai.utils.atomic import atomic_write_csv

logger = logging.getLogger("pipelines.evaluate")

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"classify": "bundles/mlvicx_cxr/configs/classify.json", "segment": "bundles/mlvicx_cxr/configs/segment.json"}
HEADLINE = {"classify": "mean_auc", "segment": "mean_dice_per_image"}


@dataclass(frozen=True)
class Cell:
    """One bundle run of the grid."""

    dataset: str
    protocol: str
    fraction: float
    source: str
    seed: int

    def folder(self, out: Path) -> Path:
        return out / "cells" / self.dataset / self.protocol / self.source / f"f{self.fraction:g}" / f"seed{self.seed}"

    def run_name(self, task: str) -> str:
        return f"{task}-{self.dataset}-{self.protocol}-{self.source}-f{self.fraction:g}-s{self.seed}"


def _source(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--pretrained takes NAME=SOURCE (a path to encoder.pt, an MLflow URI or none), got {text!r}"
        )
    name, value = text.split("=", 1)
    if not name or not value or "/" in name:
        raise argparse.ArgumentTypeError(f"--pretrained NAME=SOURCE needs a non-empty name without '/', got {text!r}")
    return name, value


def _override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE bundle overrides, got {text!r}")
    key, value = text.split("=", 1)
    return key.lstrip("-"), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default runs/evaluate)")
    parser.add_argument("--task", choices=sorted(BUNDLES), default="classify")
    parser.add_argument(
        "--datasets", nargs="+", default=["demo"], help="bundle 'dataset' values (demo, nih, vindr, rsna, siim)"
    )
    parser.add_argument("--data-dir", default=None, help="bundle 'dataset_dir' (default: the bundle's own)")
    parser.add_argument("--protocols", nargs="+", default=["frozen"], choices=["frozen", "finetune"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--pretrained", action="append", type=_source, required=True, metavar="NAME=SOURCE",
        help="a pretrained source to compare (repeat): NAME=path/to/encoder.pt, NAME=models:/..., NAME=none",
    )
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                        help="the two source names of the paired t-test (default: the first two --pretrained)")
    parser.add_argument("--set", nargs="+", type=_override, default=[], metavar="KEY=VALUE",
                        help="extra bundle overrides for every cell (e.g. max_epochs=5)")
    parser.add_argument("--tracking-uri", default="", help="bundle 'tracking_uri' (default: the bundle's)")
    parser.add_argument(
        "--resample-fractions", action=argparse.BooleanOptionalAction, default=True,
        help="each seed draws its own nested patient-level label-fraction subset (bundle fraction_seed = seed; "
        "default); --no-resample-fractions: every seed trains on the datalist's fixed subset",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: none)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands of the cells to run and stop")
    return parser


def _command(args: argparse.Namespace, cell: Cell, sources: dict[str, str], folder: Path) -> list[str]:
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", BUNDLES[args.task],
        "--dataset", cell.dataset, "--protocol", cell.protocol, "--fraction", repr(cell.fraction),
        "--seed", str(cell.seed), "--pretrained", sources[cell.source], "--output_dir", str(folder),
        "--run_name", cell.run_name(args.task), "--register_model", "False",
    ]
    if args.resample_fractions:
        command += ["--fraction_seed", str(cell.seed)]
    if args.data_dir:
        command += ["--dataset_dir", str(args.data_dir)]
    if args.tracking_uri:
        command += ["--tracking_uri", args.tracking_uri]
    for key, value in args.set:
        command += [f"--{key}", value]
    return command


def run_cells(args: argparse.Namespace, cells: list[Cell], sources: dict[str, str]) -> list[dict[str, Any]]:
    """Run the cells that have no results.json yet; returns one status record per cell."""
    records = []
    for i, cell in enumerate(cells, start=1):
        folder = cell.folder(args.out)
        results = folder / "results.json"
        record = {**asdict(cell), "folder": str(folder), "results": str(results)}
        if results.is_file():
            record["status"] = "skipped (results.json exists)"
            logger.info("[%d/%d] %s: done already", i, len(cells), cell.run_name(args.task))
            records.append(record)
            continue
        command = _command(args, cell, sources, folder)
        if args.dry_run:
            print(" ".join(command))
            record["status"] = "dry run"
            records.append(record)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("[%d/%d] %s", i, len(cells), cell.run_name(args.task))
        t0 = time.perf_counter()
        with open(folder / "bundle.log", "w") as log:
            try:
                proc = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        record["seconds"] = round(time.perf_counter() - t0, 1)
        if code == 0 and results.is_file():
            record["status"] = "ran"
        else:
            record["status"] = f"failed ({code}); see {folder / 'bundle.log'}"
            logger.error("%s failed (%s); log: %s", cell.run_name(args.task), code, folder / "bundle.log")
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------------------
# collecting and tabulating
# ---------------------------------------------------------------------------------------------------------


def cell_metrics(task: str, results: dict[str, Any]) -> dict[str, float | None]:
    """Column name -> value of one results.json (per-class AUC and mean AUC; or the two Dice numbers)."""
    test = results["test"]
    if task == "segment":
        return {"mean_dice_per_image": test["mean_dice_per_image"], "global_dice": test["global_dice"]}
    values: dict[str, float | None] = dict(test["per_class_auc"])
    values["mean_auc"] = test["mean_auc"]
    if "accuracy" in test:
        values["accuracy"] = test["accuracy"]
    return values


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None, None, 0
    mean = float(np.mean(finite))
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return mean, std, len(finite)


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"


def subset_of(results: dict[str, Any]) -> dict[str, Any] | None:
    """The training subset a results.json records (``training_subset``; ``fraction_seed`` None = fixed subset), or
    ``None`` for a results.json written before subsets were recorded."""
    if "training_subset" in results:
        return results["training_subset"]
    return {"fraction_seed": results["fraction_seed"]} if "fraction_seed" in results else None


def collect_subsets(out: Path, cells: list[Cell]) -> dict[tuple[str, str, float, str], dict[int, dict[str, Any]]]:
    """(dataset, protocol, fraction, source) -> seed -> the training subset of the cell's results.json."""
    table: dict[tuple[str, str, float, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for cell in cells:
        path = cell.folder(out) / "results.json"
        if path.is_file():
            subset = subset_of(json.loads(path.read_text()))
            if subset is not None:
                table[(cell.dataset, cell.protocol, cell.fraction, cell.source)][cell.seed] = subset
    return table


Table = dict[tuple[str, str, float, str], dict[int, dict[str, float | None]]]
"""(dataset, protocol, fraction, source) -> seed -> metrics."""


def collect(task: str, out: Path, cells: list[Cell]) -> Table:
    """(dataset, protocol, fraction, source) -> seed -> metrics, for every cell with a results.json."""
    table: Table = defaultdict(dict)
    for cell in cells:
        path = cell.folder(out) / "results.json"
        if path.is_file():
            key = (cell.dataset, cell.protocol, cell.fraction, cell.source)
            table[key][cell.seed] = cell_metrics(task, json.loads(path.read_text()))
    return table


def write_table(task: str, out: Path, data: dict, sources: list[str]) -> list[dict[str, Any]]:
    """``table.md`` and ``table.csv``; returns the CSV rows."""
    rows: list[dict[str, Any]] = []
    md = [f"# Transfer results ({task}): mean ± std over seeds\n"]
    groups = sorted({(d, p) for d, p, _, _ in data})
    for dataset, protocol in groups:
        keys = sorted(k for k in data if k[:2] == (dataset, protocol))
        columns: list[str] = []
        for key in keys:
            for metrics in data[key].values():
                columns.extend(c for c in metrics if c not in columns)
        headline = HEADLINE[task]
        last = [c for c in (headline, "accuracy") if c in columns]
        columns = [c for c in columns if c not in last] + last
        md.append(f"\n## {dataset}, {protocol}\n")
        md.append("| fraction | method | seeds | " + " | ".join(columns) + " |")
        md.append("|---|---|---|" + "---|" * len(columns))
        for fraction in sorted({k[2] for k in keys}):
            for source in sources:
                key = (dataset, protocol, fraction, source)
                if key not in data:
                    continue
                per_seed = data[key]
                row: dict[str, Any] = {"dataset": dataset, "protocol": protocol, "fraction": fraction, "method": source,
                                       "seeds": " ".join(str(s) for s in sorted(per_seed))}
                cells = []
                for column in columns:
                    mean, std, n = _stats([m.get(column) for m in per_seed.values()])
                    row[f"{column} mean"], row[f"{column} std"], row[f"{column} n"] = mean, std, n
                    cells.append(_fmt(mean, std))
                rows.append(row)
                md.append(f"| {fraction:g} | {source} | {len(per_seed)} | " + " | ".join(cells) + " |")
    (out / "table.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    atomic_write_csv(out / "table.csv", rows, header=None if rows else ["dataset"])
    return rows


def _subset_mode(subsets: list[dict[str, Any]]) -> str:
    seeds = {s.get("fraction_seed") for s in subsets}
    if not subsets:
        return "unknown"
    if seeds == {None}:
        return "fixed"
    return "resampled" if None not in seeds else "mixed"


def paired_ttests(task: str, data: dict, a: str, b: str, subsets: dict | None = None) -> list[dict[str, Any]]:
    """Paired t-test of the headline metric, ``a`` vs ``b``, paired by seed, for every (dataset, protocol, fraction).

    ``subsets`` (:func:`collect_subsets`) adds per test ``subsets``: ``resampled`` (every run drew a seeded
    subset), ``fixed`` (every run used the datalist's), ``mixed`` or ``unknown``, and ``same_subset_pairs``: the
    pairs whose two runs trained on the same images (equal ``ids_sha256``).
    """
    from scipy.stats import ttest_rel  # noqa: PLC0415

    metric = HEADLINE[task]
    tests = []
    for dataset, protocol, fraction in sorted({k[:3] for k in data}):
        runs_a = data.get((dataset, protocol, fraction, a), {})
        runs_b = data.get((dataset, protocol, fraction, b), {})
        seeds = sorted(s for s in set(runs_a) & set(runs_b)
                       if runs_a[s].get(metric) is not None and runs_b[s].get(metric) is not None)
        x = np.array([runs_a[s][metric] for s in seeds], dtype=float)
        y = np.array([runs_b[s][metric] for s in seeds], dtype=float)
        record: dict[str, Any] = {"dataset": dataset, "protocol": protocol, "fraction": fraction, "metric": metric,
                                  "a": a, "b": b, "n_pairs": len(seeds), "seeds": " ".join(map(str, seeds)),
                                  "mean_a": float(x.mean()) if len(x) else None,
                                  "mean_b": float(y.mean()) if len(y) else None,
                                  "mean_diff": float((x - y).mean()) if len(x) else None,
                                  "t": None, "p_value": None, "note": ""}
        pairs = [(subsets or {}).get((dataset, protocol, fraction, src), {}).get(s) for s in seeds for src in (a, b)]
        known = [p for p in pairs if p is not None]
        record["subsets"] = _subset_mode(known) if len(known) == len(pairs) else "unknown"
        record["same_subset_pairs"] = sum(
            1 for k in range(0, len(known) - 1, 2)
            if known[k].get("ids_sha256") and known[k].get("ids_sha256") == known[k + 1].get("ids_sha256")
        ) if len(known) == len(pairs) else None
        if len(seeds) < 2:
            record["note"] = "needs at least 2 paired seeds"
        elif np.allclose(x - y, (x - y)[0]):
            record["note"] = "constant differences: t undefined"
        else:
            result = ttest_rel(x, y)
            record["t"], record["p_value"] = float(result.statistic), float(result.pvalue)
        tests.append(record)
    return tests


SUBSET_TEXT = {
    "resampled": "Labelled subsets resampled: each seed drew its own nested, patient-level label-fraction subset "
    "(fraction_seed = seed; the two runs of a pair share it), so the variance includes the choice of the labelled "
    "images as well as the training randomness.",
    "fixed": "Labelled subsets fixed: every run trained on the datalist's one label-fraction subset, so the test "
    "covers the training randomness only, not the choice of the labelled images.",
    "mixed": "Labelled subsets mixed: some runs drew seeded subsets and some used the datalist's fixed one (see the "
    "subsets column); rerun the cells with one setting before reading the p-values.",
    "unknown": "Labelled subsets unknown: the results.json files do not record their training subset.",
}


def write_ttests(out: Path, tests: list[dict[str, Any]]) -> None:
    fields = ["dataset", "protocol", "fraction", "metric", "a", "b", "n_pairs", "seeds", "subsets", "same_subset_pairs",
              "mean_a", "mean_b", "mean_diff", "t", "p_value", "note"]
    atomic_write_csv(out / "ttest.csv", [{k: t.get(k) for k in fields} for t in tests], header=fields)
    modes = sorted({t.get("subsets", "unknown") for t in tests})
    md = ["# Paired t-test between pretrained sources (scipy.stats.ttest_rel, two-sided, paired by seed)\n",
          "What is tested: for each (dataset, protocol, label fraction), the headline metric of source A minus source "
          "B, paired over the downstream seeds (one pair = both sources trained with the same seed). "
          + SUBSET_TEXT.get(modes[0] if len(modes) == 1 else "mixed", SUBSET_TEXT["mixed"]) + "\n",
          "| dataset | protocol | fraction | metric | A | B | pairs | subsets | mean A | mean B | mean A-B | t | p |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    num = lambda v, f=".4f": "n/a" if v is None else format(v, f)  # noqa: E731
    for t in tests:
        md.append(f"| {t['dataset']} | {t['protocol']} | {t['fraction']:g} | {t['metric']} | {t['a']} | {t['b']} | "
                  f"{t['n_pairs']} | "
                  f"{t.get('subsets', 'unknown')} | "
                  f"{num(t['mean_a'])} | {num(t['mean_b'])} | {num(t['mean_diff'])} | {num(t['t'], '.3f')} | "
                  f"{num(t['p_value'])}{' (' + t['note'] + ')' if t['note'] else ''} |")
    (out / "ttest.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def write_plot(task: str, out: Path, data: dict, sources: list[str]) -> Path:
    """Headline metric vs label fraction, one panel per (dataset, protocol), one line per source."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    metric = HEADLINE[task]
    groups = sorted({(d, p) for d, p, _, _ in data}) or [("none", "none")]
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (dataset, protocol) in zip(axes[0], groups):
        for source in sources:
            points = sorted((k[2], _stats([m.get(metric) for m in v.values()])) for k, v in data.items()
                            if k[:2] == (dataset, protocol) and k[3] == source)
            points = [(f, s) for f, s in points if s[0] is not None]
            if not points:
                continue
            xs = [f * 100 for f, _ in points]
            ys = [s[0] for _, s in points]
            es = [s[1] or 0.0 for _, s in points]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=source)
        ax.set_xscale("log")
        ax.set_xlabel("label fraction (%)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(f"{dataset}, {protocol}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "metric_vs_fraction.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sources = dict(args.pretrained)
    if len(sources) != len(args.pretrained):
        raise SystemExit("error: --pretrained names must be distinct")
    names = list(sources)
    compare = tuple(args.compare) if args.compare else tuple(names[:2])
    if len(compare) == 2 and not set(compare) <= set(names):
        raise SystemExit(f"error: --compare {compare} must name two of the --pretrained sources {names}")
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        raise SystemExit(f"error: fractions must be in (0, 1], got {bad}")
    args.out.mkdir(parents=True, exist_ok=True)
    cells = [Cell(d, p, f, s, seed) for d, p, f, s, seed in
             itertools.product(args.datasets, args.protocols, args.fractions, names, args.seeds)]
    records = run_cells(args, cells, sources)
    if args.dry_run:
        return 0
    data = collect(args.task, args.out, cells)
    write_table(args.task, args.out, data, names)
    subsets = collect_subsets(args.out, cells)
    tests = paired_ttests(args.task, data, *compare, subsets=subsets) if len(compare) == 2 else []
    write_ttests(args.out, tests)
    plot = write_plot(args.task, args.out, data, names)
    summary = {"task": args.task, "sources": sources, "compare": list(compare),
               "resample_fractions": args.resample_fractions,
               "cells": records, "ttests": tests,
               "outputs": ["table.md", "table.csv", "ttest.md", "ttest.csv", plot.name]}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
    print((args.out / "table.md").read_text())
    print((args.out / "ttest.md").read_text())
    failed = [r for r in records if r["status"].startswith("failed")]
    if failed:
        logger.error("%d of %d cells failed: %s", len(failed), len(records), [r["folder"] for r in failed])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
