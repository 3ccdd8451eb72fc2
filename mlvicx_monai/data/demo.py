"""Data for the bundles: the synthetic demo (generated and ingested on first use) or an ingested folder.

``datalist_path(dataset, data_dir, layout)`` says where a bundle's datalist is, without touching any file (a
bundle's config resolves with no side effect); ``prepare_data`` is the bundles' explicit ``initialize`` step:
``prepare_data("demo", "runs/demo_data", layout="nih")`` writes synthetic radiographs in the official NIH layout to
``runs/demo_data/nih/raw``, ingests them into ``runs/demo_data/nih/cache`` and returns that datalist; later calls
return it at once. For a real dataset, ``data_dir`` is the output folder of ``python -m pipelines.ingest`` and is
only checked. Concurrent callers (DDP ranks, two bundles) are serialised by a lock file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from mlvicx_monai.data.datalist import DatalistError, read_datalist
from mlvicx_monai.utils.atomic import atomic_write_json

__all__ = ["DEMO", "DEMO_LAYOUTS", "check_dataset", "datalist_path", "prepare_data"]

logger = logging.getLogger(__name__)

#: the ``dataset`` value of the synthetic demo
DEMO = "demo"
#: demo layout -> the dataset whose official layout the phantom imitates
DEMO_LAYOUTS = {"nih": "nih", "siim": "siim", "vindr": "vindr", "rsna": "rsna"}


def check_dataset(dataset: str, allowed: tuple[str, ...] | None = None) -> str:
    """``dataset`` if it is ``demo`` or one of ``allowed`` (default: every dataset ingestion knows); otherwise a
    ``ValueError`` naming the choices."""
    from mlvicx_monai.data.ingest import DATASETS

    choices = allowed if allowed is not None else (DEMO, *DATASETS)
    if dataset not in choices:
        raise ValueError(
            f"unknown dataset {dataset!r}; choose one of {', '.join(choices)} (demo = synthetic data generated on "
            "first use; any other name needs dataset_dir = the output folder of "
            "`python -m pipelines.ingest --dataset NAME`)"
        )
    return dataset


def datalist_path(dataset: str, data_dir: str | os.PathLike, layout: str = "nih") -> Path:
    """Where the datalist of a bundle is: ``data_dir/<layout>/cache/manifest.json`` for the demo, else
    ``data_dir/manifest.json`` (no file is read or written)."""
    root = Path(data_dir)
    if dataset == DEMO:
        if layout not in DEMO_LAYOUTS:
            raise ValueError(f"unknown demo layout {layout!r}; expected one of {sorted(DEMO_LAYOUTS)}")
        return root / layout / "cache" / "manifest.json"
    return root / "manifest.json"


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_data(
    dataset: str,
    data_dir: str | os.PathLike,
    layout: str = "nih",
    n_images: int = 320,
    seed: int = 0,
    raw_size: int = 512,
    cache_size: int = 256,
    workers: int | None = None,
) -> Path:
    """Path of the datalist to train on.

    Args:
        dataset: ``demo`` for the synthetic data, else the dataset name the ingested ``data_dir`` must hold.
        data_dir: for ``demo``, where the demo is generated (one sub-folder per layout); otherwise an
            ingestion output folder.
        layout: demo only: which dataset layout to imitate (``nih`` for classification/pretraining,
            ``siim`` for segmentation).
        n_images, seed, raw_size, cache_size: demo only: size of the demo, its seed, the side of the
            generated radiographs and of the ingested cache.
        workers: ingestion processes (default: all cores).
    """
    root = Path(data_dir)
    if dataset != DEMO:
        document = read_datalist(root)
        if document.get("dataset") != dataset:
            raise DatalistError(
                f"{root} holds an ingestion of {document.get('dataset')!r}, but dataset={dataset!r} was asked for"
            )
        return root / "manifest.json"
    if layout not in DEMO_LAYOUTS:
        raise ValueError(f"unknown demo layout {layout!r}; expected one of {sorted(DEMO_LAYOUTS)}")
    target = root / layout
    params = {"layout": layout, "n_images": n_images, "seed": seed, "raw_size": raw_size, "cache_size": cache_size}
    with _locked(root / f".{layout}.lock"):
        marker = target / "demo.json"
        if marker.exists():
            previous = json.loads(marker.read_text())
            if previous != params:
                raise DatalistError(
                    f"{target} holds a demo made with {previous}, not {params}; delete {target} or choose another "
                    "data_dir"
                )
            return datalist_path(dataset, root, layout)
        from mlvicx_monai.data.ingest import IngestConfig, ingest
        from mlvicx_monai.data.phantom import write_layout

        raw = target / "raw"
        logger.info("generating %d synthetic radiographs (%s layout) in %s", n_images, layout, raw)
        # no marker: nothing or an interrupted attempt; the phantom is deterministic, so regenerate it and let
        # the (resumable) ingestion continue where it stopped
        write_layout(layout, raw, n=n_images, seed=seed, size=raw_size, overwrite=True)
        ingest(
            IngestConfig(
                dataset=DEMO_LAYOUTS[layout],
                src=raw,
                out=target / "cache",
                size=cache_size,
                workers=workers if workers is not None else (os.cpu_count() or 1),
                split_source="computed",
                seed=seed,
                secret_file=root / ".demo-deid.secret",  # synthetic data: a local secret is fine
                new_secret=True,
            )
        )
        atomic_write_json(marker, params)
    return datalist_path(dataset, root, layout)
