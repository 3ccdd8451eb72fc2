"""Ingestion speed and memory: our DICOM decode + resize + write, against dcmtk's ``dcm2pnm``, in one run.

    python -m pipelines.benchmarks.ingest_speed [--copies 24] [--pacs-n 24] [--pacs-size 1024] [--workers 1 2]
        [--size 256] [--rounds 3] [--baseline DIR] [--stages] [--no-text-detection]

Two trees of DICOM files, every file a keepable frontal chest radiograph:

- ``RG1_UNCR``: ``--copies`` copies of the real ``RG1_UNCR.dcm`` from ``pydicom-data`` (1955 x 1841, 16-bit,
  uncompressed), each with its own SOP/Series/Study Instance UIDs so that none is a duplicate;
- ``phantom PACS``: the keepable images of a synthetic PACS export (``write_layout("pacs")``: 12 transfer
  syntaxes, MONOCHROME1/2, VOI LUT variants) at ``--pacs-size`` px, copied out of the export's rejects, less
  those ``dcm2pnm`` cannot render (listed), so that both tools process the same files.

For each tree, ``--rounds`` rounds; in each round, in an order that rotates from round to round (the machine may
be shared: every variant sees the same mix of load): ``dcm2pnm --write-png +Wi 1 +Sxv <size>`` once per file,
sequentially (one process per file, as a shell loop would), and ``mlvicx_monai.data.ingest`` (``dataset=pacs``,
cache side ``--size``) with each ``--workers`` count, each in a fresh process; with ``--baseline DIR`` (another
checkout, e.g. ``git archive <commit> | tar -x -C DIR``) that tree's ingestion too, in the same rounds. Medians
over the rounds of:

- ``files/s``: files / wall time of the whole ``ingest()`` call (start-up of the workers, the final manifest
  assembly included); ``x dcm2pnm``: the ratio to dcm2pnm's files/s *of the same round*;
- ``steady``: files/s while the files flow, from the modification times of the cached PNGs (10th to 90th
  percentile of the files; excludes start-up and assembly); ``scaling``: files/s (end to end) of n workers over
  one worker's, same round; ``start/end s``: seconds before the first cached file (workers' start-up) and
  after the last (the manifest assembly);
- ``CPU ms/file``: process CPU seconds (user + system, the ingest process and its workers; for dcm2pnm its
  processes) per file: less sensitive to other load on the machine than wall time;
- ``peak RSS``: of the ingest process and of its largest worker process.

Memory vs number of files: the one-worker ingest of the RG1_UNCR tree is repeated with twice the copies; the
difference of the two runs' CPU seconds per extra file is the marginal per-file cost, free of the fixed costs.
``--stages`` adds per-stage CPU times of this tree's code on one RG1_UNCR copy and on the phantom files.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve()
THIS_TREE = HERE.parents[2]


def _unique_copies(source: Path, folder: Path, n: int) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.save_as(folder / f"IMG{i:05d}.dcm", enforce_file_format=True)


def _phantom_keeps(folder: Path, n: int, size: int, work: Path) -> None:
    from mlvicx_monai.data.phantom import write_layout

    write_layout("pacs", work / "pacs", n=n, seed=0, size=size, overwrite=True)
    truth = json.loads((work / "pacs" / "truth.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(e for e in truth["files"] if e["outcome"] == "keep"):
        shutil.copyfile(work / "pacs" / "export" / entry["path"], folder / f"IMG{i:05d}.dcm")


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over ``exec`` from the
    forking process, so a child started by a large benchmark process reported the benchmark's size (the 239 MiB
    of earlier runs of this script)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: KiB on Linux, bytes on macOS


def _timeline(out: Path, start_ns: int, end_ns: int) -> dict[str, float | None]:
    """From the cached PNGs' write times: files/s between the 10th and 90th percentile of the files
    (``steady``), seconds from the start to the first file (``start_s``: worker start-up, planning) and from the
    last file to the end (``end_s``: manifest assembly)."""
    stamps = sorted(p.stat().st_mtime_ns for p in (out / "images").rglob("*.png"))
    if not stamps:
        return {"steady": None, "start_s": None, "end_s": None}
    lo, hi = len(stamps) // 10, len(stamps) - 1 - len(stamps) // 10
    rate = (hi - lo) / ((stamps[hi] - stamps[lo]) / 1e9) if hi > lo and stamps[hi] > stamps[lo] else None
    return {"steady": rate, "start_s": (stamps[0] - start_ns) / 1e9, "end_s": (end_ns - stamps[-1]) / 1e9}


def _run_one(src: Path, out: Path, workers: int, size: int, secret: Path) -> None:
    """Child process: one ingestion with whichever ``mlvicx_monai`` is on the path; prints ``RESULT {json}``."""
    from mlvicx_monai.data.ingest import IngestConfig, ingest

    cfg = IngestConfig(dataset="pacs", src=src, out=out, size=size, workers=workers, secret_file=secret,
                       new_secret=True, progress=False,
                       detect_burned_in_text=os.environ.get("MLVICX_BENCH_TEXT_DETECTION", "1") == "1")
    cpu0 = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN)
    start_ns = time.time_ns()
    start = time.perf_counter()
    summary = ingest(cfg)
    seconds = time.perf_counter() - start
    end_ns = time.time_ns()
    cpu = _cpu_seconds(resource.RUSAGE_SELF) + _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0  # workers are reaped
    print("RESULT " + json.dumps({
        "seconds": seconds, "cpu_seconds": cpu, **_timeline(out, start_ns, end_ns),
        "kept": summary.get("ingested"), "quarantined": summary.get("quarantined"),
        "rss_main_mib": _peak_rss_mib(),
        # largest worker; spawned workers start from a fresh interpreter, their ru_maxrss is their own (KiB)
        "rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0,
    }))


def _ingest(tree: Path, src: Path, out: Path, workers: int, size: int, secret: Path) -> dict:
    """One ingestion in a fresh process that imports ``mlvicx_monai`` from ``tree`` (this file is run by path)."""
    command = [sys.executable, str(HERE), "--_one", str(src), str(out), str(workers), str(size), str(secret)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ingestion of {src} with {tree} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    shutil.rmtree(out)
    return json.loads(lines[-1][len("RESULT "):])


def _dcm2pnm_command(size: int, path: Path, out: Path) -> list[str]:
    return ["dcm2pnm", "--write-png", "+Wi", "1", "+Sxv", str(size), str(path), str(out)]


def _dcm2pnm_supported(folder: Path, size: int, work: Path) -> list[str]:
    """Move the files dcm2pnm cannot render (e.g. JPEG 2000: not in the free dcmtk) out of ``folder``; returns
    their transfer syntax names."""
    import pydicom

    dropped = []
    for path in sorted(folder.iterdir()):
        done = subprocess.run(_dcm2pnm_command(size, path, work / "probe.png"), capture_output=True, check=False)
        if done.returncode != 0:
            dropped.append(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name)
            path.unlink()
    return dropped


def _dcm2pnm(files: list[Path], out: Path, size: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cpu0 = _cpu_seconds(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    for i, path in enumerate(files):
        subprocess.run(_dcm2pnm_command(size, path, out / f"{i}.png"), check=True, capture_output=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out)
    return {"seconds": seconds, "cpu_seconds": _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0}


def _median(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def _stages(files: list[Path], size: int, repeats: int = 5) -> dict[str, float]:
    """Median CPU ms per stage of this tree's per-file pixel work, averaged over ``files``."""
    import io

    import numpy as np
    from PIL import Image

    from mlvicx_monai.data import dicom
    from mlvicx_monai.data.ingest import _png_bytes, _resize

    def cpu_ms(fn: Callable[[], object]) -> tuple[object, float]:
        times, result = [], None
        for _ in range(repeats):
            start = time.process_time()
            result = fn()
            times.append(time.process_time() - start)
        return result, 1000.0 * statistics.median(times)

    totals: dict[str, list[float]] = {}
    for path in files:
        p = str(path)
        ds, t_read = cpu_ms(lambda: dicom.read_dicom(p))
        px = dicom._pixel_module(ds, p)
        tsyntax, _ = dicom._transfer_syntax(ds, p)
        stored, t_stored = cpu_ms(lambda: dicom._stored_values(ds, px, tsyntax, p))
        gray = dicom._grayscale_attributes(ds)
        _, t_display = cpu_ms(lambda: dicom._display(stored, gray, ds, px, p))
        (image, _), t_decode = cpu_ms(lambda: dicom.decode_cxr(ds, p))
        small, t_resize = cpu_ms(lambda: np.round(_resize(image, size) * 255.0).astype(np.uint8))
        data, t_png = cpu_ms(lambda: _png_bytes(small))
        Image.open(io.BytesIO(data)).verify()
        for key, value in (("read_dicom", t_read), ("decode_cxr", t_decode), ("  stored values", t_stored),
                           ("  LUT table + gather", t_display), ("resize + 8-bit", t_resize), ("PNG encode", t_png)):
            totals.setdefault(key, []).append(value)
    return {key: statistics.fmean(values) for key, values in totals.items()}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_one":
        _run_one(Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4]), Path(argv[5]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.benchmarks.ingest_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--copies", type=int, default=24, help="copies of RG1_UNCR.dcm")
    parser.add_argument("--pacs-n", type=int, default=24, help="keepable images of the phantom PACS export")
    parser.add_argument("--pacs-size", type=int, default=1024, help="nominal side of the phantom images (px)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--size", type=int, default=256, help="cache side (ingest) / output width (dcm2pnm)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every variant (medians are reported)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of this repository whose ingestion runs in the same rounds")
    parser.add_argument("--stages", action="store_true", help="also time each stage of this tree's pixel work")
    parser.add_argument("--no-text-detection", action="store_true",
                        help="ingest without the burned-in text detector (what it costs; never for real exports)")
    args = parser.parse_args(argv)
    if shutil.which("dcm2pnm") is None:
        print("dcm2pnm (Debian package dcmtk) is not installed: apt-get install dcmtk", file=sys.stderr)
        return 2
    if args.baseline is not None and not (args.baseline / "mlvicx_monai" / "data" / "ingest.py").is_file():
        print(f"--baseline {args.baseline} is not a checkout of this repository", file=sys.stderr)
        return 2
    if args.no_text_detection:
        os.environ["MLVICX_BENCH_TEXT_DETECTION"] = "0"  # read by the ingestion child processes
    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCR.dcm")
    if rg1 is None:
        print("RG1_UNCR.dcm not found: pip install pydicom-data", file=sys.stderr)
        return 2
    code = {"this tree": THIS_TREE}
    if args.baseline is not None:
        code["baseline"] = args.baseline.resolve()
    with tempfile.TemporaryDirectory(prefix="ingest-speed-") as tmp:
        work = Path(tmp)
        secret = work / "secret"
        trees = {"RG1_UNCR": work / "rg1", "phantom PACS": work / "phantom"}
        _unique_copies(Path(rg1), trees["RG1_UNCR"], args.copies)
        _phantom_keeps(trees["phantom PACS"], args.pacs_n, args.pacs_size, work)
        dropped = _dcm2pnm_supported(trees["phantom PACS"], args.size, work)
        if dropped:
            print(f"phantom PACS: {len(dropped)} file(s) left out, dcm2pnm cannot render them: "
                  + ", ".join(f"{n} x{dropped.count(n)}" for n in sorted(set(dropped))))
        print(f"cpu cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}; cache side {args.size}; "
              f"{args.rounds} rounds, medians\n")
        header = (f"{'tree':<13} {'files':>5}  {'code':<10} {'tool':<20} {'files/s':>8} {'x dcm2pnm':>9} {'steady':>7} "
                  f"{'scaling':>7} {'start/end s':>11} {'CPU ms/file':>11} {'RSS main/worker MiB':>19}")
        print(header)
        for name, src in trees.items():
            files = sorted(src.iterdir())
            variants: list[tuple[str, Path | None, int]] = [("dcm2pnm", None, 1)]
            variants += [(label, tree, w) for label, tree in code.items() for w in args.workers]
            runs: dict[tuple[str, int], list[dict]] = {(label, w): [] for label, _, w in variants}
            for r in range(args.rounds):
                shift = r % len(variants)
                for label, tree, workers in variants[shift:] + variants[:shift]:
                    if tree is None:
                        result = _dcm2pnm(files, work / "png", args.size)
                    else:
                        result = _ingest(tree, src, work / "out", workers, args.size, secret)
                        if result["kept"] != len(files):
                            raise RuntimeError(f"{name}: {label} kept {result['kept']} of {len(files)} files")
                    result["rate"] = len(files) / result["seconds"]
                    runs[(label, workers)].append(result)
            ref = runs[("dcm2pnm", 1)]
            for label, _, workers in variants:
                rows = runs[(label, workers)]
                ratio = _median([row["rate"] / base["rate"] for row, base in zip(rows, ref)])
                one = runs.get((label, min(args.workers)))
                scaling = "" if label == "dcm2pnm" or workers == min(args.workers) else (
                    f"{_median([row['rate'] / first['rate'] for row, first in zip(rows, one)]):.2f}x")
                steady = "" if label == "dcm2pnm" else f"{_median([row['steady'] for row in rows]):.1f}"
                ends = "" if label == "dcm2pnm" else (
                    f"{_median([row['start_s'] for row in rows]):.2f}/{_median([row['end_s'] for row in rows]):.2f}")
                rss = "" if label == "dcm2pnm" else (
                    f"{_median([row['rss_main_mib'] for row in rows]):.0f} / "
                    + (f"{_median([row['rss_worker_mib'] for row in rows]):.0f}" if workers > 1 else "-"))
                plural = "s" if workers > 1 else ""
                tool = "dcm2pnm, 1 process" if label == "dcm2pnm" else f"ingest, {workers} worker{plural}"
                print(f"{name:<13} {len(files):>5}  {'' if label == 'dcm2pnm' else label:<10} {tool:<20} "
                      f"{_median([row['rate'] for row in rows]):>8.1f} {ratio:>9.2f} {steady:>7} {scaling:>7} "
                      f"{ends:>11} "
                      f"{1000 * _median([row['cpu_seconds'] for row in rows]) / len(files):>11.1f} {rss:>19}")
        double = work / "rg1x2"
        _unique_copies(Path(rg1), double, 2 * args.copies)
        for label, tree in code.items():
            small = _ingest(tree, trees["RG1_UNCR"], work / "out", 1, args.size, secret)
            large = _ingest(tree, double, work / "out", 1, args.size, secret)
            marginal = 1000 * (large["cpu_seconds"] - small["cpu_seconds"]) / args.copies
            print(f"\none worker, {label}: peak RSS {small['rss_main_mib']:.0f} MiB for {args.copies} files, "
                  f"{large['rss_main_mib']:.0f} MiB for {2 * args.copies}; CPU per extra RG1_UNCR file "
                  f"{marginal:.1f} ms (the fixed start-up and assembly cost cancels)", end="")
        print()
        if args.stages:
            print("\nCPU ms per file and stage (this tree, median of 5 repeats, mean over the files):")
            stage_sets = {"RG1_UNCR": sorted(trees["RG1_UNCR"].iterdir())[:1],
                          "phantom PACS": sorted(trees["phantom PACS"].iterdir())}
            results = {name: _stages(paths, args.size) for name, paths in stage_sets.items()}
            print(f"{'stage':<22}" + "".join(f"{name:>14}" for name in results))
            for stage in next(iter(results.values())):
                print(f"{stage:<22}" + "".join(f"{values[stage]:>14.2f}" for values in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
