"""The display lookup table of decode_cxr (one table per file, one gather per pixel) against the same DICOM
grayscale steps applied pixel by pixel in float64, on hand-made data sets that stress the table's domain
(signed, 8-bit, 32-bit cells, LUT Sequences that go up and down) and its memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mlvicx_monai.data import dicom
from mlvicx_monai.data.dicom import decode_cxr
from tests.data.conftest import build_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

RNG = np.random.default_rng(12)


def lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item["LUTDescriptor"] = DataElement(0x00283002, "US", descriptor)
    item["LUTData"] = DataElement(0x00283006, "US", data)
    return item


def per_pixel(ds: Dataset) -> tuple[np.ndarray, str]:
    """PS3.4 N.2 applied to every pixel in float64 (the computation the table replaced), min-max fallback
    decided on the pixels themselves."""
    path = "reference"
    px = dicom._pixel_module(ds, path)
    tsyntax, _ = dicom._transfer_syntax(ds, path)
    stored = dicom._stored_values(ds, px, tsyntax, path).astype(np.int64)
    gray = dicom._grayscale_attributes(ds)
    modality = dicom._modality_lut(stored, gray, ds, path).astype(np.float64)
    out, method = None, "minmax"
    if gray.get("VOILUTSequence"):
        table, first, bits = dicom._lut_table(gray.VOILUTSequence[0], True, "VOI", path)
        out, method = dicom._apply_lut(modality, table, first) / float(2**bits - 1), "lut"
    else:
        windowed = dicom._window(modality, gray, path)
        if windowed is not None:
            out, method = windowed
    if out is None or not out.max() > out.min():
        out, method = (modality - modality.min()) / (modality.max() - modality.min()), "minmax"
    if px.photometric == "MONOCHROME1":
        out = 1.0 - out
    return np.clip(out, 0.0, 1.0).astype(np.float32), method


CASES = {
    "u16 rescale + window, MONOCHROME1": dict(
        pixels=RNG.integers(0, 4096, (40, 50)), bits_stored=12, photometric="MONOCHROME1",
        RescaleSlope="0.7", RescaleIntercept="-100", WindowCenter="1200", WindowWidth="1500",
    ),
    "s16 LINEAR_EXACT across zero": dict(
        pixels=RNG.integers(-2000, 2000, (30, 20)), bits_stored=12, pixel_representation=1,
        WindowCenter="-50.5", WindowWidth="700", VOILUTFunction="LINEAR_EXACT",
    ),
    "s16 full range min-max": dict(pixels=RNG.integers(-32768, 32768, (25, 25)), pixel_representation=1),
    "s8 min-max, MONOCHROME1": dict(
        pixels=RNG.integers(-128, 128, (16, 24)), bits_allocated=8, pixel_representation=1, photometric="MONOCHROME1",
    ),
    "u8 SIGMOID": dict(
        pixels=RNG.integers(0, 256, (16, 24)), bits_allocated=8, WindowCenter="100", WindowWidth="60",
        VOILUTFunction="SIGMOID",
    ),
    "u32 cells, 17-bit values in a narrow range": dict(
        pixels=RNG.integers(70_000, 80_000, (20, 20)), bits_allocated=32, bits_stored=17,
        WindowCenter="75000", WindowWidth="4000",
    ),
    "s32 cells, range wider than 2^16": dict(
        pixels=RNG.integers(-(2**20), 2**20, (20, 20)), bits_allocated=32, bits_stored=22, pixel_representation=1,
        RescaleSlope="2", RescaleIntercept="5",
    ),
    "window missing the data: min-max fallback": dict(
        pixels=RNG.integers(0, 4096, (20, 20)), bits_stored=12, WindowCenter="100000", WindowWidth="10",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_table_equals_the_per_pixel_computation(name):
    kwargs = dict(CASES[name])
    ds = build_dataset(kwargs.pop("pixels"), **kwargs)
    image, meta = decode_cxr(ds, "table.dcm")
    expected, method = per_pixel(ds)
    assert image.dtype == np.float32 and image.shape == expected.shape
    assert np.array_equal(image, expected), np.abs(image - expected).max()
    assert meta.voi == method
    assert image.min() < image.max()


def test_non_monotone_modality_lut_min_max_over_the_values_that_occur():
    """Stored values are all even; the Modality LUT sends odd inputs far away. The min-max range must come
    from the values present, not from the whole stored range (which would squash the image)."""
    stored = 2 * RNG.integers(0, 2048, (32, 32))
    table = np.arange(4096) // 2
    table[1::2] = 4000  # never used by this image
    ds = build_dataset(stored, bits_stored=12)
    ds.ModalityLUTSequence = Sequence([lut_item([4096, 0, 12], table.tolist())])
    image, meta = decode_cxr(ds, "mlut.dcm")
    expected, _ = per_pixel(ds)
    assert meta.voi == "minmax" and np.array_equal(image, expected)
    np.testing.assert_allclose(
        image, (stored // 2 - stored.min() // 2) / (stored.max() // 2 - stored.min() // 2), atol=1e-6
    )
    assert table[stored.min() : stored.max() + 1].max() == 4000  # the stored range alone would have been wrong


def test_non_monotone_voi_lut_constant_on_the_image_falls_back_to_min_max():
    stored = np.where(RNG.random((20, 20)) < 0.5, 100, 300)
    stored[0, 0], stored[0, 1] = 100, 300
    table = np.full(4096, 7)
    table[150:250] = 200  # between the image's two values: the LUT output of the image is constant
    ds = build_dataset(stored, bits_stored=12)
    ds.VOILUTSequence = Sequence([lut_item([4096, 0, 8], table.tolist())])
    image, meta = decode_cxr(ds, "vlut.dcm")
    assert meta.voi == "minmax"
    assert np.array_equal(image, (stored == 300).astype(np.float32))
    assert np.array_equal(image, per_pixel(ds)[0])


def test_domain_of_signed_data_is_a_view_of_the_pixels():
    stored = np.array([[-32768, -1, 0, 1, 32767]], dtype=np.int16)
    domain = dicom._stored_domain(stored)
    assert np.shares_memory(domain.index, stored) and domain.index.dtype == np.uint16
    table = domain.values.astype(np.float64)  # identity: each entry is its stored value
    assert np.array_equal(dicom._gather(domain.gather_table(table), domain.index), stored.astype(np.float64))
    assert domain.occurring_range(table) == (-32768.0, 32767.0)


def test_no_per_pixel_float64_array():
    """A 1024 x 1024 16-bit image decodes with < 10 bytes of Python-traced memory per pixel at peak: the stored
    values (2), the float32 image (4) and tables; one float64 copy of the image alone would be 8 (the float64
    pipeline this replaced peaked at 30)."""
    ds = build_dataset(RNG.integers(0, 4096, (1024, 1024)), bits_stored=12, photometric="MONOCHROME1",
                       RescaleSlope="0.5", RescaleIntercept="-10", WindowCenter="900", WindowWidth="1800")
    decode_cxr(ds)
    tracemalloc.start()
    try:
        image, _ = decode_cxr(ds)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.dtype == np.float32
    assert peak / image.size < 10, peak / image.size


@pytest.mark.parametrize(
    "pixels, representation, clean",
    [
        (RNG.integers(0, 4096, (8, 8)), 0, True),
        (RNG.integers(0, 4096, (8, 8)) | (1 << 13), 0, False),  # garbage above BitsStored
        (RNG.integers(-2048, 2048, (8, 8)), 1, True),  # two's complement written sign-extended
        (RNG.integers(-2048, 2048, (8, 8)) & 0x0FFF, 1, False),  # the 12-bit pattern with zero high bits
    ],
)
def test_uncompressed_stored_values_are_a_view_unless_the_high_bits_need_correcting(pixels, representation, clean):
    ds = build_dataset(pixels, bits_stored=12, pixel_representation=representation)
    px = dicom._pixel_module(ds, "x")
    stored = dicom._stored_values(ds, px, dicom._transfer_syntax(ds, "x")[0], "x")
    expected = pixels & 0x0FFF
    if representation:
        expected = np.where(expected >= 2048, expected - 4096, expected)
    assert np.array_equal(stored, expected)
    assert stored.flags.writeable is not clean  # read-only view on the Pixel Data bytes when nothing to correct
