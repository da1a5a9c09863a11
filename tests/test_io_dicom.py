"""DICOM reading: pydicom test files and synthetic series written into tmp_path."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_latentseg.io import VolumeIOError, is_supported_path, list_dicom_series, read_volume
from napari_latentseg.io import _dicom as dicom_mod
from napari_latentseg.io import _dicom_scan as dicom_scan

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def _base_dataset(sop_class: str, series_uid: str, rows: int, cols: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.3.4.5"
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "0"
    ds.Modality = "MR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    return ds


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    position,
    orientation=(1, 0, 0, 0, 1, 0),
    pixel_spacing=(0.8, 0.6),
    instance: int = 1,
    description: str = "",
    slope: float | None = None,
    intercept: float | None = None,
    thickness: float = 5.0,
) -> None:
    ds = _base_dataset(MR_IMAGE_STORAGE, series_uid, *pixels.shape)
    ds.SeriesDescription = description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = thickness
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_series(
    folder: Path,
    n: int,
    *,
    series_uid: str,
    description: str,
    spacing: float = 2.5,
    orientation=(1, 0, 0, 0, 1, 0),
    origin=(-10.0, 20.0, 30.0),
    shape=(6, 5),
    seed: int = 0,
    **kwargs,
) -> np.ndarray:
    """Write ``n`` slices in shuffled file order; return the expected (k, j, i) stored array."""
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    vol = np.arange(n * shape[0] * shape[1], dtype=np.uint16).reshape(n, *shape) * 3 + 100
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for file_no, k in enumerate(order):
        write_slice(
            folder / f"IM{file_no:04d}.dcm",
            vol[k],
            series_uid=series_uid,
            position=np.asarray(origin) + k * spacing * normal,
            orientation=orientation,
            instance=file_no + 1,  # deliberately not the slice order
            description=description,
            **kwargs,
        )
    return vol


# ----------------------------------------------------------------------------- test files


def test_ct_small_single_file_in_hu():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = read_volume(path)
    assert vol.shape == (1, 128, 128)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.data[0], expected)
    assert vol.data.dtype.kind == "i"  # slope 1, integer intercept: stays integer
    meta = vol.metadata
    assert meta["modality"] == "CT"
    assert meta["format"] == "dicom"
    assert meta["rescale_applied"] is True
    assert meta["original_dtype"] == "int16"
    assert meta["intensity_range"] == [float(expected.min()), float(expected.max())]
    assert meta["dicom_series"]["others"] == []
    ps = [float(v) for v in ds.PixelSpacing]
    assert vol.spacing == pytest.approx((float(ds.SliceThickness), ps[0], ps[1]))
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient][::-1])
    # same geometry and values as SimpleITK (GDCM applies the rescale too)
    img = sitk.ReadImage(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), vol.data)
    np.testing.assert_allclose(vol.origin, img.GetOrigin()[::-1], atol=1e-4)
    np.testing.assert_allclose(vol.spacing[1:], img.GetSpacing()[:2][::-1])


def test_jpeg_ls_decoded_through_simpleitk_fallback():
    ref = read_volume(get_testdata_file("MR_small.dcm"))
    vol = read_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    np.testing.assert_array_equal(vol.data, ref.data)
    assert vol.spacing == ref.spacing and vol.origin == ref.origin
    assert "JPEG-LS" in vol.metadata["dicom_transfer_syntax"]


def test_undecodable_transfer_syntax_named(monkeypatch):
    def fail(self, *args, **kwargs):
        raise RuntimeError("no GDCM codec")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", fail)
    with pytest.raises(VolumeIOError, match=r"MR_small_jpeg_ls_lossless\.dcm.*JPEG-LS"):
        read_volume(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))


def test_classic_multiframe_rtdose():
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    vol = read_volume(path)
    assert vol.shape == (15, 10, 10)
    assert vol.spacing == pytest.approx((5.0, 10.0, 10.0))  # GridFrameOffsetVector steps
    assert vol.origin == pytest.approx([float(v) for v in ds.ImagePositionPatient][::-1])
    assert vol.data.dtype == np.float32  # DoseGridScaling applied (Gy)
    np.testing.assert_allclose(vol.data, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)
    assert vol.metadata["modality"] == "RTDOSE"


def test_enhanced_multiframe_segmentation():
    """liver_1frame.dcm: geometry only in the functional group sequences."""
    path = get_testdata_file("liver_1frame.dcm")
    vol = read_volume(path)
    assert vol.shape == (1, 512, 512)
    assert vol.origin == pytest.approx((-128.69, -226.8, -235.2))
    assert vol.spacing == pytest.approx((1.0, 0.810547, 0.810547))
    assert vol.metadata["modality"] == "SEG"
    assert set(np.unique(vol.data)) <= {0, 1}


def write_enhanced(path: Path, frames: np.ndarray, positions, spacing=(0.5, 0.4)) -> None:
    n, rows, cols = frames.shape
    ds = _base_dataset(ENHANCED_MR_STORAGE, "1.2.3.99", rows, cols)
    ds.NumberOfFrames = n
    shared = Dataset()
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    measures = Dataset()
    measures.PixelSpacing = list(spacing)
    measures.SliceThickness = 9.0  # must not be used: positions say 3 mm
    shared.PlaneOrientationSequence = [orient]
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for p in positions:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in p]
        pvt = Dataset()
        pvt.RescaleSlope = 2
        pvt.RescaleIntercept = 0.5
        pvt.RescaleType = "US"
        item.PlanePositionSequence = [pos]
        item.PixelValueTransformationSequence = [pvt]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = frames.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_sorted_and_rescaled(tmp_path):
    frames = np.arange(4 * 3 * 5, dtype=np.uint16).reshape(4, 3, 5)
    # coronal: normal = row x col = (1,0,0) x (0,0,-1) = (0, 1, 0); frames stored in reverse
    positions = [(-5.0, 10.0 - 3.0 * f, 2.0) for f in range(4)]
    write_enhanced(tmp_path / "enh.dcm", frames, positions)
    vol = read_volume(tmp_path / "enh.dcm")
    assert vol.shape == (4, 3, 5)
    np.testing.assert_allclose(vol.data, frames[::-1] * 2.0 + 0.5)
    assert vol.data.dtype == np.float32
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.4))
    assert vol.origin == pytest.approx((2.0, 1.0, -5.0))
    # array axes: k along +y (world), j along -z, i along +x  (columns in z, y, x order)
    np.testing.assert_allclose(vol.direction, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-9)
    assert vol.metadata["direction_note"].startswith("permutation")


# ----------------------------------------------------------------------------- synthetic series


def test_two_series_largest_picked_others_listed(tmp_path):
    expected = make_series(tmp_path / "a", 7, series_uid="1.2.3.1", description="T1 axial")
    make_series(tmp_path / "b" / "deep", 3, series_uid="1.2.3.2", description="localizer")
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "a" / "notes.json").write_text("{}")

    series = list_dicom_series(tmp_path)
    assert [s["uid"] for s in series] == ["1.2.3.1", "1.2.3.2"]
    assert series[0] == {
        "uid": "1.2.3.1",
        "description": "T1 axial",
        "modality": "MR",
        "n_files": 7,
        "shape": [7, 6, 5],
    }

    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.data, expected)  # shuffled files come back sorted
    assert vol.data.dtype == np.uint16
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.6))  # from positions, not SliceThickness
    assert vol.origin == pytest.approx((30.0, 20.0, -10.0))
    np.testing.assert_array_equal(vol.direction, np.eye(3))
    info = vol.metadata["dicom_series"]
    assert info["uid"] == "1.2.3.1" and info["n_slices"] == 7
    assert info["others"] == [
        {"uid": "1.2.3.2", "description": "localizer", "modality": "MR", "n": 3}
    ]
    assert vol.metadata["rescale_applied"] is False
    assert vol.layer_kwargs()["name"] == f"{tmp_path.name} - T1 axial"
    assert is_supported_path(tmp_path)

    other = read_volume(tmp_path, series_uid="1.2.3.2")
    assert other.shape == (3, 6, 5)
    with pytest.raises(VolumeIOError, match=r"no DICOM series with SeriesInstanceUID 9\.9"):
        read_volume(tmp_path, series_uid="9.9")


def test_oblique_series_matches_simpleitk(tmp_path):
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)  # oblique sagittal-ish
    expected = make_series(
        tmp_path,
        5,
        series_uid="1.2.3.7",
        description="oblique",
        orientation=orientation,
        spacing=1.7,
        slope=0.25,
        intercept=-3,
    )
    vol = read_volume(tmp_path)
    np.testing.assert_allclose(vol.data, expected * 0.25 - 3)
    assert vol.data.dtype == np.float32
    assert vol.metadata["rescale_applied"] is True
    assert vol.metadata["direction_note"].startswith("oblique")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    img = reader.Execute()
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), vol.data, rtol=1e-6)
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], rtol=1e-5)
    np.testing.assert_allclose(vol.origin, img.GetOrigin()[::-1], atol=1e-4)
    np.testing.assert_allclose(
        vol.direction, np.reshape(img.GetDirection(), (3, 3))[::-1, ::-1], atol=1e-5
    )


def test_duplicate_positions_rejected(tmp_path):
    pix = np.zeros((4, 4), np.uint16)
    for n in range(2):
        write_slice(tmp_path / f"{n}.dcm", pix, series_uid="1.5", position=(0, 0, 0), instance=n)
    with pytest.raises(VolumeIOError, match=r"share a position"):
        read_volume(tmp_path)


def test_single_slice_file_without_extension(tmp_path):
    src = Path(get_testdata_file("MR_small.dcm"))
    dst = tmp_path / "IM0001"
    shutil.copy(src, dst)
    assert is_supported_path(dst)
    vol = read_volume(dst)
    assert vol.shape == (1, 64, 64)
    assert vol.spacing[0] == pytest.approx(0.8)  # SliceThickness for a single slice
    assert "SliceThickness" in vol.metadata["geometry_note"]


def dicomdir_tests(name: str) -> Path:
    return Path(get_testdata_file("DICOMDIR")).parent / name


def test_pydicom_dicomdir_ct_folder():
    """Real tree with a DICOMDIR, extension-less files, a 5-slice CT and a 2-image scout."""
    folder = dicomdir_tests("98892001")
    assert is_supported_path(folder)
    series = list_dicom_series(folder)
    assert [(s["description"], s["shape"]) for s in series] == [
        ("SmartScore - Gated 0.5 sec", [5, 16, 16]),
        ("Scout", [2, 16, 16]),
    ]
    vol = read_volume(folder)
    assert vol.shape == (5, 16, 16)
    assert vol.metadata["modality"] == "CT"
    assert vol.spacing[0] == pytest.approx(2.5)  # from positions (files are in descending z)
    assert vol.origin[0] == pytest.approx(-1.2375)  # lowest slice first
    files = sorted(folder.glob("CT5N/*"))
    by_z = sorted(files, key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]))
    ds0 = pydicom.dcmread(by_z[0])
    np.testing.assert_array_equal(vol.data[0], ds0.pixel_array + int(ds0.RescaleIntercept))
    assert vol.metadata["dicom_series"]["others"][0]["description"] == "Scout"


def test_mixed_orientations_largest_consistent_group(tmp_path):
    folder = dicomdir_tests("98892003")
    pilot = next(
        s for s in list_dicom_series(folder) if s["n_files"] == 3 and "PILOT" in s["description"]
    )
    vol = read_volume(folder, series_uid=pilot["uid"])  # 3 images, 3 orientations
    assert vol.shape == (1, 16, 16)
    assert vol.metadata["dicom_series"]["skipped_files"] == 2
    assert "orientation" in vol.metadata["geometry_note"]


def test_irregular_spacing_and_missing_positions_noted():
    vol = read_volume(dicomdir_tests("77654033") / "CT2")
    assert vol.shape == (4, 16, 16)
    assert "irregular slice spacing" in vol.metadata["geometry_note"]
    cr = read_volume(dicomdir_tests("77654033") / "CR1" / "6154")  # no IPP/IOP, slope 0.684
    assert "no ImagePositionPatient" in cr.metadata["geometry_note"]
    assert cr.data.dtype == np.float32 and cr.metadata["modality"] == "CR"


def test_colour_and_truncated_files_rejected(tmp_path):
    with pytest.raises(VolumeIOError, match=r"SC_ybr_full_422_uncompressed\.dcm.*colour"):
        read_volume(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    with pytest.raises(VolumeIOError, match=r"MR_truncated\.dcm.*corrupt or truncated"):
        read_volume(get_testdata_file("MR_truncated.dcm"))
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\x01" * 20)
    with pytest.raises(VolumeIOError, match=r"junk\.dcm"):
        read_volume(junk)


def test_folder_check_is_cheap(tmp_path, monkeypatch):
    for n in range(100):
        (tmp_path / f"f{n:03d}.txt").write_text("x")
    opened = []
    real = dicom_scan.has_dicom_magic

    def spy(path):
        opened.append(path)
        return real(path)

    monkeypatch.setattr(dicom_scan, "has_dicom_magic", spy)
    assert not dicom_mod.folder_has_dicom(tmp_path)
    assert opened  # the spy sits where folder_has_dicom looks
    assert len(opened) <= 32
