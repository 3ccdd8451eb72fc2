"""Ingestion: a dataset download or a PACS export -> a de-identified, preprocessed image cache + datalist.

Output folder ``OUT``::

    OUT/images/<shard>/<id>.png     8-bit, size x size, bone bright
    OUT/masks/<shard>/<id>.png      SIIM only: 0/255 pneumothorax mask (union of all the image's masks)
    OUT/manifest.json               the datalist the bundles read (see mlvicx_monai.data.datalist)
    OUT/quarantine.csv              one row per rejected file: file pseudonym, code, reason (never the path)
    OUT/ingest_summary.json         counts by outcome and reason
    OUT/.ingest/                    resumable state: config + one record per source file

Every source file is processed once, by supervised worker processes (:func:`~mlvicx_monai.data.workers.run_supervised`:
a worker that dies, e.g. killed by the out-of-memory killer, costs its file, recorded as ``worker_died``, and the
run goes on). A worker writes the cached image atomically, then the file's record atomically; the record is the
commit mark. A rerun (after a crash or SIGKILL) skips files that have a record, so nothing complete is redone and
nothing is written twice. The manifest is assembled from the records at the end, deterministically (sorted, no
timestamps), so an interrupted-then-resumed run and an uninterrupted one give the same outputs.

De-identification: no header value that identifies a patient is written, printed or logged. Ids are keyed
pseudonyms (:class:`mlvicx_monai.data.deid.Pseudonymizer`, secret kept outside OUT). Source files are known by
:func:`~mlvicx_monai.data.deid.file_pseudonym` (a keyed hash of the raw bytes of the relative path) in records,
``quarantine.csv`` and logs; the paths themselves go only to the operator's opt-in local map (``phi_path_map``).
Everything printed or logged goes through one :class:`~mlvicx_monai.data.phi_guard.PHIGuard`, in every process.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlvicx_monai.data import datalist as datalist_io
from mlvicx_monai.data.deid import DeidSecretError, Pseudonymizer, file_pseudonym
from mlvicx_monai.data.dicom import DEFAULT_MAX_PIXEL_BYTES, CXRDecodeError
from mlvicx_monai.data.images import load_image
from mlvicx_monai.data.pacs import PacsFilter
from mlvicx_monai.data.phi_guard import PHIGuard
from mlvicx_monai.data.rejections import FileRejected, check_path_map, write_path_map, write_rejections
from mlvicx_monai.data.resample import lanczos_resize
from mlvicx_monai.data.rle import RLEError, rle_merge
from mlvicx_monai.data.sources import SourcePolicy, read_source
from mlvicx_monai.data.walk import walk_tree
from mlvicx_monai.data.workers import run_supervised
from mlvicx_monai.utils.atomic import atomic_write, atomic_write_json, remove_stale_temporaries

__all__ = ["DATASETS", "IngestConfig", "IngestError", "cache_image", "ingest"]

logger = logging.getLogger(__name__)

DATASETS = ("nih", "vindr", "rsna", "siim", "pacs")
_STATE = ".ingest"
_STATE_VERSION = 2  # 2: file keys of raw path bytes, pixel hashes, burned-in and size checks


class IngestError(RuntimeError):
    """The ingestion cannot start or finish (bad arguments, an output folder from another configuration)."""


@dataclass
class IngestConfig:
    """Arguments of one ingestion.

    Args:
        dataset: one of :data:`DATASETS`.
        src: the download / export folder (read only).
        out: the output folder (created); must not be inside ``src``.
        size: side of the cached square images, in pixels.
        workers: supervised worker processes (0: in this process, where a file that kills the process stops
            the run).
        secret_file: pseudonymisation secret (default: see :func:`~mlvicx_monai.data.deid.default_secret_path`).
        new_secret: create ``secret_file`` if it does not exist (otherwise a missing secret is an error).
        split_source: ``auto`` (the dataset's versioned manifest when it covers every image, else the
            dataset's official split files, else a seeded split), ``computed``, or the path of a
            versioned manifest folder.
        seed: seed of computed splits and label fractions.
        pacs_filter: which objects of a PACS export are chest radiographs to keep.
        label_options: passed to the dataset adapter's ``read_labels`` (e.g. VinDr ``aggregation``).
        allow_burned_in: PACS: keep images with ``BurnedInAnnotation = YES`` or text detected in their pixels.
        detect_burned_in_text: PACS: run the burned-in text detector on the pixels.
        max_pixel_bytes: memory bound per file: stored pixel data its header declares (None: no bound).
        phi_path_map: opt-in, local-only CSV (outside OUT and SRC) mapping each file pseudonym to its source path.
        progress: show a progress bar on stderr.
    """

    dataset: str
    src: Path
    out: Path
    size: int = 256
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    secret_file: Path | None = None
    split_source: str = "auto"
    seed: int = 0
    pacs_filter: PacsFilter = field(default_factory=PacsFilter)
    label_options: dict[str, Any] = field(default_factory=dict)
    new_secret: bool = False
    allow_burned_in: bool = False
    detect_burned_in_text: bool = True
    max_pixel_bytes: int | None = DEFAULT_MAX_PIXEL_BYTES
    phi_path_map: Path | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise IngestError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASETS)}")
        self.src, self.out = Path(self.src), Path(self.out)
        if not self.src.is_dir():
            raise IngestError(f"--src {self.src} is not a folder; point it at the dataset download or PACS export")
        src, out = self.src.resolve(), self.out.resolve()
        if out == src or src in out.parents:
            raise IngestError(
                f"--out {self.out} is inside --src {self.src}; choose an output folder outside the source tree "
                "(a rerun would otherwise ingest its own outputs)"
            )
        if not 16 <= self.size <= 4096:
            raise IngestError(f"--size must be between 16 and 4096 pixels, got {self.size}")
        if self.workers < 0:
            raise IngestError(f"--workers must be >= 0, got {self.workers}")
        if self.max_pixel_bytes is not None and self.max_pixel_bytes < 2**20:
            raise IngestError(f"--max-pixel-mb must be at least 1, got {self.max_pixel_bytes / 2**20:g}")
        if self.phi_path_map is not None:
            try:
                self.phi_path_map = check_path_map(self.phi_path_map, [self.out], [self.src])
            except ValueError as err:
                raise IngestError(str(err)) from None

    def source_policy(self) -> SourcePolicy:
        """What a PACS file must be to be ingested."""
        return SourcePolicy(
            header_filter=self.pacs_filter,
            allow_burned_in=self.allow_burned_in,
            detect_burned_in_text=self.detect_burned_in_text,
            max_pixel_bytes=self.max_pixel_bytes,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption (it changes the cached content)."""
        return {
            "state_version": _STATE_VERSION,
            "dataset": self.dataset,
            "size": self.size,
            "pacs_filter": self.pacs_filter.to_dict() if self.dataset == "pacs" else None,
            "source_policy": self.source_policy().to_dict() if self.dataset == "pacs" else None,
            "max_pixel_bytes": self.max_pixel_bytes,
        }


# ----------------------------------------------------------------------------------------------------
# Worker side: one source file -> cached image (+ mask) + record. Runs in worker processes.
# ----------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(secret: bytes, src: str, out: str, size: int, dataset: str, policy: SourcePolicy,
                 guard: PHIGuard | None = None) -> None:
    """Worker start-up; ``guard``: in-process mode, the job's installed guard (a worker process installs its own)."""
    if guard is None:
        guard = PHIGuard([src])
        guard.install()
    _WORKER.update(
        pseudo=Pseudonymizer(secret), src=Path(src), out=Path(out), size=size, dataset=dataset, policy=policy,
        guard=guard,
    )


def _shard(image_id: str) -> str:
    return hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:2]


def _file_stem(image_id: str) -> str:
    """Cache file name of an image id (NIH ids are file names: ``00000001_000.png`` -> ``00000001_000``)."""
    stem = re.sub(r"\.(png|dcm|dicom)$", "", image_id, flags=re.IGNORECASE)
    return re.sub(r"[^0-9A-Za-z._-]", "_", stem)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(rows, cols) float [0,1] -> (size, size) float32 [0,1], anti-aliased.

    Pillow's Lanczos filter ("F" mode) computed by :func:`~mlvicx_monai.data.resample.lanczos_resize` (equal to
    float32 rounding, 4 ms instead of Pillow's 17 ms on RG1_UNCR.dcm); no torch, which keeps the worker
    processes light. The aspect ratio is not preserved (x and y scale independently; boxes and masks are
    scaled the same way).
    """
    return np.clip(lanczos_resize(image, size, size), 0.0, 1.0)


# zlib level of the cached PNGs. Measured on 14 cached 256 px radiographs (RG1, RG3, phantom), per image:
# level 0 0.9 ms 64 KiB, 1: 1.6 ms 29.8 KiB, 3 (before): 2.6 ms 28.9 KiB, 4: 3.6 ms 25.6 KiB, 6: 7.5 ms
# 25.6 KiB, 9: 19 ms 25.4 KiB. Level 1 saves 1 ms of a ~20 ms file for 3 % more disk; decoding is as fast.
_PNG_LEVEL = 1


def cache_image(image: np.ndarray, size: int) -> np.ndarray:
    """What the cache holds for a decoded image ``(rows, cols)`` float in [0, 1]: ``(size, size)`` uint8.

    The one definition of the cache step, shared with inference (which must feed a model what training saw,
    :class:`mlvicx_monai.transforms.preprocessing.ToSourceCached`).
    """
    return np.round(_resize(image, size) * 255.0).astype(np.uint8)


def _png_bytes(array_u8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array_u8).save(buffer, format="PNG", compress_level=_PNG_LEVEL)
    return buffer.getvalue()


def _write_png(rel: str, array_u8: np.ndarray) -> None:
    data = _png_bytes(array_u8)
    atomic_write(_WORKER["out"] / rel, lambda tmp: tmp.write_bytes(data))


def _record_path(out: Path, key: str) -> Path:
    return out / _STATE / "records" / key[:2] / f"{key}.json"


def _process(task: tuple[str, str, str | None, list[str] | None]) -> tuple[str, str]:
    """Process one file; returns (status, code). The record on disk is the real result."""
    key, rel, image_id, rles = task
    guard: PHIGuard = _WORKER["guard"]
    path: Path = _WORKER["src"] / rel
    with guard.file(path, rel, key):
        record = _process_file(key, rel, path, image_id, rles, guard)
        atomic_write_json(_record_path(_WORKER["out"], key), record, indent=None)
    return record["status"], record.get("code", "")


def _process_file(key: str, rel: str, path: Path, image_id: str | None, rles: list[str] | None,
                  guard: PHIGuard) -> dict[str, Any]:
    pseudo: Pseudonymizer = _WORKER["pseudo"]
    record: dict[str, Any] = {"key": key}
    try:
        size = _WORKER["size"]
        if _WORKER["dataset"] == "pacs":
            source = read_source(path, _WORKER["policy"], guard)
            image, meta = source.image, source.meta
            image_id = pseudo.pseudonym(source.instance, kind="image", length=20)
            record.update(
                patient=pseudo.pseudonym(source.patient, "patient"), study=pseudo.pseudonym(source.study, "study"),
                pixels=source.pixel_sha256,
            )
            # named by image and pixels: two re-sends with different pixels never write the same file
            stem = f"{_file_stem(image_id)}_{source.pixel_sha256[:12]}"
        else:
            image, meta = load_image(path)
            stem = _file_stem(image_id or "")
        assert image_id is not None
        shard = _shard(image_id)
        image_rel = f"images/{shard}/{stem}.png"
        _write_png(image_rel, cache_image(image, size))
        record.update(status="ok", id=image_id, image=image_rel, meta=meta.to_dict())
        if rles is not None:
            rows, cols = meta.original_size
            try:
                full = rle_merge(rles, height=rows, width=cols)
            except RLEError as err:
                raise FileRejected(
                    "bad_mask", f"its mask in the RLE file does not fit the {rows}x{cols} image: {err}"
                ) from None
            small = Image.fromarray(full.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX)
            mask = (np.asarray(small) >= 128).astype(np.uint8) * 255
            mask_rel = f"masks/{shard}/{_file_stem(image_id)}.png"
            _write_png(mask_rel, mask)
            record.update(mask=mask_rel, mask_pixels=int(full.sum()), mask_pixels_cached=int((mask > 0).sum()))
    except (CXRDecodeError, FileRejected) as err:
        # our reasons are built from technical attributes only (never a PHI field, never the path)
        record = {"key": key, "status": "rejected", "code": err.code, "reason": err.reason}
    except Exception as err:  # a bad file must never stop the run: quarantine it with the (scrubbed) error
        record = {"key": key, "status": "rejected", "code": "internal_error",
                  "reason": guard.scrub(f"{type(err).__name__}: {err}")[:300]}
    return record


# ----------------------------------------------------------------------------------------------------
# Main side: tasks, pool, assembly.
# ----------------------------------------------------------------------------------------------------


def _check_state(cfg: IngestConfig, pseudo: Pseudonymizer) -> None:
    state = cfg.out / _STATE / "config.json"
    fingerprint = {**cfg.fingerprint(), "secret_check": pseudo.check_value()}
    if state.exists():
        previous = json.loads(state.read_text())
        if previous != fingerprint:
            changed = [k for k in fingerprint if previous.get(k) != fingerprint[k]]
            if changed == ["secret_check"]:
                raise IngestError(
                    f"{cfg.out} was ingested with another de-identification secret (its pseudonyms would not "
                    "match); pass the --secret-file of that run, or choose a new --out"
                )
            raise IngestError(
                f"{cfg.out} holds an ingestion made with different settings ({', '.join(changed)}: "
                f"{ {k: previous.get(k) for k in changed} } vs { {k: fingerprint[k] for k in changed} }); "
                "rerun with the same settings to resume, or choose a new --out"
            )
    else:
        if (cfg.out / "manifest.json").exists() or (cfg.out / "images").exists():
            raise IngestError(
                f"{cfg.out} already holds images or a manifest but no ingestion state; choose an empty --out"
            )
        atomic_write_json(state, fingerprint, fsync=True)


def _plan_public(cfg: IngestConfig):
    """(tasks, label table, files without a label row) for a public dataset in its official layout."""
    from mlvicx_monai.data.datasets import get_adapter

    adapter = get_adapter(cfg.dataset)
    images: dict[str, Path] = adapter.find_images(cfg.src)
    labels = adapter.read_labels(cfg.src, **cfg.label_options)
    labelled = set(labels["image_id"].astype(str))
    rles_by_id = None
    if "rles" in labels.columns:
        rles_by_id = dict(zip(labels["image_id"].astype(str), labels["rles"]))
    tasks, unlabelled = [], []
    for image_id in sorted(images):
        rel = images[image_id].resolve().relative_to(cfg.src.resolve()).as_posix()
        if image_id not in labelled:
            unlabelled.append(rel)
            continue
        rles = list(rles_by_id[image_id]) if rles_by_id is not None else None
        tasks.append((rel, image_id, rles))
    return adapter, tasks, labels, unlabelled, sorted(labelled - set(images))


def ingest(cfg: IngestConfig) -> dict[str, Any]:
    """Run (or resume) an ingestion; returns the summary that is also written to ``ingest_summary.json``."""
    cfg.validate()
    guard = PHIGuard([cfg.src])
    with guard.installed(trusted=(IngestError, DeidSecretError)):
        cfg.out.mkdir(parents=True, exist_ok=True)
        pseudo = Pseudonymizer.from_file(cfg.secret_file, create=cfg.new_secret, outputs=[cfg.out])
        _check_state(cfg, pseudo)
        stale = remove_stale_temporaries(cfg.out)
        if stale:
            logger.info("removed %d partial files left by an interrupted run", stale)

        adapter = labels = None
        unlabelled: list[str] = []
        missing_images: list[str] = []
        problems: list[tuple[str, str, str]] = []
        if cfg.dataset == "pacs":
            try:
                walked = walk_tree(cfg.src)
            except OSError as err:
                raise IngestError(f"--src cannot be listed ({err.strerror or err}); check its permissions") from None
            planned = [(rel, None, None) for rel in walked.files]
            problems = [(p.rel, p.code, p.reason) for p in walked.problems]
        else:
            adapter, planned, labels, unlabelled, missing_images = _plan_public(cfg)
        tasks = [(file_pseudonym(pseudo, rel), rel, image_id, rles) for rel, image_id, rles in planned]
        todo = [t for t in tasks if not _record_path(cfg.out, t[0]).exists()]
        logger.info(
            "%s: %d files (%d more entries the walk could not read), %d already done, %d to process with %s",
            cfg.dataset, len(tasks), len(problems), len(tasks) - len(todo), len(todo),
            f"{cfg.workers} worker process(es)" if cfg.workers else "this process",
        )
        _run(cfg, pseudo, todo, total=len(tasks), guard=guard)
        return _assemble(cfg, pseudo, tasks, problems, adapter, labels, unlabelled, missing_images)


def _run(cfg: IngestConfig, pseudo: Pseudonymizer, todo: list, total: int, guard: PHIGuard) -> None:
    from tqdm.auto import tqdm

    policy = cfg.source_policy()
    init_args = (pseudo._secret, str(cfg.src), str(cfg.out), cfg.size, cfg.dataset, policy)
    bar = tqdm(
        total=total, initial=total - len(todo), desc=f"ingest {cfg.dataset}", unit="file",
        disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True,
    )
    counts: Counter = Counter()

    def done(status: str) -> None:
        counts[status] += 1
        bar.update(1)
        bar.set_postfix(ok=counts["ok"], rejected=counts["rejected"] + counts["died"], refresh=False)

    def on_result(task, result) -> None:
        done(result[0])

    def on_failure(task, description: str) -> None:
        key = task[0]
        logger.warning("the worker processing file %s %s; that file is quarantined (worker_died)", key, description)
        record = {
            "key": key, "status": "rejected", "code": "worker_died",
            "reason": f"the worker process reading this file {description}; the file is not retried (a file that "
                      "needs more memory than the machine has would kill every retry): lower --max-pixel-mb to "
                      "reject such files up front, or ingest it alone into another --out",
        }
        atomic_write_json(_record_path(cfg.out, key), record, indent=None)
        done("died")

    with bar:
        if cfg.workers == 0:
            _init_worker(*init_args, guard=guard)
            for task in todo:
                on_result(task, _process(task))
            return
        stats = run_supervised(todo, _process, workers=cfg.workers, initializer=_init_worker, initargs=init_args,
                               on_result=on_result, on_failure=on_failure)
    if stats.peak_rss_mib:
        logger.info("peak RSS per worker process: %s MiB (%d died)",
                    ", ".join(f"{v:.0f}" for v in stats.peak_rss_mib), stats.died)


def _assemble(cfg, pseudo, tasks, problems, adapter, labels, unlabelled, missing_images) -> dict[str, Any]:
    records: dict[str, dict] = {}
    keys: dict[str, str] = {}
    for key, rel, _, _ in tasks:
        records[rel] = json.loads(_record_path(cfg.out, key).read_text())
        keys[rel] = key

    quarantine: list[tuple[str, str, str]] = []
    by_id: dict[str, list[str]] = {}
    for rel in sorted(records):  # sorted: the first path of a duplicated image wins, whatever the run order
        record = records[rel]
        if record["status"] != "ok":
            quarantine.append((rel, record["code"], record["reason"]))
        else:
            by_id.setdefault(record["id"], []).append(rel)
    kept: dict[str, tuple[str, dict]] = {}
    for image_id, rels in by_id.items():
        versions = {records[r].get("pixels") for r in rels}
        if len(versions) > 1:  # a conflicting re-send: no copy can be trusted to be the right one
            for rel in rels:
                others = ", ".join(keys[r] for r in rels if r != rel)
                quarantine.append((rel, "conflicting_resend", (
                    f"{len(rels)} files share this SOPInstanceUID with {len(versions)} different pixel contents "
                    f"(also {others}); none is ingested: resolve the re-send at the PACS and export the right one"
                )))
                _remove_cached(cfg.out, records[rel])
            continue
        kept[image_id] = (rels[0], records[rels[0]])
        for rel in rels[1:]:
            quarantine.append((rel, "duplicate", f"the same image (SOP instance and pixels) as file {keys[rels[0]]}, "
                                                  "which is ingested once"))
    quarantine += [(rel, code, reason) for rel, code, reason in problems]
    for rel in unlabelled:
        quarantine.append((rel, "no_label", "image has no row in the dataset's label file; not ingested"))

    class_names = list(adapter.CLASS_NAMES) if adapter is not None else []
    entries = _entries(cfg, pseudo, kept, labels, class_names)
    split_info = datalist_io.assign_splits(entries, cfg.dataset, labels, cfg.split_source, cfg.seed)
    header = {
        "dataset": cfg.dataset,
        "class_names": class_names,
        "image_size": cfg.size,
        "splits": split_info,
        "pacs_filter": cfg.pacs_filter.to_dict() if cfg.dataset == "pacs" else None,
        "label_options": cfg.label_options,
    }
    datalist = datalist_io.write_datalist(cfg.out / "manifest.json", header, entries)

    rows = sorted((file_pseudonym(pseudo, rel), code, reason) for rel, code, reason in quarantine)
    write_rejections(cfg.out / "quarantine.csv", rows)
    if cfg.phi_path_map is not None:
        outcome = {rel: code for rel, code, _ in quarantine}
        outcome.update({rel: f"ingested:{image_id}" for image_id, (rel, _) in kept.items()})
        write_path_map(cfg.phi_path_map, [(file_pseudonym(pseudo, rel), outcome.get(rel, ""), rel) for rel in
                                          sorted(set(records) | set(outcome))])
        logger.warning("wrote the source paths of every file (PHI) to the local map %s: keep it out of the outputs",
                       cfg.phi_path_map)
    summary = {
        "dataset": cfg.dataset,
        "files": len(tasks) + len(unlabelled) + len(problems),
        "ingested": len(entries),
        "quarantined": len(rows),
        "quarantine_by_code": dict(sorted(Counter(code for _, code, _ in rows).items())),
        "label_rows_without_image": len(missing_images),
        "label_rows_without_image_examples": missing_images[:20],
        "splits": datalist["counts"],
        "patients": len({e["patient"] for e in entries}),
        "studies": len({e.get("study") for e in entries if e.get("study")}) or None,
    }
    if cfg.dataset == "siim":
        summary["masks_lost_by_resizing"] = sum(
            1 for e in entries if e.get("mask_pixels", 0) > 0 and e.get("mask_pixels_cached", 0) == 0
        )
    atomic_write_json(cfg.out / "ingest_summary.json", summary)
    return summary


def _remove_cached(out: Path, record: dict) -> None:
    """Delete the cached image of a record that is not ingested (idempotent: a resumed assembly repeats it)."""
    (out / record["image"]).unlink(missing_ok=True)


def _boxes(raw, class_names: list[str], original_size, size: int) -> list[dict[str, Any]]:
    """Adapter boxes -> ``[{"label", "box": [x, y, w, h] in cache pixels, "reader"?}]``.

    RSNA gives ``[(x, y, w, h)]`` (one class); VinDr ``{class: [(reader, x0, y0, x1, y1)]}``. x and y scale
    independently, like the image.
    """
    rows, cols = original_size
    sx, sy = size / cols, size / rows

    def scaled(x: float, y: float, w: float, h: float) -> list[float]:
        return [round(x * sx, 2), round(y * sy, 2), round(w * sx, 2), round(h * sy, 2)]

    out: list[dict[str, Any]] = []
    if isinstance(raw, dict):
        for label in sorted(raw):
            for reader, x0, y0, x1, y1 in raw[label]:
                out.append({"label": label, "reader": str(reader), "box": scaled(x0, y0, x1 - x0, y1 - y0)})
    else:
        for x, y, w, h in raw:
            out.append({"label": class_names[0], "box": scaled(x, y, w, h)})
    return out


def _entries(
    cfg: IngestConfig, pseudo: Pseudonymizer, kept: dict, labels, class_names: list[str]
) -> list[dict[str, Any]]:
    """One datalist entry per kept image (labels and pseudonymous patient from the label table)."""
    by_id = None
    if labels is not None:
        by_id = {str(row["image_id"]): row for row in labels.to_dict("records")}
    entries = []
    for image_id, (_, record) in sorted(kept.items()):
        meta = record["meta"]
        entry: dict[str, Any] = {"id": image_id, "image": record["image"]}
        if by_id is not None:
            row = by_id[image_id]
            entry["label"] = [int(v) for v in row["labels"]]
            entry["patient"] = pseudo.pseudonym(str(row["patient_id"]), "patient")
            view = row.get("view")
            entry["view"] = str(view) if isinstance(view, str) and view else meta.get("view_position")
            if "boxes" in row and row["boxes"] is not None and len(row["boxes"]):
                entry["boxes"] = _boxes(row["boxes"], class_names, meta["original_size"], cfg.size)
        else:
            entry.update(patient=record["patient"], study=record["study"], view=meta.get("view_position"))
        if "mask" in record:
            entry.update(
                mask=record["mask"], mask_pixels=record["mask_pixels"], mask_pixels_cached=record["mask_pixels_cached"]
            )
        meta_keys = (
            "modality", "photometric_interpretation", "pixel_spacing", "original_size", "transfer_syntax", "voi"
        )
        entry["meta"] = {k: meta[k] for k in meta_keys if k in meta}
        entries.append(entry)
    return entries
