"""The datalist an ingestion writes (``OUT/manifest.json``) and the bundles read.

It is a MONAI datalist (``monai.data.load_decathlon_datalist`` reads it) with a header::

    {"format": "mlvicx-datalist/1", "dataset": "nih", "class_names": [...], "image_size": 256,
     "splits": {"source": "versioned" | "official" | "computed", ...}, "counts": {...},
     "training": [entry, ...], "validation": [...], "test": [...], "excluded": [...]}

An entry: ``id`` (public image id, or a keyed pseudonym for PACS), ``image`` (path relative to the
datalist's folder), ``label`` (0/1 per class name), ``patient`` (keyed pseudonym), ``view``,
``fraction`` (the smallest label fraction, among 0.01/0.1/0.3/1.0, whose training subset contains the
entry; fractions are nested by construction), and where the dataset has them ``mask``, ``boxes``
(x, y, w, h in cache pixels), ``study``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from mlvicx_monai.utils.atomic import atomic_write_json
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "FORMAT",
    "SPLIT_KEYS",
    "FRACTIONS",
    "DatalistError",
    "write_datalist",
    "read_datalist",
    "load_datalist",
    "datalist_checksum",
    "datalist_id",
    "assign_splits",
    "check_cache_size",
]

FORMAT = "mlvicx-datalist/1"
#: split name -> datalist key (MONAI's decathlon keys for the first three)
SPLIT_KEYS = {"train": "training", "val": "validation", "test": "test", "excluded": "excluded"}
FRACTIONS = (0.01, 0.1, 0.3, 1.0)


class DatalistError(ValueError):
    """A datalist that is missing, malformed, or lacks the requested split."""


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path / "manifest.json" if path.is_dir() else path


def write_datalist(path: str | Path, header: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Group ``entries`` by their ``split`` and write the datalist atomically; returns what was written.

    The output is deterministic: entries sorted by id, no timestamps.
    """
    groups: dict[str, list] = {key: [] for key in SPLIT_KEYS.values()}
    for entry in sorted(entries, key=lambda e: e["id"]):
        split = entry.get("split")
        if split not in SPLIT_KEYS:
            raise DatalistError(f"entry {entry.get('id')!r} has split {split!r}; expected one of {sorted(SPLIT_KEYS)}")
        groups[SPLIT_KEYS[split]].append({k: v for k, v in entry.items() if k != "split"})
    counts: dict[str, Any] = {key: len(items) for key, items in groups.items()}
    fractions = Counter()
    for entry in groups["training"]:
        for fraction in FRACTIONS:
            if entry.get("fraction") is not None and entry["fraction"] <= fraction:
                fractions[str(fraction)] += 1
    counts["training_by_fraction"] = dict(sorted(fractions.items(), key=lambda kv: float(kv[0])))
    document = {"format": FORMAT, **header, "counts": counts, **groups}
    atomic_write_json(_resolve(path), document, fsync=True)
    return document


def read_datalist(path: str | Path) -> dict[str, Any]:
    """Read and validate a datalist (a ``manifest.json`` or the folder holding it)."""
    file = _resolve(path)
    if not file.exists():
        raise DatalistError(
            f"no datalist at {file}; run `python -m pipelines.ingest --dataset ... --src ... --out {file.parent}` first"
        )
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatalistError(f"{file} is not valid JSON ({err}); re-run the ingestion to rewrite it") from None
    if document.get("format") != FORMAT:
        raise DatalistError(f"{file} has format {document.get('format')!r}, expected {FORMAT!r}")
    return document


def check_cache_size(path: str | Path, minimum: int) -> int:
    """The side of the datalist's cached images, if it is at least ``minimum``.

    Raises:
        DatalistError: the cache is smaller (e.g. the paper profile crops 224 px views: from a 256 px cache three
            views in four would be upsampled, up to 3.1x), naming the ingestion command that makes a larger one.
    """
    document = read_datalist(path)
    size = int(document.get("image_size") or 0)
    if minimum and size < int(minimum):
        raise DatalistError(
            f"{_resolve(path)} caches {size} px images but this configuration needs at least {minimum} px "
            f"(min_cache_size); re-ingest with `python -m pipelines.ingest --dataset {document.get('dataset')} "
            f"--size {minimum} ...` into a "
            "new --out, or pass --min_cache_size 0 to accept upsampled crops"
        )
    return size


def datalist_checksum(path: str | Path) -> str:
    """SHA-256 of the datalist file (recorded with every run that trains on it)."""
    return sha256_file(_resolve(path))


def datalist_id(path: str | Path) -> str:
    """Short identity of a datalist for run records: ``<dataset>@<sha12>`` plus the versioned manifest it used."""
    document = read_datalist(path)
    ident = f"{document.get('dataset')}@{datalist_checksum(path)[:12]}"
    manifest = (document.get("splits") or {}).get("manifest_id")
    return f"{ident} (splits {manifest})" if manifest else ident


def load_datalist(
    path: str | Path, split: str = "train", fraction: float | None = None, require_labels: bool = False
) -> list[dict[str, Any]]:
    """Entries of one split, with ``image`` (and ``mask``) made absolute.

    Args:
        path: the datalist file or its folder.
        split: ``train``, ``val``, ``test`` (or ``excluded``); several joined by ``+`` (``train+val``).
        fraction: keep training entries whose label fraction is <= this (one of 0.01, 0.1, 0.3, 1.0);
            ``None`` keeps all. Only meaningful for ``train``.
        require_labels: raise if an entry has no ``label`` (classification needs them; pretraining not).
    """
    file = _resolve(path)
    document = read_datalist(file)
    base = file.parent
    if fraction is not None and fraction not in FRACTIONS:
        raise DatalistError(f"fraction must be one of {FRACTIONS}, got {fraction}")
    items: list[dict[str, Any]] = []
    for name in split.split("+"):
        if name not in SPLIT_KEYS:
            raise DatalistError(f"unknown split {name!r}; expected one of {sorted(SPLIT_KEYS)}")
        chosen = document.get(SPLIT_KEYS[name], [])
        if fraction is not None and name == "train":
            chosen = [e for e in chosen if e.get("fraction") is not None and e["fraction"] <= fraction]
        items.extend(chosen)
    if not items:
        raise DatalistError(
            f"{file} has no entries for split {split!r}" + (f" at fraction {fraction}" if fraction else "")
            + f" (counts: {document.get('counts')})"
        )
    resolved = []
    for entry in items:
        entry = dict(entry)
        for key in ("image", "mask"):
            if key in entry:
                entry[key] = str(base / entry[key])
        if require_labels and not entry.get("label"):
            raise DatalistError(f"{file}: entry {entry['id']} has no labels; this task needs a labelled dataset")
        resolved.append(entry)
    return resolved


def _set(entries: list[dict[str, Any]], split_of: dict[str, str], percent_of: dict[str, Any]) -> None:
    for entry in entries:
        entry["split"] = split_of[entry["id"]]
        percent = percent_of.get(entry["id"])
        entry["fraction"] = None if percent is None or percent != percent else int(percent) / 100.0


def assign_splits(
    entries: list[dict[str, Any]], dataset: str, labels, split_source: str = "auto", seed: int = 0
) -> dict[str, Any]:
    """Give every entry its ``split`` and label ``fraction``; returns how (recorded in the datalist header).

    Args:
        entries: datalist entries (``id`` = public image id, or a pseudonym for PACS).
        dataset: ``nih``, ``vindr``, ``rsna``, ``siim`` or ``pacs``.
        labels: the adapter's label table (``read_labels``) for a public dataset; None for PACS.
        split_source: ``auto``: the dataset's versioned manifest (``data_manifests/``) when it lists every
            ingested image, a split computed from the label table when it lists none of them (e.g. synthetic
            data), an error when it lists only some; ``computed``; or a versioned manifest folder.
        seed: seed of computed splits and fractions.

    Computed splits use the same rules as the versioned manifests (:func:`mlvicx_monai.data.manifests.build_entries`):
    official split files where the dataset has them, patient-level, stratified, nested seeded fractions.
    """
    from mlvicx_monai.data import manifests, splits

    ids = [e["id"] for e in entries]
    if not entries:
        return {"source": "none"}
    if dataset == "pacs":  # no labels: a seeded patient-level split only (0.7/0.1/0.2), fractions of it
        patients = [e["patient"] for e in entries]
        zeros = [(0,)] * len(entries)
        split = splits.stratified_patient_split(patients, zeros, manifests.SEEDED_RATIOS, seed)
        train = [i for i, s in enumerate(split) if s == "train"]
        percents = splits.label_fractions([patients[i] for i in train], [zeros[i] for i in train], seed)
        _set(entries, dict(zip(ids, split)), {ids[i]: p for i, p in zip(train, percents)})
        return {"source": "computed", "seed": seed, "rule": "seeded patient-level split 0.7/0.1/0.2 (no labels)"}
    if split_source not in ("auto", "computed"):
        meta, table = manifests.load_manifest(split_source)
        source = "versioned"
    elif split_source == "auto":
        try:
            meta, table = manifests.load_manifest(dataset)
        except manifests.ManifestError:
            meta, table = None, None
        source = "versioned"
        if table is not None:
            listed = set(table["image_id"])
            covered = sum(1 for i in ids if i in listed)
            if covered == 0:
                meta = table = None
            elif covered < len(ids):
                missing = [i for i in ids if i not in listed]
                raise DatalistError(
                    f"{covered} of {len(ids)} ingested images are in the versioned manifest "
                    f"{manifests.manifest_id(meta)}, "
                    f"{len(missing)} are not (e.g. {missing[:3]}); pass --split-source computed to split these images "
                    "on their own, or a manifest folder that lists them all"
                )
    else:
        meta = table = None
    if table is not None:
        rows = table.set_index("image_id")
        absent = [i for i in ids if i not in rows.index]
        if absent:
            raise DatalistError(
                f"{len(absent)} ingested images are not in {manifests.manifest_id(meta)} (e.g. {absent[:3]})"
            )
        _set(entries, rows["split"].to_dict(), rows["fraction"].to_dict())
        return {
            "source": source,
            "manifest_id": manifests.manifest_id(meta),
            "manifest_path": meta.get("path"),
            "seed": meta.get("seed"),
        }
    kept = labels[labels["image_id"].astype(str).isin(set(ids))]
    table, rules = manifests.build_entries(dataset, kept, seed)
    rows = table.set_index("image_id")
    _set(entries, rows["split"].to_dict(), rows["fraction"].to_dict())
    splits.check_patient_disjoint([e["patient"] for e in entries], [e["split"] for e in entries])
    return {"source": "computed", "seed": seed, **rules}
