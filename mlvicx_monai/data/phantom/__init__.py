"""Synthetic chest radiographs with exact ground truth, written in the layout of each real dataset.

The project's embedded demo data: bundles generate it on first use and tests generate small sets.

Rendering (no files)::

    import numpy as np
    from mlvicx_monai.data.phantom import render_cxr
    image, ann = render_cxr(np.random.default_rng(0), 512, ["cardiomegaly", "effusion"])
    # image: float32 (512, 512) in [0, 1], bone bright; ann.regions, ann.ctr, ann.mask("effusion")

Datasets on disk (``python -m pipelines.phantom`` is the command-line front end)::

    from mlvicx_monai.data.phantom import write_layout
    root = write_layout("siim", "demo_data/siim", n=200, seed=0, size=512)

Modules: :mod:`.raster` (pixel grid and pose), :mod:`.anatomy` (normal chest), :mod:`.findings`
(pathologies), :mod:`.render` (acquisition and truth), :mod:`.lateral` and :mod:`.nonchest` (views and
images to reject), :mod:`.vocab` (dataset label spellings), :mod:`.identity` (fake PHI and UIDs),
:mod:`.dicom_writer` (Part-10 files in any transfer syntax), :mod:`.layouts` (public dataset layouts)
and :mod:`.pacs` (a messy hospital export).
"""

from .anatomy import Anatomy, Thorax, sample_anatomy
from .dicom_writer import (
    TRANSFER_SYNTAXES,
    PixelEncoding,
    dcmtk_jpeg_available,
    new_dataset,
    set_pixels,
    write_dicom,
)
from .findings import DEFAULT_PREVALENCE, FINDING_NAMES, sample_finding_set
from .lateral import render_lateral_cxr
from .layouts import DEFAULT_SIZE, LAYOUTS, LayoutSummary, image_rng, write_layout
from .pacs import CATEGORIES, collect_phi
from .raster import Pose
from .render import Annotations, Exposure, Region, render_cxr
from .vocab import NIH_CLASSES, NIH_LABEL, PREVALENCE, VINDR_CLASS_ID, VINDR_CLASSES

__all__ = [
    "CATEGORIES",
    "DEFAULT_PREVALENCE",
    "DEFAULT_SIZE",
    "FINDING_NAMES",
    "LAYOUTS",
    "NIH_CLASSES",
    "NIH_LABEL",
    "PREVALENCE",
    "TRANSFER_SYNTAXES",
    "VINDR_CLASSES",
    "VINDR_CLASS_ID",
    "Anatomy",
    "Annotations",
    "Exposure",
    "LayoutSummary",
    "PixelEncoding",
    "Pose",
    "Region",
    "Thorax",
    "collect_phi",
    "dcmtk_jpeg_available",
    "image_rng",
    "new_dataset",
    "render_cxr",
    "render_lateral_cxr",
    "sample_anatomy",
    "sample_finding_set",
    "set_pixels",
    "write_dicom",
    "write_layout",
]
