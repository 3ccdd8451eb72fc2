"""Peak memory of reading one file, per bomb file and per ingestion worker (issue 9, item 7).

    python -m pipelines.benchmarks.ingest_memory [--uncapped]

Writes, in a temporary folder, the bombs of the hostile test corpus (a ~130 KB deflated file that inflates to
8000 x 8000 x 16 bit; 1.5 MB of RLE data under a header claiming 40000 x 40000), deflated bombs the default header
cap of 48 MiB admits (4096 x 4096 and 4900 x 4900, 16 bit) and one just over it (5600 x 5600), and the real
1955 x 1841 ``RG1_UNCR.dcm``. For each file,
in a fresh process each: the peak RSS (``ru_maxrss``) of ``read_dicom`` alone, of ``read_dicom + decode_cxr``, and of
the whole per-file work of ingestion (``read_source``: header cap, filter, decoding, burned-in text detector, pixel
hash), above an idle interpreter with the same imports. Then one ``python -m pipelines.ingest --workers 2`` of a
folder of all of them, and the peak RSS of each worker it reports. ``--uncapped`` also decodes an 8000 x 8000
deflated file without the cap (what the cap saves).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("imports", "read_dicom", "decode_cxr", "read_source")


def _child(stage: str, path: str, max_mb: float) -> None:
    import resource

    from mlvicx_monai.data.dicom import CXRDecodeError, decode_cxr, read_dicom
    from mlvicx_monai.data.rejections import FileRejected
    from mlvicx_monai.data.sources import SourcePolicy, read_source

    limit = int(max_mb * 2**20) if max_mb > 0 else None
    outcome = "ok"
    try:
        if stage == "read_dicom":
            read_dicom(path, max_pixel_bytes=limit)
        elif stage == "decode_cxr":
            decode_cxr(read_dicom(path, max_pixel_bytes=limit), path)
        elif stage == "read_source":
            read_source(path, SourcePolicy(max_pixel_bytes=limit))
    except (CXRDecodeError, FileRejected) as err:
        outcome = err.code
    print("RESULT " + json.dumps({"outcome": outcome,
                                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def _measure(stage: str, path: Path, max_mb: float) -> dict:
    done = subprocess.run([sys.executable, "-m", "pipelines.benchmarks.ingest_memory", "--_child", stage, str(path),
                           str(max_mb)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        return {"outcome": f"process died ({done.returncode})", "peak_mib": float("nan")}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _child(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uncapped", action="store_true", help="also decode the 8000 x 8000 bomb without the cap")
    parser.add_argument("--max-pixel-mb", type=float, default=48.0, help="the header cap (default: ingestion's)")
    args = parser.parse_args(argv)

    from pydicom.data import get_testdata_file

    from tests.data.hostile_corpus import _claimed_bomb, _deflate_bomb

    with tempfile.TemporaryDirectory(prefix="ingest-memory-") as tmp:
        src = Path(tmp) / "src"
        files = {
            "deflate bomb 8000x8000 (125 KB)": src / "deflated8000",
            "header claims 40000x40000 (1.5 MB)": src / "claim40000",
            "deflated 4096x4096 (admitted)": src / "deflated4096",
            "deflated 4900x4900 (admitted, 46 MiB)": src / "deflated4900",
            "deflated 5600x5600 (60 MiB, over the cap)": src / "deflated5600",
            "RG1_UNCR.dcm 1955x1841": src / "rg1.dcm",
        }
        _deflate_bomb(files["deflate bomb 8000x8000 (125 KB)"], 1, 8000, 8000)
        _claimed_bomb(files["header claims 40000x40000 (1.5 MB)"], 2)
        _deflate_bomb(files["deflated 4096x4096 (admitted)"], 3, 4096, 4096, ramp=True)
        _deflate_bomb(files["deflated 4900x4900 (admitted, 46 MiB)"], 4, 4900, 4900, ramp=True)
        _deflate_bomb(files["deflated 5600x5600 (60 MiB, over the cap)"], 5, 5600, 5600, ramp=True)
        rg1 = get_testdata_file("RG1_UNCR.dcm")
        if rg1:
            files["RG1_UNCR.dcm 1955x1841"].write_bytes(Path(rg1).read_bytes())
        else:
            del files["RG1_UNCR.dcm 1955x1841"]
        baseline = _measure("imports", next(iter(files.values())), args.max_pixel_mb)["peak_mib"]
        print(f"peak RSS per file, fresh process each (idle interpreter with the imports: {baseline:.0f} MiB); "
              f"cap --max-pixel-mb {args.max_pixel_mb:g}")
        print(f"  {'file':<40} {'size':>9}  " + "  ".join(f"{s:>20}" for s in STAGES[1:]))
        for name, path in files.items():
            cells = []
            for stage in STAGES[1:]:
                r = _measure(stage, path, args.max_pixel_mb)
                cells.append(f"{r['peak_mib']:7.0f} MiB {r['outcome'][:9]:>9}")
            print(f"  {name:<40} {path.stat().st_size / 2**20:7.2f}MB  " + "  ".join(f"{c:>20}" for c in cells))
        if args.uncapped:  # the bomb with a ramp instead of zeros, so that decoding goes to the end
            ramp = Path(tmp) / "ramp8000"
            _deflate_bomb(ramp, 6, 8000, 8000, ramp=True)
            r = _measure("decode_cxr", ramp, 0)
            print("  without the cap, decode_cxr of an 8000x8000 deflated file "
                  f"({ramp.stat().st_size / 2**20:.1f} MB): "
                  f"{r['peak_mib']:.0f} MiB ({r['outcome']})")

        out = Path(tmp) / "out"
        secret = Path(tmp) / "secret"
        done = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--dataset", "pacs", "--src", str(src),
                               "--out", str(out), "--workers", "2", "--secret-file", str(secret), "--new-secret",
                               "--no-progress", "--max-pixel-mb", str(args.max_pixel_mb)],
                              capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        match = re.search(r"peak RSS per worker process: ([\d, ]+) MiB", done.stderr)
        summary = json.loads(done.stdout[: done.stdout.rindex("}") + 1]) if done.returncode == 0 else {}
        print(f"ingest --workers 2 of these {len(files)} files: peak RSS per worker "
              f"{match.group(1) if match else '?'} MiB; outcome {summary.get('quarantine_by_code')}, "
              f"{summary.get('ingested')} ingested")
    return 0


if __name__ == "__main__":
    sys.exit(main())
