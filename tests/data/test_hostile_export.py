"""Issue 9 acceptance: ingestion and inference of a hostile hand-made export (tests/data/hostile_corpus.py).

Each good image is ingested once with its own pixels, every other entry gets a quarantine / errors row with the
right code (one code set for both jobs), a dead worker costs one file, and no canary planted in any PHI field or
folder name appears in any output file, output file name, stdout, stderr or log, for
``python -m pipelines.ingest --dataset pacs`` and
``python -m monai.bundle run --config_file bundles/mlvicx_cxr/configs/inference.json``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlvicx_monai.data.datalist import read_datalist
from mlvicx_monai.data.deid import Pseudonymizer, file_pseudonym
from tests.data.hostile_corpus import BINARY_CANARIES, CANARIES, unlock, write_hostile_export

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).with_name("worker_kill_hook")
#: root without the capabilities that let it read a chmod 000 folder (tests run as root)
DROP_CAPS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def _unprivileged_works(folder: Path) -> bool:
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    probe = [*DROP_CAPS, sys.executable, "-c", f"import os; os.listdir({str(folder)!r})"]
    done = subprocess.run(probe, capture_output=True, text=True)
    return done.returncode != 0 and "PermissionError" in done.stderr  # setpriv works and the folder is unreadable


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile") / "export"
    c = write_hostile_export(root)
    c.unprivileged = _unprivileged_works(root / "ZQXLOCKED^ZQXPATIENT")
    if not c.unprivileged:  # root reads the chmod 000 folder: its image is an ordinary good one then
        for e in c.entries:
            if e.needs_unprivileged:
                e.rel, e.ingest, e.infer, e.good = e.rel + "/IMG1", None, None, True
    yield c
    unlock(root)


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-secret") / "deid.secret"  # created by --new-secret


def _run(command: list[str], unprivileged: bool, hook: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *([str(HOOK)] if hook else [])])}
    env.pop("MLFLOW_TRACKING_URI", None)
    prefix = DROP_CAPS if unprivileged and os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], cwd=REPO, env=env, capture_output=True, timeout=timeout)


def _canaries_in(data: bytes) -> list[str]:
    """Canaries in text (any case; ``ZQX`` is in every ASCII one), UTF-8 or Latin-1."""
    text = data.decode("utf-8", "replace").lower()
    found = ["ZQX"] if "zqx" in text else []
    found += [c for c in CANARIES if c.lower() in text]
    found += [c for c in CANARIES if not c.isascii() and c.encode("latin-1", "ignore") and
              c.encode("latin-1", "ignore").lower() in data.lower()]  # accented names written in Latin-1
    return found


def _canaries_in_binary(data: bytes) -> list[str]:
    encoded = {(c, c.encode(code, "ignore")) for c in BINARY_CANARIES for code in ("utf-8", "latin-1")}
    return sorted({c for c, raw in encoded if len(raw) >= 6 and raw in data})


def _audit(out: Path, *streams: bytes) -> list[tuple[str, list[str]]]:
    """Canaries in the output tree (every file name; text files whole, binary ones by long canaries) and streams."""
    hits = []
    for path in sorted(out.rglob("*")):
        rel = os.fsencode(path.relative_to(out))
        found = _canaries_in(rel)
        if path.is_file():
            data = path.read_bytes()
            binary = path.suffix in (".png", ".gz", ".pt") or b"\x00" in data[:1024]
            found += _canaries_in_binary(data) if binary else _canaries_in(data)
        if found:
            hits.append((os.fsdecode(rel), found))
    for k, data in enumerate(streams):
        if _canaries_in(data):
            hits.append((f"stream {k}", _canaries_in(data)))
    return hits


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def ingested(corpus, secret, tmp_path_factory):
    work = tmp_path_factory.mktemp("hostile-ingest")
    out, path_map = work / "out", work / "operator" / "paths.PHI.csv"
    command = [sys.executable, "-m", "pipelines.ingest", "--dataset", "pacs", "--src", str(corpus.root), "--out",
               str(out), "--size", "64", "--workers", "2", "--secret-file", str(secret), "--new-secret",
               "--phi-path-map", str(path_map)]
    first = _run(command, corpus.unprivileged, hook=True)
    assert first.returncode == 0, first.stderr.decode(errors="replace")[-3000:]
    return out, path_map, first, command


def test_ingestion_of_the_hostile_export(corpus, secret, ingested):
    out, path_map, result, command = ingested
    pseudo = Pseudonymizer.from_file(secret)
    quarantine = _rows(out / "quarantine.csv")
    expected = {file_pseudonym(pseudo, e.rel): e for e in corpus.entries if e.ingest is not None}
    assert {k: r["code"] for k, r in quarantine.items()} == {k: e.ingest for k, e in expected.items()}
    assert all(len(r["reason"]) > 20 for r in quarantine.values())

    # every good image once, with its own pixels; nothing else in the cache
    document = read_datalist(out)
    entries = {e["id"]: e for key in ("training", "validation", "test") for e in document[key]}
    goods = [e for e in corpus.entries if e.good]
    assert set(entries) == {pseudo.pseudonym(e.uid, kind="image", length=20) for e in goods}
    assert len(list((out / "images").rglob("*.png"))) == len(goods)
    cached = {i: np.asarray(Image.open(out / e["image"]), dtype=np.float64) for i, e in entries.items()}
    for good in goods:
        small = np.asarray(Image.fromarray(good.pixels.astype(np.float32)).resize((64, 64), Image.Resampling.BOX))
        scores = {i: np.corrcoef(small.ravel(), c.ravel())[0, 1] for i, c in cached.items()}
        own = pseudo.pseudonym(good.uid, kind="image", length=20)
        assert max(scores, key=scores.get) == own and scores[own] > 0.9, (good.rel, scores[own])

    # no canary anywhere: outputs, their names, stdout, stderr (the log)
    assert not _audit(out, result.stdout, result.stderr)
    stderr = result.stderr.decode()
    assert "degenerate window" in stderr and "<file f" in stderr  # the warning is there, with the pseudonym
    peaks = [float(v) for v in re.search(r"peak RSS per worker process: ([\d, ]+) MiB", stderr).group(1).split(",")]
    assert peaks and max(peaks) < 1024, peaks  # bombs are refused from their header
    assert "killed by SIGKILL" in stderr

    # the operator's map (outside OUT) has the real paths, raw bytes included
    with open(path_map, newline="", encoding="utf-8") as handle:
        mapping = {row["file"]: row for row in csv.DictReader(handle)}
    latin = next(e for e in corpus.entries if "LATIN" in e.rel)
    assert bytes.fromhex(mapping[file_pseudonym(pseudo, latin.rel)]["path_hex"]) == os.fsencode(latin.rel)
    assert oct(path_map.stat().st_mode & 0o777) == "0o600"

    # a rerun redoes nothing: the dead worker's file is not retried, the outputs do not change
    before = {p: p.read_bytes() for p in (out / "manifest.json", out / "quarantine.csv")}
    again = _run(command, corpus.unprivileged, hook=True)
    assert again.returncode == 0, again.stderr.decode(errors="replace")[-3000:]
    assert " 0 to process" in again.stderr.decode()
    assert {p: p.read_bytes() for p in before} == before
    assert not _audit(out, again.stdout, again.stderr)


def test_inference_on_the_hostile_export(corpus, secret, ingested, tmp_path):
    from mlvicx_monai.networks import build_classifier
    from mlvicx_monai.networks.artifacts import save_model
    from mlvicx_monai.transforms import Preprocessing

    torch.manual_seed(0)
    model = save_model(build_classifier({}, 2), tmp_path / "model.pt", class_names=["Effusion", "Mass"], threshold=0.5,
                       preprocessing=Preprocessing(64, mean=0.5, std=0.25, source_size=64))
    out = tmp_path / "infer"
    result = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                   "bundles/mlvicx_cxr/configs/inference.json", "--dataset_dir",
                   str(corpus.root), "--model", str(model), "--output_dir", str(out), "--deid_secret", str(secret),
                   "--min_probability", "0.0", "--top_k", "1", "--device", "cpu"], corpus.unprivileged)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    pseudo = Pseudonymizer.from_file(secret)
    errors = _rows(out / "errors.csv")
    expected = {file_pseudonym(pseudo, e.rel): e.infer for e in corpus.entries if e.infer is not None}
    assert {k: r["code"] for k, r in errors.items()} == expected  # the codes ingestion uses (item 9)
    view = next(r for r in errors.values() if r["code"] == "view")
    assert "--filter_headers False" in view["reason"] and "--views" not in view["reason"]
    with open(out / "predictions.csv", newline="") as handle:
        predicted = {row["id"] for row in csv.DictReader(handle)}
    used = [e for e in corpus.entries if e.infer is None and e.uid]
    assert {pseudo.pseudonym(e.uid, kind="image", length=20) for e in used} <= predicted
    assert len(predicted) == len(used) + 1  # + the PNG
    refused = {pseudo.pseudonym(e.uid, kind="image", length=20) for e in corpus.entries if e.uid and e.infer}
    heatmaps = {p.name.split("_")[0] for p in (out / "heatmaps").iterdir()}
    assert heatmaps == predicted and not refused & (predicted | heatmaps)  # no burned-in image in an overlay
    assert not _audit(out, result.stdout, result.stderr)
