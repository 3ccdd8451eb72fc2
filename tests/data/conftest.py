"""Fixtures for the radiograph decoding tests: pydicom test files, hand-made DICOM files, dcmtk renderings."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
    generate_uid,
)

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"

#: dcmtk writes 16-bit integers; measured against float decodes it is within one unit (it truncates).
DCMTK_TOL = 1.5 / 65535


@pytest.fixture(scope="session")
def testdata() -> Callable[[str], str]:
    """Path of a file bundled with pydicom / pydicom-data (installed, no download)."""

    def get(name: str) -> str:
        path = get_testdata_file(name)
        if path is None or not os.path.isfile(path):
            pytest.fail(f"pydicom test file {name} not found; install the test extras (pydicom-data)")
        return path

    return get


def build_dataset(
    pixels: np.ndarray,
    *,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    pixel_representation: int = 0,
    photometric: str = "MONOCHROME2",
    sop_class: str | None = CR_IMAGE_STORAGE,
    pixel_bytes: bytes | None = None,
    **attributes: Any,
) -> Dataset:
    """A single-frame grayscale dataset (Explicit VR Little Endian) holding ``pixels`` as stored values.

    ``pixels`` are written bit-exactly as the integers given (so unused high bits may carry "garbage"; negative
    values as two's complement); unsigned (PixelRepresentation 0) unless ``pixel_representation=1``;
    ``pixel_bytes`` overrides the Pixel Data value; ``attributes`` are set by keyword (None deletes).
    """
    pixels = np.asarray(pixels)
    rows, columns = pixels.shape
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class or CR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if sop_class is not None:
        ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PHI-12345"
    ds.StudyDate = "20240102"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored if bits_stored is not None else bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = pixel_representation
    if pixel_bytes is None:
        dtype = {8: "u1", 16: "<u2", 32: "<u4"}[bits_allocated]
        raw = pixels.astype(np.int64) & (2**bits_allocated - 1)  # two's complement bit pattern
        pixel_bytes = raw.astype(dtype).tobytes()
    ds.PixelData = pixel_bytes
    ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
    for keyword, value in attributes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., str]:
    """Write :func:`build_dataset` (or a given dataset) to a file in ``tmp_path``; returns its path.

    ``transfer_syntax=None`` writes a File Meta header without TransferSyntaxUID (``implicit`` chooses the
    encoding); ``file_meta=False`` writes a bare data set without preamble and File Meta.
    """
    counter = iter(range(10**6))

    def make(
        pixels: np.ndarray | None = None,
        *,
        dataset: Dataset | None = None,
        name: str | None = None,
        transfer_syntax: str | None = ExplicitVRLittleEndian,
        implicit: bool = False,
        file_meta: bool = True,
        **kwargs: Any,
    ) -> str:
        ds = dataset if dataset is not None else build_dataset(pixels, **kwargs)
        path = tmp_path / (name or f"image{next(counter)}.dcm")
        if file_meta and transfer_syntax is not None:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.save_as(path, enforce_file_format=True)
            return str(path)
        if not file_meta:
            del ds.file_meta
            ds.preamble = None
        else:
            if "TransferSyntaxUID" in ds.file_meta:
                del ds.file_meta.TransferSyntaxUID
            ds.preamble = b"\0" * 128
        ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        return str(path)

    return make


def _decompress_for_dcmtk(path: str, out_dir: Path) -> str:
    """dcm2pnm in this dcmtk build has no codecs: decompress compressed files with dcmdjpeg/dcmdjpls/dcmdrle."""
    tsyntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.get("TransferSyntaxUID")
    tool = None
    if tsyntax in JPEGTransferSyntaxes:
        tool = "dcmdjpeg"
    elif tsyntax in JPEGLSTransferSyntaxes:
        tool = "dcmdjpls"
    elif tsyntax == RLELossless:
        tool = "dcmdrle"
    if tool is None:
        return path
    out = str(out_dir / f"dec-{Path(path).name}")
    subprocess.run([tool, path, out], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def dcmtk_render(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., np.ndarray]:
    """dcmtk's rendering of a DICOM file: ``dcm2pnm <voi options> -O +on2`` (16-bit PNG, overlays off),
    as float64 in [0, 1], shape (rows, columns)."""
    if shutil.which("dcm2pnm") is None:
        pytest.skip("dcmtk (dcm2pnm) is not installed")
    out_dir = tmp_path_factory.mktemp("dcmtk")
    counter = iter(range(10**6))

    def render(path: str, *voi: str) -> np.ndarray:
        source = _decompress_for_dcmtk(path, out_dir)
        out = out_dir / f"render{next(counter)}.png"
        result = subprocess.run(
            ["dcm2pnm", *voi, "-O", "+on2", source, str(out)], capture_output=True, text=True
        )
        assert result.returncode == 0, f"dcm2pnm failed on {path}: {result.stderr}"
        with Image.open(out) as img:
            assert img.mode.startswith("I;16"), img.mode
            return np.asarray(img).astype(np.float64) / 65535.0

    return render
