"""PNG decoding on the DICOM contract, content-based dispatch, the MONAI reader and LoadCXRd."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, LoadImage, Resized
from PIL import Image

from mlvicx_monai.data.dicom import CXRDecodeError, load_cxr
from mlvicx_monai.data.readers import CXRReader, LoadCXRd, load_image, load_png, sniff_format
from tests.data.conftest import build_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS, COLS = 40, 60  # non-square on purpose: a transposed reader gives (60, 40)


def gradient8() -> np.ndarray:
    """uint8 (ROWS, COLS), distinct along both axes: value = 4 * row + column // 2 (0 .. 185)."""
    r, c = np.mgrid[0:ROWS, 0:COLS]
    return (4 * r + c // 2).astype(np.uint8)


@pytest.fixture
def png8(tmp_path):
    path = tmp_path / "nih.png"
    Image.fromarray(gradient8()).save(path)
    return str(path)


@pytest.fixture
def dicom_file(make_dicom):
    """Non-square MONOCHROME1 DICOM with a known spacing and window."""
    r, c = np.mgrid[0:ROWS, 0:COLS]
    pixels = 40 * r + c  # 0 .. 1619
    return make_dicom(
        pixels,
        bits_stored=12,
        photometric="MONOCHROME1",
        WindowCenter="800",
        WindowWidth="1600",
        ImagerPixelSpacing=["0.2", "0.3"],
        ViewPosition="PA",
    )


# --- PNG ------------------------------------------------------------------------------------------------


def test_png_8_bit(png8):
    image, meta = load_png(png8)
    assert image.dtype == np.float32 and image.shape == (ROWS, COLS)
    np.testing.assert_array_equal(image, gradient8().astype(np.float32) / 255)
    assert image[0, 2] < image[1, 0]  # rows are rows: value grows by 4 per row, 1 per two columns
    assert meta.source_format == "png" and meta.voi == "png8" and meta.bits_stored == 8
    assert meta.original_size == (ROWS, COLS) and meta.photometric_interpretation == "MONOCHROME2"
    assert meta.pixel_spacing is None and meta.transfer_syntax is None and meta.sop_class_uid is None


def test_png_16_bit_is_min_max(tmp_path):
    values = (1000 + 7 * np.arange(ROWS * COLS)).reshape(ROWS, COLS).astype(np.uint16)  # 1000 .. 17793
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit PNG
    image, meta = load_png(path)
    np.testing.assert_allclose(image, (values - 1000.0) / (values.max() - 1000.0), atol=1e-6)
    assert image.shape == (ROWS, COLS) and meta.voi == "minmax" and meta.bits_stored == 16


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P"])
def test_png_equal_channels_is_gray(tmp_path, png8, mode):
    gray = Image.open(png8)
    if mode == "P":  # indices = the gray values, through a palette of grays
        img = Image.frombytes("P", (COLS, ROWS), gradient8().tobytes())
        img.putpalette([v for i in range(256) for v in (i, i, i)])
    else:
        img = gray.convert(mode)
    path = tmp_path / f"{mode}.png"
    img.save(path)
    image, meta = load_png(path)
    np.testing.assert_array_equal(image, gradient8().astype(np.float32) / 255)
    assert meta.voi == "png8"


@pytest.mark.parametrize("mode", ["RGB", "P"])
def test_colour_png_rejected(tmp_path, mode):
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    rgb[..., 0] = gradient8()
    rgb[..., 2] = 255 - gradient8()
    img = Image.fromarray(rgb)
    if mode == "P":
        img = img.quantize(colors=64)
    path = tmp_path / "colour.png"
    img.save(path)
    with pytest.raises(CXRDecodeError) as info:
        load_png(path)
    assert info.value.code == "colour" and "channels differ" in info.value.reason


def test_png_blank_truncated_and_not_png(tmp_path, png8):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(blank)
    with pytest.raises(CXRDecodeError) as info:
        load_png(blank)
    assert info.value.code == "empty_image"

    noisy = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)).save(noisy)
    data = noisy.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CXRDecodeError) as info:
        load_png(cut)
    assert info.value.code == "truncated", info.value.reason

    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(CXRDecodeError) as info:
        load_png(text)
    assert info.value.code == "not_dicom" and "PNG signature" in info.value.reason


# --- dispatch by content -----------------------------------------------------------------------------------


def test_load_image_dispatches_on_magic_bytes(tmp_path, png8, dicom_file):
    png_as_dcm = tmp_path / "really_a_png.dcm"
    shutil.copy(png8, png_as_dcm)
    dicom_no_ext = tmp_path / "1.2.3.4"  # PACS exports often have no extension
    shutil.copy(dicom_file, dicom_no_ext)
    dicom_as_png = tmp_path / "really_dicom.png"
    shutil.copy(dicom_file, dicom_as_png)

    assert sniff_format(png_as_dcm) == "png" and sniff_format(dicom_no_ext) == "dicom"
    image, meta = load_image(png_as_dcm)
    assert meta.source_format == "png" and image.shape == (ROWS, COLS)
    for path in (dicom_no_ext, dicom_as_png):
        image, meta = load_image(path)
        assert meta.source_format == "dicom"
        np.testing.assert_array_equal(image, load_cxr(dicom_file)[0])

    for name, content in (("empty", b""), ("notes.txt", b"hello\n" * 50)):
        path = tmp_path / name
        path.write_bytes(content)
        assert sniff_format(path) == "unknown"
        with pytest.raises(CXRDecodeError) as info:
            load_image(path)
        assert info.value.code == "not_dicom"


def test_dicom_decode_through_dispatch_is_windowed_and_inverted(dicom_file):
    image, meta = load_image(dicom_file)
    r, c = np.mgrid[0:ROWS, 0:COLS]
    x = 40 * r + c
    expected = 1.0 - np.clip((x - 799.5) / 1599 + 0.5, 0, 1)  # LINEAR window, then MONOCHROME1 inversion
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert meta.pixel_spacing == (0.2, 0.3) and meta.pixel_spacing_source == "ImagerPixelSpacing"


# --- MONAI -----------------------------------------------------------------------------------------------


def check_monai_image(img, expected: np.ndarray, meta_voi: str) -> None:
    assert isinstance(img, MetaTensor)
    assert tuple(img.shape) == (1, *expected.shape) and img.dtype == torch.float32
    np.testing.assert_array_equal(img[0].numpy(), expected)
    assert img.meta["original_channel_dim"] == "no_channel"
    np.testing.assert_array_equal(np.asarray(img.meta["spatial_shape"]), expected.shape)
    assert img.meta["voi"] == meta_voi
    for key in ("source_format", "modality", "view_position", "pixel_spacing", "original_size", "bits_stored"):
        assert key in img.meta


def test_monai_load_image_keeps_rows_and_columns(png8, dicom_file):
    loader = LoadImage(reader=CXRReader(), image_only=True, ensure_channel_first=True)
    png_img = loader(png8)
    check_monai_image(png_img, load_png(png8)[0], "png8")
    np.testing.assert_array_equal(png_img.affine.numpy(), np.eye(3))  # no spacing known

    dcm_img = loader(dicom_file)
    check_monai_image(dcm_img, load_cxr(dicom_file)[0], "window")
    np.testing.assert_allclose(dcm_img.affine.numpy(), np.diag([0.2, 0.3, 1.0]))
    np.testing.assert_allclose(dcm_img.pixdim.numpy(), [0.2, 0.3])
    assert dcm_img.meta["view_position"] == "PA" and dcm_img.meta["photometric_interpretation"] == "MONOCHROME1"
    # for contrast: MONAI's default PNG reader transposes to (x, y)
    assert tuple(LoadImage(image_only=True)(png8).shape) == (COLS, ROWS)


def test_monai_load_image_raises_typed_error_without_fallback(make_dicom):
    """A rejected DICOM must not be read by another registered reader (ITK would return something)."""
    path = make_dicom(np.full((16, 16), 5), bits_stored=12)  # blank image: empty_image
    with pytest.raises(CXRDecodeError) as info:
        LoadImage(reader=CXRReader(), image_only=True)(path)
    assert info.value.code == "empty_image"


def test_cxr_reader_verify_suffix(tmp_path, png8, dicom_file):
    reader = CXRReader()
    dicom_no_ext = tmp_path / "IM0001"
    shutil.copy(dicom_file, dicom_no_ext)
    nifti = tmp_path / "volume.nii.gz"
    nifti.write_bytes(b"\x1f\x8b" + b"\0" * 40)
    assert reader.verify_suffix(png8) and reader.verify_suffix(str(dicom_no_ext))
    assert reader.verify_suffix([png8, dicom_file])
    assert reader.verify_suffix("not/yet/there.dcm")  # judged by name when it cannot be opened
    assert not reader.verify_suffix(str(nifti))
    assert not reader.verify_suffix([png8, str(nifti)])


def test_cxr_reader_stacks_several_files(tmp_path, png8):
    other = tmp_path / "other.png"
    Image.fromarray(255 - gradient8()).save(other)
    reader = CXRReader()
    array, meta = reader.get_data(reader.read([png8, str(other)]))
    assert array.shape == (2, ROWS, COLS) and meta["original_channel_dim"] == 0


def test_load_cxrd_in_compose_and_dataloader(tmp_path, png8, dicom_file):
    pipeline = Compose([LoadCXRd(keys=["image"]), Resized(keys=["image"], spatial_size=(32, 32))])
    items = [{"image": png8, "label": 0}, {"image": dicom_file, "label": 1}]
    out = pipeline(items[1])
    assert tuple(out["image"].shape) == (1, 32, 32) and out["label"] == 1
    assert out["image"].meta["source_format"] == "dicom"

    loader = DataLoader(Dataset(items, transform=pipeline), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert tuple(batch["image"].shape) == (2, 1, 32, 32)
    assert list(batch["image"].meta["source_format"]) == ["png", "dicom"]
    spacing = np.asarray(batch["image"].meta["pixel_spacing"])  # NaN when unknown, so it collates
    assert np.isnan(spacing[0]).all() and np.allclose(spacing[1], [0.2, 0.3])


def test_load_cxrd_missing_keys_and_errors(png8, make_dicom):
    with pytest.raises(KeyError):
        LoadCXRd(keys=["image", "prior"])({"image": png8})
    out = LoadCXRd(keys=["image", "prior"], allow_missing_keys=True)({"image": png8})
    assert tuple(out["image"].shape) == (1, ROWS, COLS) and "prior" not in out
    ds = build_dataset(np.arange(64).reshape(8, 8), bits_stored=12, SamplesPerPixel=3)
    with pytest.raises(CXRDecodeError) as info:
        LoadCXRd(keys="image")({"image": make_dicom(dataset=ds)})
    assert info.value.code == "colour"
