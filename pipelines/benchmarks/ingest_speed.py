"""Ingestion speed and memory: our DICOM decode + resize + write, against dcmtk's ``dcm2pnm``, in one run.

    python -m pipelines.benchmarks.ingest_speed [--copies 24] [--pacs-n 24] [--pacs-size 1024] [--workers 1 2]
        [--size 256]

Two trees of DICOM files, every file a keepable frontal chest radiograph:

- ``RG1_UNCR``: ``--copies`` copies of the real ``RG1_UNCR.dcm`` from ``pydicom-data`` (1955 x 1841, 16-bit,
  uncompressed), each with its own SOP/Series/Study Instance UIDs so that none is a duplicate;
- ``phantom PACS``: the keepable images of a synthetic PACS export (``write_layout("pacs")``: 12 transfer
  syntaxes, MONOCHROME1/2, VOI LUT variants) at ``--pacs-size`` px, copied out of the export's rejects, less
  those ``dcm2pnm`` cannot render (listed), so that both tools process the same files.

For each tree: ``mlvicx_monai.data.ingest`` (``dataset=pacs``, cache side ``--size``) with each ``--workers``
count, each in a fresh process whose wall time of the ingest call and peak RSS (its own + its workers') are
reported; and ``dcm2pnm --write-png +Wi 1 +Sxv <size>`` run once per file, sequentially (one process per file,
as a shell loop would). Memory vs number of files: the one-worker ingest of the RG1_UNCR tree is repeated
with twice the copies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


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


def _peak_rss_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # Linux: KiB


def _run_one(src: Path, out: Path, workers: int, size: int, secret: Path) -> None:
    """Child process: one ingestion, prints ``RESULT {json}``."""
    from mlvicx_monai.data.ingest import IngestConfig, ingest

    cfg = IngestConfig(dataset="pacs", src=src, out=out, size=size, workers=workers, secret_file=secret, new_secret=True,
                       progress=False)
    start = time.perf_counter()
    summary = ingest(cfg)
    seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({"seconds": seconds, "kept": summary.get("ingested"), "quarantined": summary.get("quarantined"),
                                  "peak_rss_mib": _peak_rss_mib()}))


def _ingest(src: Path, out: Path, workers: int, size: int, secret: Path) -> dict:
    command = [sys.executable, "-m", "pipelines.benchmarks.ingest_speed", "--_one", str(src), str(out), str(workers),
               str(size), str(secret)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ingestion of {src} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _dcm2pnm_supported(folder: Path, size: int, work: Path) -> list[str]:
    """Move the files dcm2pnm cannot render (e.g. JPEG 2000: not in the free dcmtk) out of ``folder``; returns
    their transfer syntax names."""
    import pydicom

    dropped = []
    for path in sorted(folder.iterdir()):
        done = subprocess.run(["dcm2pnm", "--write-png", "+Wi", "1", "+Sxv", str(size), str(path), str(work / "probe.png")],
                              capture_output=True, check=False)
        if done.returncode != 0:
            dropped.append(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name)
            path.unlink()
    return dropped


def _dcm2pnm(files: list[Path], out: Path, size: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(files):
        subprocess.run(["dcm2pnm", "--write-png", "+Wi", "1", "+Sxv", str(size), str(path), str(out / f"{i}.png")],
                       check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_one":
        _run_one(Path(argv[1]), Path(argv[2]), int(argv[3]), int(argv[4]), Path(argv[5]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m pipelines.benchmarks.ingest_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=24, help="copies of RG1_UNCR.dcm")
    parser.add_argument("--pacs-n", type=int, default=24, help="keepable images of the phantom PACS export")
    parser.add_argument("--pacs-size", type=int, default=1024, help="nominal side of the phantom images (px)")
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--size", type=int, default=256, help="cache side (ingest) / output width (dcm2pnm)")
    args = parser.parse_args(argv)
    if shutil.which("dcm2pnm") is None:
        print("dcm2pnm (Debian package dcmtk) is not installed: apt-get install dcmtk", file=sys.stderr)
        return 2
    from pydicom.data import get_testdata_file

    rg1 = get_testdata_file("RG1_UNCR.dcm")
    if rg1 is None:
        print("RG1_UNCR.dcm not found: pip install pydicom-data", file=sys.stderr)
        return 2
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
        print(f"cpu cores: {os.cpu_count()}; cache side {args.size}; times are wall clock of the work itself\n")
        print(f"{'tree':<14} {'files':>5}  {'tool':<22} {'s':>7} {'files/s':>8} {'x dcm2pnm':>9} {'peak RSS MiB':>12}")
        for name, src in trees.items():
            files = sorted(src.iterdir())
            ref = _dcm2pnm(files, work / "png" / name.replace(" ", "_"), args.size)
            print(f"{name:<14} {len(files):>5}  {'dcm2pnm (1 process)':<22} {ref:>7.2f} {len(files) / ref:>8.2f} {1.0:>9.2f} {'':>12}")
            base = None
            for workers in args.workers:
                result = _ingest(src, work / "out" / f"{name.replace(' ', '_')}-{workers}", workers, args.size, secret)
                if result["kept"] != len(files):
                    raise RuntimeError(f"{name}: ingestion kept {result['kept']} of {len(files)} files")
                base = base or result["seconds"]
                label = f"ingest, {workers} worker{'s' if workers > 1 else ''}"
                print(f"{name:<14} {len(files):>5}  {label:<22} {result['seconds']:>7.2f} {len(files) / result['seconds']:>8.2f} "
                      f"{ref / result['seconds']:>9.2f} {result['peak_rss_mib']:>12.0f}"
                      + (f"   scaling {base / result['seconds']:.2f}x" if workers > 1 else ""))
        double = work / "rg1x2"
        _unique_copies(Path(rg1), double, 2 * args.copies)
        small = _ingest(trees["RG1_UNCR"], work / "out" / "mem-1", 1, args.size, secret)
        large = _ingest(double, work / "out" / "mem-2", 1, args.size, secret)
        print(f"\npeak RSS, one worker: {args.copies} files {small['peak_rss_mib']:.0f} MiB, {2 * args.copies} files "
              f"{large['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
