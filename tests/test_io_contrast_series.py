"""Opening contrast (CT windows, percentiles) and DICOM series from one file or a file list."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_latentseg.io import (
    Volume,
    VolumeIOError,
    default_contrast_limits,
    read_volume,
    save_volume,
)
from napari_latentseg.io.contrast import looks_like_ct, sample_voxels

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_ct_series(folder: Path, n: int, *, series_uid: str, prefix: str = "IM",
                    window: tuple | None = None, shape=(8, 9), seed: int = 0,
                    ext: str = "") -> np.ndarray:
    """``n`` CT slices (stored + intercept -1024 = HU); returns the expected HU volume."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 2000, size=(n, *shape)).astype(np.uint16)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, "1.2.3"
        ds.Modality, ds.SeriesDescription = "CT", f"series {series_uid}"
        ds.Rows, ds.Columns = shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = stored[k].astype("<u2").tobytes()
        ds.save_as(folder / f"{prefix}{k:04d}{ext}", enforce_file_format=True)
    return stored.astype(np.int32) - 1024


# ----------------------------------------------------------------------------- contrast


def test_ct_dicom_window_first_value(tmp_path):
    write_ct_series(tmp_path, 3, series_uid="1.1", window=([-600, 40], [1500, 400]))
    vol = read_volume(tmp_path)
    assert vol.metadata["dicom_window"] == {"center": -600.0, "width": 1500.0}
    window = default_contrast_limits(vol)
    assert window == {"contrast_limits": [-1350.0, 150.0], "source": "dicom window"}


def test_ct_without_window_gets_soft_tissue(tmp_path):
    write_ct_series(tmp_path, 2, series_uid="1.2")
    vol = read_volume(tmp_path)
    assert vol.metadata["dicom_window"] is None
    assert default_contrast_limits(vol) == {"contrast_limits": [-160.0, 240.0],
                                            "source": "soft-tissue window"}


def test_hu_volume_without_modality_is_treated_as_ct(tmp_path):
    """A CT saved as NRRD/NIfTI has no modality: Hounsfield values give it away."""
    hu = np.full((6, 20, 20), -1000, np.int16)
    hu[:, 5:15, 5:15] = 40
    path = save_volume(tmp_path / "ct.nrrd", hu)
    vol = read_volume(path)
    assert vol.metadata["modality"] is None and looks_like_ct(vol.data)
    assert default_contrast_limits(vol)["source"] == "soft-tissue window"


def test_mr_gets_percentiles_and_flat_images_a_valid_range():
    ramp = np.arange(200 * 100, dtype=np.float32).reshape(2, 100, 100)
    vol = Volume(ramp, (1, 1, 1), (0, 0, 0), np.eye(3), {"modality": "MR"})
    window = default_contrast_limits(vol)
    expected = np.percentile(ramp, [0.5, 99.5])
    assert window["source"] == "percentiles 0.5-99.5"
    assert window["contrast_limits"] == pytest.approx(expected)
    assert not looks_like_ct(ramp - 5000)  # far below any HU padding value

    flat = Volume(np.full((2, 3, 4), 7, np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3), {})
    assert default_contrast_limits(flat) == {"contrast_limits": [7.0, 8.0], "source": "min-max"}


def test_big_volumes_are_sampled_reproducibly():
    rng = np.random.default_rng(1)
    big = rng.gamma(2.0, 100.0, size=(30, 256, 256)).astype(np.float32)  # ~2M voxels
    vol = Volume(big, (1, 1, 1), (0, 0, 0), np.eye(3), {"modality": "MR"})
    sample = sample_voxels(big)
    assert sample.size == 1_000_000
    np.testing.assert_array_equal(sample, sample_voxels(big))  # fixed seed
    lo, hi = default_contrast_limits(vol)["contrast_limits"]
    exact_lo, exact_hi = np.percentile(big, [0.5, 99.5])
    assert lo == pytest.approx(exact_lo, rel=0.05) and hi == pytest.approx(exact_hi, rel=0.02)


# ------------------------------------------------------------------------- DICOM series


@pytest.fixture
def two_series(tmp_path):
    """Two CT series (5 and 3 slices) interleaved in one folder, plus a text file."""
    a = write_ct_series(tmp_path, 5, series_uid="1.5", prefix="A", seed=1)
    b = write_ct_series(tmp_path, 3, series_uid="1.3", prefix="B", seed=2)
    (tmp_path / "notes.txt").write_text("not DICOM")
    return tmp_path, a, b


def test_one_file_opens_its_whole_series(two_series):
    folder, a, b = two_series
    one = read_volume(folder / "B0001")  # default: that file only
    assert one.shape == (1, 8, 9)
    vol = read_volume(folder / "B0001", whole_series=True)  # the smaller series, not "A"
    np.testing.assert_array_equal(vol.data, b)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.7))
    assert vol.metadata["dicom_series"]["uid"] == "1.3"
    assert vol.metadata["dicom_series"]["n_files"] == 3
    assert vol.metadata["source_path"] == str(folder)  # the series' folder is the source
    assert [o["uid"] for o in vol.metadata["dicom_series"]["others"]] == ["1.5"]


def test_selected_files_open_as_one_volume(two_series):
    folder, a, b = two_series
    files = [folder / f"A{k:04d}" for k in (3, 0, 4, 1, 2)]  # any order
    vol = read_volume([str(f) for f in files])
    np.testing.assert_array_equal(vol.data, a)
    assert vol.metadata["format"] == "dicom"
    assert read_volume(files[:1]).shape == (1, 8, 9)  # a one-element list: that file
    with pytest.raises(VolumeIOError, match="not a DICOM file"):
        read_volume([folder / "A0000", folder / "notes.txt"])
    with pytest.raises(VolumeIOError, match="no such file"):
        read_volume([folder / "A0000", folder / "gone"])
