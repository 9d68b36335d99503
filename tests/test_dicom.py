"""DICOM reading on files the test writes with pydicom: MONOCHROME1/2, 8/16-bit, with and without a window."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from paddle_chexnet.data.dicom import is_dicom_file, read_dicom, voi_output_range  # noqa: E402
from paddle_chexnet.data.images import ImageReadError, read_xray  # noqa: E402


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
) -> Path:
    """Write a minimal single-frame grayscale DICOM holding ``pixels`` (uint8 or uint16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def ramp(dtype, high: int) -> np.ndarray:
    """A 32x64 horizontal ramp from 0 to ``high``."""
    row = np.round(np.linspace(0, high, 64)).astype(dtype)
    return np.tile(row, (32, 1))


@pytest.mark.parametrize("dtype,high", [(np.uint8, 255), (np.uint16, 4095)])
def test_monochrome2_scaled_min_max_to_full_range(tmp_path, dtype, high):
    pixels = ramp(dtype, high)
    path = write_dicom(tmp_path / "a.dcm", pixels, bits_stored=8 if dtype == np.uint8 else 12)
    image = read_dicom(path)
    assert image.mode == "L" and image.size == (64, 32)
    got = np.asarray(image)
    expected = np.round(pixels.astype(np.float64) / high * 255).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 0] == 0 and got[0, -1] == 255


def test_monochrome1_is_inverted(tmp_path):
    pixels = ramp(np.uint16, 4095)
    mono2 = np.asarray(read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", 12)))
    mono1 = np.asarray(read_dicom(write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1", 12)))
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0  # low stored values are bright in MONOCHROME1


def test_window_saturates_outside_and_scales_inside(tmp_path):
    # 12-bit data, window [1000, 2000): below -> 0, above -> 255, linear between
    pixels = np.array([[0, 999, 1500, 2100, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "w.dcm", pixels, bits_stored=12, window=(1500.0, 1000.0))
    got = np.asarray(read_dicom(path))[0]
    assert got[0] == 0 and got[1] == 0
    assert got[3] == 255 and got[4] == 255
    assert abs(int(got[2]) - 128) <= 1  # the window centre maps to mid-gray
    # without the window: plain min..max scaling
    plain = np.asarray(read_dicom(path, apply_window=False))[0]
    np.testing.assert_array_equal(plain, np.round(pixels[0] / 4095 * 255).astype(np.uint8))


def test_window_with_monochrome1_and_rescale(tmp_path):
    # rescale to Hounsfield-like values, then a window in those units, then inversion
    pixels = np.array([[0, 1000, 1500, 2000, 3000]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "r.dcm", pixels, "MONOCHROME1", bits_stored=12, window=(0.0, 1000.0), rescale=(1.0, -1500.0)
    )
    got = np.asarray(read_dicom(path))[0]
    # physical values: -1500, -500, 0, 500, 1500; window [-500, 500]
    assert got[0] == 255 and got[1] == 255  # below the window -> black -> inverted white
    assert got[3] == 0 and got[4] == 0
    assert abs(int(got[2]) - 127) <= 1


def test_voi_output_range_follows_bits_and_rescale(tmp_path):
    pixels = ramp(np.uint16, 4095)
    ds = pydicom.dcmread(str(write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12, window=(2048.0, 4096.0),
                                         rescale=(2.0, -10.0))))
    assert voi_output_range(ds) == (-10.0, 4095 * 2.0 - 10.0)
    ds_no_window = pydicom.dcmread(str(write_dicom(tmp_path / "y.dcm", pixels, bits_stored=12)))
    assert voi_output_range(ds_no_window) is None


def test_read_xray_dispatches_by_suffix_and_by_magic(tmp_path):
    pixels = ramp(np.uint8, 255)
    by_suffix = write_dicom(tmp_path / "b.dcm", pixels)
    no_suffix = write_dicom(tmp_path / "IM000001", pixels)
    assert is_dicom_file(no_suffix) and not is_dicom_file(tmp_path / "missing")
    for path in (by_suffix, no_suffix):
        image = read_xray(path)
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), pixels)


def test_not_a_dicom_gives_clear_error(tmp_path):
    bogus = tmp_path / "bogus.dcm"
    bogus.write_bytes(b"this is not a DICOM file" * 10)
    with pytest.raises(ImageReadError, match="bogus.dcm"):
        read_dicom(bogus)
    with pytest.raises(ImageReadError, match="not found"):
        read_dicom(tmp_path / "missing.dcm")


def test_dicom_without_pixels_is_an_error(tmp_path):
    path = write_dicom(tmp_path / "p.dcm", ramp(np.uint8, 255))
    ds = pydicom.dcmread(str(path))
    del ds.PixelData
    ds.save_as(str(path), enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_dicom(path)
