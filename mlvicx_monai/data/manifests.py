"""Versioned split/label manifests: build from the public label files, load, verify.

Layout: ``<root>/<dataset>/<version>/manifest.json`` + ``entries.csv.gz``.

``entries.csv.gz`` (gzip with mtime 0, rows sorted by ``image_id``, so a rebuild is byte-identical) has the
columns ``image_id, patient_id, split, fraction, labels, view`` and the dataset extras
(``EXTRA_COLUMNS``). ``split`` is ``train`` / ``val`` / ``test`` (SIIM also ``excluded``: negatives left out
by the balancing); ``fraction`` is, for training rows only, the smallest label fraction in percent
(1, 10, 30, 100) that contains the image: the f% subset is ``split == "train" and fraction <= f``;
``labels`` is a 0/1 string in ``class_names`` order.

``manifest.json`` records the dataset, version, seed, the command that built it, the split, fraction and
aggregation rules, the patient key, class names, name/size/SHA-256 of every source label file, size and
SHA-256 of the entries file (and of its uncompressed CSV), and the counts per split, fraction and class.

A built manifest needs nothing but its two files: ``load_manifest`` never reads the source labels.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlvicx_monai.data import splits as _splits
from mlvicx_monai.data.datasets import get_adapter
from mlvicx_monai.utils.hashing import sha256_file

__all__ = [
    "SCHEMA_VERSION",
    "ManifestError",
    "EXTRA_COLUMNS",
    "DATASET_RULES",
    "default_root",
    "build_entries",
    "build_manifest",
    "write_manifest",
    "load_manifest",
    "manifest_id",
    "manifest_dirs",
    "check_manifest",
    "select",
    "label_matrix",
    "summary",
    "sha256_file",
]

SCHEMA_VERSION = 1
ENTRIES_FILE = "entries.csv.gz"
MANIFEST_FILE = "manifest.json"
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
EXCLUDED = "excluded"
BASE_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "split", "fraction", "labels", "view")
EXTRA_COLUMNS: dict[str, tuple[str, ...]] = {
    "nih": ("follow_up",),
    "vindr": ("n_readers", "votes"),
    "rsna": ("n_boxes",),
    "siim": ("positive", "n_masks"),
}
#: Default split ratios when a dataset has no official split (share of patients).
SEEDED_RATIOS: dict[str, float] = {"train": 0.7, "val": 0.1, "test": 0.2}
#: Per dataset: how the splits are made and what identifies a patient (written into manifest.json).
DATASET_RULES: dict[str, dict[str, Any]] = {
    "nih": {
        "patient_key": "Patient ID (Data_Entry_2017)",
        "split_rule": (
            "official: test = NIH test_list.txt (= every image in neither Xray14_train_official.txt nor "
            "Xray14_val_official.txt); train / val = the reference patient-disjoint partition of "
            "train_val_list.txt (Xray14_train_official.txt / Xray14_val_official.txt)"
        ),
    },
    "vindr": {
        "patient_key": "image_id (VinDr-CXR publishes no patient id: patient := image)",
        "split_rule": (
            "seeded patient-level stratified split train/val/test = 0.7/0.1/0.2 of the 15,000 labelled "
            "competition images (the competition test images have no public labels)"
        ),
    },
    "rsna": {
        "patient_key": (
            "patientId (Kaggle; one image per id). The images come from NIH ChestX-ray14, whose patient ids "
            "are not published for them: overlap with NIH patients cannot be checked"
        ),
        "split_rule": "seeded patient-level stratified split train/val/test = 0.7/0.1/0.2 by patientId",
    },
    "siim": {
        "patient_key": "ImageId (train-rle.csv has no patient id: patient := image)",
        "split_rule": (
            "balanced: all positive images + an equal number of negatives drawn with the seed (the other "
            "negatives are split 'excluded'); of the balanced set, seeded stratified (by positive) "
            "train/val/test = 0.7/0.1/0.2: test = the paper's 20% held out, val = 1/8 of the remaining 80% "
            "for early stopping"
        ),
    },
}
FRACTION_RULE = (
    "label fractions 1/10/30/100% of the training images, patient-level, nested, seeded: one seeded "
    "priority order of training patients; each fraction extends the previous one, first with the smallest "
    "positive patient of every class it lacks (and of 'no finding'), then in priority order with every "
    "patient that fits, up to round(f * training images); 'fraction' = smallest fraction containing the image"
)


class ManifestError(ValueError):
    """A manifest that cannot be built, found, or verified."""


def default_root() -> Path:
    """``$MLVICX_MANIFEST_ROOT``, else the repository's ``data_manifests/``, else ``./data_manifests``."""
    env = os.environ.get("MLVICX_MANIFEST_ROOT")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "data_manifests"
    return repo if repo.is_dir() else Path.cwd() / "data_manifests"


def _digit_strings(rows: Sequence[Sequence[int]], what: str) -> list[str]:
    """Each row of small ints as a string of single digits (``(0, 1, 2)`` -> ``"012"``)."""
    matrix = np.asarray(list(rows), dtype=np.int64)
    if matrix.ndim != 2:
        raise ManifestError(f"{what}: rows of unequal length")
    if matrix.size and (matrix.min() < 0 or matrix.max() > 9):
        raise ManifestError(f"{what}: values outside 0-9 cannot be written as single digits")
    width = matrix.shape[1]
    if width == 0:
        return [""] * len(matrix)
    packed = np.ascontiguousarray((matrix + 48).astype(np.uint8)).view(f"S{width}").ravel()
    return [b.decode("ascii") for b in packed.tolist()]


def _parse_digit_strings(strings: Sequence[str], what: str) -> np.ndarray:
    """Inverse of ``_digit_strings``: ``(n, width)`` int matrix; unequal lengths or non-digits are an error."""
    strings = list(strings)
    if not strings:
        return np.zeros((0, 0), dtype=np.int64)
    width = len(strings[0])
    if any(len(v) != width for v in strings):
        raise ManifestError(f"{what}: strings of unequal length")
    raw = np.frombuffer("".join(strings).encode("ascii", errors="replace"), dtype=np.uint8).reshape(len(strings), width)
    if ((raw < 48) | (raw > 57)).any():
        raise ManifestError(f"{what}: non-digit characters")
    return raw.astype(np.int64) - 48


def _assign_splits(dataset: str, labels: pd.DataFrame, seed: int) -> tuple[np.ndarray, str]:
    """Split per image and the rule actually used."""
    official = labels["official_split"] if "official_split" in labels else pd.Series([None] * len(labels))
    values = set(official.dropna().unique().tolist())
    if dataset == "siim":
        keep = _splits.balanced_patients(labels["patient_id"], labels["positive"], seed)
        split = np.full(len(labels), EXCLUDED, dtype=object)
        split[keep] = _splits.stratified_patient_split(
            labels.loc[keep, "patient_id"], labels.loc[keep, "labels"], SEEDED_RATIOS, seed
        )
        return split, DATASET_RULES["siim"]["split_rule"]
    if official.notna().all() and values == set(SPLIT_NAMES):
        return official.to_numpy(dtype=object), DATASET_RULES[dataset]["split_rule"]
    if official.notna().all() and values in ({"train_val", "test"}, {"train", "test"}):
        split = official.to_numpy(dtype=object).copy()
        pool = split != "test"
        share = SEEDED_RATIOS["val"] / (SEEDED_RATIOS["train"] + SEEDED_RATIOS["val"])
        split[pool] = _splits.stratified_patient_split(
            labels.loc[pool, "patient_id"], labels.loc[pool, "labels"], {"train": 1 - share, "val": share}, seed
        )
        return split, f"official test split; val = seeded patient-level {share:.3f} of the official training images"
    if dataset == "nih" and official.notna().any():
        raise ManifestError("NIH: the official lists cover only part of the images; provide all split files")
    split = _splits.stratified_patient_split(labels["patient_id"], labels["labels"], SEEDED_RATIOS, seed)
    rule = DATASET_RULES[dataset]["split_rule"] if dataset in ("vindr", "rsna") else (
        "seeded patient-level stratified split train/val/test = 0.7/0.1/0.2 (no official split found)")
    return split, rule


def build_entries(dataset: str, labels: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Entries table (sorted by image id) and the rules used, from an adapter's ``read_labels`` output."""
    if labels["image_id"].duplicated().any():
        raise ManifestError(f"{dataset}: duplicate image ids in the labels")
    labels = labels.sort_values("image_id", kind="stable").reset_index(drop=True)
    split, split_rule = _assign_splits(dataset, labels, seed)
    _splits.check_patient_disjoint(labels["patient_id"], split)
    train = split == "train"
    fraction = pd.array([pd.NA] * len(labels), dtype="Int64")
    fraction[train] = _splits.label_fractions(labels.loc[train, "patient_id"], labels.loc[train, "labels"], seed)
    entries = pd.DataFrame({
        "image_id": labels["image_id"].astype(str),
        "patient_id": labels["patient_id"].astype(str),
        "split": split.astype(str),
        "fraction": fraction,
        "labels": _digit_strings(labels["labels"], "labels"),
        "view": labels["view"].astype(object).where(labels["view"].notna(), ""),
    })
    for column in EXTRA_COLUMNS.get(dataset, ()):
        values = labels[column]
        if column == "votes":
            entries[column] = _digit_strings(values, "votes")
        elif values.dtype == bool:
            entries[column] = values.astype(int)
        else:
            entries[column] = values
    rules = {"split_rule": split_rule, "fraction_rule": FRACTION_RULE,
             "split_ratios": SEEDED_RATIOS if "seeded" in split_rule or dataset == "siim" else None}
    return entries, rules


def _entries_bytes(entries: pd.DataFrame) -> tuple[bytes, bytes]:
    text = entries.to_csv(index=False, lineterminator="\n").encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as handle:
        handle.write(text)
    return text, buffer.getvalue()


def _counts(entries: pd.DataFrame, class_names: Sequence[str]) -> dict[str, Any]:
    matrix = label_matrix(entries)

    def block(mask: np.ndarray) -> dict[str, Any]:
        return {
            "images": int(mask.sum()),
            "patients": int(entries.loc[mask, "patient_id"].nunique()),
            "positives": {name: int(v) for name, v in zip(class_names, matrix[mask].sum(axis=0).tolist())},
            "no_finding": int((matrix[mask].sum(axis=1) == 0).sum()),
        }

    split = entries["split"].to_numpy(dtype=object)
    splits = {name: block(split == name) for name in [*SPLIT_NAMES, EXCLUDED] if (split == name).any()}
    train = split == "train"
    fraction = entries["fraction"].to_numpy(dtype="float64", na_value=np.nan)
    total_train = int(train.sum())
    fractions = {}
    for f in _splits.FRACTIONS:
        entry = block(train & (fraction <= f))
        entry["target_images"] = int(round(f / 100 * total_train))
        fractions[str(f)] = entry
    return {"images": int(len(entries)), "patients": int(entries["patient_id"].nunique()),
            "splits": splits, "fractions": fractions}


def write_manifest(out_dir: Path, meta: dict[str, Any], entries: pd.DataFrame, *, overwrite: bool = False) -> Path:
    """Write ``entries.csv.gz`` and ``manifest.json`` (completing checksums and counts) into ``out_dir``.

    An existing manifest is only replaced when its entries are byte-identical or ``overwrite`` is set:
    a published version is immutable.
    """
    text, packed = _entries_bytes(entries)
    meta = dict(meta)
    meta["entries"] = {
        "file": ENTRIES_FILE,
        "sha256": hashlib.sha256(packed).hexdigest(),
        "size": len(packed),
        "content_sha256": hashlib.sha256(text).hexdigest(),
        "rows": int(len(entries)),
        "columns": list(entries.columns),
    }
    meta["counts"] = _counts(entries, meta["class_names"])
    out_dir = Path(out_dir)
    existing = out_dir / MANIFEST_FILE
    if existing.exists() and not overwrite:
        old = json.loads(existing.read_text())
        if old.get("entries", {}).get("content_sha256") != meta["entries"]["content_sha256"]:
            raise ManifestError(
                f"{out_dir}: a different manifest of this version exists; build a new --version "
                "(or pass overwrite=True / --force to replace it)"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ENTRIES_FILE).write_bytes(packed)
    existing.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return out_dir


def build_manifest(dataset: str, src: Path | str, *, seed: int = 0, version: str = "v1",
                   out: Path | str | None = None, command: str | None = None, overwrite: bool = False,
                   **options: Any) -> Path:
    """Read the label files in ``src`` with the dataset's adapter, split, and write the manifest.

    ``options`` go to the adapter's ``read_labels`` (e.g. ``aggregation="any"`` for VinDr). Returns the
    manifest folder.
    """
    adapter = get_adapter(dataset)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", version) or version == "latest":
        raise ManifestError(f"version {version!r}: use letters, digits, '.', '_' or '-' (e.g. v1), not 'latest'")
    labels = adapter.read_labels(Path(src), **options)
    class_names = list(labels.attrs.get("class_names", adapter.CLASS_NAMES))
    entries, rules = build_entries(adapter.NAME, labels, seed)
    sources = [{"name": Path(p).name, "size": Path(p).stat().st_size, "sha256": sha256_file(Path(p))}
               for p in labels.attrs.get("sources", [])]
    meta: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "dataset": adapter.NAME,
        "version": version,
        "seed": int(seed),
        "created_by": command or (
            f"mlvicx_monai.data.manifests.build_manifest({adapter.NAME!r}, {str(src)!r}, seed={seed}, "
            f"version={version!r}{''.join(f', {k}={v!r}' for k, v in sorted(options.items()))})"
        ),
        "adapter_options": {k: v for k, v in sorted(options.items())},
        "patient_key": DATASET_RULES[adapter.NAME]["patient_key"],
        "split_rule": rules["split_rule"],
        "split_ratios": rules["split_ratios"],
        "fraction_rule": rules["fraction_rule"],
        "fractions": list(_splits.FRACTIONS),
        "aggregation_rule": _aggregation_rule(adapter.NAME, labels),
        "class_names": class_names,
        "label_encoding": "labels: 0/1 string in class_names order; fraction: percent, training rows only",
        "source_report": labels.attrs.get("report", {}),
        "sources": sources,
    }
    root = Path(out) if out is not None else default_root()
    return write_manifest(root / adapter.NAME / version, meta, entries, overwrite=overwrite)


def _aggregation_rule(dataset: str, labels: pd.DataFrame) -> str:
    if dataset == "vindr":
        rule = labels.attrs.get("aggregation", "majority")
        meaning = {"majority": "positive when more than half of the image's readers mark the finding (2 of 3)",
                   "any": "positive when at least one reader marks the finding",
                   "all": "positive when every reader marks the finding"}[rule]
        return f"{rule}: {meaning}; 'No finding' = all-zero; votes column keeps per-class reader counts"
    if dataset == "nih":
        return "none (one label row per image); 'No Finding' = all-zero"
    if dataset == "rsna":
        return "Target = max over the image's box rows"
    return "positive when the image has at least one mask row; several mask rows are merged (union)"


def manifest_dirs(root: Path | str | None = None) -> list[Path]:
    """Every ``<dataset>/<version>/`` under ``root`` holding a manifest.json (sorted)."""
    root = Path(root) if root is not None else default_root()
    return sorted(p.parent for p in root.glob(f"*/*/{MANIFEST_FILE}"))


def _version_key(name: str) -> tuple:
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|\D+", name))


def _resolve(dataset_or_path: str | Path, version: str, root: Path | str | None) -> Path:
    candidate = Path(dataset_or_path)
    if candidate.name == MANIFEST_FILE and candidate.is_file():
        return candidate.parent
    if (candidate / MANIFEST_FILE).is_file():
        return candidate
    name = str(dataset_or_path).strip().lower()
    base = (Path(root) if root is not None else default_root()) / name
    if version == "latest":
        versions = sorted((p.parent.name for p in base.glob(f"*/{MANIFEST_FILE}")), key=_version_key)
        if not versions:
            raise ManifestError(
                f"no manifest for {dataset_or_path!r} under {base.parent}; build one with "
                f"`python -m pipelines.manifests build --dataset {name} --src DIR`"
            )
        return base / versions[-1]
    if not (base / version / MANIFEST_FILE).is_file():
        have = sorted((p.parent.name for p in base.glob(f"*/{MANIFEST_FILE}")), key=_version_key)
        raise ManifestError(f"no manifest {name}/{version} under {base.parent} (available: {have or 'none'})")
    return base / version


def load_manifest(dataset_or_path: str | Path, version: str = "latest", *, root: Path | str | None = None,
                  verify: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(meta, entries)`` of a manifest given by dataset name (+ version) or by its folder / manifest.json.

    ``entries`` has ``labels`` as tuples of ints, ``fraction`` as nullable Int64, ``view`` None where
    unknown. With ``verify`` the entries file's SHA-256 is checked against manifest.json.
    """
    folder = _resolve(dataset_or_path, version, root)
    meta = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    path = folder / meta["entries"]["file"]
    if not path.is_file():
        raise ManifestError(f"{path}: entries file missing")
    if verify:
        digest = sha256_file(path)
        if digest != meta["entries"]["sha256"]:
            raise ManifestError(
                f"{path}: SHA-256 {digest[:12]}... differs from manifest.json ({meta['entries']['sha256'][:12]}...); "
                "the entries were modified after the build: rebuild the manifest under a new version"
            )
    entries = pd.read_csv(path, dtype=str, keep_default_na=False)
    entries["fraction"] = pd.array([int(v) if v else pd.NA for v in entries["fraction"]], dtype="Int64")
    entries["labels"] = list(map(tuple, _parse_digit_strings(entries["labels"], f"{path}: labels").tolist()))
    entries["view"] = entries["view"].astype(object).where(entries["view"] != "", None)
    for column in ("follow_up", "n_readers", "n_boxes", "n_masks"):
        if column in entries:
            entries[column] = entries[column].astype(int)
    if "positive" in entries:
        entries["positive"] = entries["positive"].astype(int).astype(bool)
    if "votes" in entries:
        entries["votes"] = list(map(tuple, _parse_digit_strings(entries["votes"], f"{path}: votes").tolist()))
    meta["path"] = str(folder)
    return meta, entries


def manifest_id(meta: dict[str, Any]) -> str:
    """Short identity of a manifest, ``<dataset>/<version>@<first 12 hex of the entries SHA-256>``."""
    return f"{meta['dataset']}/{meta['version']}@{meta['entries']['sha256'][:12]}"


def label_matrix(entries: pd.DataFrame) -> np.ndarray:
    """``(n, C)`` uint8 label matrix from an entries table (tuples or 0/1 strings)."""
    if len(entries) == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    values = entries["labels"].tolist()
    if isinstance(values[0], str):
        return _parse_digit_strings(values, "labels").astype(np.uint8)
    return np.asarray(values, dtype=np.uint8)


def select(entries: pd.DataFrame, split: str, fraction: int | None = None) -> pd.DataFrame:
    """Rows of one split; for ``train`` optionally only the ``fraction``% subset (1, 10, 30, 100)."""
    rows = entries[entries["split"] == split]
    if fraction is not None:
        if split != "train":
            raise ValueError("label fractions apply to the training split only")
        if int(fraction) not in _splits.FRACTIONS:
            raise ValueError(f"fraction {fraction} not one of {_splits.FRACTIONS}")
        rows = rows[rows["fraction"] <= int(fraction)]
    return rows


def check_manifest(
    dataset_or_path: str | Path, version: str = "latest", *, root: Path | str | None = None
) -> dict[str, Any]:
    """Re-verify a manifest: entries checksum and size, uncompressed content checksum, unique image ids,
    label width, patient-disjoint splits, nested/patient-level/class-covering fractions, recorded counts.

    Returns a short summary; raises ``ManifestError`` / ``LeakageError`` / ``FractionError`` on failure.
    """
    folder = _resolve(dataset_or_path, version, root)
    meta, entries = load_manifest(folder, verify=True)
    path = folder / meta["entries"]["file"]
    where = f"{meta['dataset']}/{meta['version']}"
    if path.stat().st_size != meta["entries"]["size"]:
        raise ManifestError(f"{where}: entries size {path.stat().st_size} != recorded {meta['entries']['size']}")
    with gzip.open(path, "rb") as handle:
        content = hashlib.sha256(handle.read()).hexdigest()
    if content != meta["entries"]["content_sha256"]:
        raise ManifestError(f"{where}: uncompressed entries checksum differs from manifest.json")
    if list(entries.columns) != meta["entries"]["columns"] or len(entries) != meta["entries"]["rows"]:
        raise ManifestError(f"{where}: entries columns/rows differ from manifest.json")
    if entries["image_id"].duplicated().any():
        first = entries.loc[entries["image_id"].duplicated(), "image_id"].iloc[0]
        raise ManifestError(f"{where}: image {first!r} listed twice")
    width = len(meta["class_names"])
    bad = entries["labels"].map(len) != width
    if bad.any():
        raise ManifestError(f"{where}: row {int(np.flatnonzero(bad.to_numpy())[0])} has labels of length != {width}")
    unknown = ~entries["split"].isin([*SPLIT_NAMES, EXCLUDED])
    if unknown.any():
        raise ManifestError(f"{where}: unknown split {entries.loc[unknown, 'split'].iloc[0]!r}")
    _splits.check_patient_disjoint(entries["patient_id"], entries["split"])
    _splits.check_fractions(entries["patient_id"], entries["split"], entries["fraction"], entries["labels"])
    counts = _counts(entries, meta["class_names"])
    if counts != meta["counts"]:
        raise ManifestError(f"{where}: counts recomputed from the entries differ from manifest.json")
    return {
        "id": manifest_id(meta),
        "images": counts["images"],
        "splits": {k: v["images"] for k, v in counts["splits"].items()},
        "fractions": {k: v["images"] for k, v in counts["fractions"].items()},
    }


def summary(meta: dict[str, Any]) -> str:
    """Human-readable summary of a manifest's metadata and counts."""
    counts = meta["counts"]
    lines = [
        f"{manifest_id(meta)}  ({counts['images']} images, {counts['patients']} patients, seed {meta['seed']})",
        f"  created by: {meta['created_by']}",
        f"  patient key: {meta['patient_key']}",
        f"  split rule: {meta['split_rule']}",
        f"  aggregation: {meta['aggregation_rule']}",
        f"  classes ({len(meta['class_names'])}): {', '.join(meta['class_names'])}",
        "  sources: " + ", ".join(f"{s['name']} ({s['size']} B, sha256 {s['sha256'][:12]})" for s in meta["sources"]),
        f"  {'subset':<10}{'images':>8}{'patients':>10}  positives per class",
    ]
    for name, block in counts["splits"].items():
        lines.append(f"  {name:<10}{block['images']:>8}{block['patients']:>10}  {list(block['positives'].values())}")
    for name, block in counts["fractions"].items():
        label = f"train {name}%"
        lines.append(f"  {label:<10}{block['images']:>8}{block['patients']:>10}  {list(block['positives'].values())}")
    return "\n".join(lines)
